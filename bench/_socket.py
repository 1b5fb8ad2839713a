"""Socket benchmarks: a reliable socket against raw nats-py pub/sub moving the same messages one way.

* conat side: ``client.socket_connect`` on one connection, the server's end (``socket_listen`` +
  ``accept``) on another. The client sends N messages with ``send(payload, encoding="raw")``; a
  reader task on the server's end ``recv()``s them. The clock stops when the last one is read.
  This pays for everything a socket adds: sequence numbers, per-batch acks flowing back, credit,
  retention for retransmission, reassembly, and a pull-style reader.
* baseline: nats-py publishes the same payloads to a subject that a nats-py subscription on
  another connection counts in a callback (fire and forget, no acks, nothing retained).

``socket_128`` reports messages/s for 128 B messages, ``socket_64k`` MB/s for 64 KiB messages.
Target ratios: 0.9 for ``socket_128`` (issue 17: small messages should cost about what raw pub/sub
costs), 0.5 for ``socket_64k`` (reliability is not free, but it should not cost more than half).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg as NatsMsg

import conat

from ._harness import Bench, Measure, Metric, Sample, Stamp

__all__ = ["socket_benches"]

SMALL: Final = 128
LARGE: Final = 64 * 1024
TARGET: Final = 0.5
SMALL_TARGET: Final = 0.9
WAIT_TIMEOUT: Final = 60.0

_serial = 0


def _subject() -> tuple[str, str]:
    """A fresh (pattern, concrete subject) pair per run keeps runs apart."""
    global _serial
    _serial += 1
    return f"bench.socket.{_serial}.*", f"bench.socket.{_serial}.client"


def _warmup(count: int) -> int:
    return max(50, count // 10)


class _BenchError(RuntimeError):
    pass


def _sample(count: int, size: int, spent: tuple[float, float], per_mb: bool) -> Sample:
    wall, cpu = spent
    if per_mb:
        mb = count * size / 1e6
        return Sample(mb / wall, {"cpu_us_per_op": cpu / mb * 1e6, "cpu_share": cpu / wall}, count, wall)
    return Sample(count / wall, {"cpu_us_per_op": cpu / count * 1e6, "cpu_share": cpu / wall}, count, wall)


@contextlib.asynccontextmanager
async def _conat_pair(url: str) -> AsyncIterator[tuple[conat.Socket, conat.Socket]]:
    async with (
        await conat.connect(url, name="bench-socket-server") as b,
        await conat.connect(url, name="bench-socket-client") as a,
    ):
        pattern, subject = _subject()
        async with await b.socket_listen(pattern) as server:
            sock = await a.socket_connect(subject)
            async with sock:
                conn = await server.accept(timeout=10)
                yield sock, conn


@contextlib.asynccontextmanager
async def _nats_pair(url: str) -> AsyncIterator[tuple[NatsClient, NatsClient]]:
    pub = await nats.connect(url, name="bench-nats-pub", allow_reconnect=False)
    try:
        sub = await nats.connect(url, name="bench-nats-sub", allow_reconnect=False)
        try:
            yield pub, sub
        finally:
            await sub.close()
    finally:
        await pub.close()


def _measures(size: int, per_mb: bool) -> tuple[Measure, Measure]:
    payload = b"s" * size

    async def conat_side(url: str, count: int) -> Sample:
        async with _conat_pair(url) as (sock, conn):

            async def read(n: int) -> Stamp:
                recv = conn.recv
                for _ in range(n):
                    msg = await recv()
                    if len(msg.raw) != size:
                        raise _BenchError(f"conat socket: a message of {len(msg.raw)} bytes, not {size}")
                return Stamp()

            spent = (0.0, 0.0)
            for n in (_warmup(count), count):
                reader = asyncio.create_task(read(n))
                send = sock.send
                t0 = Stamp()
                for _ in range(n):
                    await send(payload, encoding="raw")
                try:
                    t1 = await asyncio.wait_for(reader, WAIT_TIMEOUT)
                except TimeoutError:
                    raise _BenchError(f"conat socket: not all of {n} messages arrived") from None
                spent = t1.since(t0)
            return _sample(count, size, spent, per_mb)

    async def nats_side(url: str, count: int) -> Sample:
        async with _nats_pair(url) as (pub, sub):
            _, subject = _subject()
            state = {"n": 0, "expected": 0}
            done: asyncio.Future[Stamp] = asyncio.get_running_loop().create_future()

            async def on_msg(msg: NatsMsg) -> None:
                state["n"] += 1
                if state["n"] == state["expected"]:
                    done.set_result(Stamp())

            await sub.subscribe(subject, cb=on_msg)
            await sub.flush()
            await sub.flush()
            spent = (0.0, 0.0)
            for n in (_warmup(count), count):
                state["n"], state["expected"] = 0, n
                done = asyncio.get_running_loop().create_future()
                publish = pub.publish
                t0 = Stamp()
                for _ in range(n):
                    await publish(subject, payload)
                try:
                    t1 = await asyncio.wait_for(done, WAIT_TIMEOUT)
                except TimeoutError:
                    raise _BenchError(f"nats-py pub/sub: {state['n']} of {n} messages arrived") from None
                spent = t1.since(t0)
            return _sample(count, size, spent, per_mb)

    return conat_side, nats_side


def socket_benches() -> list[Bench]:
    """The socket rows, in table order."""
    small_c, small_n = _measures(SMALL, per_mb=False)
    large_c, large_n = _measures(LARGE, per_mb=True)
    return [
        Bench("socket_128", "reliable socket, one way, 128 B, vs raw pub/sub", small_c, small_n,
              (Metric("socket_128", "msgs/s", SMALL_TARGET),), 100_000, 10_000, {"size": SMALL}),
        Bench("socket_64k", "reliable socket, one way, 64 KiB, vs raw pub/sub", large_c, large_n,
              (Metric("socket_64k", "MB/s", TARGET),), 5_000, 1_000, {"size": LARGE}),
    ]  # fmt: skip
