"""Chunked transfers: the pure protocol (hypothesis) and 64 MB round trips on a real server."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conat
from conat import PayloadError, PayloadTooLarge, RemoteError
from conat._chunking import (
    ChunkHead,
    ChunkRef,
    OutgoingTransfers,
    PullRequest,
    Reassembly,
    ReassemblyBudget,
    chunk_count,
)

MB = 1024 * 1024


@given(st.binary(max_size=5000), st.integers(1, 700), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_chunks_reassemble_in_any_order_with_duplicates(payload: bytes, size: int, rnd) -> None:
    clock = [0.0]
    out = OutgoingTransfers(max_bytes=10_000, ttl=5, clock=lambda: clock[0])
    head = out.add("t1", payload, size)
    assert head.count == chunk_count(len(payload), size)
    assert ChunkHead.parse(head.header()) == head
    chunks = out.chunks(PullRequest("t1", 0, head.count))
    assert chunks is not None and len(chunks) == head.count
    order = chunks + rnd.sample(chunks, min(3, len(chunks)))  # duplicates
    rnd.shuffle(order)
    r = Reassembly(head)
    for index, data in order:
        r.add(index, data)
    assert r.complete and r.payload() == payload and r.missing() == []


def test_outgoing_expiry_and_cap() -> None:
    clock = [0.0]
    out = OutgoingTransfers(max_bytes=100, ttl=5, clock=lambda: clock[0])
    out.add("a", b"x" * 60, 10)
    with pytest.raises(PayloadTooLarge) as e:
        out.add("b", b"y" * 60, 10)
    assert e.value.code == 413
    clock[0] = 4
    assert out.chunks(PullRequest("a", 0, 1)) is not None  # a pull extends the lifetime
    clock[0] = 8
    assert out.chunks(PullRequest("a", 5, 10)) is not None
    clock[0] = 14
    assert out.chunks(PullRequest("a", 0, 1)) is None
    assert out.expire() == 1 and out.statistics().bytes_held == 0
    out.add("b", b"y" * 60, 10)


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
