"""StreamFile on real SQLite files: limits, TTL sweep, CAS, group commit, corruption, backup, kill -9."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conat.testing import FakeClock
from persist import (
    BadRequest,
    Corrupt,
    PersistError,
    Rejected,
    StorageError,
    StreamConfig,
    WrongLastSequence,
    _sql,
)
from persist._archive import reset_stream
from persist._checks import check_set_args
from persist._codec import COMPRESS_THRESHOLD, decode, encode
from persist._engine import StreamFile, Write
from persist._engine_io import MAX_BATCH_OPS, Apply, GroupCommit, Jobs, storage_errors
from persist._store import StreamStore

from .conftest import assert_backup_holds

pytestmark = pytest.mark.anyio


# ---- codec -----------------------------------------------------------------------------------------


@given(st.binary(max_size=5000))
@settings(max_examples=100)
def test_codec_round_trip(payload: bytes) -> None:
    stored, compressed = encode(payload)
    assert decode(stored, compressed) == payload
    if compressed:
        assert len(payload) > COMPRESS_THRESHOLD
        assert len(stored) < len(payload)


def test_codec_compresses_only_when_it_shrinks() -> None:
    assert encode(b"a" * COMPRESS_THRESHOLD) == (b"a" * COMPRESS_THRESHOLD, False)
    stored, compressed = encode(b"a" * 10_000)
    assert compressed and len(stored) < 100
    noise = os.urandom(10_000)
    assert encode(noise) == (noise, False)


def test_codec_bad_frame_is_value_error() -> None:
    with pytest.raises(ValueError):
        decode(b"not zstd at all", True)


# ---- fixtures ---------------------------------------------------------------------------------------


def rows_in_file(file: Path) -> int:
    db = sqlite3.connect(file)
    try:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        db.close()


# ---- basics -----------------------------------------------------------------------------------------


async def test_set_get_keys_inventory(stream: StreamFile, clock: FakeClock) -> None:
    r1 = await stream.set(b"v1", key="a", headers={"h": "x"})
    r2 = await stream.set(b"x" * 5000)
    r3 = await stream.set(b"v2", key="a")
    assert (r1.seq, r2.seq, r3.seq) == (1, 2, 3)
    assert r1.time == clock.wall()
    assert await stream.get(seq=1) is None  # replaced by seq 3
    got = await stream.get(key="a")
    assert got is not None and got.payload == b"v2" and got.seq == 3
    big = await stream.get(seq=2)
    assert big is not None and big.payload == b"x" * 5000 and big.headers == {}
    assert await stream.keys() == ["a"]
    inv = await stream.inventory()
    assert (inv.count, inv.first_seq, inv.last_seq) == (2, 2, 3)
    assert inv.bytes == 5000 + 3
    with pytest.raises(BadRequest):
        await stream.get()


async def test_seqs_never_reused_after_delete_and_reopen(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    file = tmp_path / "r.db"
    async with await StreamFile.open(file, executor=executor) as s:
        for i in range(5):
            await s.set(b"%d" % i)
        assert (await s.delete(up_to=5)).seqs == [1, 2, 3, 4, 5]
    async with await StreamFile.open(file, executor=executor) as s:
        assert (await s.set(b"next")).seq == 6
        assert (await s.inventory()).last_seq == 6


async def test_get_all_batches(stream: StreamFile) -> None:
    await stream.set_many([Write(payload=b"%d" % i) for i in range(25)])
    batches = [b async for b in stream.get_all(from_seq=3, batch=10)]
    assert [len(b) for b in batches] == [10, 10, 3]
    assert [m.seq for b in batches for m in b] == list(range(3, 26))


async def test_pages_are_bounded_by_bytes_while_they_are_read(stream: StreamFile) -> None:
    """A page stops before the message that would pass ``max_bytes`` and never loads the rest: a
    page of 4 MiB out of 32 MiB of 256 KiB messages allocates about its own size (it used to read
    ``max_msgs`` rows, 32 MiB here, and only then trim)."""
    big = os.urandom(256 * 1024)  # incompressible: stored as is
    for _ in range(8):
        await stream.set_many([Write(payload=big) for _ in range(16)])  # 128 messages, 32 MiB
    tracemalloc.start()
    try:
        page = await stream.changes(0, max_msgs=1000, max_bytes=4 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [m.seq for m in page.messages] == list(range(1, 17))  # 16 x 256 KiB = 4 MiB: a 17th would pass
    assert peak < 12 * 1024 * 1024, peak
    batches = [b async for b in stream.get_all(batch=1000, max_bytes=1024 * 1024 - 1)]
    assert [len(b) for b in batches] == [3] * 42 + [2]  # pages under 1 MiB to the end (not 1,000 rows)
    one = await stream.changes(0, max_bytes=1)  # a message larger than the bound comes alone
    assert [m.seq for m in one.messages] == [1]
    with pytest.raises(BadRequest):
        await stream.changes(0, max_bytes=0)


async def test_msg_id_dedup_survives_reopen(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    file = tmp_path / "d.db"
    async with await StreamFile.open(file, executor=executor) as s:
        first = await s.set(b"a", msg_id="m")
    async with await StreamFile.open(file, executor=executor) as s:
        again = await s.set(b"b", msg_id="m")
        assert again.duplicate and again.seq == first.seq
        assert (await s.inventory()).count == 1


async def test_a_delete_retried_with_its_msg_id_reports_what_it_removed(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    """A retried delete (its reply lost) found nothing and said so (``AKV.delete`` returned False
    after deleting); with its msg-id it gets the first result and deletes nothing more."""
    file = tmp_path / "d.db"
    async with await StreamFile.open(file, executor=executor) as s:
        await s.set(b"v1", key="k")
        assert (await s.delete(key="k", msg_id="del-1")).seqs == [1]
        await s.set(b"v2", key="k")  # written after the delete, before its retry
        assert (await s.delete(key="k", msg_id="del-1")).seqs == [1]
        assert (await s.get(key="k")) is not None  # the retry did not delete the new value
        await s.set_many([Write(payload=b"%d" % i) for i in range(5)])
        assert (await s.delete(up_to=7, msg_id="del-2")).seqs == [2, 3, 4, 5, 6, 7]
        with pytest.raises(BadRequest, match="used by a delete"):
            await s.set(b"x", msg_id="del-1")
        await s.set(b"x", msg_id="set-1")
        with pytest.raises(BadRequest, match="used by a set"):
            await s.delete(seq=1, msg_id="set-1")
    async with await StreamFile.open(file, executor=executor) as s:  # remembered on disk
        assert (await s.delete(up_to=7, msg_id="del-2")).seqs == [2, 3, 4, 5, 6, 7]


async def test_a_version_1_file_is_migrated(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    file = tmp_path / "v1.db"
    async with await StreamFile.open(file, executor=executor) as s:
        await s.set(b"x", msg_id="old")
    raw = sqlite3.connect(file)
    raw.execute("ALTER TABLE dedup DROP COLUMN result")
    raw.execute("UPDATE meta SET value = 1 WHERE name = 'schema'")
    raw.commit()
    raw.close()
    async with await StreamFile.open(file, executor=executor) as s:
        assert (await s.set(b"y", msg_id="old")).duplicate
        assert (await s.delete(seq=1, msg_id="gone")).seqs == [1]
    raw = sqlite3.connect(file)
    assert raw.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() == (_sql.SCHEMA_VERSION,)
    raw.close()


# ---- group commit -----------------------------------------------------------------------------------


async def test_group_commit_batches_concurrent_writes(stream: StreamFile) -> None:
    results = await asyncio.gather(*(stream.set(b"%d" % i) for i in range(2000)))
    assert sorted(r.seq for r in results) == list(range(1, 2001))
    stats = stream.statistics()
    assert stats.writes == 2000
    assert stats.transactions <= 200, stats  # far fewer transactions than writes


async def test_a_group_commit_batch_is_bounded(stream: StreamFile) -> None:
    """A burst of writes queued at once made one transaction of all of them (unbounded); now each
    holds at most MAX_BATCH_OPS writes, and a set_many is one group (never split)."""
    burst = MAX_BATCH_OPS + 200
    results = await asyncio.gather(*(stream.set(b"%d" % i) for i in range(burst)))
    assert sorted(r.seq for r in results) == list(range(1, burst + 1))
    stats = stream.statistics()
    assert stats.largest_batch == MAX_BATCH_OPS and stats.transactions == 2, stats
    many = await stream.set_many([Write(payload=b"m")] * (MAX_BATCH_OPS + 1))
    assert stream.statistics().largest_batch == MAX_BATCH_OPS + 1
    first = burst + 1
    assert [r.seq for r in many if not isinstance(r, Exception)] == list(
        range(first, first + MAX_BATCH_OPS + 1)
    )


async def test_group_commit_batches_by_bytes_and_whole_groups(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    batches: list[list[object]] = []

    def commit(applies: Sequence[Apply]) -> list[object]:
        batches.append([apply(None, 0.0) for apply in applies])  # type: ignore[arg-type]
        return batches[-1]

    def op(n: int) -> Apply:
        return lambda db, now: n

    queue = GroupCommit(asyncio.get_running_loop(), Jobs(executor), commit, "test", max_ops=4, max_bytes=100)
    futures = [
        *queue.put([op(1)], 60),
        *queue.put([op(2)], 60),  # would pass 100 bytes: next batch
        *queue.put([op(3), op(4), op(5)], 30),  # fits beside 2
        *queue.put([op(6), op(7)], 0),  # would pass 4 ops: next batch
        *queue.put([op(8), op(9), op(10), op(11), op(12)], 500),  # too big alone: a batch of its own
        *queue.put([op(13)], 0),
    ]
    assert await asyncio.gather(*futures) == list(range(1, 14))
    assert batches == [[1], [2, 3, 4, 5], [6, 7], [8, 9, 10, 11, 12], [13]]
    assert queue.largest == 5 and queue.queued == 0


# ---- limits -----------------------------------------------------------------------------------------


async def test_max_msgs_discard_old_and_new(stream: StreamFile) -> None:
    await stream.set_config({"max_msgs": 3})
    for i in range(5):
        await stream.set(b"%d" % i)
    assert [m.seq for b in [x async for x in stream.get_all()] for m in b] == [3, 4, 5]
    await stream.set_config({"discard": "new"})
    with pytest.raises(Rejected) as e:
        await stream.set(b"x")
    assert e.value.code == "reject" and e.value.limit == "max_msgs"
    assert (await stream.inventory()).last_seq == 5  # nothing changed


async def test_max_bytes_and_max_msg_size(stream: StreamFile) -> None:
    await stream.set_config({"max_bytes": 10, "max_msg_size": 8})
    with pytest.raises(Rejected) as e:
        await stream.set(b"123456789")
    assert e.value.limit == "max_msg_size"
    for _ in range(3):
        await stream.set(b"1234")
    inv = await stream.inventory()
    assert (inv.count, inv.bytes) == (2, 8)
    await stream.set_config({"discard": "new"})
    with pytest.raises(Rejected) as e:
        await stream.set(b"1234")
    assert e.value.limit == "max_bytes"


async def test_rate_limits(stream: StreamFile, clock: FakeClock) -> None:
    await stream.set_config({"max_msgs_per_second": 2, "max_bytes_per_second": 100})
    await stream.set(b"a")
    await stream.set(b"b")
    with pytest.raises(Rejected) as e:
        await stream.set(b"c")
    assert e.value.limit == "max_msgs_per_second"
    await clock.advance(1.0)
    with pytest.raises(Rejected) as e:
        await stream.set(b"x" * 101)
    assert e.value.limit == "max_bytes_per_second"
    await stream.set(b"c")


async def test_ttl_needs_allow_msg_ttl(stream: StreamFile) -> None:
    with pytest.raises(Rejected) as e:
        await stream.set(b"a", ttl=5)
    assert e.value.limit == "allow_msg_ttl"


async def test_cas_conflicts(stream: StreamFile) -> None:
    await stream.set(b"1", key="k", previous_seq=0)
    with pytest.raises(WrongLastSequence) as e:
        await stream.set(b"2", key="k", previous_seq=0)
    assert e.value.code == "wrong-last-sequence" and e.value.actual == 1
    await stream.set(b"2", key="k", previous_seq=1)
    with pytest.raises(WrongLastSequence) as e:
        await stream.set(b"3", previous_seq=1)
    assert e.value.actual == 2
    assert (await stream.set(b"3", previous_seq=2)).seq == 3


async def test_ephemeral_max_memory(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    config = StreamConfig(ephemeral=True, max_memory=100, discard="new")
    async with await StreamFile.open(None, executor=executor, config=config) as s:
        assert s.file is None
        await s.set(b"x" * 60)
        with pytest.raises(Rejected) as e:
            await s.set(b"x" * 60)
        assert e.value.limit == "max_memory"
        assert (await s.get(seq=1)) is not None


# ---- TTL sweep ---------------------------------------------------------------------------------------


async def test_sweep_deletes_expired_rows_from_the_file(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, clock: FakeClock
) -> None:
    file = tmp_path / "ttl.db"
    config = StreamConfig(allow_msg_ttl=True, max_age=100)
    async with await StreamFile.open(file, executor=executor, config=config, clock=clock) as s:
        await s.set(b"short", ttl=5)
        await s.set(b"long")
        await clock.advance(5)
        assert await s.get(seq=1) is None  # hidden at once
        assert rows_in_file(file) == 2  # not yet deleted
        assert await s.sweep() == 1
        assert rows_in_file(file) == 1
        await clock.advance(95)
        assert (await s.inventory()).count == 0
        assert await s.sweep() == 1
        assert rows_in_file(file) == 0


def _sweep_steps(db: sqlite3.Connection, config: StreamConfig, now: float) -> tuple[int, int]:
    """Run the sweep at ``now`` in a transaction; (SQLite VM steps it took, messages it removed)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 1)
    try:
        db.execute("BEGIN IMMEDIATE")
        removed, _ = _sql.sweep(db, config, now)
        db.execute("COMMIT")
    finally:
        db.set_progress_handler(None, 1)
    return steps, len(removed)


def test_a_sweep_touches_only_what_it_removes_on_a_real_wall_clock(tmp_path: Path) -> None:
    """20,000 messages and msg-ids inside their windows, at epoch times: a sweep with nothing to
    remove reads none of them (it runs before every write transaction), and each later sweep
    removes exactly the rows the model's rule says."""
    now = time.time()
    config = StreamConfig(max_age=600, duplicate_window=120)
    db = _sql.connect(tmp_path / "s.db")
    try:
        _sql.init_db(db, config, "s", durable=True)
        db.execute("BEGIN IMMEDIATE")
        times = [now - 100 + i * 0.004 for i in range(20_000)]  # now-100 .. now-20
        for seq, t in enumerate(times, 1):
            _sql.insert(db, seq, t, check_set_args(b"x", None, None, None, None, f"id-{seq}"), "raw")
        db.execute("COMMIT")

        steps, removed = _sweep_steps(db, config, now)
        assert removed == 0 and steps < 200  # was ~ 20,000 rows x 2 tables: a scan of each window

        steps, removed = _sweep_steps(db, config, now + 60)  # msg-ids written before now - 60 go
        assert removed == 0
        left = db.execute("SELECT count(*) FROM dedup").fetchone()[0]
        assert left == sum(1 for t in times if not t + 120 <= now + 60)
        steps, removed = _sweep_steps(db, config, now + 550)  # messages written before now - 50 go
        assert removed == sum(1 for t in times if t + 600 <= now + 550)
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == len(times) - removed
    finally:
        db.close()


# ---- corruption ---------------------------------------------------------------------------------------


async def test_a_corrupt_file_is_moved_aside_and_refused_until_reset(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    """A corrupt stream used to be reported once, then read as empty, and a write started it again
    at seq 1. Now it stays ``corrupt``, reads and writes alike, until an operator resets it."""
    file = tmp_path / "bad.db"
    garbage = b"this is not a database " * 500
    file.write_bytes(garbage)
    with pytest.raises(Corrupt) as e:
        await StreamFile.open(file, executor=executor)
    assert e.value.code == "corrupt"
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("bad.db.corrupt-")]
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert (
        str(file) in str(e.value) and str(moved[0]) in str(e.value) and "conat stream reset" in str(e.value)
    )
    assert not file.exists()
    for create in (True, False):  # a write would create it, a read would find nothing: both refused
        with pytest.raises(Corrupt, match=f"moved aside to {moved[0]}.*conat stream reset") as again:
            await StreamFile.open(file, executor=executor, create=create)
        assert "found corrupt at" in str(again.value)
    assert not file.exists()  # nothing was created meanwhile
    assert reset_stream(tmp_path, file, None) == []  # the operator's reset
    async with await StreamFile.open(file, executor=executor) as s:  # a fresh stream, a new id
        assert (await s.set(b"ok")).seq == 1
    with pytest.raises(BadRequest, match="not quarantined"):  # a sound stream cannot be reset
        reset_stream(tmp_path, file, None)
    assert moved[0].read_bytes() == garbage  # never deleted


def test_every_connection_treats_the_schema_as_untrusted(tmp_path: Path) -> None:
    """A project's owner can write its stream files: SQL planted in one must not run with the
    service's rights (``trusted_schema=OFF``), and a bad page is reported when read."""
    db = _sql.connect(tmp_path / "s.db")
    reader = _sql.connect(tmp_path / "s.db", reader=True)
    try:
        for conn in (db, reader):
            assert conn.execute("PRAGMA trusted_schema").fetchone() == (0,)
            assert conn.execute("PRAGMA cell_size_check").fetchone() == (1,)
        db.create_function("side_effect", 0, lambda: 1)  # not innocuous, as SQLite sees it
        db.execute("CREATE VIEW planted AS SELECT side_effect() AS x")
        with pytest.raises(sqlite3.OperationalError, match="unsafe use of side_effect"):
            db.execute("SELECT x FROM planted").fetchall()
    finally:
        reader.close()
        db.close()


async def test_a_file_with_objects_persist_did_not_make_is_refused(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    file = tmp_path / "t.db"
    async with await StreamFile.open(file, executor=executor) as s:
        await s.set(b"x")
    raw = sqlite3.connect(file)
    raw.execute("CREATE TRIGGER planted AFTER INSERT ON messages BEGIN DELETE FROM dedup; END")
    raw.commit()
    raw.close()
    with pytest.raises(Corrupt, match="trigger 'planted'") as e:
        await StreamFile.open(file, executor=executor)
    assert "moved aside" in str(e.value) and not file.exists()


async def test_quick_check_runs_only_after_an_unclean_close(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    """It reads the whole file: every open of every stream paid it. A clean close removes the
    ``-wal`` and ``-shm``; a crash leaves them, and then the file is checked."""
    file = tmp_path / "q.db"
    async with await StreamFile.open(file, executor=executor) as s:
        assert not s.checked  # created
        await s.set(b"x")
        crashed = tmp_path / "crashed.db"  # the files as a kill -9 would leave them
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{file}{suffix}", f"{crashed}{suffix}")
    assert not Path(f"{file}-wal").exists()
    async with await StreamFile.open(file, executor=executor) as s:
        assert not s.checked  # closed cleanly
    async with await StreamFile.open(crashed, executor=executor) as s:
        assert s.checked and (await s.get(seq=1)) is not None
    async with await StreamFile.open(crashed, executor=executor, check=True) as s:
        assert s.checked


async def test_an_unclean_close_is_seen_through_an_archive_restore_check(tmp_path: Path) -> None:
    """Reading the live file's last seq (to compare it with its archive) recovers its ``-wal``: the
    store remembers what it saw before, and the open still checks the file."""
    live, archive = tmp_path / "live", tmp_path / "archive"
    async with StreamStore(lambda p: (live, f"{p}.db"), archive=lambda p: archive / f"{p}.db") as store:
        async with store.stream("hub/s") as s:
            await s.set(b"x")
        await store.archive("hub/s")
        async with store.stream("hub/s") as s:
            await s.set(b"y")
            for suffix in ("", "-wal", "-shm"):
                shutil.copyfile(f"{live}/hub/s.db{suffix}", f"{tmp_path}/held{suffix}")
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{tmp_path}/held{suffix}", f"{live}/hub/s.db{suffix}")
    store = StreamStore(lambda p: (live, f"{p}.db"), archive=lambda p: archive / f"{p}.db")
    async with store, store.stream("hub/s") as s:
        assert s.checked and (await s.inventory()).count == 2


# ---- backup -------------------------------------------------------------------------------------------


async def test_backup_under_concurrent_writes(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    async with await StreamFile.open(tmp_path / "live.db", executor=executor) as s:
        before = await s.set_many([Write(payload=b"x" * 2000, msg_id=f"b{i}") for i in range(500)])
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            while not stop.is_set():
                await s.set(b"y" * 100, msg_id=f"l{i}")
                i += 1

        task = asyncio.create_task(load())
        await asyncio.sleep(0.01)
        dest = tmp_path / "backup" / "copy.db"
        await s.backup(dest)
        stop.set()
        await task
    assert all(not isinstance(r, Exception) for r in before)
    assert_backup_holds(dest, [r.seq for r in before if not isinstance(r, Exception)])


# ---- durability: kill -9 --------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import asyncio, concurrent.futures, sys
    from persist._engine import StreamFile, Write

    async def main(file: str, start: int) -> None:
        ex = concurrent.futures.ThreadPoolExecutor(2)
        s = await StreamFile.open(file, executor=ex)
        for b in range(start, 10_000, 100):
            writes = [Write(payload=b"%d" % i, msg_id=f"m{i}") for i in range(b, b + 100)]
            results = await s.set_many(writes)
            assert not any(isinstance(r, Exception) for r in results)
            print(b + 99, flush=True)
        await s.aclose()
        ex.shutdown()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    file = tmp_path / "durable.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(file), "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 4999:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert acked >= 4999

    async def check() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            async with await StreamFile.open(file, executor=ex) as s:
                assert await s.integrity_check() == []
                payloads = [m.payload for b in [x async for x in s.get_all()] for m in b]
                present = {int(p) for p in payloads}
                assert set(range(acked + 1)) <= present
                assert len(payloads) == len(present)  # no duplicates
                # Retry everything after the last acknowledged batch, with the same msg-ids.
                for b in range(acked + 1, 10_000, 100):
                    results = await s.set_many(
                        [Write(payload=b"%d" % i, msg_id=f"m{i}") for i in range(b, b + 100)]
                    )
                    for i, r in zip(range(b, b + 100), results, strict=True):
                        assert not isinstance(r, Exception)
                        assert r.duplicate == (i in present)
                payloads = [m.payload for b in [x async for x in s.get_all()] for m in b]
                assert sorted(int(p) for p in payloads) == list(range(10_000))
                assert await s.integrity_check() == []

    asyncio.run(check())


# ---- storage failures ----------------------------------------------------------------------------------


def test_storage_error_fields_and_message() -> None:
    error = StorageError("write", "/d/s.db", "SQLITE_FULL: database or disk is full")
    assert isinstance(error, PersistError) and error.code == "storage"
    assert (error.operation, error.path, error.detail) == ("write", "/d/s.db", error.detail)
    assert str(error) == error.message
    assert all(part in str(error) for part in ("write", "/d/s.db", "SQLITE_FULL"))


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/d/s.db-wal"), StorageError),
        (PermissionError(errno.EACCES, "Permission denied"), StorageError),
        (sqlite3.OperationalError("disk I/O error"), StorageError),
        (sqlite3.DatabaseError("database disk image is malformed"), Corrupt),
        (sqlite3.ProgrammingError("Cannot operate on a closed database."), PersistError),
    ],
)
def test_storage_errors_boundary(raised: Exception, expected: type[PersistError]) -> None:
    with pytest.raises(PersistError) as e, storage_errors("/d/s.db", "open"):
        raise raised
    assert type(e.value) is expected
    assert e.value.__cause__ is None and e.value.__suppress_context__
    if isinstance(e.value, StorageError):
        assert (e.value.operation, e.value.path) == ("open", "/d/s.db")
        assert (getattr(raised, "strerror", None) or str(raised)) in e.value.detail


_FILLER = textwrap.dedent(
    """
    import asyncio, concurrent.futures, json, os, resource, signal, sys
    from persist import PersistError, StorageError
    from persist._engine import StreamFile

    async def main(file: str) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        ex = concurrent.futures.ThreadPoolExecutor(2)
        s = await StreamFile.open(file, executor=ex)
        acked = [(await s.set(b"small %d" % i, msg_id=f"m{i}")).seq for i in range(20)]
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        error = None
        for i in range(20):  # 20 x 256 KiB of noise (not compressible): far past the 1 MiB limit
            try:
                acked.append((await s.set(os.urandom(256 * 1024), msg_id=f"big{i}")).seq)
            except PersistError as e:
                error = {"type": type(e).__name__, "code": e.code, "message": str(e)}
                if isinstance(e, StorageError):
                    error |= {"operation": e.operation, "path": e.path, "detail": e.detail}
                break
        print(json.dumps({"acked": acked, "error": error}), flush=True)
        await s.aclose()
        ex.shutdown()

    asyncio.run(main(sys.argv[1]))
    """
)


def test_file_size_limit_fails_the_write_with_storage_error(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (no root needed) makes the writer's file writes fail with EFBIG mid-transaction."""
    file = tmp_path / "full.db"
    proc = subprocess.run(
        [sys.executable, "-c", _FILLER, str(file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    error = report["error"]
    assert error is not None, "no write failed under RLIMIT_FSIZE"
    assert (error["type"], error["code"], error["operation"]) == ("StorageError", "storage", "write")
    assert error["path"] == str(file) and error["detail"].startswith("SQLITE_")
    acked: list[int] = report["acked"]
    assert acked[:20] == list(range(1, 21))

    async def check() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            async with await StreamFile.open(file, executor=ex) as s:
                assert await s.integrity_check() == []
                stored = [m for b in [x async for x in s.get_all()] for m in b]
                assert [m.seq for m in stored] == acked  # every acknowledged write, nothing else
                assert [m.payload for m in stored[:20]] == [b"small %d" % i for i in range(20)]
                assert (await s.set(b"after")).seq > acked[-1]

    asyncio.run(check())
