"""Types of the public API, checked by mypy (CI runs it on this file) and run by pytest.

``assert_type`` is a no-op at run time, so each line is a claim mypy verifies statically.
"""

from __future__ import annotations

from typing import Protocol, assert_type

import msgspec
import pytest

import conat
from conat._server import NatsServer

pytestmark = pytest.mark.anyio


class Pair(msgspec.Struct):
    a: int
    b: int


class Adder(Protocol):
    async def add(self, pair: Pair) -> int: ...


class AdderImpl:
    async def add(self, pair: Pair) -> int:
        return pair.a + pair.b


async def test_proxy_and_decoder_types(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as client:
        assert_type(client, conat.Client)
        await client.serve("typing.adder", AdderImpl())
        adder = client.service(Adder, "typing.adder")
        assert_type(adder, Adder)
        total = await adder.add(Pair(2, 3))
        assert_type(total, int)
        assert total == 5
        reply = await client.request("typing.adder", {"name": "add", "args": [{"a": 1, "b": 1}]})
        assert_type(reply, conat.Message)
        assert_type(reply.decode(int), int)
        assert_type(conat.MSGPACK.decode_as(b"\x01", int), int)
        assert reply.decode(int) == 2
