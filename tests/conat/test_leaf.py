"""Leaf nodes on real nats-servers: one link to a hub cluster with failover URLs, and link
permissions that let a host's leaf carry only the master <-> host subjects of the policy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import conat
from conat import LeafNodeConfig, LeafUser, NatsServer, ServerConfig
from conat.auth import AuthBus, Keyring, TokenIssuer
from conat.testing import LocalCluster
from subjects import MASTER_BUS, Scope, leaf_permissions

pytestmark = pytest.mark.anyio

H1 = str(uuid.UUID(int=41))
H2 = str(uuid.UUID(int=42))
P2 = str(uuid.UUID(int=43))  # a project on host 2


def _leafz(monitor_url: str) -> int:
    with urllib.request.urlopen(f"{monitor_url}/leafz", timeout=5) as response:
        return int(json.load(response)["leafnodes"])


async def _until_delivered(
    sender: conat.Client, subject: str, received: list[bytes], timeout: float = 10
) -> None:
    """Publish on ``subject`` until something arrives (interest crosses a leaf link asynchronously)."""
    async with asyncio.timeout(timeout):
        while not received:
            await sender.publish(subject, b"ping", encoding="raw")
            await asyncio.sleep(0.05)


async def test_one_remote_with_several_urls_is_one_link_that_fails_over(tmp_path: Path) -> None:
    def with_leaf_listener(_: int, config: ServerConfig) -> ServerConfig:
        return replace(config, leafnodes=LeafNodeConfig(listen_port=0), monitor_port=0)

    async with LocalCluster(tmp_path / "hub", 3, node_config=with_leaf_listener) as hub:
        urls = [node.leafnode_url for node in hub.nodes]
        assert all(urls)
        leaf_config = ServerConfig(
            server_name="leaf", leafnodes=LeafNodeConfig(remotes=[u for u in urls if u])
        )
        async with (
            NatsServer(leaf_config, directory=tmp_path / "leaf") as leaf,
            contextlib.AsyncExitStack() as stack,
        ):
            on_hub = await stack.enter_async_context(await conat.connect(hub.urls))
            on_leaf = await stack.enter_async_context(await conat.connect(leaf.url))
            received: list[bytes] = []
            await on_hub.subscribe("up", dispatch=lambda m: received.append(m.raw), cluster_wide=True)
            await _until_delivered(on_leaf, "up", received)
            received.clear()
            for i in range(50):
                await on_leaf.publish("up", str(i).encode(), encoding="raw")
            await on_leaf.flush()
            async with asyncio.timeout(5):
                while len(received) < 50:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert received == [str(i).encode() for i in range(50)]  # once each: one link
            links = [_leafz(node.monitor_url or "") for node in hub.nodes]
            assert sorted(links) == [0, 0, 1]
            linked = links.index(1)
            await hub.kill(linked)
            received.clear()
            await _until_delivered(on_leaf, "up", received, timeout=15)  # the link moved to another URL
            survivors = [_leafz(node.monitor_url or "") for i, node in enumerate(hub.nodes) if i != linked]
            assert sorted(survivors) == [0, 1]


@dataclass
class Hub:
    bus: AuthBus
    hub: conat.Client
    leaves: dict[str, NatsServer]


@pytest.fixture
async def hub_with_hosts(tmp_path: Path) -> AsyncIterator[Hub]:
    """Master's bus (with auth) accepting the leaf links of two hosts' servers, each link with the
    policy's permissions for its host."""
    keyring = Keyring.open(tmp_path / "keys")
    issuer = TokenIssuer(keyring)
    users = [LeafUser(f"leaf-{h}", f"pw-{h}", leaf_permissions(h)) for h in (H1, H2)]
    config = ServerConfig(leafnodes=LeafNodeConfig(listen_port=0, users=users))
    async with contextlib.AsyncExitStack() as stack:
        bus = await AuthBus.start(
            bus=MASTER_BUS, public_keys=keyring.public_keys(), directory=tmp_path / "master", config=config
        )
        stack.push_async_callback(bus.aclose)
        port = bus.server.ports.leafnodes
        leaves = {}
        for h in (H1, H2):
            remote = f"nats-leaf://leaf-{h}:pw-{h}@127.0.0.1:{port}"
            leaf = NatsServer(
                ServerConfig(server_name=f"host-{h}", leafnodes=LeafNodeConfig(remotes=[remote])),
                directory=tmp_path / h,
            )
            await leaf.start()
            stack.push_async_callback(leaf.stop)
            leaves[h] = leaf
        hub = await conat.connect(bus.url, credentials=issuer.issue("hub", MASTER_BUS, Scope(), 600))
        stack.push_async_callback(hub.aclose)
        yield Hub(bus, hub, leaves)


async def _echo(msg: conat.Message) -> None:
    await msg.respond(msg.raw, encoding="raw")


async def test_a_hosts_leaf_carries_only_master_host_subjects(hub_with_hosts: Hub) -> None:
    hub = hub_with_hosts.hub
    async with contextlib.AsyncExitStack() as stack:
        h1 = await stack.enter_async_context(
            await conat.connect(hub_with_hosts.leaves[H1].url, inbox_prefix=f"_INBOX.host-{H1}")
        )
        h2 = await stack.enter_async_context(await conat.connect(hub_with_hosts.leaves[H2].url))
        on_h1: list[str] = []
        on_hub: list[str] = []
        await h1.subscribe(">", dispatch=lambda m: on_h1.append(m.subject))
        # master <-> host: both ways, and requests with their replies
        await h1.subscribe(f"runner.host-{H1}", callback=_echo)
        await hub.subscribe(f"master.host-{H1}.api", callback=_echo)
        runner = await hub.request(
            f"runner.host-{H1}", b"start", encoding="raw", timeout=10, wait_for_interest=True
        )
        assert runner.raw == b"start"
        api = await h1.request(
            f"master.host-{H1}.api", b"keepalive", encoding="raw", timeout=10, wait_for_interest=True
        )
        assert api.raw == b"keepalive"
        # another host's project subjects never cross, in either direction; markers on allowed
        # subjects, sent after them on the same link, prove the link carried what came before
        forbidden_down = [
            f"fs.project-{P2}",
            f"persist.project-{P2}.x",
            f"runner.host-{H2}",
            f"bootlog.host.{H2}",
        ]
        for subject in forbidden_down:
            await hub.publish(subject, b"secret", encoding="raw")
        await hub.publish("public.marker-down", b"", encoding="raw")
        async with asyncio.timeout(10):
            while "public.marker-down" not in on_h1:
                await asyncio.sleep(0.02)
        assert not set(forbidden_down) & set(on_h1), on_h1
        common = [f"fs.project-{P2}", f"project.{P2}.exec.x", "_INBOX.account-x.y"]
        forbidden = {h1: [*common, f"master.host-{H2}.api"], h2: [*common, f"master.host-{H1}.api"]}
        forbidden_up = sorted({subject for subjects in forbidden.values() for subject in subjects})
        for subject in (*forbidden_up, "public.marker-up", "public.marker-up2"):  # the hub may not take ">"
            await hub.subscribe(subject, dispatch=lambda m: on_hub.append(m.subject), cluster_wide=True)
        for client, subjects in forbidden.items():  # each host's leaf: another's API, projects, inboxes
            for subject in subjects:
                await client.publish(subject, b"secret", encoding="raw")
        await h1.publish("public.marker-up", b"", encoding="raw")
        await h2.publish("public.marker-up2", b"", encoding="raw")
        async with asyncio.timeout(10):
            while not {"public.marker-up", "public.marker-up2"} <= set(on_hub):
                await asyncio.sleep(0.02)
        crossed_up = set(forbidden_up) & set(on_hub)
        assert not crossed_up, crossed_up


def test_leaf_config_renders_one_remote_and_hub_users() -> None:
    from conat._server_config import config_tree

    leaf = config_tree(
        ServerConfig(leafnodes=LeafNodeConfig(remotes=["nats-leaf://a:1", "nats-leaf://b:2"], account="APP"))
    )
    assert leaf["leafnodes"]["remotes"] == [
        {"urls": ["nats-leaf://a:1", "nats-leaf://b:2"], "account": "APP"}
    ]
    user = LeafUser("leaf-h", "pw", leaf_permissions(H1))
    with pytest.raises(ValueError, match="auth callout"):
        config_tree(ServerConfig(leafnodes=LeafNodeConfig(listen_port=0, users=[user])))
    hub = config_tree(
        ServerConfig(
            leafnodes=LeafNodeConfig(listen_port=0, users=[user]),
            extra_blocks={
                "accounts": {"APP": {"users": [{"user": "x", "password": "y"}]}},
                "authorization": {"auth_callout": {"auth_users": ["auth"]}},
            },
        )
    )
    assert [u["user"] for u in hub["accounts"]["APP"]["users"]] == ["x", "leaf-h"]
    assert hub["accounts"]["APP"]["users"][1]["allowed_connection_types"] == ["LEAFNODE"]
    assert hub["authorization"]["auth_callout"]["auth_users"] == ["auth", "leaf-h"]
    assert "pw" not in repr(user)
    with pytest.raises(ValueError, match="unique"):
        LeafNodeConfig(listen_port=0, users=[user, user])
    with pytest.raises(ValueError, match="listen_port"):
        LeafNodeConfig(remotes=["nats-leaf://a:1"], users=[user])
