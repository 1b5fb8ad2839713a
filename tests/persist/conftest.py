"""Shared fixtures and checks of the persist tests: an executor, a fake clock and a stream file for
engine tests; a client on the session nats-server, a persist service over a temporary storage root
and a fresh scope for service tests."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path

import pytest

import conat
from conat._server import NatsServer
from conat.testing import FakeClock
from persist import PersistServer, Placement, PlacementConfig, StreamFile


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-persist")
    yield ex
    ex.shutdown(wait=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stream(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, clock: FakeClock
) -> AsyncIterator[StreamFile]:
    """A stream file on the fake clock (engine tests)."""
    async with await StreamFile.open(tmp_path / "s.db", executor=executor, clock=clock) as s:
        yield s


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[conat.Client]:
    async with await conat.connect(nats_server.url) as c:
        yield c


@pytest.fixture
def placement(tmp_path: Path) -> Placement:
    return Placement(PlacementConfig(root=str(tmp_path / "sync")))


@pytest.fixture
async def server(client: conat.Client, placement: Placement) -> AsyncIterator[PersistServer]:
    """The persist service, sweeping expired messages every 0.1 s (tests of TTLs need no long waits)."""
    async with PersistServer(client, placement, sweep_interval=0.1) as s:
        yield s


@pytest.fixture
def scope() -> str:
    return f"project-{uuid.uuid4()}"


def assert_backup_holds(dest: Path, seqs: Collection[int]) -> None:
    """``dest`` is a sound SQLite database holding every seq in ``seqs``."""
    db = sqlite3.connect(dest)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {r[0] for r in db.execute("SELECT seq FROM messages")}
    finally:
        db.close()
    assert set(seqs) <= stored
