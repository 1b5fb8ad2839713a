"""Fixtures for actor tests: a client on the session server, an actor system, a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

import conat
from actors import ActorSystem
from conat._server import NatsServer
from conat.testing import FakeClock


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[conat.Client]:
    async with await conat.connect(nats_server.url) as c:
        yield c


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def system(client: conat.Client, clock: FakeClock) -> AsyncIterator[ActorSystem]:
    async with ActorSystem(client, clock=clock, stop_timeout=5.0) as s:
        yield s


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``check`` until it holds (for effects that cross the network), failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)
