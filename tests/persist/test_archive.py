"""StreamStore archives: written at close (not by drop) and on demand, restored on open when newer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from conat.testing import FakeClock
from persist import (
    BadRequest,
    Corrupt,
    NotFound,
    Placement,
    PlacementConfig,
    StreamConfig,
    StreamFile,
    StreamStore,
)
from persist._archive import archive_stream

from .conftest import assert_backup_holds

pytestmark = pytest.mark.anyio


class Layout:
    """``<tmp>/live/<path>.db`` with archives at ``<tmp>/archive/<path>.db``."""

    def __init__(self, tmp_path: Path) -> None:
        self.placement = Placement(
            PlacementConfig(archive=str(tmp_path / "archive")), default_root=tmp_path / "live"
        )

    def store(self, *, archive: bool = True, **kwargs: object) -> StreamStore:
        arch = self.placement.archive_path if archive else None
        return StreamStore(self.placement.locate, archive=arch, **kwargs)  # type: ignore[arg-type]

    def live(self, path: str) -> Path:
        return self.placement.path(path)

    def archive(self, path: str) -> Path:
        found = self.placement.archive_path(path)
        assert found is not None
        return found


def rows(file: Path) -> tuple[int, list[bytes]]:
    """``(last_seq, payloads)`` of a closed stream file, read with plain sqlite3 (uncompressed payloads)."""
    db = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        last = db.execute("SELECT value FROM meta WHERE name = 'last_seq'").fetchone()[0]
        payloads = [r[0] for r in db.execute("SELECT payload FROM messages ORDER BY seq")]
    finally:
        db.close()
    return int(last), payloads


async def payloads(s: StreamFile) -> list[bytes]:
    return [m.payload for batch in [b async for b in s.get_all()] for m in batch]


async def settle(pred: Callable[[], bool], tries: int = 500) -> None:
    for _ in range(tries):
        if pred():
            return
        await asyncio.sleep(0.005)
    assert pred()


# ---- writing archives -------------------------------------------------------------------------------


async def test_close_archives_and_a_deleted_file_comes_back(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    async with layout.store() as store:
        async with store.stream("hub/s") as s:
            acked = [(await s.set(b"m%d" % i)).seq for i in range(5)]
        assert store.statistics().archived == 0  # still open: archived when closed
    assert store.statistics().archived == 1
    archive, live = layout.archive("hub/s"), layout.live("hub/s")
    assert_backup_holds(archive, acked)
    assert archive.read_bytes()[18:20] == b"\x01\x01"  # a rollback-journal file: no -wal to go with it
    assert sorted(p.name for p in archive.parent.iterdir()) == ["s.db"]

    live.unlink()
    async with layout.store() as store:
        async with store.stream("hub/s", create=False) as s:
            assert await payloads(s) == [b"m%d" % i for i in range(5)]
            assert (await s.set(b"after")).seq == 6  # last_seq came back too
        assert store.statistics().restored == 1
    assert rows(archive) == (6, [*(b"m%d" % i for i in range(5)), b"after"])


async def test_idle_close_and_eviction_archive_but_drop_does_not(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    clock = FakeClock()
    async with layout.store(max_open=1, idle_close=60, clock=clock) as store:
        async with store.stream("hub/a") as a:
            await a.set(b"a")
        async with store.stream("hub/b") as b:  # evicts hub/a
            await b.set(b"b")
            assert rows(layout.archive("hub/a")) == (1, [b"a"])
        await clock.advance(90)
        await settle(lambda: store.statistics().open == 0)  # hub/b closed idle
        assert rows(layout.archive("hub/b")) == (1, [b"b"])
        assert store.statistics().archived == 2

        async with store.stream("hub/c") as c:
            await c.set(b"c")
        await store.drop("hub/c")
        assert not layout.archive("hub/c").exists()

        stamp = layout.archive("hub/a").stat().st_mtime_ns
        async with store.stream("hub/a") as a:  # read, not written: not archived again
            assert await payloads(a) == [b"a"]
        async with store.stream("hub/d"):  # evicts hub/a
            pass
        assert layout.archive("hub/a").stat().st_mtime_ns == stamp
        assert store.statistics().archived == 2
    assert not layout.archive("hub/d").exists()  # never written
    assert store.statistics().archive_failures == 0


async def test_archive_on_demand_under_concurrent_writes(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    async with layout.store(executor_threads=4) as store, store.stream("hub/live") as s:
        acked = [r.seq for r in await asyncio.gather(*(s.set(b"a" * 3000) for _ in range(300)))]
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                await asyncio.gather(*(s.set(b"b" * 500) for _ in range(20)))

        task = asyncio.create_task(load())
        await asyncio.sleep(0.02)
        dest = await store.archive("hub/live")
        assert dest == layout.archive("hub/live")
        assert_backup_holds(dest, acked)  # checked now, while the writes go on
        stop.set()
        await task
        last = (await s.inventory()).last_seq
    assert rows(dest)[0] == last  # the close archived the writes made after the copy


async def test_archive_returns_none_without_an_archive(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    async with layout.store(archive=False) as store:
        async with store.stream("hub/s") as s:
            await s.set(b"x")
        assert await store.archive("hub/s") is None
    async with layout.store() as store:
        async with store.stream("hub/mem", config=StreamConfig(ephemeral=True)) as s:
            await s.set(b"x")
        assert await store.archive("hub/mem") is None
    assert not (tmp_path / "archive").exists()


# ---- restoring ----------------------------------------------------------------------------------------


async def test_newer_archive_replaces_older_live_file(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    live, old = layout.live("hub/s"), tmp_path / "old.db"
    async with layout.store() as store, store.stream("hub/s") as s:
        for i in range(3):
            await s.set(b"m%d" % i)
    shutil.copyfile(live, old)  # closed cleanly: the main file holds everything
    async with layout.store() as store, store.stream("hub/s") as s:
        for i in range(3, 7):
            await s.set(b"m%d" % i)
    shutil.copyfile(old, live)  # the live file goes back to last_seq 3; the archive has 7

    async with layout.store() as store:
        async with store.stream("hub/s") as s:
            assert (await s.inventory()).last_seq == 7
            assert await payloads(s) == [b"m%d" % i for i in range(7)]
            assert await s.integrity_check() == []
        assert store.statistics().restored == 1
    assert [p.name for p in live.parent.iterdir()] == ["s.db"]  # no temporary file left behind


async def test_older_archive_is_ignored(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    async with layout.store() as store, store.stream("hub/s") as s:
        for i in range(3):
            await s.set(b"m%d" % i)
    async with layout.store(archive=False) as store, store.stream("hub/s") as s:
        for i in range(3, 5):
            await s.set(b"m%d" % i)
    assert rows(layout.archive("hub/s"))[0] == 3

    async with layout.store() as store:
        async with store.stream("hub/s") as s:
            assert await payloads(s) == [b"m%d" % i for i in range(5)]
        assert store.statistics().restored == 0
        assert store.statistics().archived == 0  # opened and closed without a write
    assert rows(layout.archive("hub/s"))[0] == 3


async def test_a_tie_keeps_the_live_file(tmp_path: Path) -> None:
    """Deletes do not bump last_seq: an archive that differs only by them is not newer."""
    layout = Layout(tmp_path)
    async with layout.store() as store, store.stream("hub/s") as s:
        for i in range(3):
            await s.set(b"m%d" % i)
    async with layout.store(archive=False) as store, store.stream("hub/s") as s:
        await s.delete(seq=1)
    async with layout.store() as store:
        async with store.stream("hub/s") as s:
            assert await payloads(s) == [b"m1", b"m2"]
        assert store.statistics().restored == 0


async def test_live_last_seq_is_read_through_its_wal(tmp_path: Path) -> None:
    """A live file whose newest writes are still in its -wal is newer than an archive between the two."""
    layout = Layout(tmp_path)
    live = layout.live("hub/s")
    hold = tmp_path / "hold"
    hold.mkdir()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        async with await StreamFile.open(live, executor=ex) as s:
            for _ in range(3):
                await s.set(b"live")
        async with await StreamFile.open(live, executor=ex) as s:
            for _ in range(2):
                await s.set(b"live")
            for name in ("s.db", "s.db-wal"):  # main file at last_seq 3, the -wal takes it to 5
                shutil.copyfile(live.parent / name, hold / name)
        other = tmp_path / "other" / "s.db"
        async with await StreamFile.open(other, executor=ex) as s:
            for _ in range(4):
                await s.set(b"archive")
    archive_stream(other.parent, other, layout.archive("hub/s"))  # last_seq 4
    for name in ("s.db", "s.db-wal"):
        shutil.copyfile(hold / name, live.parent / name)
    assert rows(live)[0] == 5  # (sqlite3 reads the -wal too)

    async with layout.store() as store:
        async with store.stream("hub/s") as s:
            assert await payloads(s) == [b"live"] * 5
        assert store.statistics().restored == 0


async def test_a_corrupt_live_file_is_restored_only_when_an_operator_says_so(tmp_path: Path) -> None:
    """Restoring an older archive silently would give seqs again that consumers already saw: a
    corrupt stream stays refused until ``reset(restore=True)``, which restores it with a new
    stream id (consumers reload)."""
    layout = Layout(tmp_path)
    async with layout.store() as store, store.stream("hub/s") as s:
        await s.set(b"kept")
        first_id = s.stream_id
    live = layout.live("hub/s")
    live.write_bytes(b"garbage " * 1000)
    async with layout.store() as store:
        for _ in range(2):
            with pytest.raises(Corrupt):
                async with store.stream("hub/s"):
                    pass
        assert any(p.name.startswith("s.db.corrupt-") for p in live.parent.iterdir())
        assert store.statistics().restored == 0
        with pytest.raises(NotFound):  # the archive of a stream that has none
            await store.reset("hub/other", restore=True)
        assert await store.reset("hub/s", restore=True) == []
        async with store.stream("hub/s") as s:
            assert await payloads(s) == [b"kept"]
            assert s.stream_id != first_id
        with pytest.raises(BadRequest):
            await store.reset("hub/s")  # open, so not quarantined


@pytest.mark.parametrize("content", [b"not a database " * 400, b""])
async def test_unreadable_archive_is_refused(tmp_path: Path, content: bytes) -> None:
    """A corrupt archive, or a database that is no stream, stops the open: nothing is replaced."""
    layout = Layout(tmp_path)
    archive = layout.archive("hub/s")
    archive.parent.mkdir(parents=True)
    archive.write_bytes(content)
    if not content:
        with sqlite3.connect(archive) as db:
            db.execute("CREATE TABLE unrelated (x)")
        db.close()
    async with layout.store() as store:
        with pytest.raises(Corrupt) as e:
            async with store.stream("hub/s"):
                pass
        assert str(archive) in str(e.value)
    assert not layout.live("hub/s").exists()


async def test_cancelled_opener_still_settles_the_restore(tmp_path: Path) -> None:
    """Cancelling the first caller mid-restore leaves a consistent stream for the next one."""
    layout = Layout(tmp_path)
    async with layout.store() as store, store.stream("hub/big") as s:
        for _ in range(10):
            await asyncio.gather(*(s.set(bytes(range(256)) * 40) for _ in range(100)))
    layout.live("hub/big").unlink()

    async with layout.store() as store:

        async def use() -> None:
            async with store.stream("hub/big"):
                await asyncio.sleep(10)

        first = asyncio.create_task(use())
        await asyncio.sleep(0.001)
        assert store.statistics().opened == 0  # still restoring (10 MB) when its caller is cancelled
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        async with store.stream("hub/big") as s:
            assert (await s.inventory()).count == 1000
            assert await s.integrity_check() == []
        stats = store.statistics()
        assert (stats.opened, stats.restored) == (1, 1)
