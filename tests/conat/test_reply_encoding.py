"""A service answers in the caller's encoding: a JSON request gets a JSON reply (typed services
here; actors in tests/actors)."""

from __future__ import annotations

import msgspec
import pytest

import conat
from conat import Message, RpcRequest, reply_encoding
from conat._server import NatsServer

pytestmark = pytest.mark.anyio


class Echo:
    async def echo(self, value: object) -> object:
        return value


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_a_typed_service_replies_in_the_callers_encoding(
    nats_server: NatsServer, encoding: str
) -> None:
    async with await conat.connect(nats_server.url) as server, await conat.connect(nats_server.url) as caller:
        await server.serve("encoding.echo", Echo())
        reply = await caller.request("encoding.echo", RpcRequest("echo", [{"a": [1, 2]}]), encoding=encoding)
        assert reply.encoding == encoding
        assert reply.data == {"a": [1, 2]}
        if encoding == "json":  # a client that knows only JSON can read it
            assert msgspec.json.decode(reply.raw) == {"a": [1, 2]}


def _request(encoding: str | None) -> Message:
    headers = {"Conat-Encoding": encoding} if encoding is not None else None
    return Message("s", "r", b"", headers)


@pytest.mark.parametrize(
    ("encoding", "result", "expected"),
    [
        (None, {"a": 1}, "msgpack"),
        ("json", {"a": 1}, "json"),
        ("msgpack", b"x", "msgpack"),
        ("raw", b"bytes", "raw"),
        ("raw", "text", "raw"),
        ("raw", {"a": 1}, "msgpack"),  # raw cannot carry a structure
        ("rot13", "x", "msgpack"),  # unknown: the default
    ],
)
def test_reply_encoding(encoding: str | None, result: object, expected: str) -> None:
    assert reply_encoding(_request(encoding), result) == expected
