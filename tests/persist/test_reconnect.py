"""Changefeeds across a nats-server restart: a long poll whose reply was lost is sent again at once.

A real nats-server (this test's own, killed and restarted on the same port), a real persist service
and three connections: the service's, a writer's and a follower's that reconnects later than the
others, so the service answers the follower's waiting read while the follower is still away (core
NATS drops that reply). The follower must not wait for its attempt to time out (``wait`` + 5 s).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import conat
from conat import ClientState
from conat._server import NatsServer
from persist import AStream, PersistServer, Placement, PlacementConfig

pytestmark = pytest.mark.anyio

FEED_WAIT = 30.0  # a lost long poll would stall the feed for 35 s


async def until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_waiting_changefeed_is_sent_again_when_its_client_reconnects(
    fresh_nats_server: NatsServer, tmp_path: Path, scope: str
) -> None:
    server = fresh_nats_server
    placement = Placement(PlacementConfig(root=str(tmp_path / "sync")))
    fast = {"reconnect_time_wait": 0.1}
    async with (
        await conat.connect(server.url, name="service", **fast) as service_client,
        await conat.connect(server.url, name="writer", **fast) as writer_client,
        await conat.connect(server.url, name="follower", reconnect_time_wait=2.0) as follower_client,
        PersistServer(service_client, placement),
    ):
        writer = AStream(writer_client, scope, "feed", timeout=30)
        await writer.publish(0)
        feed = AStream(follower_client, scope, "feed").changefeed(1, wait=FEED_WAIT)
        nxt = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.5)  # the long poll waits in the service

        await server.kill()
        await until(lambda: follower_client.state is ClientState.RECONNECTING)
        await server.start()
        await until(lambda: service_client.is_connected and writer_client.is_connected)
        assert follower_client.state is ClientState.RECONNECTING  # still away: its reply will be lost
        await writer.publish(1)  # wakes the waiting read: the service answers into the void

        change = await asyncio.wait_for(nxt, 10)  # was FEED_WAIT + 5 s after the first attempt
        assert [m.value() for m in change.messages] == [1]
        writes = [asyncio.ensure_future(writer.publish(i)) for i in range(2, 5)]
        seen: list[int] = []
        while len(seen) < 3:  # and the feed goes on, each seq once
            seen += [m.value() for m in (await asyncio.wait_for(anext(feed), 10)).messages]
        assert seen == [2, 3, 4]
        await asyncio.gather(*writes)
        await feed.aclose()
