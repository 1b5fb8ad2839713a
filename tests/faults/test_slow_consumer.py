"""A slow consumer, on a subscription and on a persist changefeed.

Rules: memory stays bounded (a subscription buffers at most ``max_buffer`` messages and counts
what it drops; a changefeed fetches the next page only when its reader asks, so a reader that
stops holds nothing more); bystanders are unaffected (a subscription on the same connection gets
every message; another changefeed on the same stream keeps up); the slow changefeed, when it reads
again, gets every change once, in order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

import conat
from conat import NatsServer
from persist import AStream, PersistServer, Placement, PlacementConfig

from .conftest import percentile, report, rss_mib

pytestmark = pytest.mark.anyio

FLOOD, PAYLOAD, BYSTANDER_EVERY, MAX_BUFFER = 30_000, 1024, 100, 1_000


async def test_a_slow_subscriber_drops_bounded_and_a_bystander_gets_everything(
    nats_server: NatsServer,
) -> None:
    async with (
        await conat.connect(nats_server.url) as consumer,
        await conat.connect(nats_server.url) as producer,
    ):
        slow = await consumer.subscribe("fault.flood", max_buffer=MAX_BUFFER)
        latencies: list[float] = []
        await consumer.subscribe(
            "fault.bystander", dispatch=lambda m: latencies.append(time.perf_counter() - m.data)
        )
        read = 0
        high_water = 0

        async def read_slowly() -> None:
            nonlocal read, high_water
            async for _ in slow:
                read += 1
                high_water = max(high_water, slow.statistics().buffered)
                await asyncio.sleep(0.001)

        reader = asyncio.create_task(read_slowly())
        before = rss_mib()
        payload = b"x" * PAYLOAD
        bystander_sent = 0
        for i in range(FLOOD):
            await producer.publish("fault.flood", payload, encoding="raw")
            if i % BYSTANDER_EVERY == 0:
                await producer.publish("fault.bystander", time.perf_counter())
                bystander_sent += 1
        await producer.flush()
        async with asyncio.timeout(30):
            while len(latencies) < bystander_sent:
                await asyncio.sleep(0.01)
        await consumer.flush()
        stats = slow.statistics()
        grown = rss_mib() - before
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    report(
        "slow subscriber",
        flood=FLOOD,
        flood_mib=FLOOD * PAYLOAD / 2**20,
        read=read,
        dropped=stats.dropped,
        buffer_high_water=high_water,
        rss_growth_mib=grown,
        bystander_received=f"{len(latencies)}/{bystander_sent}",
        bystander_p99_ms=percentile(latencies, 0.99) * 1000,
    )
    assert stats.dropped > 0 and high_water <= MAX_BUFFER  # bounded: the rest is dropped and counted
    assert stats.dropped + read + stats.buffered >= FLOOD - MAX_BUFFER
    assert len(latencies) == bystander_sent  # the bystander on the same connection lost nothing
    assert grown < FLOOD * PAYLOAD / 2**20 / 2  # far less than what was sent


async def test_a_changefeed_that_stops_reading_holds_nothing_and_catches_up(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    total = 1000
    async with await conat.connect(nats_server.url) as service_client:
        placement = Placement(PlacementConfig(root=str(tmp_path / "sync")))
        async with (
            PersistServer(service_client, placement),
            await conat.connect(nats_server.url) as writer_client,
            await conat.connect(nats_server.url) as slow_client,
            await conat.connect(nats_server.url) as bystander_client,
        ):
            scope = f"project-{uuid.uuid4()}"
            writer = AStream(writer_client, scope, "feed", timeout=30)
            await writer.publish(-1)
            slow_feed = AStream(slow_client, scope, "feed").changefeed(0, wait=1.0)
            first = await anext(slow_feed)  # reads once, then stops reading
            bystander: list[int] = []

            async def follow() -> None:
                async for change in AStream(bystander_client, scope, "feed").changefeed(0, wait=1.0):
                    bystander.extend(m.seq for m in change.messages)
                    if len(bystander) > total:
                        return

            follower = asyncio.create_task(follow())
            in_before = slow_client.statistics().in_bytes
            for i in range(0, total, 100):
                await asyncio.gather(*(writer.publish(v) for v in range(i, i + 100)))
            await asyncio.wait_for(follower, 30)
            held = slow_client.statistics().in_bytes - in_before  # what reached the stopped reader
            seqs = [m.seq for m in first.messages]
            async for change in slow_feed:
                seqs.extend(m.seq for m in change.messages)
                if len(seqs) > total:
                    break
            await slow_feed.aclose()
    report(
        "slow changefeed",
        written=total + 1,
        bystander_received=len(bystander),
        bytes_to_the_stopped_reader=held,
        slow_received_after=len(seqs),
    )
    assert bystander == list(range(1, total + 2))
    assert held < 64 * 1024  # at most the page it had asked for before it stopped: nothing piles up
    assert seqs == list(range(1, total + 2))  # once each, in order, no gap
