"""A network partition: the server in a network namespace, its clients across a veth pair whose
link goes down (nothing crosses, nothing is refused).

Rules: while the link is down, requests fail within their deadline (408, or 503 once the client
has declared the link dead), never hang; a link down for 5 s (shorter than the client's dead-link
detection, about 3 ping intervals) heals without a reconnect; a link down for longer than that
ends in a clear state (``RECONNECTING``, every in-flight request failed) and, once the link is
back, the clients reconnect and a queue group serves every request again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conat
from conat import ClientState, ServerConfig

from .conftest import Requests, failures, longest, report
from .netns import PartitionedServer

pytestmark = pytest.mark.anyio

REQUEST_TIMEOUT = 1.0


@pytest.fixture
async def partitioned(tmp_path: Path) -> AsyncIterator[PartitionedServer]:
    async with PartitionedServer(tmp_path / "netns", ServerConfig(server_name="across")) as server:
        yield server


async def _echo(msg: conat.Message) -> None:
    await msg.respond(msg.raw, encoding="raw")


class Traffic:
    """Requests (to a queue group of two responders) and publishes through the link, recorded."""

    def __init__(self, requester: conat.Client, publisher: conat.Client) -> None:
        self.requests = Requests(requester, "fault.svc", REQUEST_TIMEOUT)
        self.publisher = publisher
        self.published = 0
        self.stop = self.requests.stop

    async def publishes(self) -> None:
        while not self.stop.is_set():
            await self.publisher.publish("fault.tick", self.published)
            self.published += 1
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def traffic_across(
    server: PartitionedServer,
) -> AsyncIterator[tuple[Traffic, list[int], list[conat.Client]]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(await conat.connect(server.url, name=f"c{i}")) for i in range(3)
        ]
        requester, responder_a, responder_b = clients
        for responder in (responder_a, responder_b):
            await responder.subscribe("fault.svc", queue="q", callback=_echo)
        received: list[int] = []
        await responder_a.subscribe("fault.tick", dispatch=lambda m: received.append(m.data))
        traffic = Traffic(requester, requester)
        tasks = [asyncio.create_task(traffic.requests.run()), asyncio.create_task(traffic.publishes())]
        try:
            yield traffic, received, clients
        finally:
            traffic.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _until(check: object, timeout: float) -> float:
    started = time.perf_counter()
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def test_a_link_down_for_5_s_heals_without_a_reconnect(partitioned: PartitionedServer) -> None:
    async with traffic_across(partitioned) as (traffic, received, clients):
        await _until(lambda: len(received) > 20 and traffic.requests.served_after(0), 10)
        down = time.perf_counter()
        partitioned.partition()
        await asyncio.sleep(5.0)
        partitioned.heal()
        healed = time.perf_counter()
        back = await _until(lambda: traffic.requests.served_after(healed), 10)
        sent = traffic.published
        await _until(lambda: len(received) >= sent - 5, 10)
        during = traffic.requests.between(down, healed)
        failed = failures(during)
        report(
            "partition 5 s",
            requests_during=len(during),
            failed=failed,
            max_request_s=longest(during),
            requests_back_after_heal_s=back,
            published=sent,
            delivered=len(received),
            states=[c.state.value for c in clients],
        )
        assert all(c.state is ClientState.CONNECTED for c in clients)
        assert set(failed) <= {408, 503}
        assert longest(during) < REQUEST_TIMEOUT + 0.5  # never hangs
        assert sorted(received) == list(range(len(received)))  # TCP kept what crossed late: no gap


@pytest.mark.slow
async def test_a_link_down_longer_than_the_dead_link_time_ends_clearly_and_recovers(
    partitioned: PartitionedServer,
) -> None:
    async with traffic_across(partitioned) as (traffic, _, clients):
        await _until(lambda: traffic.requests.served_after(0), 10)
        down = time.perf_counter()
        partitioned.partition()
        detected = await _until(lambda: all(c.state is ClientState.RECONNECTING for c in clients), 30)
        await asyncio.sleep(max(0.0, 20.0 - (time.perf_counter() - down)))
        partitioned.heal()
        healed = time.perf_counter()
        reconnected = await _until(lambda: all(c.state is ClientState.CONNECTED for c in clients), 30)
        await asyncio.sleep(1.0)
        window_start = time.perf_counter()
        await asyncio.sleep(5.0)  # every request after the heal, to a queue group of two, is served
        after = traffic.requests.between(window_start, time.perf_counter())
        during = traffic.requests.between(down, healed)
        failed = failures(during)
        report(
            "partition 20 s",
            dead_link_detected_s=detected,
            reconnected_after_heal_s=reconnected,
            failed_during=failed,
            max_request_s=longest(during),
            requests_after=len(after),
            failed_after=failures(after),
        )
        assert set(failed) <= {408, 503} and longest(during) < REQUEST_TIMEOUT + 0.5
        assert after and not failures(after), f"requests failed after the heal: {failures(after)}"
