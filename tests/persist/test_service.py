"""The persist service over a real nats-server and real SQLite files, through AStream/AKV."""

from __future__ import annotations

import asyncio
import os
import uuid

import msgspec
import pytest

import conat
from conat import RemoteError
from persist import (
    AKV,
    AStream,
    BadPath,
    BadRequest,
    Corrupt,
    OutsideScope,
    PersistServer,
    Placement,
    Rejected,
    RootInUse,
    StreamInventory,
    StreamStore,
    TooLarge,
    Write,
    WrongLastSequence,
    api_subject,
    list_streams,
)
from persist._wire import MAX_PAGE_BYTES, MAX_PAGE_MSGS

pytestmark = pytest.mark.anyio


async def test_set_get_delete_keys_config(server: PersistServer, client: conat.Client, scope: str) -> None:
    s = AStream(client, scope, "chat", config={"max_msgs": 100})
    r1 = await s.publish({"text": "hi"})
    r2 = await s.publish("second", key="k")
    assert (r1.seq, r2.seq) == (1, 2)
    got = await s.get(seq=1)
    assert got is not None and got.value() == {"text": "hi"}
    by_key = await s.get(key="k")
    assert by_key is not None and by_key.seq == 2 and by_key.value() == "second"
    assert await s.keys() == ["k"]
    assert (await s.config()).max_msgs == 100
    assert (await s.config({"max_msgs": 1})).max_msgs == 1  # trims at once: only seq 2 is left
    assert await s.get(seq=1) is None
    assert (await s.delete(key="k")).seqs == [2]
    assert await s.keys() == []
    path = server.placement.path(f"projects/{scope.removeprefix('project-')}/chat")
    assert path.is_file()  # the stream lives in the scope's own directory


async def test_writes_of_a_scope_keep_arrival_order_and_share_commits(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    s = AStream(client, scope, "log")
    results = await asyncio.gather(*(s.publish(i) for i in range(500)))
    assert sorted(r.seq for r in results) == list(range(1, 501))
    values = [m.value() for batch in [b async for b in s.get_all()] for m in batch]
    assert len(values) == 500 and set(values) == set(range(500))
    # sequential publishes from one task: seq order is publish order
    seqs = [(await s.publish(("x", i))).seq for i in range(20)]
    assert seqs == sorted(seqs)


async def test_get_all_streams_in_pages(server: PersistServer, client: conat.Client, scope: str) -> None:
    s = AStream(client, scope, "big")
    from persist import Write

    for start in range(0, 2500, 500):
        results = await s.publish_many(
            [Write(payload=msgspec.msgpack.encode(i)) for i in range(start, start + 500)]
        )
        assert all(not isinstance(r, Exception) for r in results)
    batches = [b async for b in s.get_all(max_msgs=1000)]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    assert [m.value() for b in batches for m in b] == list(range(2500))
    tail = [m.seq for b in [b async for b in s.get_all(2400)] for m in b]
    assert tail == list(range(2400, 2501))


async def test_the_service_caps_the_pages_a_client_asks_for(
    client: conat.Client, placement: Placement, scope: str
) -> None:
    """Clients chose page sizes without a server cap (three oversized reads reached ~740 MB): now a
    page holds at most max_page_bytes (and max_page_msgs), whatever the request says."""
    assert (MAX_PAGE_MSGS, MAX_PAGE_BYTES) == (10_000, 8 * 1024 * 1024)  # the defaults
    async with PersistServer(client, placement, max_page_msgs=50, max_page_bytes=64 * 1024):
        s = AStream(client, scope, "large")
        big = os.urandom(10_000)
        await s.publish_many([Write(payload=big)] * 20)
        page = await s.read_page(0, max_msgs=10**9, max_bytes=10**12)
        assert [m.seq for m in page.messages] == list(range(1, 7))  # 6 x 10,000 B <= 64 KiB < 7 x
        small = AStream(client, scope, "many")
        await small.publish_many([Write(payload=b"x")] * 105)
        page = await small.read_page(0, max_msgs=10**9)
        assert len(page.messages) == 50
        with pytest.raises(BadRequest):
            await small.read_page(0, max_bytes=0)
        assert [len(b) async for b in small.get_all()] == [50, 50, 5]  # paging goes on to the end
        assert [len(b) async for b in s.get_all()] == [6, 6, 6, 2]
        kv = AStream(client, scope, "kv")  # keys too: a page of them is bounded by bytes as well
        keys = [f"key-{i:05}-" + "k" * 1000 for i in range(100)]  # 100 KB of keys
        await kv.publish_many([Write(payload=b"v", key=k) for k in keys])
        page = await client.request(api_subject(scope), {"op": "keys", "stream": "kv", "limit": 10**9})
        assert page.decode(list[str]) == keys[:64]  # 64 x 1,011 B <= 64 KiB < 65 x
        assert await kv.keys() == keys


async def test_a_retried_delete_reports_what_the_first_attempt_removed(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    """Deletes are retried like writes, so they carry a msg-id like writes: a retry whose first
    attempt deleted (and whose reply was lost) reports that, and deletes nothing newer."""
    kv = AKV(client, scope, "kv")
    await kv.set("k", 1)
    s = kv.stream
    assert (await s.delete(key="k", msg_id="d")).seqs == [1]
    await kv.set("k", 2)
    assert (await s.delete(key="k", msg_id="d")).seqs == [1]  # the retry: was [2], deleting "k" again
    assert await kv.get("k") == 2
    assert await kv.delete("k") is True and await kv.delete("k") is False  # each call its own msg-id


async def test_refusals_arrive_typed(server: PersistServer, client: conat.Client, scope: str) -> None:
    s = AStream(client, scope, "limited", config={"max_msg_size": 10, "discard": "new", "max_msgs": 2})
    await s.publish(1, key="a")
    with pytest.raises(Rejected) as rejected:
        await s.publish("x" * 100)
    assert rejected.value.code == "reject" and rejected.value.limit == "max_msg_size"
    kv = AKV(client, scope, "limited")
    with pytest.raises(WrongLastSequence) as cas:
        await kv.set("a", 2, previous_seq=99)
    assert cas.value.actual == 1 and cas.value.key == "a"
    assert (await kv.set("a", 2, previous_seq=1)).seq == 2
    with pytest.raises(OutsideScope) as outside:
        await AStream(client, scope, "../../x").publish(1)
    assert outside.value.code == "outside-scope"
    with pytest.raises(BadPath):
        await AStream(client, scope, "a//b").publish(1)
    with pytest.raises(TooLarge):
        await s.publish(1, key="k" * 100_000)
    with pytest.raises(BadRequest):
        await s.delete()
    # garbage and wrong types: a clear code, and the service still answers afterwards
    with pytest.raises(RemoteError) as garbage:
        await client.request(api_subject(scope), b"\xc1\x00", encoding="raw")
    assert garbage.value.code == "bad-request"
    with pytest.raises(RemoteError) as wrong_type:
        await client.request(
            api_subject(scope), {"op": "set", "stream": "x", "payload": "not bytes", "ttl": "1"}
        )
    assert wrong_type.value.code == "bad-request"
    assert (await s.get(key="a")) is not None


async def test_refusals_on_an_open_stream_are_per_write(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    """On a stream already open a request takes the fast path (no turn): a refused write still
    arrives typed, and a batch of one refused write is a list with its refusal, not an error of
    the whole request (which a client would retry as if the transaction had failed)."""
    kv = AKV(client, scope, "cas")
    first = await kv.set("a", 1)
    with pytest.raises(WrongLastSequence):
        await kv.set("a", 2, previous_seq=first.seq + 5)
    s = AStream(client, scope, "cas")
    (only,) = await s.publish_many([Write(payload=b"x", key="a", previous_seq=first.seq + 5)])
    assert isinstance(only, WrongLastSequence) and only.actual == first.seq
    ok, refused = await s.publish_many(
        [Write(payload=b"y", key="b"), Write(payload=b"z", key="a", previous_seq=0)]
    )
    assert not isinstance(ok, Exception) and isinstance(refused, WrongLastSequence)
    assert (await kv.get("a")) == 1


async def test_requests_on_bad_scopes_are_refused_without_crashing(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    """A subject that names no scope is refused with ``bad-path``, however often: it never crashes an
    activation (about ten did in a minute, escalated, and stopped the service for good)."""
    bad = ["persist.not-a-scope.api", "persist.hub-1.api", "bootlog.project.garbage", "bootlog.x.y"]
    for i in range(15):
        for subject in [*bad, f"persist.project-{i}.api"]:
            with pytest.raises(RemoteError) as refused:
                body = {"op": "get", "stream": "bootlog", "seq": 1}
                await client.request(subject, body, timeout=5)
            assert refused.value.code == "bad-path", subject
            assert "scope" in str(refused.value)
    assert server.failure is None
    assert (await AStream(client, scope, "fine").publish(1)).seq == 1


async def test_a_second_service_on_a_root_in_use_refuses_to_start(
    client: conat.Client, placement: Placement, scope: str
) -> None:
    """Two services on one root would both write its files (writes answered ``UNIQUE constraint
    failed`` although stored): the second is refused, naming the root and who holds it."""
    async with PersistServer(client, placement):
        second = PersistServer(client, placement)
        with pytest.raises(RootInUse) as in_use:
            await second.start()
        assert in_use.value.code == "root-in-use" and in_use.value.root == placement.root
        assert f"pid {os.getpid()} " in str(in_use.value)
        assert second.failure is None
        s = AStream(client, scope, "one-writer")
        results = await asyncio.gather(*(s.publish(i) for i in range(100)))
        assert sorted(r.seq for r in results) == list(range(1, 101))  # served once, by the first
    async with PersistServer(client, placement):  # given back at close
        assert (await s.publish(100)).seq == 101


async def test_reads_of_a_missing_stream_create_nothing(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    s = AStream(client, scope, "nothing")
    assert await s.get(seq=1) is None
    assert await s.keys() == []
    assert [b async for b in s.get_all()] == []
    assert await s.inventory() is None
    assert not server.placement.path(f"projects/{scope.removeprefix('project-')}/nothing").exists()


async def test_inventory_lists_the_streams_of_a_scope(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    for name, n in (("a", 3), ("logs/b", 1)):
        s = AStream(client, scope, name, config={"max_msgs": 50})
        for i in range(n):
            await s.publish(i)
    listed = await list_streams(client, scope)
    assert [(e.name, e.inventory.count, e.inventory.last_seq) for e in listed] == [
        ("a", 3, 3),
        ("logs/b", 1, 1),
    ]
    assert listed[0].config["max_msgs"] == 50
    assert [e.name for e in await list_streams(client, scope, prefix="logs/")] == ["logs/b"]
    other = f"project-{uuid.uuid4()}"
    assert await list_streams(client, other) == []
    # a symlink planted in the scope's directory is not followed out of it
    outside = AStream(client, other, "secret")
    await outside.publish("x")
    scope_dir = server.placement.path(f"projects/{scope.removeprefix('project-')}/a").parent
    other_dir = server.placement.path(f"projects/{other.removeprefix('project-')}/secret").parent
    (scope_dir / "link").symlink_to(other_dir)
    (scope_dir / "file.db").symlink_to(other_dir / "secret.db")
    assert [e.name for e in await list_streams(client, scope)] == ["a", "logs/b"]


async def test_a_listing_pages_and_opens_no_stream(
    client: conat.Client, placement: Placement, scope: str
) -> None:
    """``inventory`` opened every stream of the scope as a stream (evicting streams in use from the
    store's LRU, checking whole files) and held every name: now it reads counts without opening,
    in pages of at most MAX_INVENTORY names."""
    async with PersistServer(client, placement) as server:
        names = [f"s{i:02}" for i in range(12)]
        for name in names:
            await AStream(client, scope, name, config={"max_msgs": 5}).publish(name)
    async with PersistServer(client, placement) as server:  # nothing open
        listed = await list_streams(client, scope, limit=5)
        assert [e.name for e in listed] == names[:5]
        listed = await list_streams(client, scope)  # several pages of the service's
        assert [(e.name, e.inventory.count, e.config["max_msgs"]) for e in listed] == [
            (n, 1, 5) for n in names
        ]
        page = await client.request(api_subject(scope), {"op": "inventory", "after": "s09", "limit": 10**9})
        assert [e.name for e in page.decode(list[StreamInventory])] == ["s10", "s11"]
        assert server.store.statistics().opened == 0  # not one stream was opened to list them


async def test_changefeed_joins_history_and_live(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    s = AStream(client, scope, "feed")
    for i in range(5):
        await s.publish(i)
    seen: list[int] = []
    deleted: list[tuple[int, int]] = []

    async def consume() -> None:
        async for change in s.changefeed(2, wait=1.0):
            seen.extend(m.seq for m in change.messages)
            deleted.extend(change.deletes)
            if len(seen) >= 8 and deleted:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    for i in range(5):
        await s.publish(10 + i)
    await s.delete(seq=1)
    await asyncio.wait_for(task, 10)
    assert seen == list(range(3, 11))
    assert (1, 1) in deleted


async def test_expired_messages_are_swept_without_writes(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    s = AStream(client, scope, "ttl", config={"allow_msg_ttl": True})
    await s.publish("short", ttl=0.3)
    await s.publish("long")
    deletes: list[tuple[int, int]] = []

    async def watch() -> None:
        async for change in s.changefeed(2, wait=1.0):
            deletes.extend(change.deletes)
            if deletes:
                return

    await asyncio.wait_for(watch(), 10)  # the service's sweep removed seq 1 and the feed said so
    assert deletes == [(1, 1)]
    assert [m.seq for b in [b async for b in s.get_all()] for m in b] == [2]


async def test_a_stopped_service_answers_what_it_took(
    client: conat.Client, placement: Placement, scope: str
) -> None:
    server = await PersistServer(client, placement).start()
    s = AStream(client, scope, "drain")
    pending = [asyncio.ensure_future(s.publish(i)) for i in range(200)]
    await asyncio.sleep(0)
    await server.aclose()
    restarted = await PersistServer(client, placement).start()
    try:
        results = await asyncio.gather(*pending)  # each answered (before the stop or by the retry)
        assert sorted(r.seq for r in results) == list(range(1, 201))
    finally:
        await restarted.aclose()


async def test_a_corrupt_stream_answers_corrupt_until_an_operator_resets_it(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    """It was reported to one caller, then read as empty, and a write started it again at seq 1."""
    path = server.placement.path(f"projects/{scope.removeprefix('project-')}/broken")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    s = AStream(client, scope, "broken")
    with pytest.raises(Corrupt) as corrupt:
        await s.publish(1)
    assert corrupt.value.code == "corrupt" and "conat stream reset" in str(corrupt.value)
    assert list(path.parent.glob("broken.db.corrupt-*"))  # moved aside, never deleted
    for call in (s.publish(2), s.get(seq=1), s.keys(), s.read_page(0)):
        with pytest.raises(Corrupt, match="found corrupt at"):
            await call  # every caller is told, writers and readers alike: nothing reads as empty
    [entry] = await list_streams(client, scope)
    assert (entry.name, entry.error) == ("broken", "corrupt")  # listed, as corrupt
    assert (await AStream(client, scope, "fine").publish(1)).seq == 1  # the scope's service is alive
    result = await s.reset()
    assert result.restored is False
    assert (await s.publish(3)).seq == 1  # the operator's reset: a fresh stream
    with pytest.raises(BadRequest, match="not quarantined"):
        await s.reset()


async def test_waiting_changefeed_reads_are_bounded(
    client: conat.Client, placement: Placement, scope: str
) -> None:
    async with PersistServer(client, placement, max_waiters=2):
        s = AStream(client, scope, "w")
        await s.publish(0)
        feeds = [s.changefeed(1, wait=5.0) for _ in range(2)]
        waiting = [asyncio.ensure_future(anext(f)) for f in feeds]
        await asyncio.sleep(0.2)
        with pytest.raises(RemoteError) as busy:
            await client.request(
                api_subject(scope),
                {"op": "read", "stream": "w", "after_seq": 1, "wait": 5.0},
                timeout=2,
            )
        assert busy.value.code == 429
        await s.publish(1)
        changes = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert [[m.seq for m in c.messages] for c in changes] == [[2], [2]]
        for f in feeds:
            await f.aclose()


async def test_a_recreated_stream_makes_its_feeds_resync(
    server: PersistServer, client: conat.Client, scope: str
) -> None:
    s = AStream(client, scope, "again")
    await s.publish("old")
    feed = s.changefeed(0, wait=0.5)
    first = await anext(feed)
    assert [m.value() for m in first.messages] == ["old"]
    path = server.placement.path(f"projects/{scope.removeprefix('project-')}/again")
    await server.store.drop(f"projects/{scope.removeprefix('project-')}/again")
    path.unlink()
    await s.publish("new")
    change = await asyncio.wait_for(anext(feed), 5)
    assert change.resync and not change.messages  # the consumer learns its view is stale
    again = await asyncio.wait_for(anext(feed), 5)
    assert [(m.seq, m.value()) for m in again.messages] == [(1, "new")]  # and the feed starts over
    await feed.aclose()


async def test_waiting_feeds_pin_no_files(client: conat.Client, placement: Placement, scope: str) -> None:
    """More feeds wait than files may be open, and writes to other streams still go through."""
    store = StreamStore(placement.path, max_open=2)
    async with PersistServer(client, placement, store=store):
        feeds = [AStream(client, scope, f"f{i}").changefeed(0, wait=30.0) for i in range(4)]
        waiting = [asyncio.ensure_future(anext(f)) for f in feeds]
        async with asyncio.timeout(10):  # each feed's first read opens (creates) its stream once
            while store.statistics().opened < 4:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        opened = store.statistics().opened
        await asyncio.sleep(0.3)
        assert store.statistics().opened == opened == 4  # idle feeds do not churn files open and shut
        result = await asyncio.wait_for(AStream(client, scope, "other").publish("x"), 5)
        assert result.seq == 1
        for i in range(4):
            await AStream(client, scope, f"f{i}").publish(i)
        changes = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert [c.messages[0].value() for c in changes] == [0, 1, 2, 3]
        assert store.statistics().open <= 2
        for f in feeds:
            await f.aclose()
    await store.aclose()
