"""The in-memory tail answers a changefeed page exactly as the file does (persist/_tail.py).

Random histories of writes (keyed, with ttl), deletes, config changes and time steps run on a real
stream file; after each step every cursor the tail is willing to answer gets the same page from
memory as from a read of the file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persist._sql
from conat.testing import FakeClock
from persist import PersistError
from persist._engine import ChangePage, StreamFile
from persist._tail import TAIL_MSGS

_op = st.one_of(
    st.tuples(st.just("set"), st.sampled_from([None, "a", "b", "c"]), st.sampled_from([None, 0.5, 5.0])),
    st.tuples(st.just("set_many"), st.integers(1, 4), st.sampled_from([None, "a", "b"])),
    st.tuples(st.just("delete_seq"), st.integers(1, 40)),
    st.tuples(st.just("delete_up_to"), st.integers(1, 40)),
    st.tuples(st.just("delete_key"), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("config"), st.sampled_from([{"max_msgs": 5}, {"max_age": 3.0}, {"max_msgs": -1}])),
    st.tuples(st.just("time"), st.sampled_from([0.3, 1.0, 4.0])),
)


async def _file_page(
    s: StreamFile, after_seq: int, after_delete: int | None, max_msgs: int, max_bytes: int
) -> ChangePage:
    """The page read from the file (what :meth:`StreamFile.changes` reads when the tail cannot tell)."""
    config, now = s._writer.state.config, s._clock.wall()
    rows, deletes, cursor, first, last_seq = await s._read(
        functools.partial(
            persist._sql.select_changes,
            config=config,
            now=now,
            after_seq=after_seq,
            after_delete=after_delete,
            max_msgs=max_msgs,
            max_bytes=max_bytes,
            max_deletes=1000,
        )
    )
    resync = after_delete is not None and after_delete + 1 < first
    return ChangePage(
        messages=[persist._sql.decode_row(r, "t") for r in rows],
        deletes=[] if resync else deletes,
        delete_cursor=cursor,
        last_seq=last_seq,
        stream_id=s.stream_id,
        resync=resync,
    )


async def _run(ops: list[tuple[object, ...]], bounds: tuple[int, int]) -> int:
    """Play ``ops``; after each, compare every cursor's memory page with the file's. Returns how
    many pages came from memory (so the test knows it compared something)."""
    clock = FakeClock()
    answered = 0
    with tempfile.TemporaryDirectory() as d, concurrent.futures.ThreadPoolExecutor(2) as ex:
        async with await StreamFile.open(Path(d) / "t.db", executor=ex, clock=clock) as s:
            for n, op in enumerate(ops):
                kind = op[0]
                try:
                    if kind == "set":
                        await s.set(b"v%d" % n, key=op[1], ttl=op[2])  # type: ignore[arg-type]
                    elif kind == "set_many":
                        from persist import Write

                        await s.set_many([Write(payload=b"m%d" % i, key=op[2]) for i in range(op[1])])  # type: ignore[arg-type, call-overload]
                    elif kind == "delete_seq":
                        await s.delete(seq=op[1])  # type: ignore[arg-type]
                    elif kind == "delete_up_to":
                        await s.delete(up_to=op[1])  # type: ignore[arg-type]
                    elif kind == "delete_key":
                        await s.delete(key=op[1])  # type: ignore[arg-type]
                    elif kind == "config":
                        await s.set_config(op[1])  # type: ignore[arg-type]
                    else:
                        await clock.advance(op[1])  # type: ignore[arg-type]
                except PersistError:
                    pass
                await asyncio.sleep(0)  # the commit's news reaches the tail on the loop
                await asyncio.sleep(0)
                tail = s._tail
                last_delete = tail.last_delete
                for after_seq in range(tail.base_seq, tail.last_seq + 1):
                    for after_delete in {
                        None,
                        tail.base_delete,
                        max(tail.base_delete, last_delete - 1),
                        last_delete,
                    }:
                        mem = tail.page(
                            s._writer.state.config, clock.wall(), after_seq, after_delete, *bounds, 1000
                        )
                        if mem is None:
                            continue
                        answered += 1
                        disk = await _file_page(s, after_seq, after_delete, *bounds)
                        assert (mem.messages, mem.deletes, mem.delete_cursor, mem.last_seq) == (
                            disk.messages,
                            disk.deletes,
                            disk.delete_cursor,
                            disk.last_seq,
                        ), (after_seq, after_delete, op)
                        assert not disk.resync
    return answered


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(_op, min_size=1, max_size=25),
    bounds=st.sampled_from([(1000, 1 << 20), (2, 1 << 20), (1000, 20)]),
)
def test_memory_pages_equal_file_pages(ops: list[tuple[object, ...]], bounds: tuple[int, int]) -> None:
    assert asyncio.run(_run(ops, bounds)) > 0


@pytest.mark.anyio
async def test_the_tail_forgets_the_oldest_and_then_defers_to_the_file(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    async with await StreamFile.open(tmp_path / "t.db", executor=executor) as s:
        from persist import Write

        for _ in range(3):
            await s.set_many([Write(payload=b"x")] * (TAIL_MSGS // 2 + 1))
        await asyncio.sleep(0)
        tail = s._tail
        assert tail.base_seq > 0  # it forgot the first messages
        assert tail.page(s._writer.state.config, 0.0, 0, None, 10, 1 << 20, 1000) is None
        page = await s.changes(0, max_msgs=10)
        assert [m.seq for m in page.messages] == list(range(1, 11))  # read from the file
        recent = await s.changes(tail.last_seq - 1)
        assert [m.seq for m in recent.messages] == [tail.last_seq]
