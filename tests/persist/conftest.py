"""Shared fixtures and checks of the persist tests: a client on the session nats-server, a persist
service over a temporary storage root, a fresh scope."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

import conat
from conat._server import NatsServer
from persist import PersistServer, Placement, PlacementConfig


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
