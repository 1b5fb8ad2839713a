"""Soak: steady traffic on a 3-node cluster with a persist service, and a fault every 30 s, for an
hour (``CONAT_SOAK_SECONDS``, ``CONAT_SOAK_FAULT_EVERY`` to change them).

The faults take turns: kill -9 of a node (restarted 5 s later), kill -9 of the persist service
(restarted at once, on another node), SIGSTOP of a node for 5 s. The traffic: requests to a queue
group of two responders on two nodes, a publish/subscribe flow, persist writes with a changefeed.

Every fault period it prints one line: RSS of the test process (all the clients) and of the persist
service, open file descriptors of both, requests and their p99 latency, request errors; at the end
the RSS slope (MiB per hour, least squares over the samples after the first) and the totals.

Rules: no acknowledged persist write lost, the changefeed saw each once in order; no request took
longer than its deadline; file descriptors do not grow with time (the last sample is within a few
of the first, after the first fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

import conat
from conat.testing import LocalCluster
from persist import AStream
from tests.persist.test_service_crash import ServiceProcess

from .conftest import Requests, failures, longest, open_fds, percentile, report, rss_mib

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(0)]

DURATION = float(os.environ.get("CONAT_SOAK_SECONDS", "3600"))
FAULT_EVERY = float(os.environ.get("CONAT_SOAK_FAULT_EVERY", "30"))
REQUEST_TIMEOUT = 2.0


async def _echo(msg: conat.Message) -> None:
    await msg.respond(msg.raw, encoding="raw")


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per hour."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / var * 3600


async def test_soak_with_a_fault_every_30_s(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cluster", 3) as cluster, contextlib.AsyncExitStack() as stack:
        urls = ",".join(cluster.urls)
        service = ServiceProcess(cluster.urls[0], tmp_path / "sync")
        await asyncio.to_thread(service.start)
        stack.callback(lambda: service.kill() if service.proc and service.proc.poll() is None else None)
        clients = [
            await stack.enter_async_context(await conat.connect(urls, name=f"soak{i}")) for i in range(5)
        ]
        requester, responder_a, responder_b, publisher, writer_client = clients
        for responder in (responder_a, responder_b):
            await responder.subscribe("soak.svc", queue="q", callback=_echo, cluster_wide=True)
        ticks: list[int] = []
        await responder_a.subscribe("soak.tick", dispatch=lambda m: ticks.append(1), cluster_wide=True)
        stream = AStream(writer_client, f"project-{uuid.uuid4()}", "soak", timeout=120)
        feed_stream = AStream(responder_b, stream.scope, "soak", timeout=120)
        requests = Requests(requester, "soak.svc", REQUEST_TIMEOUT)
        stop = requests.stop
        acked: list[int] = []
        fed: list[int] = []

        async def publishes() -> None:
            while not stop.is_set():
                with contextlib.suppress(conat.ConatError):
                    await publisher.publish("soak.tick", 1)
                await asyncio.sleep(0.01)

        async def writes() -> None:
            i = 0
            while not stop.is_set():
                result = await stream.publish(i, msg_id=f"soak-{i}")
                acked.append(result.seq)
                i += 1
                await asyncio.sleep(0.02)

        async def feed() -> None:
            async for change in feed_stream.changefeed(0, wait=1.0):
                fed.extend(m.seq for m in change.messages)

        async def fault(n: int) -> str:
            kind = n % 3
            if kind == 0:
                victim = 1 + (n // 3) % 2  # not node 0's persist link every time
                await cluster.kill(victim)
                await asyncio.sleep(5)
                await cluster.restart(victim)
                return f"kill -9 node {victim}"
            if kind == 1:
                service.kill()
                service.url = cluster.urls[(n // 3) % 3]
                await asyncio.to_thread(service.start)
                return "kill -9 persist"
            victim = (n // 3) % 3
            pid = cluster.nodes[victim].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(5)
            finally:
                os.kill(pid, signal.SIGCONT)
            return f"SIGSTOP node {victim} 5 s"

        tasks = [asyncio.create_task(t()) for t in (requests.run, publishes, writes)]
        feeder = asyncio.create_task(feed())
        started = time.perf_counter()
        rss: list[tuple[float, float]] = []
        service_rss: list[tuple[float, float]] = []
        fds: list[int] = []
        n = 0
        period = time.perf_counter()
        try:
            while time.perf_counter() - started < DURATION:
                await asyncio.sleep(max(0.0, FAULT_EVERY - 5))
                what = await fault(n)
                window = requests.between(period)
                period = time.perf_counter()
                now = time.perf_counter() - started
                assert service.proc is not None
                rss.append((now, rss_mib()))
                service_rss.append((now, rss_mib(service.proc.pid)))
                fds.append(open_fds())
                report(
                    f"soak t={now:.0f}s after {what}",
                    rss_mib=rss[-1][1],
                    persist_rss_mib=service_rss[-1][1],
                    fds=fds[-1],
                    persist_fds=open_fds(service.proc.pid),
                    requests=len(window),
                    p99_ms=percentile([took for _, took, code in window if code is None], 0.99) * 1000,
                    errors=failures(window),
                    acked_writes=len(acked),
                )
                n += 1
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            async with asyncio.timeout(120):  # the feed catches up with the last acknowledged write
                while len(fed) < len(acked):
                    await asyncio.sleep(0.1)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        stored = [m.seq for batch in [b async for b in stream.get_all()] for m in batch]
        report(
            "soak",
            duration_s=time.perf_counter() - started,
            faults=n,
            rss_slope_mib_per_h=_slope(rss[1:]),
            persist_rss_slope_mib_per_h=_slope(service_rss[1:]),
            fds_first_last=(fds[0], fds[-1]) if fds else None,
            acked_writes=len(acked),
            ticks=len(ticks),
            worst_request_s=longest(requests.outcomes),
        )
        assert stored == acked and fed == acked  # nothing acknowledged lost, fed once each in order
        assert longest(requests.outcomes) < REQUEST_TIMEOUT + 1.0  # no request outlived its deadline
        assert len(fds) < 2 or fds[-1] <= fds[0] + 8  # no descriptor leak over time
