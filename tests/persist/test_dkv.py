"""DKV over a real nats-server, a real PersistServer and real SQLite files, with two connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import conat
from conat._server import NatsServer
from persist import (
    AKV,
    DKV,
    MISSING,
    AStream,
    Events,
    KeyChanged,
    KeyDeleted,
    KeySaveFailed,
    KVEvent,
    PersistServer,
    Rejected,
)
from persist._dkv import TOMBSTONE_HEADER

pytestmark = pytest.mark.anyio

WAIT = 0.25  # feed long-poll: short, so that stopping the server never waits long for held reads


@pytest.fixture
async def client2(nats_server: NatsServer) -> AsyncIterator[conat.Client]:
    async with await conat.connect(nats_server.url) as c:
        yield c


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def drain(events: Events[KVEvent]) -> list[KVEvent]:
    return [await anext(events) for _ in range(events.pending)]


def union(key: str, local: Any, remote: Any, prev: Any) -> Any:
    """A three-way merge of tag lists: keep every tag either side added (edits beat deletes)."""
    if local is MISSING or remote is MISSING:
        return remote if local is MISSING else local
    return sorted(set(local) | set(remote))


async def test_get_set_delete_keys_items_across_two_clients(
    server: PersistServer, client: conat.Client, client2: conat.Client, scope: str
) -> None:
    async with (
        await DKV.open(client, scope, "kv", wait=WAIT) as one,
        await DKV.open(client2, scope, "kv", wait=WAIT) as two,
    ):
        events = two.events()
        one.set("a", 1)
        one.set("b", (1, 2))
        assert one.get("b") == [1, 2] and one.has_unsaved_changes()  # local at once, as stored
        assert one.keys() == ["a", "b"] and "a" in one and len(one) == 2
        await one.save()
        assert not one.has_unsaved_changes()
        await until(lambda: two.items() == {"a": 1, "b": [1, 2]})
        assert two.delete("a") and not two.delete("missing")
        assert two.get("a") is None and two.get("a", "gone") == "gone" and two.keys() == ["b"]
        await two.save()
        await until(lambda: one.keys() == ["b"])
        assert one.get("a") is None and "a" not in one and one.items() == {"b": [1, 2]}
        raw = await AStream(client, scope, "kv").get(key="a")
        assert raw is not None and TOMBSTONE_HEADER in raw.headers
        assert await AKV(client, scope, "kv").items() == {"a": None, "b": [1, 2]}  # a direct reader
        seen = await drain(events)
        assert [(e.key, e.value, e.local) for e in seen if isinstance(e, KeyChanged)] == [
            ("a", 1, False),
            ("b", [1, 2], False),
        ]
        assert [(e.key, e.local) for e in seen if isinstance(e, KeyDeleted)] == [("a", True)]


async def test_a_merge_conflict_between_two_clients_keeps_both_edits(
    server: PersistServer, client: conat.Client, client2: conat.Client, scope: str
) -> None:
    calls: list[tuple[str, Any, Any, Any]] = []

    def merge(key: str, local: Any, remote: Any, prev: Any) -> Any:
        calls.append((key, local, remote, prev))
        return union(key, local, remote, prev)

    async with (
        await DKV.open(client, scope, "tags", merge=merge, wait=WAIT) as one,
        await DKV.open(client2, scope, "tags", merge=merge, wait=WAIT) as two,
    ):
        one.set("t", ["a"])
        await one.save()
        await until(lambda: two.get("t") == ["a"])
        one.set("t", ["a", "b"])  # both edit the same base, before either is saved
        two.set("t", ["a", "c"])
        await asyncio.gather(one.save(), two.save())
        await until(lambda: one.get("t") == two.get("t") == ["a", "b", "c"])
        assert (await AKV(client, scope, "tags").get("t")) == ["a", "b", "c"]
        assert one.statistics().conflicts + two.statistics().conflicts == 1  # one compare-and-set lost
        (call,) = calls
        assert call in (("t", ["a", "b"], ["a", "c"], ["a"]), ("t", ["a", "c"], ["a", "b"], ["a"]))


async def test_without_a_merge_the_last_writer_wins(
    server: PersistServer, client: conat.Client, client2: conat.Client, scope: str
) -> None:
    async with (
        await DKV.open(client, scope, "lww", wait=WAIT) as one,
        await DKV.open(client2, scope, "lww", wait=WAIT) as two,
    ):
        one.set("t", ["a"])
        await one.save()
        await until(lambda: two.get("t") == ["a"])
        one.set("t", ["a", "b"])
        two.set("t", ["a", "c"])
        await asyncio.gather(one.save(), two.save())
        stored = await AStream(client, scope, "lww").get(key="t")
        assert stored is not None and stored.value() in (["a", "b"], ["a", "c"])
        await until(lambda: one.get("t") == two.get("t") == stored.value())  # both converge on it
        assert one.statistics().conflicts == two.statistics().conflicts == 0


async def test_an_edit_and_a_delete_conflict_through_compare_and_set(
    server: PersistServer, client: conat.Client, client2: conat.Client, scope: str
) -> None:
    calls: list[tuple[Any, Any, Any]] = []

    def merge(key: str, local: Any, remote: Any, prev: Any) -> Any:
        calls.append((local, remote, prev))
        return union(key, local, remote, prev)

    async with (
        await DKV.open(client, scope, "cas", merge=merge, wait=WAIT) as one,
        await DKV.open(client2, scope, "cas", merge=merge, wait=WAIT) as two,
    ):
        one.set("k", ["x"])
        await one.save()
        await until(lambda: "k" in two)
        one.delete("k")  # a delete and an edit of the same base
        two.set("k", ["x", "y"])
        await asyncio.gather(one.save(), two.save())
        await until(lambda: one.get("k") == two.get("k") == ["x", "y"])  # the edit beat the delete
        (call,) = calls
        assert call in ((MISSING, ["x", "y"], ["x"]), (["x", "y"], MISSING, ["x"]))
        # a key created on both sides at once: the compare-and-set expects "absent" (seq 0)
        one.set("new", ["p"])
        two.set("new", ["q"])
        await asyncio.gather(one.save(), two.save())
        await until(lambda: one.get("new") == two.get("new") == ["p", "q"])
        assert calls[-1][2] is MISSING


async def test_a_failing_merge_refuses_the_losing_write(
    server: PersistServer, client: conat.Client, client2: conat.Client, scope: str
) -> None:
    def refuse(key: str, local: Any, remote: Any, prev: Any) -> Any:
        raise ValueError("cannot merge")

    async with (
        await DKV.open(client, scope, "fail", merge=refuse, wait=WAIT) as one,
        await DKV.open(client2, scope, "fail", merge=refuse, wait=WAIT) as two,
    ):
        events = [one.events(), two.events()]
        one.set("k", 1)
        two.set("k", 2)
        await asyncio.gather(one.save(), two.save())
        winner = await AKV(client, scope, "fail").get("k")
        await until(lambda: one.get("k") == two.get("k") == winner)
        rejects = [e for ev in events for e in await drain(ev) if isinstance(e, KeySaveFailed)]
        assert len(rejects) == 1 and isinstance(rejects[0].error, ValueError)
        assert rejects[0].value == 3 - winner  # the loser's value


async def test_a_tombstone_hides_the_key_elsewhere_then_expires(
    server: PersistServer, client: conat.Client, client2: conat.Client, scope: str
) -> None:
    async with (
        await DKV.open(client, scope, "ttl", tombstone_ttl=0.5, wait=WAIT) as one,
        await DKV.open(client2, scope, "ttl", wait=WAIT) as two,
    ):
        one.set("k", "v")
        await one.save()
        await until(lambda: two.get("k") == "v")
        one.delete("k")
        await one.save()
        raw = AStream(client, scope, "ttl")
        tombstone = await raw.get(key="k")
        assert tombstone is not None and tombstone.headers.get(TOMBSTONE_HEADER) and tombstone.ttl == 0.5
        await until(lambda: "k" not in two)
        assert two.keys() == [] and two.statistics().tombstones == 1
        await until(lambda: two.statistics().tombstones == 0 == one.statistics().tombstones)  # swept
        assert await raw.get(key="k") is None


async def test_a_store_without_ttls_keeps_tombstones(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    stream = AStream(client, scope, "nottl", config={"allow_msg_ttl": False})
    await stream.publish(1, key="k")
    async with await DKV.from_stream(stream, wait=WAIT) as kv:
        assert kv.get("k") == 1
        kv.delete("k")
        await kv.save()
        tombstone = await stream.get(key="k")
        assert tombstone is not None and tombstone.headers.get(TOMBSTONE_HEADER) and tombstone.ttl is None
        assert "k" not in kv


async def test_a_refused_write_reverts_to_the_saved_value(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    async with await DKV.open(client, scope, "limited", config={"max_msg_size": 100}, wait=WAIT) as kv:
        events = kv.events()
        kv.set("k", "small")
        await kv.save()
        kv.set("k", "x" * 500)
        assert kv.get("k") == "x" * 500
        await kv.save()
        assert kv.get("k") == "small" and not kv.has_unsaved_changes()
        (reject,) = [e for e in await drain(events) if isinstance(e, KeySaveFailed)]
        assert (
            reject.key == "k" and isinstance(reject.error, Rejected) and reject.error.limit == "max_msg_size"
        )
