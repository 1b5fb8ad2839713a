"""kill -9 of a cluster node during traffic: its clients fail over to the other nodes.

Rules: a subscription on the killed node delivers again within 5 s (it is re-sent on another
node); a request whose node dies fails fast with a retriable code (503 ``Disconnected``, or 503
``NoResponders`` / 408 ``Timeout`` while the link is being re-made) and never hangs past its
deadline; requests succeed again once the client is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import conat
from conat.testing import LocalCluster

from .conftest import Requests, Stopwatch, failures, longest, percentile, report

pytestmark = pytest.mark.anyio

RETRIABLE = {503, 408}
REQUEST_TIMEOUT = 2.0


async def test_kill_9_of_a_node_during_traffic(cluster: LocalCluster) -> None:
    victim, service_node, publisher_node = cluster.urls
    async with contextlib.AsyncExitStack() as stack:
        sub_client = await stack.enter_async_context(await conat.connect(victim, name="fault-sub"))
        requester = await stack.enter_async_context(await conat.connect(victim, name="fault-req"))
        service = await stack.enter_async_context(await conat.connect(service_node, name="fault-svc"))
        publisher = await stack.enter_async_context(await conat.connect(publisher_node, name="fault-pub"))

        async def slow_echo(msg: conat.Message) -> None:
            await asyncio.sleep(0.2)  # so that requests are in flight when the node dies
            await msg.respond(msg.raw, encoding="raw")

        await service.subscribe("fault.echo", queue="q", callback=slow_echo, cluster_wide=True)
        ticks: list[float] = []
        await sub_client.subscribe(
            "fault.tick", dispatch=lambda m: ticks.append(time.perf_counter()), cluster_wide=True
        )

        stop = asyncio.Event()

        async def publish() -> None:
            n = 0
            while not stop.is_set():
                await publisher.publish("fault.tick", n)
                n += 1
                await asyncio.sleep(0.005)

        requests = [Requests(requester, "fault.echo", REQUEST_TIMEOUT) for _ in range(4)]

        tasks = [asyncio.create_task(publish()), *(asyncio.create_task(r.run()) for r in requests)]
        try:
            async with asyncio.timeout(10):
                while len(ticks) < 50 or sum(len(r.outcomes) for r in requests) < 8:
                    await asyncio.sleep(0.02)
            killed_at = time.perf_counter()
            clock = Stopwatch()
            await cluster.kill(0)
            async with asyncio.timeout(15):
                while not any(t > killed_at + 0.05 for t in ticks):
                    await asyncio.sleep(0.01)
            sub_back = clock()
            async with asyncio.timeout(15):
                while not any(r.served_after(killed_at) for r in requests):
                    await asyncio.sleep(0.01)
            req_back = clock()
        finally:
            stop.set()
            for r in requests:
                r.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        around = [o for r in requests for o in r.between(killed_at - 1.0)]
        failed = failures(around)
        report(
            "kill -9 of a cluster node",
            subscription_back_s=sub_back,
            requests_back_s=req_back,
            requests_around_the_kill=len(around),
            failed=failed,
            max_request_s=longest(around),
            p99_request_s=percentile([took for _, took, _ in around], 0.99),
        )
        assert sub_back < 5.0, f"the subscription delivered again only after {sub_back:.2f}s"
        assert set(failed) <= RETRIABLE, failed  # never a non-retriable error
        assert longest(around) < REQUEST_TIMEOUT + 0.5  # never hangs past its deadline
        assert sub_client.is_connected and requester.connected_url != victim
