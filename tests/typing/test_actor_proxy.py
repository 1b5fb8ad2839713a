"""Types of the actor API, checked by mypy and run by pytest: a proxy has the actor's own types."""

from __future__ import annotations

from typing import assert_type

import msgspec
import pytest

import conat
from actors import Actor, ActorRuntime, ActorSystem, actor_proxy
from conat._server import NatsServer

pytestmark = pytest.mark.anyio


class Pair(msgspec.Struct):
    a: int
    b: int


class Summer(Actor, subject="typing.summer.*"):
    async def add(self, pair: Pair) -> int:
        return pair.a + pair.b

    async def both(self, pair: Pair) -> Pair:
        return Pair(pair.a, pair.a)


async def test_actor_proxy_is_typed_as_the_actor(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as client, ActorSystem(client) as system:
        runtime = await system.start(Summer)
        assert_type(runtime, ActorRuntime)
        proxy = actor_proxy(client, Summer, "k")
        assert_type(proxy, Summer)
        total = await proxy.add(Pair(1, 2))
        assert_type(total, int)
        assert total == 3
        pair = await system.proxy(Summer, "k").both(Pair(4, 0))
        assert_type(pair, Pair)
        assert pair == Pair(4, 4)
