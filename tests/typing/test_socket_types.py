"""Types of the reliable-socket API, checked by mypy (CI runs it on this file) and run by pytest.

``assert_type`` is a no-op at run time, so each line is a claim mypy verifies statically.
"""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

import msgspec
import pytest

import conat
from conat._server import NatsServer

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: int
    y: int


async def test_socket_api_types(nats_server: NatsServer) -> None:
    async with (
        await conat.connect(nats_server.url) as a,
        await conat.connect(nats_server.url) as b,
    ):
        server = await b.socket_listen("typing.sock.*")
        assert_type(server, conat.SocketServer)
        async with server:
            sock = await a.socket_connect("typing.sock.one")
            assert_type(sock, conat.Socket)
            async with sock:
                conn = await server.accept(timeout=5)
                assert_type(conn, conat.Socket)
                assert_type(conn.state, conat.SocketState)

                await sock.send(Point(1, 2))
                msg = await conn.recv(timeout=5)
                assert_type(msg, conat.SocketMessage)
                assert_type(msg.data, Any)
                point = msg.decode(Point)
                assert_type(point, Point)
                assert point == Point(1, 2)
                assert_type(msg.decode(dict[str, int]), dict[str, int])
                assert msg.decode(dict[str, int]) == {"x": 1, "y": 2}
                # A union is not a type[T]: it is accepted, and typed loosely (Any, or the union
                # mypy computes over the overloads).
                assert msg.decode(Point | None) == Point(1, 2)
                assert msg.decode(dict[str, int] | None) == {"x": 1, "y": 2}

                async def answer() -> None:
                    request = await conn.recv(timeout=5)
                    assert_type(request.is_request, bool)
                    await request.respond(request.decode(Point).x + 1)

                _, reply = await asyncio.gather(answer(), sock.request(Point(41, 0), timeout=5))
                assert_type(reply, conat.SocketMessage)
                assert_type(reply.decode(int), int)
                assert reply.decode(int) == 42

                stats = sock.statistics()
                assert_type(stats, conat.SocketStatistics)
                assert_type(stats.window, int)
                assert stats.messages_sent == 2
                server_stats = server.statistics()
                assert_type(server_stats, conat.SocketServerStatistics)
                assert_type(server_stats.connections, int)
                assert server_stats.accepted == 1
