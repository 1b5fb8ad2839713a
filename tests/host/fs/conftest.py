"""Fixtures of the file-server tests: a client on the session nats-server, a file server over a
temporary projects root (with an audit log), a project in it, and sentinel files outside every
project whose hashes must not change."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import conat
from conat import NatsServer, beneath
from host import FileServer, FileServerConfig, FsClient, fs


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[conat.Client]:
    async with await conat.connect(nats_server.url) as c:
        yield c


@pytest.fixture
def config(tmp_path: Path) -> FileServerConfig:
    return FileServerConfig(
        projects=str(tmp_path / "projects" / "[project_id]"),
        audit=str(tmp_path / "audit.db"),
        time_cap=5.0,
    )


@pytest.fixture
async def server(client: conat.Client, config: FileServerConfig) -> AsyncIterator[FileServer]:
    async with FileServer(client, config) as s:
        yield s


@pytest.fixture
async def project(server: FileServer) -> str:
    project_id = str(uuid.uuid4())
    await server.create_project(project_id)
    return project_id


@pytest.fixture
def root(server: FileServer, project: str) -> Path:
    return server.config.project_root(project)


@pytest.fixture
def f(client: conat.Client, project: str) -> FsClient:
    return fs(client, project, timeout=20)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory outside every project with a sentinel file and directory: unchanged at the end
    (same names, same contents by hash, same mode)."""
    path = tmp_path / "outside"
    (path / "dir").mkdir(parents=True)
    (path / "secret").write_text("top secret\n")
    (path / "dir" / "inner").write_text("inner secret\n")
    os.chmod(path / "secret", 0o600)
    before = {p: (digest(p), p.stat().st_mode) for p in path.rglob("*") if p.is_file()}
    names = sorted(str(p) for p in path.rglob("*"))
    yield path
    assert sorted(str(p) for p in path.rglob("*")) == names
    assert {p: (digest(p), p.stat().st_mode) for p in path.rglob("*") if p.is_file()} == before


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run with ``openat2``, then with the ``O_NOFOLLOW`` walk used where the kernel lacks it."""
    previous = beneath.set_openat2(None if request.param == "openat2" else False)
    try:
        yield request.param
    finally:
        beneath.set_openat2(previous)
