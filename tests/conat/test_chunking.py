"""Chunked transfers: the pure protocol (hypothesis) and 64 MB round trips on a real server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from typing import Protocol

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conat
from conat import PayloadError, PayloadTooLarge, RemoteError
from conat._chunking import (
    MIN_CHUNK_SIZE,
    ChunkHead,
    ChunkRef,
    OutgoingTransfers,
    PullRequest,
    Reassembly,
    ReassemblyBudget,
    chunk_count,
    reassembly_cost,
)
from conat._headers import CHUNKED_HEADER, SENDER_HEADER, error_headers

MB = 1024 * 1024


@given(st.binary(max_size=12_000), st.integers(MIN_CHUNK_SIZE, 3000), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_chunks_reassemble_in_any_order_with_duplicates(payload: bytes, size: int, rnd) -> None:
    now = 0.0
    out = OutgoingTransfers(max_bytes=20_000, ttl=5)
    head = out.add("t1", payload, size, now=now)
    assert head.count == chunk_count(len(payload), size)
    assert ChunkHead.parse(head.header()) == head
    chunks = out.chunks(PullRequest("t1", 0, head.count), "_INBOX.r.1", now=now)
    assert chunks is not None and len(chunks) == head.count
    order = chunks + rnd.sample(chunks, min(3, len(chunks)))  # duplicates
    rnd.shuffle(order)
    r = Reassembly(head)
    for index, data in order:
        r.add(index, data)
    assert r.complete and r.payload() == payload and r.missing() == []


def test_outgoing_expiry_and_cap() -> None:
    now = 0.0
    out = OutgoingTransfers(max_bytes=100, ttl=5)
    out.add("a", b"x" * 60, 10, now=now)
    with pytest.raises(PayloadTooLarge) as e:
        out.add("b", b"y" * 60, 10, now=now)
    assert e.value.code == 413
    now = 4
    assert out.chunks(PullRequest("a", 0, 1), "r", now=now) is not None  # a pull extends the lifetime
    now = 8
    assert out.chunks(PullRequest("a", 5, 10), "r", now=now) is not None
    now = 14
    assert out.chunks(PullRequest("a", 0, 1), "r", now=now) is None
    assert out.expire(now) == 1 and out.statistics().bytes_held == 0
    out.add("b", b"y" * 60, 10, now=now)


def test_malformed_headers_and_chunks_are_rejected() -> None:
    for bad in ["", "id", "id 10 0 1", "id 10 5 3", "id -1 5 1", "id x 5 1"]:
        with pytest.raises(PayloadError):
            ChunkHead.parse(bad)
    with pytest.raises(PayloadError):
        PullRequest.parse("id 1")
    with pytest.raises(PayloadError):
        ChunkRef.parse("id one")
    r = Reassembly(ChunkHead("t", 10, 4, 3))
    with pytest.raises(PayloadError):
        r.add(3, b"xx")
    with pytest.raises(PayloadError):
        r.add(0, b"toolong")
    with pytest.raises(PayloadError):
        r.payload()
    assert r.missing() == [0, 1, 2]


def test_budget() -> None:
    b = ReassemblyBudget(100)
    b.reserve(60)
    with pytest.raises(PayloadTooLarge):
        b.reserve(41)
    b.release(60)
    b.reserve(100)


@pytest.mark.anyio
async def test_64mb_publish_round_trip(nats_server) -> None:
    payload = os.urandom(64 * MB)
    async with await conat.connect(nats_server.url) as a, await conat.connect(nats_server.url) as b:
        sub = await b.subscribe("big.pub")
        await a.publish("big.pub", payload, encoding="raw")
        await a.publish("big.pub", b"small after", encoding="raw")
        msg = await sub.next(timeout=60)
        assert hashlib.sha256(msg.raw).digest() == hashlib.sha256(payload).digest()
        assert (await sub.next(timeout=10)).raw == b"small after"  # order kept
        assert b.statistics().reassembly_bytes == 0


@pytest.mark.anyio
async def test_64mb_request_and_reply(nats_server) -> None:
    payload = os.urandom(64 * MB)
    digest = hashlib.sha256(payload).hexdigest()
    async with await conat.connect(nats_server.url) as a, await conat.connect(nats_server.url) as b:

        async def handler(msg: conat.Message) -> None:
            assert hashlib.sha256(msg.raw).hexdigest() == digest
            await msg.respond(msg.raw[::-1], encoding="raw")

        await b.subscribe("big.req", callback=handler)
        reply = await a.request("big.req", payload, encoding="raw", timeout=60)
        assert reply.raw == payload[::-1]
        assert a.statistics().outgoing_transfers == 0


@pytest.mark.anyio
async def test_chunked_messages_to_a_queue_group_arrive_whole_once(nats_server) -> None:
    payload = os.urandom(3 * MB)
    async with await conat.connect(nats_server.url) as a, await conat.connect(nats_server.url) as b:
        got: list[bytes] = []

        async def cb(msg: conat.Message) -> None:
            got.append(msg.raw)

        for _ in range(3):
            await b.subscribe("big.queue", queue="q", callback=cb)
        for _ in range(4):
            await a.publish("big.queue", payload, encoding="raw")
        for _ in range(200):
            if len(got) == 4:
                break
            await asyncio.sleep(0.05)
        assert len(got) == 4 and all(g == payload for g in got)


@pytest.mark.anyio
async def test_payload_over_reassembly_cap_is_refused_with_413(nats_server) -> None:
    async with await conat.connect(nats_server.url) as a, await conat.connect(
        nats_server.url, max_reassembly_bytes=2 * MB
    ) as b:

        async def handler(msg: conat.Message) -> None:
            await msg.respond(len(msg.raw))

        await b.subscribe("big.capped", callback=handler)
        with pytest.raises(RemoteError) as e:
            await a.request("big.capped", os.urandom(3 * MB), encoding="raw", timeout=10)
        assert e.value.code == 413 and "reassembly" in str(e.value)
        # under the cap still works
        reply = await a.request("big.capped", os.urandom(MB + 10), encoding="raw", timeout=10)
        assert reply.data == MB + 10


# -- hardening: heads are checked, memory is charged, transfers are freed, nobody waits for others ---


def test_heads_with_tiny_chunks_or_inconsistent_counts_are_refused() -> None:
    with pytest.raises(PayloadError, match="under 1024"):
        ChunkHead.parse(f"t {256 * MB} 1 {256 * MB}")  # 60 bytes asking for 256 Mi chunks
    with pytest.raises(PayloadError, match="inconsistent"):
        ChunkHead.parse(f"t {10 * MB} {MB} 3")
    with pytest.raises(PayloadError):
        ChunkHead.parse("x" * 65 + " 10 1024 1")  # an absurd transfer id
    head = ChunkHead.parse(f"t {10 * MB} {MIN_CHUNK_SIZE} {10 * 1024}")
    # Everything is charged: the payload and the bookkeeping of each of its 10 Ki chunks.
    assert reassembly_cost(head) >= head.total_size + head.count * 64
    budget = ReassemblyBudget(head.total_size)
    with pytest.raises(PayloadTooLarge):
        budget.reserve(reassembly_cost(head))


def test_a_reassembly_allocates_only_what_arrives() -> None:
    head = ChunkHead("t", 100 * MB, MB, 100)
    r = Reassembly(head)
    r.add(3, b"x" * MB)
    assert r.received == 1 and r.missing(limit=3) == [0, 1, 2] and r.has(3)
    # 100 list slots, one chunk: a crafted head alone costs no payload-sized buffer.
    assert sys.getsizeof(r._parts) < 2000


def test_outgoing_transfers_are_freed_when_their_receivers_finish() -> None:
    now = 0.0
    released: list[str] = []
    out = OutgoingTransfers(max_bytes=100, ttl=60, linger=3, on_release=released.append)
    # A reply has one receiver: freed at its finishing pull.
    out.add("reply", b"r" * 40, 10, "one", now=now)
    assert out.chunks(PullRequest("reply", 1, 3), "_INBOX.a.1", now=now) is not None
    assert out.chunks(PullRequest("reply", 4, 0), "_INBOX.a.1", now=now) == []  # "finished"
    assert "reply" not in out and released == ["reply"]
    # A publish may have several: freed once all that pulled finished and the linger is over.
    out.add("pub", b"p" * 40, 10, now=now)
    out.chunks(PullRequest("pub", 1, 3), "_INBOX.a.2", now=now)
    out.chunks(PullRequest("pub", 1, 3), "_INBOX.b.2", now=now)
    out.chunks(PullRequest("pub", 4, 0), "_INBOX.a.2", now=now)
    now = 10
    assert out.expire(now) == 0 and "pub" in out  # b is still pulling
    out.chunks(PullRequest("pub", 4, 0), "_INBOX.b.2", now=now)
    assert out.next_expiry() == 13
    now = 13
    assert out.expire(now) == 1 and "pub" not in out
    # Under memory pressure, finished transfers go first instead of refusing a new one.
    out.add("done", b"d" * 60, 10, now=now)
    out.chunks(PullRequest("done", 6, 0), "_INBOX.a.3", now=now)
    out.add("next", b"n" * 60, 10, now=now)  # would be over 100 bytes with "done" still held
    assert "done" not in out and "next" in out
    with pytest.raises(PayloadTooLarge):
        out.add("over", b"o" * 60, 10, now=now)  # "next" is not finished: refused
    # A head that reached nobody is freed at once; a pull is clipped to MAX_PULL_BYTES.
    out.no_interest("next")
    assert len(out) == 0 and out.statistics().bytes_held == 0
    big = OutgoingTransfers(max_bytes=64 * MB, ttl=60)
    big.add("b", bytes(64 * MB), MB, now=now)
    chunks = big.chunks(PullRequest("b", 0, 64), "_INBOX.c.1", now=now)
    assert chunks is not None and len(chunks) == 16


@pytest.mark.anyio
async def test_delivered_publishes_free_their_memory(nats_server) -> None:
    # Regression: a delivered transfer was held 60 s after its last pull, so with the default cap
    # the 8th 64 MiB publish within a minute failed (here: the 3rd 3 MiB one under a 6 MiB cap).
    payload = os.urandom(3 * MB)
    async with await conat.connect(nats_server.url, max_outgoing_bytes=6 * MB) as a, await conat.connect(
        nats_server.url
    ) as b:
        sub = await b.subscribe("big.freed")
        for i in range(6):
            await a.publish("big.freed", payload, encoding="raw", headers={"I": str(i)})
            msg = await sub.next(timeout=20)
            assert msg.raw == payload and msg.headers == {"I": str(i)}
        for _ in range(100):  # the linger (3 s) is over soon after the last pull
            if a.statistics().outgoing_transfers == 0:
                break
            await asyncio.sleep(0.1)
        assert a.statistics().outgoing_transfers == 0

        # A reply has one receiver: freed as soon as it is pulled.
        async def big_reply(msg: conat.Message) -> None:
            await msg.respond(payload, encoding="raw")

        await b.subscribe("big.reply", callback=big_reply)
        assert (await a.request("big.reply", None, timeout=20)).raw == payload
        for _ in range(20):
            if b.statistics().outgoing_transfers == 0:
                break
            await asyncio.sleep(0.05)
        assert b.statistics().outgoing_transfers == 0
        # A publish nobody receives is freed at once (nats-server answers its source with 503).
        await a.publish("big.nobody", payload, encoding="raw")
        await a.flush()
        for _ in range(20):
            if a.statistics().outgoing_transfers == 0:
                break
            await asyncio.sleep(0.05)
        assert a.statistics().outgoing_transfers == 0


async def _ignore(msg: object) -> None:
    return None


def _head(transfer_id: str, total: int, chunk: int) -> dict[str, str]:
    return {"Conat-Chunked": ChunkHead(transfer_id, total, chunk, chunk_count(total, chunk)).header()}


@pytest.mark.anyio
async def test_a_crafted_head_is_refused_and_holds_nothing(nats_server) -> None:
    # Regression: ~60 bytes announcing 1-byte chunks made the receiver allocate twice its cap
    # (payload and per-chunk bookkeeping) and hold it about 18 s.
    async with await conat.connect(nats_server.url, max_reassembly_bytes=8 * MB) as c:
        sub = await c.subscribe("crafted.head")
        attacker = await nats.connect(nats_server.url)
        try:
            await attacker.subscribe("_INBOX.attacker.*", cb=_ignore)  # never answers
            head = {"Conat-Chunked": f"t1 {8 * MB} 1 {8 * MB}"}
            await attacker.publish("crafted.head", b"x", reply="_INBOX.attacker.1", headers=head)
            await attacker.publish("crafted.head", b"\xa5after")  # msgpack "after", no headers
            await attacker.flush()
            assert (await sub.next(timeout=2)).data == "after"
            assert sub.statistics().failed_transfers == 1
            assert c.statistics().reassembly_bytes == 0
        finally:
            await attacker.close()


@pytest.mark.anyio
async def test_a_chunked_message_whose_sender_died_blocks_nobody(nats_server) -> None:
    # Regression: its pulls went unanswered, so every later message on the subscription, from
    # every client, waited about 18 s. Now the 503 answer to the first pull ends it at once.
    async with await conat.connect(nats_server.url) as c, await conat.connect(nats_server.url) as other:
        sub = await c.subscribe("dead.sender")
        ghost = await nats.connect(nats_server.url)  # sends a head, then is gone
        try:
            head = _head("t2", 3 * MB, MB // 2)
            await ghost.publish("dead.sender", bytes(MB // 2), reply="_INBOX.ghost.1", headers=head)
            await ghost.flush()
        finally:
            await ghost.close()
        await other.publish("dead.sender", "next")
        assert (await sub.next(timeout=2)).data == "next"
        for _ in range(40):
            if sub.statistics().failed_transfers == 1:
                break
            await asyncio.sleep(0.05)
        assert sub.statistics().failed_transfers == 1 and c.statistics().reassembly_bytes == 0


@pytest.mark.anyio
async def test_a_stalled_chunked_message_holds_back_only_its_own_senders(nats_server) -> None:
    # No head-of-line blocking of unrelated senders: on a plain subscription, on client.serve, and
    # in a request_many stream; the stalled sender's own later messages stay behind it.
    async with await conat.connect(nats_server.url) as c, await conat.connect(nats_server.url) as other:
        sub = await c.subscribe("stall.sub")
        await c.serve("stall.svc", _Echo())
        staller = await nats.connect(nats_server.url)
        try:
            await staller.subscribe("_INBOX.staller.*", cb=_ignore)  # never answers
            head = {**_head("t3", 3 * MB, MB // 2), "Conat-Sender": "staller"}
            await staller.publish("stall.sub", bytes(MB // 2), reply="_INBOX.staller.1", headers=head)
            tagged = {"Conat-Sender": "staller"}
            await staller.publish("stall.sub", b"\xa5later", headers=tagged)  # its own: waits behind
            rpc_head = {**_head("t4", 3 * MB, MB // 2), "Conat-Sender": "staller", "Conat-Reply": "_INBOX.staller.r"}
            await staller.publish("stall.svc", bytes(MB // 2), reply="_INBOX.staller.2", headers=rpc_head)
            await staller.flush()
            await other.publish("stall.sub", "unrelated")
            assert (await sub.next(timeout=2)).data == "unrelated"
            echo = c.service(_EchoApi, "stall.svc")
            assert await echo.echo("unrelated", timeout=2) == "unrelated"
            assert sub.statistics().buffered == 2  # the stalled head and its sender's later message
        finally:
            await staller.close()  # now its transfers fail (503), and what waited behind is delivered
        assert (await sub.next(timeout=5)).data == "later"
        assert sub.statistics().failed_transfers == 1


class _EchoApi(Protocol):
    async def echo(self, value: str) -> str: ...


class _Echo:
    async def echo(self, value: str) -> str:
        return value


@pytest.mark.anyio
async def test_one_senders_order_is_kept_across_chunked_messages(nats_server) -> None:
    payload = os.urandom(2 * MB)
    async with await conat.connect(nats_server.url) as a, await conat.connect(nats_server.url) as b:
        sub = await b.subscribe("order.mixed.>")
        for i in range(6):  # big and small, on two subjects of one wildcard subscription
            subject = f"order.mixed.{i % 2}"
            await a.publish(subject, payload if i % 3 == 0 else i, encoding="raw" if i % 3 == 0 else None)
        got = [await sub.next(timeout=20) for _ in range(6)]
        assert [m.raw == payload if i % 3 == 0 else m.data == i for i, m in enumerate(got)] == [True] * 6
        assert "Conat-Sender" not in got[-1].headers  # protocol headers stay hidden


@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "pull", "finish", "tick", "gone"]), st.integers(0, 5), st.integers(0, 3)),
        max_size=60,
    )
)
@settings(max_examples=300, deadline=None)
def test_outgoing_transfers_stay_within_their_cap_and_release_each_once(ops) -> None:
    now = 0.0
    released: list[str] = []
    out = OutgoingTransfers(max_bytes=10_000, ttl=60, linger=3, on_release=released.append)
    added: list[str] = []
    for op, n, who in ops:
        tid = f"t{n}"
        if op == "add":
            if tid not in out:
                try:
                    out.add(tid, bytes(1000 * (n + 1)), MIN_CHUNK_SIZE, "one" if n % 2 else "many", now=now)
                    added.append(tid)
                except PayloadTooLarge:
                    pass
        elif op == "pull":
            out.chunks(PullRequest(tid, 0, 2), f"r{who}", now=now)
        elif op == "finish":
            out.chunks(PullRequest(tid, 9, 0), f"r{who}", now=now)
        elif op == "tick":
            now += n
            out.expire(now)
        else:
            out.no_interest(tid)
        held = out.statistics().bytes_held
        assert 0 <= held <= 10_000
        assert held == sum(1000 * (int(t[1:]) + 1) for t in set(added) if t in out)
    now += 61
    out.expire(now)
    assert len(out) == 0 and out.statistics().bytes_held == 0
    assert sorted(released) == sorted(added)  # each transfer released exactly once


@pytest.mark.anyio
async def test_a_head_without_a_pull_source_is_refused(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        sub = await c.subscribe("head.nosource")
        foreign = await nats.connect(nats_server.url)
        try:
            await foreign.publish("head.nosource", bytes(MB // 2), headers=_head("t5", MB, MB // 2))
            await foreign.publish("head.nosource", b"\xa2ok")
            await foreign.flush()
            assert (await sub.next(timeout=2)).data == "ok"
            assert sub.statistics().failed_transfers == 1 and c.state is conat.ClientState.CONNECTED
        finally:
            await foreign.close()


@pytest.mark.anyio
async def test_a_closed_subscriptions_reader_ends_when_its_last_chunked_message_fails(nats_server) -> None:
    """Unsubscribed while a chunked message is still arriving, the reader waits for it; when it
    then fails (the sender says the transfer is gone), the reader ends instead of waiting forever."""
    raw = await nats.connect(nats_server.url)
    try:
        pulls = await raw.subscribe("fake.sender.source")  # the sender's pull source: alive, slow
        async with await conat.connect(nats_server.url) as c:
            sub = await c.subscribe("chunked.fails")
            head = ChunkHead("t1", 2 * MIN_CHUNK_SIZE, MIN_CHUNK_SIZE, 2)
            await raw.publish(
                "chunked.fails",
                b"x" * MIN_CHUNK_SIZE,
                reply="fake.sender.source",
                headers={CHUNKED_HEADER: head.header(), SENDER_HEADER: "sender-1"},
            )
            pull = await pulls.next_msg(timeout=5)  # the receiver pulls: the message is arriving
            reader = asyncio.ensure_future(sub.__anext__())
            await asyncio.sleep(0.05)
            await sub.unsubscribe()
            assert not reader.done()  # it still waits for the message that is arriving
            headers, body = error_headers(410, "transfer t1 is gone")
            await raw.publish(pull.reply, body, headers=headers)
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(reader, 5)
            assert sub.statistics().failed_transfers == 1
    finally:
        await raw.close()
