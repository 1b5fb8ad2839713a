"""Persist *service* benchmarks: the persist service over a real nats-server, against JetStream.

These rows time what a user of persist gets: :class:`persist.AStream` / :class:`persist.AKV` calls
from one connection, each a request over a real nats-server to a :class:`persist.PersistServer`
running on another connection, on the harness's event loop, over its own stream files (the
engine rows of :mod:`bench._persist` time the engine without the bus). The baseline is JetStream
through nats-py, the reference a user would otherwise pick.

**One server per side run.** Every run (either side) starts its own nats-server with JetStream
enabled (same config, store under the run's temporary directory, not timed) and works only against
it: the persist service, its client and the JetStream client all go over the same kind of server,
and neither side's files or server state are left for the other. The harness's own server (no
JetStream) is not used. The temporary directory must be on a real disk for the durability figures
to mean anything (fsync is free on tmpfs). Payloads are 128 random bytes, sent ``encoding="raw"``.

**Durability, matched.** JetStream's file store acknowledges a write before any fsync (it syncs
every 2 minutes by default), which is persist's ``sync="normal"``: nothing lost on a process kill,
the last writes possibly lost on an OS crash. ``sync="full"`` fsyncs every commit before the ack;
its JetStream counterpart is a server with ``sync_interval: always`` (every write flushed and
synced before the ack). So each row pairs the same durability on both sides.

Rows
----
* ``persist_service_set`` / ``persist_service_set_normal``: acknowledged ``AStream.publish`` of
  128 B, :data:`IN_FLIGHT` publishes in flight (that many tasks, each awaiting its ack before the
  next), on a ``sync="full"`` / ``"normal"`` stream. Baseline: ``js.publish`` (acked) to a file
  storage stream, :data:`IN_FLIGHT` in flight, on a server with ``sync_interval: always`` / the
  default. The persist client also gives each write a msg-id (dedup on retry); plain
  ``js.publish`` does not.
* ``persist_service_kv`` (``_set``, ``_get``): N ``AKV.set`` then N ``AKV.get``,
  :data:`~bench._persist.KV_CONCURRENCY` at a time, ``sync="normal"``, as ``persist_kv`` does on the
  engine. Baseline: JetStream KV ``put``/``get`` through nats-py, default sync.
* ``persist_changefeed_latency`` (``_p50``, ``_p99``, ms): the time from just before ``publish``
  to the moment a consumer iterating ``AStream.changefeed()`` on a third connection holds the
  message. Publishes go one at a time: the next starts once the previous one is both acknowledged
  and received, so each sample is one message through an idle system (a long poll already waiting
  in the service, woken by the commit). ``sync="normal"``. Baseline: the same loop with
  ``js.publish`` and an ordered push consumer (``js.subscribe(ordered_consumer=True)``) on its own
  connection, default sync.

**CPU figures are not like for like.** The service runs in the bench process, so the conat side's
``cpu_us_per_op`` holds the client's and the service's work (SQLite threads included), while the
JetStream side's holds only nats-py's: the server's work is in the nats-server process.

Targets
-------
Reported, never asserted; they are the hot-path issue's: acknowledged writes at 0.6 of
JetStream's rate (:data:`SET_TARGET`, :data:`KV_TARGET`), durable writes keeping their lead over
JetStream with ``sync_interval: always`` (:data:`SET_FULL_TARGET`), KV reads at least as fast as
JetStream's (:data:`KV_GET_TARGET`: a SQLite read, often answered without a thread hop, against a
round trip through JetStream), and changefeed latency within 2x (p50) and 3x (p99) of an ordered
push consumer (a page is answered from the stream's in-memory tail the moment its commit lands,
but it still crosses the bus twice more than JetStream's push).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg as NatsMsg
from nats.js.api import StorageType

import conat
from conat import NatsServer, ServerConfig
from persist import AKV, AStream, PersistServer, Placement, PlacementConfig, StreamConfig, Write

from ._harness import CPU_KEY, Bench, Measure, Metric, Sample, Stamp, percentile
from ._persist import (
    GOAL,
    KV_CONCURRENCY,
    PAYLOAD,
    SIZE,
    PersistBenchError,
    Sync,
    _kv_sample,
    _phases,
    _rate,
    _warmup,
    _workdir,
)

__all__ = ["persist_service_benches"]

IN_FLIGHT: Final = 100
"""Concurrent acknowledged publishes of the set rows."""
BATCH: Final = 100
"""Writes per ``publish_many`` request of the batched row."""
BATCHES_IN_FLIGHT: Final = 10
"""Concurrent ``publish_many`` requests of the batched row (so BATCH x this writes outstanding)."""
BATCHED_GOAL: Final = 20_000.0
"""The issue's target for batched acknowledged writes, msgs/s."""
WAIT_S: Final = 30.0
"""How long the latency loop waits for one message to arrive before giving up."""
FEED_WAIT: Final = 5.0
"""The changefeed's long-poll wait (s): a page is answered at once when a message commits."""
JS_STREAM: Final = "BENCH"
JS_SUBJECT: Final = "bench.persist"

SET_TARGET: Final = 0.6
"""Acknowledged writes (sync=normal) against JetStream's (default sync)."""
SET_FULL_TARGET: Final = 1.4
"""Durable writes (sync=full) against JetStream with ``sync_interval: always``: keep the lead."""
KV_TARGET: Final = 0.6
"""KV set against JetStream KV put."""
KV_GET_TARGET: Final = 1.0
"""KV get against JetStream KV get: a SQLite read is cheaper than a round trip through JetStream."""
LATENCY_TARGET: Final = 2.0
P99_TARGET: Final = 3.0

_Publish = Callable[[], Awaitable[None]]
_PublishSeq = Callable[[], Awaitable[int]]
"""Publish one message; return its seq once acknowledged."""


# -- servers and clients -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _server(sync: Sync = "normal") -> AsyncIterator[tuple[str, Path]]:
    """A private nats-server with JetStream (``sync="full"``: ``sync_interval: always``); its URL
    and a scratch directory for the run."""
    with _workdir() as d:
        jetstream: dict[str, object] = {"store_dir": str(d / "js")}
        if sync == "full":
            jetstream["sync_interval"] = "always"
        config = ServerConfig(server_name="conat-bench-js", extra_blocks={"jetstream": jetstream})
        async with NatsServer(config, directory=d / "server") as server:
            yield server.url, d


@contextlib.asynccontextmanager
async def _persist(url: str, root: Path) -> AsyncIterator[conat.Client]:
    """The persist service on its own connection; yields a second connection for the client."""
    async with (
        await conat.connect(url, name="bench-persist-service") as service,
        PersistServer(service, Placement(PlacementConfig(root=str(root))), bootlog=False),
        await conat.connect(url, name="bench-persist-client") as client,
    ):
        yield client


@contextlib.asynccontextmanager
async def _nats(url: str, name: str) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(url, name=name, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


def _scope() -> str:
    return f"project-{uuid.uuid4()}"


def _stream(client: conat.Client, name: str, sync: Sync) -> AStream:
    return AStream(client, _scope(), name, config=StreamConfig(sync=sync), encoding="raw")


# -- acknowledged writes -------------------------------------------------------------------------


async def _in_flight(count: int, publish: _Publish) -> tuple[int, int, tuple[float, float]]:
    """Warm up, then ``count`` (rounded down to a multiple of :data:`IN_FLIGHT`) publishes by
    :data:`IN_FLIGHT` tasks, each awaiting one ack at a time.

    Returns the timed count, the total count (warm-up included) and the (wall, cpu) seconds.
    """

    async def writer(n: int) -> None:
        for _ in range(n):
            await publish()

    per = max(1, count // IN_FLIGHT)
    warm = max(1, per // 10)
    await asyncio.gather(*(writer(warm) for _ in range(IN_FLIGHT)))
    t0 = Stamp()
    await asyncio.gather(*(writer(per) for _ in range(IN_FLIGHT)))
    spent = Stamp().since(t0)
    return per * IN_FLIGHT, (per + warm) * IN_FLIGHT, spent


def _set(sync: Sync) -> tuple[Measure, Measure]:
    async def service(url: str, count: int) -> Sample:
        async with _server(sync) as (server_url, d), _persist(server_url, d / "persist") as client:
            s = _stream(client, "set", sync)

            async def publish() -> None:
                await s.publish(PAYLOAD)

            done, total, spent = await _in_flight(count, publish)
            inventory = await s.inventory()
        if (stored := 0 if inventory is None else inventory.count) != total:
            raise PersistBenchError(f"persist service set {sync}: {stored} of {total} messages stored")
        return _rate(done, spent)

    async def jetstream(url: str, count: int) -> Sample:
        async with _server(sync) as (server_url, _), _nats(server_url, "bench-jetstream") as nc:
            js = nc.jetstream()
            await js.add_stream(name=JS_STREAM, subjects=[JS_SUBJECT], storage=StorageType.FILE)

            async def publish() -> None:
                await js.publish(JS_SUBJECT, PAYLOAD)

            done, total, spent = await _in_flight(count, publish)
            stored = (await js.stream_info(JS_STREAM)).state.messages
        if stored != total:
            raise PersistBenchError(f"jetstream publish {sync}: {stored} of {total} messages stored")
        return _rate(done, spent)

    return service, jetstream


def _set_batched() -> tuple[Measure, Measure]:
    """``publish_many`` of :data:`BATCH` writes, :data:`BATCHES_IN_FLIGHT` requests in flight,
    ``sync="full"``; JetStream gets the same number of acked publishes outstanding."""
    outstanding = BATCH * BATCHES_IN_FLIGHT

    async def service(url: str, count: int) -> Sample:
        async with _server("full") as (server_url, d), _persist(server_url, d / "persist") as client:
            s = _stream(client, "batched", "full")
            writes = [Write(payload=PAYLOAD, encoding="raw") for _ in range(BATCH)]

            async def writer(n: int) -> None:
                for _ in range(n):
                    results = await s.publish_many(writes)
                    if any(isinstance(r, Exception) for r in results):
                        raise PersistBenchError(f"persist service batched: {results!r:.200}")

            per = max(1, count // outstanding)
            await asyncio.gather(*(writer(1) for _ in range(BATCHES_IN_FLIGHT)))
            t0 = Stamp()
            await asyncio.gather(*(writer(per) for _ in range(BATCHES_IN_FLIGHT)))
            spent = Stamp().since(t0)
        return _rate(per * outstanding, spent, {GOAL: per * outstanding / spent[0]})

    async def jetstream(url: str, count: int) -> Sample:
        async with _server("full") as (server_url, _), _nats(server_url, "bench-jetstream") as nc:
            js = nc.jetstream()
            await js.add_stream(name=JS_STREAM, subjects=[JS_SUBJECT], storage=StorageType.FILE)

            async def writer(n: int) -> None:
                for _ in range(n):
                    await js.publish(JS_SUBJECT, PAYLOAD)

            per = max(1, count // outstanding)
            await asyncio.gather(*(writer(1) for _ in range(outstanding)))
            t0 = Stamp()
            await asyncio.gather(*(writer(per) for _ in range(outstanding)))
            spent = Stamp().since(t0)
        return _rate(per * outstanding, spent, {GOAL: BATCHED_GOAL})

    return service, jetstream


# -- key-value -----------------------------------------------------------------------------------


async def _kv_service(url: str, count: int, concurrency: int = KV_CONCURRENCY) -> Sample:
    async with _server() as (server_url, d), _persist(server_url, d / "persist") as client:
        kv = AKV(client, _scope(), "kv", config=StreamConfig(sync="normal"), encoding="raw")

        async def put(key: str) -> None:
            await kv.set(key, PAYLOAD)

        async def get(key: str) -> None:
            if await kv.get(key) != PAYLOAD:
                raise PersistBenchError(f"persist service kv: wrong value for {key}")

        set_s, get_s, cpu = await _phases(count, put, get, concurrency)
    return _kv_sample(count, set_s, get_s, cpu)


async def _kv_jetstream(url: str, count: int, concurrency: int = KV_CONCURRENCY) -> Sample:
    async with _server() as (server_url, _), _nats(server_url, "bench-jetstream") as nc:
        kv = await nc.jetstream().create_key_value(bucket="bench")

        async def put(key: str) -> None:
            await kv.put(key, PAYLOAD)

        async def get(key: str) -> None:
            if (await kv.get(key)).value != PAYLOAD:
                raise PersistBenchError(f"jetstream kv: wrong value for {key}")

        set_s, get_s, cpu = await _phases(count, put, get, concurrency)
    return _kv_sample(count, set_s, get_s, cpu)


# -- changefeed latency --------------------------------------------------------------------------


class _Arrivals:
    """When each seq reached the consumer, and a way to wait for one."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self._want: tuple[int, asyncio.Future[None]] | None = None

    def hit(self, seq: int, now: float) -> None:
        self.at[seq] = now
        if self._want is not None and self._want[0] == seq and not self._want[1].done():
            self._want[1].set_result(None)

    async def wait(self, seq: int) -> float:
        if seq not in self.at:
            future = asyncio.get_running_loop().create_future()
            self._want = (seq, future)
            try:
                await asyncio.wait_for(future, WAIT_S)
            except TimeoutError:
                raise PersistBenchError(f"seq {seq} never reached the consumer") from None
            finally:
                self._want = None
        return self.at.pop(seq)


async def _latencies(count: int, publish: _PublishSeq, arrivals: _Arrivals) -> Sample:
    """Warm up, then ``count`` publishes one at a time, each timed until the consumer holds it."""
    for _ in range(_warmup(count)):
        await arrivals.wait(await publish())
    latencies = []
    t0 = Stamp()
    for _ in range(count):
        sent = time.perf_counter()
        seq = await publish()
        latencies.append(await arrivals.wait(seq) - sent)
    wall, cpu = Stamp().since(t0)
    latencies.sort()
    extra = {"p99_ms": percentile(latencies, 0.99) * 1e3, CPU_KEY: cpu / count * 1e6}
    return Sample(percentile(latencies, 0.50) * 1e3, extra, count=count, elapsed_s=wall)


async def _changefeed_service(url: str, count: int) -> Sample:
    async with (
        _server() as (server_url, d),
        _persist(server_url, d / "persist") as client,
        await conat.connect(server_url, name="bench-persist-consumer") as reader,
    ):
        scope = _scope()
        writer = AStream(client, scope, "feed", config=StreamConfig(sync="normal"), encoding="raw")
        feed_stream = AStream(reader, scope, "feed", config=StreamConfig(sync="normal"), encoding="raw")
        arrivals = _Arrivals()
        last = _warmup(count) + count

        async def consume() -> None:
            feed = feed_stream.changefeed(wait=FEED_WAIT, deletes=False)
            try:
                async for change in feed:
                    now = time.perf_counter()
                    for message in change.messages:
                        arrivals.hit(message.seq, now)
                    if change.messages and change.messages[-1].seq >= last:
                        return  # no page request is left waiting in the service
            finally:
                if isinstance(feed, AsyncGenerator):  # close it now, not in a finalizer task later
                    await feed.aclose()

        consumer = asyncio.create_task(consume(), name="bench changefeed consumer")
        try:

            async def publish() -> int:
                return (await writer.publish(PAYLOAD)).seq

            sample = await _latencies(count, publish, arrivals)
            await asyncio.wait_for(consumer, WAIT_S)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    return sample


async def _changefeed_jetstream(url: str, count: int) -> Sample:
    async with (
        _server() as (server_url, _),
        _nats(server_url, "bench-jetstream") as nc,
        _nats(server_url, "bench-jetstream-consumer") as reader,
    ):
        js = nc.jetstream()
        await js.add_stream(name=JS_STREAM, subjects=[JS_SUBJECT], storage=StorageType.FILE)
        arrivals = _Arrivals()

        async def on_msg(msg: NatsMsg) -> None:
            now = time.perf_counter()
            arrivals.hit(msg.metadata.sequence.stream, now)

        sub = await reader.jetstream().subscribe(JS_SUBJECT, cb=on_msg, ordered_consumer=True)
        try:

            async def publish() -> int:
                return (await js.publish(JS_SUBJECT, PAYLOAD)).seq

            sample = await _latencies(count, publish, arrivals)
        finally:
            await sub.unsubscribe()
    return sample


# -- the list ------------------------------------------------------------------------------------


def persist_service_benches() -> list[Bench]:
    js = "jetstream"
    set_f, set_f_js = _set("full")
    set_n, set_n_js = _set("normal")
    lat = "persist_changefeed_latency"
    return [
        Bench("persist_service_set",
              f"service: AStream.publish, {IN_FLIGHT} in flight, sync=full, 128 B,"
              " vs js.publish (sync_interval: always)",
              set_f, set_f_js, (Metric("persist_service_set", "msgs/s", SET_FULL_TARGET),),
              20_000, 2_000, {"size": SIZE, "sync": "full", "in_flight": IN_FLIGHT}, baseline=js),
        Bench("persist_service_set_normal",
              f"service: AStream.publish, {IN_FLIGHT} in flight, sync=normal, 128 B,"
              " vs js.publish (default sync)",
              set_n, set_n_js, (Metric("persist_service_set_normal", "msgs/s", SET_TARGET),),
              20_000, 2_000, {"size": SIZE, "sync": "normal", "in_flight": IN_FLIGHT}, baseline=js),
        Bench("persist_service_set_batched",
              f"service: AStream.publish_many of {BATCH}, {BATCHES_IN_FLIGHT} in flight, sync=full,"
              f" 128 B, vs js.publish ({BATCH * BATCHES_IN_FLIGHT} in flight, sync_interval: always);"
              f" goal row: the issue's >= {BATCHED_GOAL:,.0f} msgs/s",
              *_set_batched(),
              (Metric("persist_service_set_batched", "msgs/s", SET_TARGET),
               Metric("persist_service_set_batched_goal", "msgs/s", 1.0, GOAL)),
              100_000, 10_000,
              {"size": SIZE, "sync": "full", "batch": BATCH, "in_flight": BATCHES_IN_FLIGHT},
              baseline=js),
        Bench("persist_service_kv",
              f"service: N AKV.set then N AKV.get, {KV_CONCURRENCY} at a time, sync=normal, 128 B,"
              " vs JetStream KV put/get",
              _kv_service, _kv_jetstream,
              (Metric("persist_service_kv", "ops/s", KV_TARGET),
               Metric("persist_service_kv_set", "ops/s", KV_TARGET, "set_ops"),
               Metric("persist_service_kv_get", "ops/s", KV_GET_TARGET, "get_ops")),
              10_000, 1_000, {"size": SIZE, "sync": "normal", "concurrency": KV_CONCURRENCY},
              baseline=js),
        Bench(lat,
              "service: publish -> AStream.changefeed consumer, one at a time, sync=normal, 128 B,"
              " vs js.publish -> ordered push consumer",
              _changefeed_service, _changefeed_jetstream,
              (Metric(f"{lat}_p50", "ms", LATENCY_TARGET, higher_is_better=False),
               Metric(f"{lat}_p99", "ms", P99_TARGET, "p99_ms", higher_is_better=False)),
              2_000, 200, {"size": SIZE, "sync": "normal"}, baseline=js),
    ]  # fmt: skip
