"""Names made durable (directory fsyncs) and copies written atomically (persist._durable), on real files.

Power loss cannot be simulated here, so these tests watch what persist asks of the kernel: every
``os.fsync`` call is recorded (and still made) with the inode it was made on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from persist import Corrupt, StreamFile, StreamStore

from .conftest import assert_backup_holds

pytestmark = pytest.mark.anyio


class Fsyncs:
    """The inodes ``os.fsync`` was called on (from any thread)."""

    def __init__(self) -> None:
        self.inodes: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def of(self, *paths: Path) -> list[bool]:
        """For each path, whether its inode was fsynced."""
        with self._lock:
            seen = set(self.inodes)
        return [(p.stat().st_dev, p.stat().st_ino) in seen for p in paths]

    def clear(self) -> None:
        with self._lock:
            self.inodes.clear()


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fsyncs]:
    seen = Fsyncs()
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        with seen._lock:
            seen.inodes.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield seen


async def test_a_new_streams_new_directories_are_made_durable(tmp_path: Path, fsyncs: Fsyncs) -> None:
    root = tmp_path / "root"
    async with StreamStore(lambda p: (root, f"{p}.db")) as store:
        async with store.stream("projects/p1/logs/a") as s:
            await s.set(b"x")
        # each new directory's entry lives in its parent: every parent up to the root's was fsynced
        assert fsyncs.of(root / "projects/p1", root / "projects", root, tmp_path) == [True] * 4
        fsyncs.clear()
        async with store.stream("projects/p1/logs/b") as s:  # its directory exists: no fsync needed
            await s.set(b"x")
        assert fsyncs.of(root / "projects/p1/logs", root / "projects/p1", root) == [False] * 3


async def test_a_file_moved_aside_stays_moved_aside(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, fsyncs: Fsyncs
) -> None:
    file = tmp_path / "dir" / "bad.db"
    file.parent.mkdir()
    file.write_bytes(b"not a database " * 500)
    with pytest.raises(Corrupt):
        await StreamFile.open(file, executor=executor)
    assert fsyncs.of(file.parent) == [True]  # the rename is durable: power loss cannot undo it


async def test_a_backup_never_touches_another_backups_temporary_file(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, fsyncs: Fsyncs
) -> None:
    """Two backups to one destination raced on one fixed temporary name (``<dest>.tmp``): the second
    deleted the first's file under its connection. Now each has its own."""
    dest = tmp_path / "backups" / "new" / "s.db"
    async with await StreamFile.open(tmp_path / "s.db", executor=executor) as s:
        await asyncio.gather(*(s.set(b"%d" % i) for i in range(200)))
        dest.parent.mkdir(parents=True)
        other = dest.with_name(dest.name + ".tmp")  # where another backup would be writing
        held = sqlite3.connect(other)
        try:
            held.execute("CREATE TABLE t (x)")
            await s.backup(dest)
            assert other.exists() and held.execute("SELECT count(*) FROM t").fetchone() == (0,)
        finally:
            held.close()
        await asyncio.gather(*(s.backup(dest) for _ in range(4)))  # concurrent backups to one dest
    assert_backup_holds(dest, range(1, 201))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["s.db", "s.db.tmp"]  # no temp left over
    assert fsyncs.of(dest, dest.parent) == [True, True]  # the copy, then its new name


async def test_an_archive_into_new_directories_is_durable(tmp_path: Path, fsyncs: Fsyncs) -> None:
    archive = tmp_path / "archive"
    async with StreamStore(
        lambda p: (tmp_path / "live", f"{p}.db"), archive=lambda p: archive / f"{p}.db"
    ) as store:
        async with store.stream("hub/a/b") as s:
            await s.set(b"x")
        assert await store.archive("hub/a/b") == archive / "hub/a/b.db"
    assert (
        fsyncs.of(archive / "hub/a/b.db", archive / "hub/a", archive / "hub", archive, tmp_path) == [True] * 5
    )
