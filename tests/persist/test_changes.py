"""StreamFile.changes on real SQLite files: the changefeed page contract, restarts, resync, change hook.

A consumer keeps a local copy of a stream by pulling :class:`ChangePage` s from its cursor
(``after_seq``, ``after_delete``, ``stream_id``): it adds the page's messages (a keyed one replaces the
cached message of its key), then drops every cached seq inside a delete range; on ``resync`` it
reloads everything from ``get_all``. Once it has pulled to the end, its copy must equal ``get_all()``,
and no message may have reached it twice (except through a reload) or out of seq order.

The "regressions" section pins engine bugs found while writing these tests (each test says which).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import persist._sql
from conat._errors import ClosedError
from conat.testing import FakeClock
from persist import BadRequest, Rejected, StreamConfig, WrongLastSequence
from persist._engine import ChangePage, StoredMessage, StreamFile, Write

pytestmark = pytest.mark.anyio

T = TypeVar("T")

# ---- the consumer -------------------------------------------------------------------------------------


async def read_all(s: StreamFile) -> list[StoredMessage]:
    return [m async for batch in s.get_all(batch=500) for m in batch]


class Consumer:
    """A changefeed consumer: a local copy of the stream, kept in step by pulling pages from its cursor.

    Checks the page contract on every page it applies (bounds, seq order, no message twice).
    """

    def __init__(self) -> None:
        self.cache: dict[int, StoredMessage] = {}
        self.after_seq = 0
        self.after_delete: int | None = None
        self.stream_id: str | None = None
        self.delivered: set[int] = set()  # seqs received since the last reload
        self.resyncs = 0

    async def pull(self, s: StreamFile, *, max_msgs: int = 1000, max_deletes: int = 1000) -> ChangePage:
        """Pull one page and apply it (or reload, on ``resync``)."""
        page = await s.changes(
            self.after_seq,
            after_delete=self.after_delete,
            stream_id=self.stream_id,
            max_msgs=max_msgs,
            max_deletes=max_deletes,
        )
        assert len(page.messages) <= max_msgs
        assert len(page.deletes) <= max_deletes
        seqs = [m.seq for m in page.messages]
        assert seqs == sorted(set(seqs)), "messages out of seq order"
        assert all(q <= page.last_seq for q in seqs)
        if page.resync:
            assert page.deletes == []
            await self.reload(s, page)
            return page
        assert page.stream_id == self.stream_id or self.stream_id is None
        assert all(q > self.after_seq for q in seqs), "a message at or below the cursor"
        if self.after_delete is not None:
            assert page.delete_cursor >= self.after_delete, "the delete cursor went back"
        for m in page.messages:
            assert m.seq not in self.delivered, f"seq {m.seq} delivered twice"
            self.delivered.add(m.seq)
            if m.key is not None:
                for old in [q for q, c in self.cache.items() if c.key == m.key]:
                    del self.cache[old]
            self.cache[m.seq] = m
        for low, high in page.deletes:
            assert 0 <= low <= high
            if high - low < len(self.cache):
                for q in range(low, high + 1):
                    self.cache.pop(q, None)
            else:
                for q in [q for q in self.cache if low <= q <= high]:
                    del self.cache[q]
        if seqs:
            self.after_seq = seqs[-1]
        self.after_delete = page.delete_cursor
        self.stream_id = page.stream_id
        return page

    async def reload(self, s: StreamFile, page: ChangePage) -> None:
        self.resyncs += 1
        self.cache = {m.seq: m for m in await read_all(s)}
        self.delivered = set(self.cache)
        self.after_seq = max([page.last_seq, *self.cache])
        self.after_delete = page.delete_cursor
        self.stream_id = page.stream_id

    async def catch_up(
        self, s: StreamFile, *, max_msgs: int = 1000, max_deletes: int = 1000
    ) -> list[ChangePage]:
        """Pull pages until one is not full (the end of the feed); return them."""
        pages: list[ChangePage] = []
        for _ in range(10_000):
            page = await self.pull(s, max_msgs=max_msgs, max_deletes=max_deletes)
            pages.append(page)
            if not page.resync and len(page.messages) < max_msgs and len(page.deletes) < max_deletes:
                return pages
        raise AssertionError("the feed never ended")

    async def assert_in_step(self, s: StreamFile) -> None:
        expected = await read_all(s)
        assert sorted(self.cache.values(), key=lambda m: m.seq) == expected


# ---- fixtures -----------------------------------------------------------------------------------------


def remove_db(file: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        file.with_name(file.name + suffix).unlink(missing_ok=True)


# ---- the page contract, by example --------------------------------------------------------------------


@pytest.mark.parametrize("ephemeral", [False, True], ids=["file", "ephemeral"])
async def test_pages_carry_messages_then_deletes(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, ephemeral: bool
) -> None:
    config = StreamConfig(ephemeral=ephemeral)
    async with await StreamFile.open(tmp_path / "p.db", executor=executor, config=config) as s:
        first = await s.changes()
        assert (first.messages, first.deletes, first.last_seq, first.resync) == ([], [], 0, False)
        assert first.stream_id == s.stream_id
        await s.set_many([Write(payload=b"%d" % i) for i in range(7)])
        await s.set(b"k1", key="k")
        c = Consumer()
        pages = await c.catch_up(s, max_msgs=3, max_deletes=2)
        assert [[m.seq for m in p.messages] for p in pages] == [[1, 2, 3], [4, 5, 6], [7, 8]]
        assert all(p.last_seq == 8 for p in pages)
        await c.assert_in_step(s)

        await s.delete(seqs=[1, 3, 5])  # three ranges
        await s.delete(key="k")
        await s.delete(up_to=2)
        await s.set(b"k2", key="k")
        pages = await c.catch_up(s, max_msgs=3, max_deletes=2)
        assert len(pages) == 3  # 5 delete ranges at 2 a page
        assert [m.seq for p in pages for m in p.messages] == [9]
        await c.assert_in_step(s)
        assert sorted(c.cache) == [4, 6, 7, 9]

        # At the end of the feed, a page is empty and the cursors stay put.
        again = await s.changes(c.after_seq, after_delete=c.after_delete, stream_id=c.stream_id)
        assert (again.messages, again.deletes, again.delete_cursor) == ([], [], c.after_delete)


async def test_first_page_without_after_delete_has_no_deletes(stream: StreamFile) -> None:
    await stream.set_many([Write(payload=b"x") for _ in range(4)])
    await stream.delete(seq=2)
    page = await stream.changes()
    assert [m.seq for m in page.messages] == [1, 3, 4]
    assert page.deletes == []
    # The cursor it returns is past the delete already reflected in the messages.
    later = await stream.changes(4, after_delete=page.delete_cursor)
    assert later.deletes == []


async def test_expiry_sweep_and_trim_reach_the_consumer(stream: StreamFile, clock: FakeClock) -> None:
    await stream.set_config({"allow_msg_ttl": True})
    await stream.set(b"short", ttl=1.0)
    await stream.set(b"long", ttl=10.0)
    await stream.set_many([Write(payload=b"%d" % i) for i in range(4)])
    c = Consumer()
    await c.catch_up(stream)
    await clock.advance(2.0)
    assert await stream.sweep() == 1
    await c.catch_up(stream)
    await c.assert_in_step(stream)
    assert 1 not in c.cache

    await stream.set_config({"max_msgs": 2})  # trims 2, 3, 4
    await c.catch_up(stream, max_deletes=1)
    await c.assert_in_step(stream)
    assert sorted(c.cache) == [5, 6]

    await stream.set_config({"max_age": 1.0})
    await clock.advance(1.5)
    await stream.sweep()
    await c.catch_up(stream)
    assert c.cache == {}
    await c.assert_in_step(stream)


# ---- regressions --------------------------------------------------------------------------------------


async def test_evictions_are_logged(stream: StreamFile) -> None:
    """Evictions are logged (the deletes of a transaction that also assigned a seq were skipped)."""
    await stream.set_config({"max_msgs": 2, "discard": "old"})
    await stream.set(b"1")
    c = Consumer()
    await c.catch_up(stream)
    await stream.set(b"2")
    await stream.set(b"3")  # evicts seq 1
    await c.catch_up(stream)
    await c.assert_in_step(stream)  # the bug: the consumer kept seq 1


async def test_expiry_swept_by_a_set_is_logged(stream: StreamFile, clock: FakeClock) -> None:
    """What a set's own pre-sweep expires is logged (same short-circuit as above)."""
    await stream.set_config({"allow_msg_ttl": True})
    await stream.set(b"short", ttl=1.0)
    c = Consumer()
    await c.catch_up(stream)
    await clock.advance(2.0)
    await stream.set(b"next")  # its transaction sweeps seq 1 first
    await c.catch_up(stream)
    await c.assert_in_step(stream)


async def test_delete_group_committed_with_a_set_is_logged(stream: StreamFile) -> None:
    """A delete sharing its transaction with a set is logged (same short-circuit as above)."""
    await stream.set(b"a")
    c = Consumer()
    await c.catch_up(stream)
    before = stream.statistics().transactions
    await asyncio.gather(stream.delete(seq=1), stream.set(b"b"))
    assert stream.statistics().transactions == before + 1  # one transaction held both
    await c.catch_up(stream)
    await c.assert_in_step(stream)


async def test_replaced_message_goes_when_its_replacement_is_gone_too(stream: StreamFile) -> None:
    """A keyed write logs the message it replaces: its replacement may be gone before it is read."""
    await stream.set(b"v1", key="k")
    c = Consumer()
    await c.catch_up(stream)
    await stream.set(b"v2", key="k")  # replaces seq 1
    await stream.delete(seq=2)
    await c.catch_up(stream)
    await c.assert_in_step(stream)  # the bug: the consumer kept seq 1


async def test_delete_up_to_beyond_last_seq_spares_later_messages(stream: StreamFile) -> None:
    """``delete(up_to=n)`` with ``n > last_seq`` must not log seqs not yet assigned."""
    c = Consumer()
    await c.catch_up(stream)
    await stream.delete(up_to=10)  # nothing to delete yet
    await stream.set(b"a")
    await c.catch_up(stream)
    await c.assert_in_step(stream)  # the bug: (0, 10) was logged, and seq 1 dropped


async def test_delete_removing_nothing_leaves_version(stream: StreamFile) -> None:
    """A delete that removes nothing logs nothing and leaves ``version``."""
    await stream.set(b"a")
    await stream.delete(up_to=1)
    v = stream.version
    await stream.delete(up_to=1)
    assert stream.version == v


# ---- restart and re-creation ---------------------------------------------------------------------------


async def test_cursor_survives_close_and_reopen(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    file = tmp_path / "r.db"
    c = Consumer()
    async with await StreamFile.open(file, executor=executor) as s:
        stream_id = s.stream_id
        await s.set_many([Write(payload=b"%d" % i) for i in range(6)])
        await s.set(b"k1", key="k")
        await c.catch_up(s)
        await s.set(b"unseen")  # seq 8: written before the restart, pulled after it
        await s.delete(seqs=[2, 4])  # logged before the restart, pulled after it
        await c.pull(s, max_msgs=1, max_deletes=1)  # a cursor in the middle of the feed
    assert c.after_seq == 8

    async with await StreamFile.open(file, executor=executor) as s:
        assert s.stream_id == stream_id
        await s.set(b"k2", key="k")
        await s.delete(seq=1)
        pages = await c.catch_up(s, max_msgs=1, max_deletes=1)
        assert not any(p.resync for p in pages)
        assert c.resyncs == 0
        assert [m.seq for p in pages for m in p.messages] == [9]
        await c.assert_in_step(s)
        assert sorted(c.cache) == [3, 5, 6, 8, 9]
        assert sorted(c.delivered) == list(range(1, 10))


async def test_recreated_file_has_a_new_stream_id_and_resyncs(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    file = tmp_path / "r.db"
    c = Consumer()
    async with await StreamFile.open(file, executor=executor) as s:
        old_id = s.stream_id
        await s.set_many([Write(payload=b"old%d" % i) for i in range(5)])
        await s.delete(seq=1)
        await c.catch_up(s)
    assert c.after_delete is not None and c.after_delete > 0
    remove_db(file)

    async with await StreamFile.open(file, executor=executor) as s:
        assert s.stream_id != old_id
        await s.set_many([Write(payload=b"new%d" % i) for i in range(3)])
        await s.delete(seq=3)
        stale = await s.changes(0, after_delete=c.after_delete, stream_id=old_id)
        assert stale.resync
        assert stale.deletes == []
        assert stale.stream_id == s.stream_id
        page = await c.pull(s)
        assert page.resync and c.resyncs == 1
        await c.assert_in_step(s)
        assert [m.payload for m in c.cache.values()] == [b"new0", b"new1"]
        # After the reload the cursor belongs to the new file: no further resync.
        await s.set(b"new3")
        pages = await c.catch_up(s)
        assert not any(p.resync for p in pages)
        await c.assert_in_step(s)


# ---- falling behind the delete log --------------------------------------------------------------------


@pytest.mark.parametrize("keep", [5, pytest.param(None, marks=pytest.mark.slow, id="real-keep")])
async def test_consumer_behind_the_delete_log_resyncs(
    stream: StreamFile, monkeypatch: pytest.MonkeyPatch, keep: int | None
) -> None:
    """One delete of every other seq logs one range per seq: more than twice the log's length."""
    if keep is None:  # the real length (~6 s: 40,000 writes in asyncio debug mode)
        keep = persist._sql.DELETE_LOG_KEEP
    else:
        monkeypatch.setattr(persist._sql, "DELETE_LOG_KEEP", keep)
    n = 2 * keep + 1
    behind, near = Consumer(), Consumer()
    await stream.set_many([Write(payload=b"%d" % i) for i in range(2 * n + 1)])
    await behind.catch_up(stream)
    await stream.delete(seqs=range(1, 2 * n, 2))  # n single-seq ranges, in one transaction
    await near.catch_up(stream)
    await stream.delete(seq=2 * n + 1)
    await near.catch_up(stream)  # its cursor is still in the kept log: no resync
    assert near.resyncs == 0

    page = await stream.changes(
        behind.after_seq, after_delete=behind.after_delete, stream_id=behind.stream_id
    )
    assert page.resync
    assert page.deletes == []
    await behind.catch_up(stream)
    assert behind.resyncs == 1
    await behind.assert_in_step(stream)
    await near.assert_in_step(stream)


async def test_delete_log_boundary(stream: StreamFile, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cursor just inside the kept log reads on; one just outside must resync."""
    monkeypatch.setattr(persist._sql, "DELETE_LOG_KEEP", 5)
    await stream.set_many([Write(payload=b"%d" % i) for i in range(12)])
    consumers: list[Consumer] = []
    for seq in range(1, 12):  # 11 single-seq deletes, one log row each: 11 > 2 * 5, so rows 1-6 go
        c = Consumer()
        await c.catch_up(stream)
        consumers.append(c)  # consumers[i] has read log rows 1..i
        await stream.delete(seq=seq)
    for i, c in enumerate(consumers):
        page = await stream.changes(c.after_seq, after_delete=c.after_delete, stream_id=c.stream_id)
        assert page.resync == (i < 6), i
        assert page.deletes == ([] if i < 6 else [(s, s) for s in range(i + 1, 12)])
        await c.catch_up(stream, max_deletes=2)
        await c.assert_in_step(stream)
        assert sorted(c.cache) == [12]


# ---- version and the change hook ---------------------------------------------------------------------


async def test_on_change_runs_once_per_changing_commit_before_the_ack(stream: StreamFile) -> None:
    calls: list[int] = []
    stream.on_change = lambda: calls.append(stream.version)
    v = stream.version
    await stream.delete(up_to=0)  # a write that changes nothing calls nobody
    assert calls == [] and stream.version == v
    await stream.set(b"a")
    assert calls == [v + 1]  # already called when the write is acknowledged
    await asyncio.gather(*(stream.set(b"%d" % i) for i in range(20)))
    transactions = stream.statistics().transactions
    assert transactions < 1 + 1 + 20  # the 20 sets shared transactions (group commit)
    assert len(calls) == transactions - 1  # once per transaction that changed messages (not the delete)
    assert calls == sorted(calls)


async def test_on_change_is_not_called_after_close(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    s = await StreamFile.open(tmp_path / "c.db", executor=executor)
    calls: list[int] = []
    s.on_change = lambda: calls.append(1)
    await s.aclose()
    assert calls == []
    with pytest.raises(ClosedError):
        await s.changes()


async def test_version_moves_only_when_messages_change(stream: StreamFile, clock: FakeClock) -> None:
    await stream.set_config({"max_msgs": 1, "discard": "new"})
    await stream.set(b"a", msg_id="m")
    v = stream.version

    async def unchanged(coro: Coroutine[Any, Any, object]) -> None:
        await coro
        assert stream.version == v

    with pytest.raises(Rejected):
        await unchanged(stream.set(b"b"))  # full
    assert stream.version == v
    with pytest.raises(Rejected):
        await unchanged(stream.set(b"b", ttl=1.0))  # no per-message ttl here
    assert stream.version == v
    with pytest.raises(WrongLastSequence):
        await unchanged(stream.set(b"b", previous_seq=0))
    assert stream.version == v
    assert (await stream.set(b"again", msg_id="m")).duplicate
    assert stream.version == v
    await unchanged(stream.delete(seq=99))
    await unchanged(stream.delete(key="nobody"))
    await unchanged(stream.sweep())
    await unchanged(stream.set_config({"max_bytes": 1000}))
    await clock.advance(1.0)
    await unchanged(stream.sweep())

    await stream.delete(seq=1)
    assert stream.version != v
    v = stream.version
    await stream.set_config({"discard": "old"})
    assert stream.version == v
    await stream.set(b"c")
    assert stream.version != v


# ---- bad arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"after_seq": -1},
        {"after_seq": "1"},
        {"after_seq": 1.0},
        {"after_seq": True},
        {"after_seq": None},
        {"after_delete": -1},
        {"after_delete": "0"},
        {"after_delete": False},
        {"max_msgs": 0},
        {"max_msgs": -5},
        {"max_msgs": 2.5},
        {"max_msgs": True},
        {"max_msgs": None},
        {"max_deletes": 0},
        {"max_deletes": "10"},
        {"max_deletes": True},
        {"stream_id": 123},
    ],
    ids=repr,
)
async def test_bad_arguments_are_bad_requests(stream: StreamFile, kwargs: dict[str, Any]) -> None:
    await stream.set(b"a")
    with pytest.raises(BadRequest) as e:
        await stream.changes(**kwargs)
    assert e.value.code == "bad-request"
    assert e.value.op == "changes"


# ---- the contract, under random operations ------------------------------------------------------------

KEYS = st.none() | st.sampled_from(["a", "b", "c"])
PAYLOADS = st.sampled_from([b"", b"x", b"hello", b"z" * 60])
TTLS = st.none() | st.sampled_from([0.5, 2.0])
CONFIGS = st.sampled_from(
    [
        StreamConfig(),
        StreamConfig(allow_msg_ttl=True),
        StreamConfig(max_msgs=3, discard="old"),
        StreamConfig(allow_msg_ttl=True, max_age=3.0, max_bytes=150),
        StreamConfig(max_msgs=4, discard="new", allow_msg_ttl=True),
    ]
)
CONFIG_CHANGES = st.sampled_from(
    [
        {"max_msgs": 2},
        {"max_msgs": 5},
        {"max_msgs": -1},
        {"max_bytes": 100},
        {"max_bytes": -1},
        {"max_age": 1.0},
        {"max_age": -1},
        {"discard": "old"},
        {"discard": "new"},
        {"allow_msg_ttl": True},
    ]
)
PAGE = st.integers(1, 4)


class Changefeed(RuleBasedStateMachine):
    """Random writes, deletes, trims, expiry and restarts, read by an eager and a lazy consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        self.dir = Path(tempfile.mkdtemp(prefix="persist-changes-"))
        self.file = self.dir / "s.db"
        self.clock = FakeClock()
        self.eager = Consumer()
        self.lazy = Consumer()
        self.steps = 0
        self.engine: StreamFile | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def s(self) -> StreamFile:
        assert self.engine is not None
        return self.engine

    def open(self, config: StreamConfig | None) -> None:
        self.engine = self.run(
            StreamFile.open(self.file, executor=self.executor, clock=self.clock, config=config)
        )

    def last_seq(self) -> int:
        return self.run(self.s.inventory()).last_seq

    def write(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run a write; a refused one must leave ``version`` alone."""
        v = self.s.version
        try:
            self.run(coro)
        except (Rejected, WrongLastSequence):
            assert self.s.version == v

    @initialize(config=CONFIGS)
    def start(self, config: StreamConfig) -> None:
        self.open(config)

    # ---- writes ----

    @rule(payload=PAYLOADS, key=KEYS, ttl=TTLS)
    def set(self, payload: bytes, key: str | None, ttl: float | None) -> None:
        if not self.s.config().allow_msg_ttl:
            ttl = None
        self.write(self.s.set(payload, key=key, ttl=ttl))

    @rule(writes=st.lists(st.tuples(PAYLOADS, KEYS), min_size=1, max_size=4))
    def set_many(self, writes: list[tuple[bytes, str | None]]) -> None:
        self.run(self.s.set_many([Write(payload=p, key=k) for p, k in writes]))

    @rule(back=st.integers(0, 6))
    def delete_seq(self, back: int) -> None:
        self.write(self.s.delete(seq=max(0, self.last_seq() - back)))

    @rule(backs=st.lists(st.integers(0, 8), max_size=4))
    def delete_seqs(self, backs: list[int]) -> None:
        last = self.last_seq()
        self.write(self.s.delete(seqs=[max(0, last - b) for b in backs]))

    @rule(back=st.integers(0, 6))
    def delete_up_to(self, back: int) -> None:
        self.write(self.s.delete(up_to=max(0, self.last_seq() - back)))

    @rule(ahead=st.integers(1, 3))
    def delete_up_to_ahead(self, ahead: int) -> None:
        self.write(self.s.delete(up_to=self.last_seq() + ahead))

    @rule(key=st.sampled_from(["a", "b", "c"]))
    def delete_key(self, key: str) -> None:
        self.write(self.s.delete(key=key))

    @rule(changes=CONFIG_CHANGES)
    def set_config(self, changes: dict[str, object]) -> None:
        self.write(self.s.set_config(changes))

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.5]))
    def advance_and_sweep(self, dt: float) -> None:
        self.run(self.clock.advance(dt))
        self.write(self.s.sweep())

    @rule(recreate=st.sampled_from([False, False, True]), config=CONFIGS)
    def restart(self, recreate: bool, config: StreamConfig) -> None:
        """Close and reopen the file (a service restart): the cursors taken before must keep working.

        With ``recreate``, the file is deleted and made again: every cursor must resync.
        """
        stream_id = self.s.stream_id
        self.run(self.s.aclose())
        if recreate:
            remove_db(self.file)
        self.open(config if recreate else None)
        assert (self.s.stream_id != stream_id) == recreate

    # ---- consumers ----

    @invariant()
    def eager_consumer_in_step(self) -> None:
        """A live subscriber: pulls to the end after every step, in pages of 1 to 3."""
        if self.engine is None:
            return
        self.steps += 1
        size = 1 + self.steps % 3
        self.run(self.eager.catch_up(self.s, max_msgs=size, max_deletes=4 - size))
        self.run(self.eager.assert_in_step(self.s))

    @rule(max_msgs=PAGE, max_deletes=PAGE)
    def pull_one_page(self, max_msgs: int, max_deletes: int) -> None:
        """The lazy consumer reads one page and stops, its cursor left in the middle of the feed."""
        self.run(self.lazy.pull(self.s, max_msgs=max_msgs, max_deletes=max_deletes))

    @rule(max_msgs=PAGE, max_deletes=PAGE)
    def consume(self, max_msgs: int, max_deletes: int) -> None:
        """The lazy consumer (a client back from a disconnect) pulls to the end."""
        self.run(self.lazy.catch_up(self.s, max_msgs=max_msgs, max_deletes=max_deletes))
        self.run(self.lazy.assert_in_step(self.s))

    def teardown(self) -> None:
        if self.engine is not None:
            self.run(self.engine.aclose())
        self.executor.shutdown(wait=True)
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_changefeed_keeps_consumers_in_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # A short delete log, so the lazy consumer falls behind it and must resync now and then.
    monkeypatch.setattr(persist._sql, "DELETE_LOG_KEEP", 2)
    run_state_machine_as_test(
        Changefeed,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
