"""A bus on a 3-node cluster (real nats-servers with routes, loopback): one security domain.

Node n0 is the bus's authority (``AuthBus``: its directory holds the secrets, the auth store and
the audit log); n1 and n2 joined with the join file (``AuthNode``: no seed). Two responders decide:
the bus's own, on n0, and a second one connected to n2, both on the bus directory. Whatever node a
client reaches and whichever responder answers, a revoke kicks every connection of the principal on
every node and none comes back, an old token is refused everywhere, and a one-time token works once
per bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import conat
from conat import ClientState, ClusterConfig, ServerConfig, Unauthorized
from conat.auth import AuthBus, AuthNode, AuthResponder, AuthStoreError, BusJoin
from subjects import Scope

from .conftest import BUS, Mint, P, until

pytestmark = pytest.mark.anyio


def account(n: int) -> str:
    return f"account-{uuid.UUID(int=3000 + n)}"


@dataclass
class AuthCluster:
    bus: AuthBus
    nodes: list[AuthNode]
    second: AuthResponder
    join: BusJoin
    join_file: Path

    @property
    def urls(self) -> list[str]:
        return [self.bus.url, *(n.url for n in self.nodes)]


@contextlib.asynccontextmanager
async def auth_cluster(mint: Mint, directory: Path) -> AsyncIterator[AuthCluster]:
    async with contextlib.AsyncExitStack() as stack:
        bus = await AuthBus.start(
            bus=BUS,
            public_keys=mint.keyring.public_keys(),
            directory=directory / "bus",
            config=ServerConfig(server_name="n0", cluster=ClusterConfig("c")),
        )
        stack.push_async_callback(bus.aclose)
        join_file = directory / "join.json"
        bus.join().write(join_file)
        join = BusJoin.read(join_file)
        nodes = []
        for name in ("n1", "n2"):
            node = await AuthNode.start(join, node=name, directory=directory / name)
            stack.push_async_callback(node.aclose)
            nodes.append(node)
        hub = await conat.connect(bus.url, credentials=mint.token("hub"))
        async with hub:
            assert len(await hub.cluster_servers(15, at_least=3)) == 3
        second = await AuthResponder.start(
            bus=BUS, url=[nodes[1].url], public_keys=mint.keyring.public_keys(), directory=directory / "bus"
        )
        stack.push_async_callback(second.aclose)
        yield AuthCluster(bus, nodes, second, join, join_file)


@pytest.fixture(scope="module")
async def cluster(mint: Mint, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthCluster]:
    async with auth_cluster(mint, tmp_path_factory.mktemp("auth-cluster")) as c:
        yield c


async def refused_on(cluster: AuthCluster, url: str, token: str) -> str:
    """Connect to ``url`` with ``token``: it must be refused; the audit log's reason for it."""
    audit = cluster.bus.audit
    before = len(await audit.entries())
    with pytest.raises(Unauthorized):
        await conat.connect(url, token=token, connect_attempts=1)
    await until(lambda: True)
    entries = (await audit.entries())[before:]
    refusals = [e for e in entries if e.result == "refuse"]
    assert refusals, "the refusal was not audited"
    return refusals[-1].reason


async def test_a_revoke_kicks_the_principal_on_every_node_and_none_comes_back(
    cluster: AuthCluster, mint: Mint
) -> None:
    principal = account(1)
    token = mint.token(principal, Scope(projects=(P,)))
    clients = [await conat.connect(url, credentials=token) for url in cluster.urls for _ in range(2)]
    try:
        servers = {c.statistics().url for c in clients}
        assert len(servers) == 3
        deciders = [cluster.bus.responder.decider, cluster.second.decider]
        granted = [len(d.connections.of(principal)) for d in deciders]
        assert sum(granted) == 6
        started = time.perf_counter()
        kicked = asyncio.create_task(
            until(lambda: all(c.state is not ClientState.CONNECTED for c in clients), timeout=10)
        )
        revocation = await mint.revoke(cluster.bus, principal)
        await kicked
        kicked_in = time.perf_counter() - started
        await until(lambda: all(c.state is ClientState.CLOSED for c in clients), timeout=10)
        closed_in = time.perf_counter() - started
        print(
            f"\nrevoke: 6 connections on 3 nodes (granted {granted[0]} by the bus's responder, {granted[1]}"
            f" by the second), all kicked in {kicked_in * 1000:.0f} ms, all refused and closed in"
            f" {closed_in * 1000:.0f} ms; this responder kicked {revocation.kicked}"
        )
        assert all(isinstance(c.close_reason, Unauthorized) for c in clients)
        await asyncio.sleep(1.0)  # nobody is readmitted by another node
        assert all(c.state is ClientState.CLOSED for c in clients)
        for url in cluster.urls:
            assert await refused_on(cluster, url, token) == "revoked"
        kicks = {(e.server, e.cid) for e in await cluster.bus.audit.entries(principal) if e.result == "kick"}
        assert len(kicks) == 6
    finally:
        for c in clients:
            await c.aclose()


async def test_an_old_token_is_refused_on_every_node(cluster: AuthCluster, mint: Mint) -> None:
    principal = account(2)
    old = mint.token(principal)
    for url in cluster.urls:
        await (await conat.connect(url, credentials=old)).aclose()
    await mint.revoke(cluster.bus, principal)
    for url in cluster.urls:
        assert await refused_on(cluster, url, old) == "revoked"
    fresh = mint.token(principal)
    for url in cluster.urls:
        await (await conat.connect(url, credentials=fresh)).aclose()


async def test_a_one_time_token_works_once_per_bus(cluster: AuthCluster, mint: Mint) -> None:
    once = mint.token(f"host-{uuid.UUID(int=3100)}", once=True)
    await (await conat.connect(cluster.urls[0], credentials=once)).aclose()
    for url in cluster.urls:
        assert await refused_on(cluster, url, once) == "replayed"
    # the same token on every node at once: one connection, whichever responder decides
    for n in range(3):
        racing = mint.token(f"host-{uuid.UUID(int=3101 + n)}", once=True)

        async def attempt(url: str, racing: str = racing) -> conat.Client | None:
            try:
                return await conat.connect(url, token=racing, connect_attempts=1)
            except Unauthorized:
                return None

        results = await asyncio.gather(*(attempt(url) for url in cluster.urls))
        winners = [c for c in results if c is not None]
        assert len(winners) == 1
        await winners[0].aclose()


async def test_a_revoke_kicks_connections_whose_responder_is_gone(
    cluster: AuthCluster, mint: Mint, tmp_path: Path
) -> None:
    """A responder's kick list dies with it; the revoke's sweep of every node still finds its
    connections."""
    principal = account(3)
    token = mint.token(principal)
    third = await AuthResponder.start(
        bus=BUS,
        url=[cluster.nodes[0].url],
        public_keys=mint.keyring.public_keys(),
        directory=cluster.bus.directory,
    )
    clients: list[conat.Client] = []
    try:
        async with asyncio.timeout(20):
            while not third.decider.connections.of(principal):  # the queue group picks at random
                clients.append(await conat.connect(cluster.urls[len(clients) % 3], credentials=token))
    finally:
        await third.aclose()
    try:
        orphans = len(third.decider.connections.of(principal))
        await mint.revoke(cluster.bus, principal)
        await until(lambda: all(c.state is ClientState.CLOSED for c in clients), timeout=10)
        print(f"\n{len(clients)} connections, {orphans} granted by a responder that is gone: all kicked")
    finally:
        for c in clients:
            await c.aclose()


async def test_the_join_file_is_private_and_holds_no_seed(cluster: AuthCluster) -> None:
    raw = cluster.join_file.read_bytes()
    assert cluster.join_file.stat().st_mode & 0o777 == 0o600
    secrets_dir = cluster.bus.directory / "secrets"
    for seed in ("issuer.seed", "xkey.seed"):
        assert (secrets_dir / seed).read_bytes().strip() not in raw
    assert "password" not in repr(cluster.join)
    assert cluster.join.routes == (cluster.bus.server.cluster_url,)


async def test_a_second_authority_for_the_bus_is_refused(
    cluster: AuthCluster, mint: Mint, tmp_path: Path
) -> None:
    """Another bus directory with the same secrets (what three AuthBus nodes sharing secrets used
    to be): its responder would decide with a store of its own, so it refuses to start."""
    rogue = tmp_path / "rogue"
    rogue.mkdir(mode=0o700)
    shutil.copytree(cluster.bus.directory / "secrets", rogue / "secrets")
    with pytest.raises(AuthStoreError, match="one authority"):
        await AuthBus.start(
            bus=BUS,
            public_keys=mint.keyring.public_keys(),
            directory=rogue,
            config=ServerConfig(server_name="rogue", cluster=ClusterConfig("c", routes=cluster.join.routes)),
        )


async def test_the_responders_fail_over_when_their_node_dies(mint: Mint, tmp_path: Path) -> None:
    async with auth_cluster(mint, tmp_path) as c:
        await c.second.aclose()  # one responder, on n0
        await c.bus.server.kill()
        died = time.perf_counter()
        async with asyncio.timeout(15):
            while True:  # an attempt with no responder would wait out the callout's timeout (2 s)
                try:
                    client = await conat.connect(
                        c.nodes[0].url,
                        credentials=mint.token(account(4)),
                        connect_attempts=1,
                        connect_timeout=0.05,
                    )
                    break
                except conat.ConnectError:
                    await asyncio.sleep(0.01)
        print(
            f"\nn0 killed: a new client on n1 authorized {(time.perf_counter() - died) * 1000:.0f} ms later"
        )
        await client.aclose()
