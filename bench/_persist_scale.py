"""Persist service benchmarks at scale: many requests in flight, many changefeeds, several workers.

Same method as :mod:`bench._persist_service` (a private nats-server with JetStream per side run,
128 B payloads sent ``encoding="raw"``, JetStream through nats-py as the baseline), plus:

Rows
----
* ``persist_service_kv_1000`` (``_set``, ``_get``): ``persist_service_kv`` with
  :data:`WIDE` requests in flight instead of 50. Baseline: JetStream KV, as many in flight.
* ``persist_changefeed_fanout`` (``_p50``, ``_p99``, ms; ``cpu_us_per_op`` per delivered update):
  :data:`FEEDS` consumers follow one stream with ``AStream.changefeed()`` (on
  :data:`FEED_CONNECTIONS` connections, ten feeds each) while one writer
  publishes N updates, :data:`FANOUT_IN_FLIGHT` at a time; a sample is the time from the publish
  to one consumer holding it, over every (update, consumer). Baseline: as many ordered push
  consumers (``js.subscribe(ordered_consumer=True)``) on as many connections.
* ``persist_workers`` (msgs/s): the service in its own processes, as users run it
  (``conat persist serve``), ``AStream.publish`` of 128 B to :data:`SCOPES` scopes,
  :data:`WORKERS_IN_FLIGHT` in flight, ``sync="normal"``: :data:`WORKERS` partitioned workers on a
  bus that splits ``persist.*.>`` (``--workers``) against one process on a bus without the split.
  ``cpu_us_per_op`` is the client's; ``service_cpu_us_per_op`` the service processes' (read from
  /proc), so both sides of the work are printed.

The CPU of every row's conat side holds the client and, for in-process services, the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import conat
from actors import partition_of, wait_for_partitions
from conat import NatsServer, ServerConfig
from persist import AStream, PersistService, StreamConfig, Workers, persist_mappings

from ._harness import CPU_KEY, Bench, Metric, Sample, Stamp, percentile
from ._persist import PAYLOAD, SIZE, PersistBenchError, _workdir
from ._persist_service import (
    JS_STREAM,
    JS_SUBJECT,
    WAIT_S,
    _kv_jetstream,
    _kv_service,
    _nats,
    _persist,
    _server,
)

__all__ = ["persist_scale_benches"]

WIDE: Final = 1000
"""Requests in flight of the wide KV row."""
FEEDS: Final = 100
FEED_CONNECTIONS: Final = 10
FANOUT_IN_FLIGHT: Final = 10
WORKERS: Final = 2
SCOPES: Final = 16
WORKERS_IN_FLIGHT: Final = 200
SERVICE_CPU: Final = "service_cpu_us_per_op"
_TICKS: Final = os.sysconf("SC_CLK_TCK")


# -- 1,000 in flight ------------------------------------------------------------------------------


_kv_wide_service: Final = functools.partial(_kv_service, concurrency=WIDE)
_kv_wide_jetstream: Final = functools.partial(_kv_jetstream, concurrency=WIDE)


# -- many changefeeds -----------------------------------------------------------------------------


def _fanout_sample(
    sent: dict[int, float], arrivals: list[list[tuple[int, float]]], spent: tuple[float, float]
) -> Sample:
    latencies = sorted(at - sent[seq] for feed in arrivals for seq, at in feed if seq in sent)
    if len(latencies) < len(sent) * len(arrivals):
        raise PersistBenchError(
            f"changefeed fanout: {len(latencies)} of {len(sent) * len(arrivals)} deliveries"
        )
    wall, cpu = spent
    extra = {"p99_ms": percentile(latencies, 0.99) * 1e3, CPU_KEY: cpu / len(latencies) * 1e6}
    return Sample(percentile(latencies, 0.50) * 1e3, extra, count=len(latencies), elapsed_s=wall)


async def _publish_all(count: int, publish: object, sent: dict[int, float]) -> None:
    it = iter(range(count))

    async def writer() -> None:
        for _ in it:
            t = time.perf_counter()
            seq = await publish()  # type: ignore[operator]
            sent[seq] = t

    await asyncio.gather(*(writer() for _ in range(FANOUT_IN_FLIGHT)))


async def _fanout_service(url: str, count: int) -> Sample:
    async with (
        _server() as (server_url, d),
        _persist(server_url, d / "persist") as client,
        contextlib.AsyncExitStack() as stack,
    ):
        scope = f"project-{uuid.uuid4()}"
        writer = AStream(client, scope, "feed", config=StreamConfig(sync="normal"), encoding="raw")
        await writer.publish(PAYLOAD)  # the stream exists, seq 1: feeds start after it
        readers = [
            await stack.enter_async_context(await conat.connect(server_url, name=f"bench-feed-{i}"))
            for i in range(FEED_CONNECTIONS)
        ]
        arrivals: list[list[tuple[int, float]]] = [[] for _ in range(FEEDS)]
        last = count + 1

        async def consume(n: int) -> None:
            stream = AStream(readers[n % FEED_CONNECTIONS], scope, "feed", encoding="raw")
            feed = stream.changefeed(1, wait=5.0, deletes=False)
            try:
                async for change in feed:
                    now = time.perf_counter()
                    arrivals[n].extend((m.seq, now) for m in change.messages)
                    if change.messages and change.messages[-1].seq >= last:
                        return
            finally:
                await feed.aclose()  # type: ignore[attr-defined]

        consumers = [asyncio.create_task(consume(n)) for n in range(FEEDS)]
        await asyncio.sleep(0.5)  # every feed's first poll is waiting
        sent: dict[int, float] = {}
        t0 = Stamp()

        async def publish() -> int:
            return (await writer.publish(PAYLOAD)).seq

        try:
            await _publish_all(count, publish, sent)
            await asyncio.wait_for(asyncio.gather(*consumers), WAIT_S)
        finally:
            for task in consumers:
                task.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
        spent = Stamp().since(t0)
    return _fanout_sample(sent, arrivals, spent)


async def _fanout_jetstream(url: str, count: int) -> Sample:
    async with (
        _server() as (server_url, _),
        _nats(server_url, "bench-jetstream") as nc,
        contextlib.AsyncExitStack() as stack,
    ):
        js = nc.jetstream()
        await js.add_stream(name=JS_STREAM, subjects=[JS_SUBJECT])
        readers = [
            await stack.enter_async_context(_nats(server_url, f"bench-js-feed-{i}"))
            for i in range(FEED_CONNECTIONS)
        ]
        arrivals: list[list[tuple[int, float]]] = [[] for _ in range(FEEDS)]
        done = asyncio.get_running_loop().create_future()
        left = [FEEDS * count]

        def on_msg_of(n: int) -> object:
            async def on_msg(msg: object) -> None:
                arrivals[n].append((msg.metadata.sequence.stream, time.perf_counter()))  # type: ignore[attr-defined]
                left[0] -= 1
                if left[0] == 0 and not done.done():
                    done.set_result(None)

            return on_msg

        subs = [
            await readers[n % FEED_CONNECTIONS]
            .jetstream()
            .subscribe(JS_SUBJECT, cb=on_msg_of(n), ordered_consumer=True)  # type: ignore[arg-type]
            for n in range(FEEDS)
        ]
        sent: dict[int, float] = {}
        t0 = Stamp()

        async def publish() -> int:
            return int((await js.publish(JS_SUBJECT, PAYLOAD)).seq)

        try:
            await _publish_all(count, publish, sent)
            await asyncio.wait_for(done, WAIT_S)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        spent = Stamp().since(t0)
    return _fanout_sample(sent, arrivals, spent)


# -- workers --------------------------------------------------------------------------------------


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


@contextlib.asynccontextmanager
async def _service_processes(workers: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A bus (split ``workers`` ways if more than one) and the persist service in its own processes."""
    with _workdir() as d:
        config = ServerConfig(server_name="conat-bench-workers", mappings=persist_mappings(workers))
        async with NatsServer(config, directory=d / "server") as server:
            env_root = str(d / "persist")
            if workers > 1:
                procs = Workers(workers, ["--url", server.url, "--root", env_root], stop_timeout=2.0, quiet=True)
                await procs.start()
                try:
                    async with await conat.connect(server.url) as probe:
                        spec = PersistService.spec()
                        await wait_for_partitions(probe, spec.subject_for, "persist.*.>", workers, 60.0)
                    yield server.url, procs.pids
                finally:
                    await procs.stop()
                return
            proc = await asyncio.create_subprocess_exec(
                *conat.die_with_parent([sys.executable, "-m", "conat.cli", "persist", "serve",
                                        "--url", server.url, "--root", env_root]),
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                async with await conat.connect(server.url) as probe:
                    with contextlib.suppress(conat.RemoteError):  # a refusal: it serves
                        await probe.request(
                            "persist.hub.api", b"\xc0", timeout=30.0, wait_for_interest=True, encoding="raw"
                        )
                yield server.url, [proc.pid]
            finally:
                proc.terminate()
                await proc.wait()


def _workers_side(workers: int) -> object:
    async def measure(url: str, count: int) -> Sample:
        async with (
            _service_processes(workers) as (server_url, pids),
            await conat.connect(server_url) as client,
        ):
            scopes = [f"project-{uuid.uuid4()}" for _ in range(SCOPES)]
            if workers > 1 and len({partition_of(s, workers) for s in scopes}) < workers:
                raise PersistBenchError("persist workers: the scopes do not cover every partition")
            streams = [
                AStream(client, s, "log", config=StreamConfig(sync="normal"), encoding="raw") for s in scopes
            ]
            per = max(1, count // WORKERS_IN_FLIGHT)

            async def writer(n: int, times: int) -> None:
                s = streams[n % SCOPES]
                for _ in range(times):
                    await s.publish(PAYLOAD)

            await asyncio.gather(*(writer(n, max(1, per // 10)) for n in range(WORKERS_IN_FLIGHT)))
            service0 = _cpu_s(pids)
            t0 = Stamp()
            await asyncio.gather(*(writer(n, per) for n in range(WORKERS_IN_FLIGHT)))
            wall, cpu = Stamp().since(t0)
            service = _cpu_s(pids) - service0
        done = per * WORKERS_IN_FLIGHT
        extra = {CPU_KEY: cpu / done * 1e6, SERVICE_CPU: service / done * 1e6}
        return Sample(done / wall, extra, count=done, elapsed_s=wall)

    return measure


# -- the list ------------------------------------------------------------------------------------


def persist_scale_benches() -> list[Bench]:
    js = "jetstream"
    return [
        Bench("persist_service_kv_1000",
              f"service: N AKV.set then N AKV.get, {WIDE} at a time, sync=normal, 128 B, vs JetStream KV"
              " put/get as many at a time",
              _kv_wide_service, _kv_wide_jetstream,
              (Metric("persist_service_kv_1000", "ops/s", 0.6),
               Metric("persist_service_kv_1000_set", "ops/s", 0.6, "set_ops"),
               Metric("persist_service_kv_1000_get", "ops/s", 1.0, "get_ops")),
              20_000, 1_000, {"size": SIZE, "sync": "normal", "concurrency": WIDE}, baseline=js),
        Bench("persist_changefeed_fanout",
              f"service: {FEEDS} AStream.changefeed consumers on {FEED_CONNECTIONS} connections, N updates"
              f" ({FANOUT_IN_FLIGHT} in flight), publish -> each consumer, vs {FEEDS} ordered push"
              " consumers; cpu per delivered update",
              _fanout_service, _fanout_jetstream,
              (Metric("persist_changefeed_fanout_p50", "ms", 2.0, higher_is_better=False),
               Metric("persist_changefeed_fanout_p99", "ms", 3.0, "p99_ms", higher_is_better=False)),
              1_000, 30, {"size": SIZE, "feeds": FEEDS, "sync": "normal"}, baseline=js),
        Bench("persist_workers",
              f"service processes: AStream.publish to {SCOPES} scopes, {WORKERS_IN_FLIGHT} in flight,"
              f" sync=normal, 128 B: {WORKERS} partitioned workers vs 1 process",
              _workers_side(WORKERS), _workers_side(1),  # type: ignore[arg-type]
              (Metric("persist_workers", "msgs/s", 1.0),
               Metric("persist_workers_service_cpu", "us/op", 0.0, SERVICE_CPU, informational=True)),
              20_000, 1_000, {"size": SIZE, "sync": "normal", "workers": WORKERS, "scopes": SCOPES},
              baseline="1 worker"),
    ]  # fmt: skip
