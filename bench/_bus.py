"""The bus benchmarks: conat against raw nats-py doing the same thing, on one nats-server.

Every measurement opens fresh connections for both of its ends (publisher and subscriber, requester
and responder), warms them up, times, and closes them. Ends that would be separate processes in
real life are separate connections here, but share the harness's one event loop, exactly as they do
for both sides.

What each side does
-------------------
* payloads: conat sends them with ``encoding="raw"`` by default, so the payload bytes on the wire
  are the nats-py ones. Publishes to a subscription go unlabelled (``label=False``, a plain PUB as
  nats-py's) to a subscription that declared the encoding (``subscribe(..., encoding="raw")``);
  requests and replies carry their ``Conat-Encoding: raw`` header (about 30 bytes, and an HPUB
  instead of a PUB). ``--encoding msgpack`` uses conat's default codec instead (2-5 bytes of msgpack
  framing, no header) and echoes ``msg.data``.
* subscribers: conat ``subscribe(callback=...)``; nats-py ``nc.subscribe(subject, cb=...)``. Both run
  the callback serially in one task. The conat subscription's ``max_buffer`` is set to nats-py's
  default pending limit (512 Ki messages) so both absorb the same burst.
* responders: ``await msg.respond(msg.raw, encoding="raw")`` vs ``await msg.respond(msg.data)``.
* requests: ``client.request(...)`` vs ``nc.request(...)``, both with a 10 s timeout.
* streams: conat ``request_many`` with a responder that calls ``msg.respond`` K times then
  ``msg.end()``; nats-py subscribes a fresh inbox, publishes the request with it as reply subject,
  and counts until a message with a ``Conat-End`` header, which its responder publishes after the
  K replies.
* large transfer: conat publishes the whole payload to a subscriber (chunked and pulled by conat);
  nats-py publishes ``max_payload - 1 KiB`` slices to a subscriber that joins them. Both verify the
  length before the clock stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg as NatsMsg

import conat

from ._harness import (
    Bench,
    Measure,
    Metric,
    Sample,
    Stamp,
    percentile,
)

__all__ = ["BenchError", "bus_benches"]

SMALL: Final = 128
LARGE: Final = 16 * 1024
MIB: Final = 1024 * 1024
CONCURRENCY: Final = 50
REQUEST_TIMEOUT: Final = 10.0
WAIT_TIMEOUT: Final = 60.0
RAW_PENDING_MSGS: Final = 512 * 1024  # nats-py's DEFAULT_SUB_PENDING_MSGS_LIMIT
END_HEADER: Final = "Conat-End"
HEADER_ROOM: Final = 1024

THROUGHPUT_TARGET: Final = 0.9
REQUEST_TARGET: Final = 1.0


_Pair = tuple[Measure, Measure]
"""The conat side and the nats-py side of one bench."""


class BenchError(RuntimeError):
    """A benchmark run did not complete (lost messages, a timeout): its figure would be meaningless."""


_serial = 0


def _subject(name: str) -> str:
    global _serial
    _serial += 1
    return f"bench.{name}.{_serial}"


def _warmup(count: int) -> int:
    return max(50, count // 10)


# -- connections ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _conat(url: str, n: int = 1) -> AsyncIterator[list[conat.Client]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for i in range(n):
            c = await conat.connect(url, name=f"bench-conat-{i}")
            stack.push_async_callback(c.aclose)
            clients.append(c)
        yield clients


@contextlib.asynccontextmanager
async def _nats(url: str, n: int = 1) -> AsyncIterator[list[NatsClient]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for i in range(n):
            nc = await nats.connect(url, name=f"bench-nats-{i}", allow_reconnect=False)
            stack.push_async_callback(nc.close)
            clients.append(nc)
        yield clients


async def _raw_live(nc: NatsClient) -> None:
    """Make a just-made nats-py subscription live: its flush() can overtake the pending SUB."""
    await nc.flush()
    await nc.flush()


class _Arrivals:
    """Counts deliveries; resolves ``done`` with the :class:`Stamp` of the ``expected``-th one."""

    def __init__(self) -> None:
        self.n = 0
        self.expected = 0
        self.done: asyncio.Future[Stamp] = asyncio.get_running_loop().create_future()

    def expect(self, expected: int) -> None:
        self.n = 0
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def hit(self) -> None:
        self.n += 1
        if self.n == self.expected:
            self.done.set_result(Stamp())

    def fail(self, error: BenchError) -> None:
        """End the wait with ``error`` (raised in a callback, it would only be logged)."""
        if not self.done.done():
            self.done.set_exception(error)

    async def wait(self, what: str, timeout: float = WAIT_TIMEOUT) -> Stamp:
        try:
            async with asyncio.timeout(timeout):
                return await self.done
        except TimeoutError:
            raise BenchError(
                f"{what}: {self.n} of {self.expected} messages arrived within {timeout}s"
            ) from None


class _Codec:
    """How the conat side sends and echoes a payload under ``--encoding``."""

    def __init__(self, encoding: str) -> None:
        self.encoding: str | None = "raw" if encoding == "raw" else None
        self.label = self.encoding is None
        """Publishes to a subscription go unlabelled: its subscriber declared the encoding."""

    def payload(self, msg: conat.Message) -> bytes:
        return msg.raw if self.encoding == "raw" else bytes(msg.data)


def _throughput(count: int, spent: tuple[float, float], extra: dict[str, float] | None = None) -> Sample:
    """``count`` operations in ``spent`` = (wall, cpu) seconds."""
    wall, cpu = spent
    figures = {"cpu_us_per_op": cpu / count * 1e6, "cpu_share": cpu / wall}
    return Sample(count / wall, {**figures, **(extra or {})}, count=count, elapsed_s=wall)


# -- publish only --------------------------------------------------------------------------------


def _publish(codec: _Codec) -> _Pair:
    payload = b"p" * SMALL
    enc, label = codec.encoding, codec.label

    async def conat_side(url: str, count: int) -> Sample:
        async with _conat(url) as (c,):
            subject = _subject("publish")
            publish = c.publish
            for _ in range(_warmup(count)):
                await publish(subject, payload, encoding=enc, label=label)
            await c.flush()
            t0 = Stamp()
            for _ in range(count):
                await publish(subject, payload, encoding=enc, label=label)
            await c.flush()
            return _throughput(count, Stamp().since(t0))

    async def nats_side(url: str, count: int) -> Sample:
        async with _nats(url) as (nc,):
            subject = _subject("publish")
            publish = nc.publish
            for _ in range(_warmup(count)):
                await publish(subject, payload)
            await nc.flush()
            t0 = Stamp()
            for _ in range(count):
                await publish(subject, payload)
            await nc.flush()
            return _throughput(count, Stamp().since(t0))

    return conat_side, nats_side


# -- publish -> subscribe ------------------------------------------------------------------------


def _pubsub(codec: _Codec, size: int) -> _Pair:
    payload = b"s" * size
    enc, label = codec.encoding, codec.label

    async def conat_side(url: str, count: int) -> Sample:
        async with _conat(url, 2) as (pub, sub):
            subject = _subject("pubsub")
            arrivals = _Arrivals()

            async def on_msg(msg: conat.Message) -> None:
                arrivals.hit()

            s = await sub.subscribe(subject, callback=on_msg, max_buffer=RAW_PENDING_MSGS, encoding=enc)
            publish = pub.publish
            for n in (_warmup(count), count):
                arrivals.expect(n)
                t0 = Stamp()
                for _ in range(n):
                    await publish(subject, payload, encoding=enc, label=label)
                t1 = await arrivals.wait(f"conat pub->sub {size} B (dropped {s.statistics().dropped})")
            return _throughput(count, t1.since(t0))

    async def nats_side(url: str, count: int) -> Sample:
        async with _nats(url, 2) as (pub, sub):
            subject = _subject("pubsub")
            arrivals = _Arrivals()

            async def on_msg(msg: NatsMsg) -> None:
                arrivals.hit()

            await sub.subscribe(subject, cb=on_msg)
            await _raw_live(sub)
            publish = pub.publish
            for n in (_warmup(count), count):
                arrivals.expect(n)
                t0 = Stamp()
                for _ in range(n):
                    await publish(subject, payload)
                t1 = await arrivals.wait(f"nats-py pub->sub {size} B")
            return _throughput(count, t1.since(t0))

    return conat_side, nats_side


# -- request / reply -----------------------------------------------------------------------------


def _latency_sample(latencies: list[float], spent: tuple[float, float]) -> Sample:
    latencies.sort()
    return _throughput(
        len(latencies),
        spent,
        {"p50_us": percentile(latencies, 0.50) * 1e6, "p99_us": percentile(latencies, 0.99) * 1e6},
    )


def _request(codec: _Codec, concurrency: int) -> _Pair:
    payload = b"q" * SMALL
    enc = codec.encoding

    async def conat_side(url: str, count: int) -> Sample:
        async with _conat(url, 2) as (responder, requester):
            subject = _subject("req")

            async def echo(msg: conat.Message) -> None:
                await msg.respond(codec.payload(msg), encoding=enc)

            await responder.subscribe(subject, callback=echo)
            request = requester.request

            async def worker(n: int, latencies: list[float]) -> None:
                clock = time.perf_counter
                for _ in range(n):
                    t = clock()
                    reply = await request(subject, payload, encoding=enc, timeout=REQUEST_TIMEOUT)
                    latencies.append(clock() - t)
                    if len(reply.raw) < SMALL:
                        raise BenchError("conat: short reply")

            return await _drive(worker, count, concurrency)

    async def nats_side(url: str, count: int) -> Sample:
        async with _nats(url, 2) as (responder, requester):
            subject = _subject("req")

            async def echo(msg: NatsMsg) -> None:
                await msg.respond(msg.data)

            await responder.subscribe(subject, cb=echo)
            await _raw_live(responder)
            request = requester.request

            async def worker(n: int, latencies: list[float]) -> None:
                clock = time.perf_counter
                for _ in range(n):
                    t = clock()
                    reply = await request(subject, payload, timeout=REQUEST_TIMEOUT)
                    latencies.append(clock() - t)
                    if len(reply.data) < SMALL:
                        raise BenchError("nats-py: short reply")

            return await _drive(worker, count, concurrency)

    return conat_side, nats_side


async def _drive(
    worker: Callable[[int, list[float]], Awaitable[None]], count: int, concurrency: int
) -> Sample:
    """Warm up, then run ``concurrency`` workers sharing ``count`` requests; latency per request."""
    per = max(1, count // concurrency)
    await asyncio.gather(*(worker(max(1, _warmup(count) // concurrency), []) for _ in range(concurrency)))
    latencies: list[float] = []
    t0 = Stamp()
    await asyncio.gather(*(worker(per, latencies) for _ in range(concurrency)))
    return _latency_sample(latencies, Stamp().since(t0))


# -- request_many streaming ----------------------------------------------------------------------


class _Replies:
    """The raw requester's side of a stream: count replies until the end marker."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_reply(self, msg: NatsMsg) -> None:
        if msg.headers and END_HEADER in msg.headers:
            self.ended.set_result(None)
        else:
            self.n += 1


def _stream(codec: _Codec) -> _Pair:
    chunk = b"r" * SMALL
    enc = codec.encoding

    async def conat_side(url: str, count: int) -> Sample:
        async with _conat(url, 2) as (responder, requester):
            subject = _subject("stream")
            k = 0

            async def stream(msg: conat.Message) -> None:
                respond = msg.respond
                for _ in range(k):
                    await respond(chunk, encoding=enc)
                await msg.end()

            await responder.subscribe(subject, callback=stream)
            for k in (_warmup(count), count):
                n = 0
                t0 = Stamp()
                async for _ in requester.request_many(
                    subject, b"", encoding=enc, timeout=WAIT_TIMEOUT, max_buffer=k + 16
                ):
                    n += 1
                spent = Stamp().since(t0)
                if n != k:
                    raise BenchError(f"conat request_many: {n} of {k} replies")
            return _throughput(count, spent)

    async def nats_side(url: str, count: int) -> Sample:
        async with _nats(url, 2) as (responder, requester):
            subject = _subject("stream")
            k = 0
            end_marker = {END_HEADER: "1"}

            async def stream(msg: NatsMsg) -> None:
                publish = responder.publish
                reply = msg.reply
                for _ in range(k):
                    await publish(reply, chunk)
                await publish(reply, b"", headers=end_marker)

            await responder.subscribe(subject, cb=stream)
            await _raw_live(responder)
            replies = _Replies()
            on_reply = replies.on_reply
            for k in (_warmup(count), count):
                replies.reset()
                t0 = Stamp()
                inbox = requester.new_inbox()
                sub = await requester.subscribe(inbox, cb=on_reply)
                await requester.publish(subject, b"", reply=inbox)
                try:
                    async with asyncio.timeout(WAIT_TIMEOUT):
                        await replies.ended
                except TimeoutError:
                    raise BenchError(f"nats-py stream: {replies.n} of {k} replies, no end marker") from None
                spent = Stamp().since(t0)
                await sub.unsubscribe()
                if replies.n != k:
                    raise BenchError(f"nats-py stream: {replies.n} of {k} replies")
            return _throughput(count, spent)

    return conat_side, nats_side


# -- one large chunked transfer ------------------------------------------------------------------


def _transfer(codec: _Codec) -> _Pair:
    enc = codec.encoding
    payloads: dict[int, bytes] = {}

    def payload(mib: int) -> bytes:
        if mib not in payloads:
            payloads.clear()
            payloads[mib] = bytes(range(256)) * (mib * MIB // 256)
        return payloads[mib]

    def mb_per_s(size: int, spent: tuple[float, float]) -> Sample:
        wall, cpu = spent
        figures = {"cpu_us_per_op": cpu / (size / 1e6) * 1e6, "cpu_share": cpu / wall}
        return Sample(size / 1e6 / wall, figures, count=size, elapsed_s=wall)

    warm_mib = 4

    async def conat_side(url: str, mib: int) -> Sample:
        async with _conat(url, 2) as (pub, sub):
            subject = _subject("transfer")
            arrivals = _Arrivals()
            size = 0

            async def on_msg(msg: conat.Message) -> None:
                got = len(codec.payload(msg))
                if got != size:
                    arrivals.fail(BenchError(f"conat transfer: {got} of {size} bytes"))
                else:
                    arrivals.hit()

            await sub.subscribe(subject, callback=on_msg, encoding=enc)
            for m in (warm_mib, mib):
                data = payload(m)
                size = len(data)
                arrivals.expect(1)
                t0 = Stamp()
                await pub.publish(subject, data, encoding=enc, label=codec.label)
                t1 = await arrivals.wait(f"conat transfer {m} MiB")
            return mb_per_s(size, t1.since(t0))

    async def nats_side(url: str, mib: int) -> Sample:
        async with _nats(url, 2) as (pub, sub):
            subject = _subject("transfer")
            arrivals = _Arrivals()
            parts: list[bytes] = []
            state = {"size": 0, "received": 0}

            async def on_msg(msg: NatsMsg) -> None:
                parts.append(msg.data)
                state["received"] += len(msg.data)
                if state["received"] >= state["size"]:
                    whole = b"".join(parts)
                    parts.clear()
                    if len(whole) != state["size"]:
                        arrivals.fail(BenchError(f"nats-py transfer: {len(whole)} of {state['size']} bytes"))
                    else:
                        arrivals.hit()

            await sub.subscribe(subject, cb=on_msg)
            await _raw_live(sub)
            chunk = pub.max_payload - HEADER_ROOM
            for m in (warm_mib, mib):
                data = payload(m)
                state["size"], state["received"] = len(data), 0
                arrivals.expect(1)
                publish = pub.publish
                t0 = Stamp()
                for i in range(0, len(data), chunk):
                    await publish(subject, data[i : i + chunk])
                t1 = await arrivals.wait(f"nats-py transfer {m} MiB")
            return mb_per_s(state["size"], t1.since(t0))

    return conat_side, nats_side


# -- the list ------------------------------------------------------------------------------------


def bus_benches(encoding: str = "raw") -> list[Bench]:
    """The bus rows, in table order. ``encoding``: the conat side's payload encoding."""
    codec = _Codec(encoding)
    tp, rq = THROUGHPUT_TARGET, REQUEST_TARGET
    pub_c, pub_n = _publish(codec)
    ps_c, ps_n = _pubsub(codec, SMALL)
    pl_c, pl_n = _pubsub(codec, LARGE)
    rs_c, rs_n = _request(codec, 1)
    rc_c, rc_n = _request(codec, CONCURRENCY)
    st_c, st_n = _stream(codec)
    tr_c, tr_n = _transfer(codec)
    return [
        Bench("publish", "publish-only, 128 B, then flush", pub_c, pub_n,
              (Metric("publish_128", "msgs/s", tp),), 200_000, 20_000, {"size": SMALL}),
        Bench("pubsub_128", "publish -> subscribe on another connection, 128 B", ps_c, ps_n,
              (Metric("pubsub_128", "msgs/s", tp),), 100_000, 10_000, {"size": SMALL}),
        Bench("pubsub_16k", "publish -> subscribe on another connection, 16 KiB", pl_c, pl_n,
              (Metric("pubsub_16k", "msgs/s", tp),), 20_000, 2_000, {"size": LARGE}),
        Bench("req_serial", "request/reply, one requester, 128 B echo", rs_c, rs_n,
              (Metric("req_serial", "req/s", rq),
               Metric("req_serial_p50", "us", rq, "p50_us", higher_is_better=False),
               Metric("req_serial_p99", "us", rq, "p99_us", higher_is_better=False)),
              5_000, 1_000, {"size": SMALL, "concurrency": 1}),
        Bench("req_concurrent", f"request/reply, {CONCURRENCY} concurrent requesters on one connection",
              rc_c, rc_n, (Metric(f"req_concurrent{CONCURRENCY}", "req/s", rq),),
              20_000, 3_000, {"size": SMALL, "concurrency": CONCURRENCY}),
        Bench("request_many", "request_many: one request, N streamed 128 B replies", st_c, st_n,
              (Metric("request_many", "msgs/s", tp),), 20_000, 5_000, {"size": SMALL}),
        Bench("transfer", "one chunked transfer of N MiB to a subscriber", tr_c, tr_n,
              (Metric("transfer", "MB/s", tp),), 64, 16, {"unit_of_count": "MiB"}),
    ]  # fmt: skip
