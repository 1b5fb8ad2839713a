"""Forbidden (403): the local grant check, and the server's asynchronous refusal as a safety net."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conat
from conat import Forbidden
from conat._server import NatsServer
from conat._server_config import ServerConfig
from subjects import Permissions

pytestmark = pytest.mark.anyio


@pytest.fixture
async def restricted_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server with static users: `limited` may publish only `allowed.>` and use its inbox."""
    users = [
        {"user": "admin", "password": "adminpw"},
        {
            "user": "limited",
            "password": "limitedpw",
            "permissions": {
                "publish": {"allow": ["allowed.>", "_INBOX.>"]},
                "subscribe": {"allow": ["allowed.>", "_INBOX.>"]},
            },
        },
    ]
    config = ServerConfig(extra_blocks={"authorization": {"users": users}})
    async with NatsServer(config, directory=tmp_path) as server:
        yield server


async def test_server_refusal_fails_the_pending_request(restricted_server: NatsServer) -> None:
    url = restricted_server.url
    async with await conat.connect(url, user="admin", password="adminpw") as admin, await conat.connect(
        url, user="limited", password="limitedpw"
    ) as limited:
        got: list[object] = []

        async def spy(msg: conat.Message) -> None:
            got.append(msg.data)
            await msg.respond("should never happen")

        await admin.subscribe("secret.svc", callback=spy)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Forbidden) as e:
            await limited.request("secret.svc", "psst", timeout=10)
        assert e.value.code == 403 and e.value.subject == "secret.svc"
        assert loop.time() - t0 < 5  # refused, not timed out
        await admin.flush()
        assert got == []  # the refused publish was never delivered
        assert limited.statistics().permission_violations >= 1


async def test_server_refusal_fails_the_subscription(restricted_server: NatsServer) -> None:
    async with await conat.connect(restricted_server.url, user="limited", password="limitedpw") as c:
        with pytest.raises(Forbidden) as e:
            await c.subscribe("secret.>")
        assert e.value.code == 403
        sub = await c.subscribe("allowed.x")  # the connection is still usable
        await c.publish("allowed.x", 1)
        assert (await sub.next(timeout=5)).data == 1


async def test_local_grant_check_raises_before_sending(nats_server) -> None:
    grant = Permissions(
        publish_allow=("public.>",), publish_deny=(), subscribe_allow=("public.>",), subscribe_deny=()
    )
    async with await conat.connect(nats_server.url, permissions=grant) as c:
        before = c.statistics().out_msgs
        with pytest.raises(Forbidden):
            await c.publish("private.x", 1)
        with pytest.raises(Forbidden):
            await c.request("private.x", 1)
        with pytest.raises(Forbidden):
            await c.subscribe(">")
        assert c.statistics().out_msgs == before
        sub = await c.subscribe("public.demo")
        await c.publish("public.demo", 5)
        assert (await sub.next(timeout=5)).data == 5
