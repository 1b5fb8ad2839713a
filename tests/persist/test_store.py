"""StreamStore: bounded open files (LRU), idle close on a fake clock, shared threads, clean aclose, backup."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from conat import ClosedError
from conat.testing import FakeClock
from persist import NotFound, Rejected, StreamConfig
from persist._store import StreamStore

from .conftest import assert_backup_holds

pytestmark = pytest.mark.anyio


def resolver(root: Path):  # type: ignore[no-untyped-def]
    return lambda path: root / f"{path}.db"


def persist_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conat-persist")]


def open_db_fds(root: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


async def settle(pred, tries: int = 500) -> None:  # type: ignore[no-untyped-def]
    for _ in range(tries):
        if pred():
            return
        await asyncio.sleep(0.005)
    assert pred()


async def test_lru_cap_with_200_streams(tmp_path: Path) -> None:
    async with StreamStore(resolver(tmp_path), max_open=8, executor_threads=3) as store:
        for i in range(200):
            async with store.stream(f"hub/s{i}") as s:
                await s.set(b"%d" % i, key="k")
            assert store.statistics().open <= 8
        assert store.statistics().opened == 200
        for i in (0, 77, 199):
            async with store.stream(f"hub/s{i}", create=False) as s:
                got = await s.get(key="k")
                assert got is not None and got.payload == b"%d" % i
        assert len(persist_threads()) <= 3
    assert persist_threads() == []
    assert open_db_fds(tmp_path) == []


async def test_leased_streams_are_not_evicted(tmp_path: Path) -> None:
    async with StreamStore(resolver(tmp_path), max_open=2) as store:
        opened = asyncio.Event()

        async def use_c() -> None:
            async with store.stream("hub/c") as c:
                await c.set(b"x")
                opened.set()

        async with store.stream("hub/a") as a, store.stream("hub/b") as b:
            user = asyncio.create_task(use_c())
            await asyncio.sleep(0.05)
            assert not opened.is_set()  # waits: every open stream is leased
            assert not a.closed and not b.closed
        await user
        assert a.closed or b.closed
        assert store.statistics().open == 2
        await store.drop("hub/c")
        assert store.statistics().open == 1
    assert persist_threads() == []


async def test_idle_close_on_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    async with StreamStore(resolver(tmp_path), idle_close=60, clock=clock) as store:
        for i in range(3):
            async with store.stream(f"hub/s{i}") as s:
                await s.set(b"x")
        assert store.statistics().open == 3
        await clock.advance(30)
        assert store.statistics().open == 3
        await clock.advance(60)
        await settle(lambda: store.statistics().open == 0)
        assert store.statistics().closed == 3
        assert open_db_fds(tmp_path) == []
        async with store.stream("hub/s1") as s:  # reopened on demand
            assert (await s.inventory()).count == 1
    assert persist_threads() == []


async def test_the_idle_reaper_never_closes_a_stream_leased_during_its_round(tmp_path: Path) -> None:
    """The reaper closes idle streams one by one, awaiting each; a stream leased meanwhile stays open
    under its lease (the documented rule), however stale it was when the round began."""
    clock = FakeClock()
    async with StreamStore(resolver(tmp_path), idle_close=60, clock=clock) as store:
        for i in range(30):
            async with store.stream(f"hub/s{i}") as s:
                await s.set(b"x")
        reaping = asyncio.create_task(clock.advance(61))  # every stream is stale now
        await settle(lambda: store.statistics().closed >= 1)  # the round is under way
        assert store.statistics().closed < 30
        async with store.stream("hub/s29") as late:  # stale when the round began, leased now
            await reaping
            await settle(lambda: store.statistics().closed >= 29)
            assert not late.closed
            assert (await late.set(b"y")).seq == 2  # was ClosedError: closed under its lease
        assert store.statistics().closed == 29


async def test_not_found_and_closed(tmp_path: Path) -> None:
    store = StreamStore(resolver(tmp_path))
    with pytest.raises(NotFound):
        async with store.stream("hub/missing", create=False):
            pass
    await store.aclose()
    with pytest.raises(ClosedError):
        async with store.stream("hub/x"):
            pass


async def test_ephemeral_streams_stay_in_memory(tmp_path: Path) -> None:
    config = StreamConfig(ephemeral=True)
    async with StreamStore(resolver(tmp_path), max_open=1) as store:
        async with store.stream("hub/mem", config=config) as s:
            await s.set(b"v", key="k")
        for i in range(3):
            async with store.stream(f"hub/f{i}") as f:
                await f.set(b"x")
        async with store.stream("hub/mem") as s:
            assert s.file is None and (await s.get(key="k")) is not None
    assert not any(p.name.startswith("mem") for p in (tmp_path / "hub").iterdir())


async def test_backup_under_concurrent_write_load(tmp_path: Path) -> None:
    store = StreamStore(resolver(tmp_path / "data"), executor_threads=4)
    async with store, store.stream("hub/live") as s:
        acked = [r.seq for r in await asyncio.gather(*(s.set(b"a" * 3000) for i in range(300)))]
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                await asyncio.gather(*(s.set(b"b" * 500) for _ in range(20)))

        task = asyncio.create_task(load())
        await asyncio.sleep(0.02)
        dest = tmp_path / "backup" / "live.db"
        await store.backup("hub/live", dest)
        stop.set()
        await task
    assert_backup_holds(dest, acked)


async def test_change_signals_outlive_the_file(tmp_path: Path) -> None:
    """A reader waits on a path, not a file: a close wakes nobody, the next commit does."""
    async with StreamStore(resolver(tmp_path), max_open=1) as store:
        async with store.stream("hub/a", config=StreamConfig(max_msg_size=10)) as a:
            await a.set(b"1")
        with store.watching("hub/a") as changed:
            async with store.stream("hub/b") as b:  # max_open=1: closes hub/a
                await b.set(b"x")
            await settle(lambda: not store.is_open("hub/a"))
            assert not changed.done()  # neither the close nor another stream's write woke it
            async with store.stream("hub/a") as a:  # opened again
                with pytest.raises(Rejected):
                    await a.set(b"too long for the limit")
                assert not changed.done()  # a refused write changes nothing
                await a.set(b"2")
            await asyncio.wait_for(changed, 1)
        with store.watching("hub/a") as again:
            assert not again.done()  # a fresh signal for the next change
        assert store._signals == {}  # nobody waits: nothing kept
