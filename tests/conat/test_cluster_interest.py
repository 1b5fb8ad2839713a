"""Interest visible cluster-wide: ``subscribe(cluster_wide=True)`` on a real 3-node cluster.

A subscription is live on its own server when ``subscribe`` returns; the other nodes learn of it
over their routes a moment later, so a publish from another node right after it can be lost.
With ``cluster_wide=True`` none is (``conat._interest``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conat
from conat import NatsServer, ServerConfig
from conat.testing import LocalCluster

pytestmark = pytest.mark.anyio

TRIES = 60


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(tmp_path, 3) as c:
        yield c


async def _echo(msg: conat.Message) -> None:
    await msg.respond(msg.raw, encoding="raw")


async def _lost(cluster: LocalCluster, *, cluster_wide: bool, tries: int = TRIES) -> tuple[int, int]:
    """Subscribe on node 0, publish at once from nodes 1 and 2, and request from node 1: how many
    publishes were lost and how many requests found no responder."""
    async with contextlib.AsyncExitStack() as stack:
        a, b, c = [await stack.enter_async_context(await conat.connect(url)) for url in cluster.urls]
        lost = refused = 0
        for i in range(tries):
            got: list[bytes] = []
            arrived = asyncio.Event()

            def take(msg: conat.Message, got: list[bytes] = got, arrived: asyncio.Event = arrived) -> None:
                got.append(msg.raw)
                if len(got) == 2:
                    arrived.set()

            sub = await a.subscribe(f"t.{i}", dispatch=take, cluster_wide=cluster_wide)
            await b.publish(f"t.{i}", b"b", encoding="raw")
            await c.publish(f"t.{i}", b"c", encoding="raw")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 1.0)
            lost += 2 - len(got)
            await sub.unsubscribe()
            service = await a.subscribe(f"svc.{i}", callback=_echo, cluster_wide=cluster_wide)
            try:
                await b.request(f"svc.{i}", b"x", encoding="raw", timeout=5)
            except conat.NoResponders:
                refused += 1
            await service.unsubscribe()
        return lost, refused


async def test_a_publish_from_another_node_right_after_subscribe_is_never_lost(cluster: LocalCluster) -> None:
    before = await _lost(cluster, cluster_wide=False)
    after = await _lost(cluster, cluster_wide=True)
    print(
        f"\n{TRIES} tries: without cluster_wide {before[0]}/{2 * TRIES} publishes lost, {before[1]} requests"
        f" refused (no responders); with it {after[0]} lost, {after[1]} refused"
    )
    assert after == (0, 0)


async def test_flush_cluster_wide_names_every_node(cluster: LocalCluster) -> None:
    async with await conat.connect(cluster.urls[1]) as client:
        await client.subscribe("x")
        await client.flush(cluster_wide=True)
        assert await client.cluster_servers() == ("n0", "n1", "n2")


async def test_a_node_killed_leaves_the_cluster_it_waits_for(cluster: LocalCluster) -> None:
    """The servers waited for are the ones the latest INFO lists: after a node died and the others
    noticed, a cluster-wide subscribe returns instead of timing out."""
    async with await conat.connect(cluster.urls[0]) as client:
        await cluster.kill(2)
        async with asyncio.timeout(10):
            while True:  # the route drops at once (a closed socket); the INFO follows
                try:
                    await client.subscribe("after.kill", cluster_wide=True)
                    break
                except conat.Timeout:
                    continue
        assert sorted(client.cluster_urls) == sorted(u.removeprefix("nats://") for u in cluster.urls[:2])


async def test_on_a_single_server_it_costs_one_flush(tmp_path: Path) -> None:
    async with (
        NatsServer(ServerConfig(), directory=tmp_path / "s") as server,
        await conat.connect(server.url) as client,
    ):
        sub = await client.subscribe("single", cluster_wide=True)
        assert not sub.closed
        assert len(await client.cluster_servers()) == 1  # in no cluster: itself alone


async def test_a_grant_without_the_probe_is_refused_and_leaves_nothing(cluster: LocalCluster) -> None:
    from subjects import Permissions

    perms = Permissions(publish_allow=("a.>",), subscribe_allow=("a.>", "_INBOX.>"))
    async with await conat.connect(cluster.urls[0], permissions=perms) as client:
        with pytest.raises(conat.Forbidden):
            await client.subscribe("a.x", cluster_wide=True)
        assert client.statistics().subscriptions == 0


async def test_a_stalled_node_delays_a_subscription_but_never_fails_it(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose route is up but which answers nothing (SIGSTOP) stays in the cluster's list:
    a service's subscription waits for it at most the interest timeout, then is kept (services
    must start); an explicit cluster-wide flush says the truth (Timeout)."""
    import os
    import signal

    import conat._interest

    monkeypatch.setattr(conat._interest, "DEFAULT_INTEREST_TIMEOUT", 0.5)
    pid = cluster.nodes[2].pid
    assert pid is not None
    async with await conat.connect(cluster.urls[0]) as a, await conat.connect(cluster.urls[1]) as b:
        os.kill(pid, signal.SIGSTOP)
        try:
            sub = await a.subscribe("stalled", cluster_wide=True)
            with pytest.raises(conat.Timeout, match="2/3 servers"):
                await a.flush(timeout=0.5, cluster_wide=True)
        finally:
            os.kill(pid, signal.SIGCONT)
        await b.publish("stalled", b"through a node that confirmed", encoding="raw")
        msg = await asyncio.wait_for(anext(aiter(sub)), 5)
        assert msg.raw == b"through a node that confirmed"
