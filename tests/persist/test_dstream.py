"""DStream over a real nats-server, a real PersistServer and real SQLite files."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import conat
from conat._errors import ClosedError
from persist import (
    Added,
    AStream,
    Deleted,
    DStream,
    Events,
    Older,
    PersistServer,
    Placement,
    Rejected,
    Resync,
    Saved,
    SaveFailed,
    StreamEvent,
    TooSlow,
)

pytestmark = pytest.mark.anyio

WAIT = 0.25  # feed long-poll: short, so that stopping a server never waits long for held reads


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def drain(events: Events[StreamEvent]) -> list[StreamEvent]:
    """The events ``events`` holds now (without waiting for more)."""
    return [await anext(events) for _ in range(events.pending)]


async def all_values(stream: AStream) -> list[tuple[int, object]]:
    return [(m.seq, m.value()) async for batch in stream.get_all() for m in batch]


async def test_publish_is_visible_at_once_and_saved_in_the_background(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    async with await DStream.open(client, scope, "chat", wait=WAIT) as ds:
        events = ds.events()
        entry = ds.publish({"text": "hi"}, headers={"who": "me"})
        assert ds.entries() == [entry] and entry.seq is None and not entry.saved
        assert ds.has_unsaved_changes() and ds.statistics().unsaved == 1
        await ds.save()
        assert not ds.has_unsaved_changes()
        (saved,) = ds.entries()
        assert (saved.seq, saved.value, saved.msg_id, saved.headers) == (
            1,
            {"text": "hi"},
            entry.msg_id,
            {"who": "me"},
        )
        stored = await AStream(client, scope, "chat").get(seq=1)
        assert stored is not None and stored.value() == {"text": "hi"}
        await until(lambda: ds.statistics().cursor >= 1)  # the feed's echo came back ...
        seen = await drain(events)
        assert [type(e) for e in seen] == [Added, Saved]  # ... and added nothing
        assert [e.seq for e in ds.entries()] == [1]


async def test_order_is_publish_order_and_two_dstreams_see_each_other(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    async with (
        await DStream.open(client, scope, "log", wait=WAIT) as a,
        await DStream.open(client, scope, "log", wait=WAIT) as b,
    ):
        for i in range(50):
            a.publish(("a", i))
            if i % 5 == 0:
                b.publish(("b", i))
        assert [v for v in a.values()] == [["a", i] for i in range(50)]  # local order at once
        await asyncio.gather(a.save(), b.save())
        await until(
            lambda: len(a) == len(b) == 60 and not a.has_unsaved_changes() and all(e.saved for e in b)
        )
        for ds in (a, b):
            seqs = [e.seq for e in ds.entries()]
            assert seqs == list(range(1, 61))  # every message once, in seq order
            assert [v[1] for v in ds.values() if v[0] == "a"] == list(range(50))
        assert [e.value for e in a.entries()] == [e.value for e in b.entries()]
        assert [(e.seq, e.value) for e in a.entries()] == await all_values(AStream(client, scope, "log"))


async def test_deletes_and_keyed_replacement_reach_the_view(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    writer = AStream(client, scope, "s")
    for i in range(5):
        await writer.publish(i)
    async with await DStream.open(client, scope, "s", wait=WAIT) as ds:
        events = ds.events()
        await writer.delete(seq=2)
        await until(lambda: ds.get(2) is None)
        ds.publish("v1", key="k")
        ds.publish("v2", key="k")
        await ds.save()
        await until(lambda: [e.value for e in ds.entries()] == [0, 2, 3, 4, "v2"])
        seen = await drain(events)
        gone = [e.entry.value for e in seen if isinstance(e, Deleted)]
        assert gone == [1, "v1"]  # seq 2 (value 1), then "v1" replaced by "v2"


async def test_a_refused_write_leaves_the_view_with_a_reject_event(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    config = {"max_msg_size": 100, "discard": "new"}
    async with await DStream.open(client, scope, "small", config=config, wait=WAIT) as ds:
        events = ds.events()
        ds.publish("ok")
        big = ds.publish("x" * 500)
        ds.publish("also ok")
        assert len(ds) == 3  # shown at once, before the service judged it
        await ds.save()
        assert not ds.has_unsaved_changes()
        assert [e.value for e in ds.entries()] == ["ok", "also ok"]
        seen = await drain(events)
        (reject,) = [e for e in seen if isinstance(e, SaveFailed)]
        assert reject.entry.msg_id == big.msg_id and reject.entry.value == "x" * 500
        assert isinstance(reject.error, Rejected) and reject.error.limit == "max_msg_size"
        assert [v for _, v in await all_values(ds.stream)] == ["ok", "also ok"]


async def test_history_window_and_load_older(server: PersistServer, client: conat.Client, scope: str) -> None:
    writer = AStream(client, scope, "h")
    for i in range(1, 31):
        await writer.publish(i)  # value == seq
    await writer.delete(seqs=[10, 11, 12])
    async with await DStream.open(client, scope, "h", from_seq=20, wait=WAIT) as ds:
        assert [e.seq for e in ds] == list(range(20, 31))
    async with await DStream.open(client, scope, "h", last=5, wait=WAIT) as ds:
        events = ds.events()
        assert ds.values() == [26, 27, 28, 29, 30]
        assert await ds.load_older(10) == 10
        assert ds.values() == list(range(16, 31))
        assert await ds.load_older(10) == 10  # across the deleted 10..12
        assert ds.values() == [3, 4, 5, 6, 7, 8, 9, *range(13, 31)]
        assert await ds.load_older(10) == 2
        assert await ds.load_older(10) == 0
        assert ds.values() == [*range(1, 10), *range(13, 31)]
        seen = await drain(events)
        assert [len(e.entries) for e in seen if isinstance(e, Older)] == [10, 10, 2]
        await writer.publish(31)  # live updates still follow
        await until(lambda: ds.values()[-1] == 31)


async def test_a_restarted_service_loses_and_repeats_nothing(
    client: conat.Client, placement: Placement, scope: str
) -> None:
    writer = AStream(client, scope, "r")
    expected: list[object] = []
    server = await PersistServer(client, placement).start()
    try:
        ds = await DStream.open(client, scope, "r", wait=WAIT)
    except BaseException:
        await server.aclose()
        raise
    try:
        for i in range(10):
            await writer.publish(i)
            expected.append(i)
        await until(lambda: len(ds) == 10)
        await server.aclose()
        local = ds.publish("written while the service is down")
        await asyncio.sleep(0.2)  # the feed and the saver are retrying now
        assert ds.has_unsaved_changes()
        # a second instance on the same files takes writes, and stops again
        async with PersistServer(client, placement):
            for i in range(10, 20):
                await writer.publish(i)
            await ds.save()
        server = await PersistServer(client, placement).start()
        for i in range(20, 30):
            await writer.publish(i)
        await until(lambda: len(ds) == 31 and not ds.has_unsaved_changes() and ds.entries()[-1].value == 29)
        stored = await all_values(writer)
        assert [(e.seq, e.value) for e in ds.entries()] == stored  # no gap, no duplicate, seq order
        assert [v for _, v in stored if v != local.value] == [*range(30)]
        assert ds.statistics().resyncs == 0
    finally:
        await ds.aclose()
        await server.aclose()


async def test_a_recreated_stream_forces_a_resync(
    client: conat.Client, placement: Placement, scope: str
) -> None:
    writer = AStream(client, scope, "re")
    server = await PersistServer(client, placement).start()
    ds: DStream | None = None
    try:
        ds = await DStream.open(client, scope, "re", wait=WAIT)
        events = ds.events()
        for v in "abc":
            await writer.publish(v)
        await until(lambda: ds is not None and ds.values() == ["a", "b", "c"])
        await server.aclose()
        file = placement.path(f"projects/{scope.removeprefix('project-')}/re")
        for suffix in ("", "-wal", "-shm"):
            Path(str(file) + suffix).unlink(missing_ok=True)
        server = await PersistServer(client, placement).start()
        await writer.publish("x")  # seq 1 of a new stream, with a new stream_id
        await until(lambda: ds is not None and ds.values() == ["x"])
        assert ds.statistics().resyncs == 1
        seen = await drain(events)
        assert any(isinstance(e, Resync) for e in seen)
        assert [e.seq for e in ds.entries()] == [1]
    finally:
        if ds is not None:
            await ds.aclose()
        await server.aclose()


async def test_an_unread_event_iterator_is_cut_off_and_the_cache_stays_right(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    async with await DStream.open(client, scope, "slow", wait=WAIT) as ds:
        slow = ds.events(max_events=3)
        fast = ds.events()
        for i in range(5):
            ds.publish(i)
        with pytest.raises(TooSlow) as too_slow:
            await anext(slow)
        assert too_slow.value.code == "too-slow" and too_slow.value.limit == 3
        assert ds.statistics().listeners == 1  # the cut-off iterator is gone
        assert [type(await anext(fast)) for _ in range(5)] == [Added] * 5
        await ds.save()
        assert ds.values() == [0, 1, 2, 3, 4]
        again = ds.events(max_events=3)
        ds.publish(5)
        event = await anext(again)
        assert isinstance(event, Added) and event.entry.value == 5


async def test_close_saves_what_is_unsaved_then_refuses_writes(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    ds = await DStream.open(client, scope, "close", wait=WAIT)
    events = ds.events()
    for i in range(20):
        ds.publish(i)
    await ds.aclose()
    assert [v for _, v in await all_values(ds.stream)] == list(range(20))
    with pytest.raises(ClosedError):
        ds.publish("late")
    assert sum(isinstance(e, Saved) for e in [e async for e in events]) == 20  # then it ends
    assert ds.statistics().listeners == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("DStream(")]  # no task left
