"""``subscribe(dispatch=...)`` (the router hook) and ``Subscription.drain()``, on a real server."""

from __future__ import annotations

import asyncio

import pytest

import conat
from conat._server import NatsServer

pytestmark = pytest.mark.anyio


async def test_dispatch_is_called_in_order_from_the_read_loop(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as sub, await conat.connect(nats_server.url) as pub:
        seen: list[int] = []
        await sub.subscribe("dispatch.order", dispatch=lambda msg: seen.append(msg.data))
        for i in range(500):
            await pub.publish("dispatch.order", i)
        await pub.flush()
        await sub.flush()
        await _until(lambda: len(seen) == 500)
        assert seen == list(range(500))


async def test_a_chunked_message_keeps_its_place_in_dispatch_order(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as sub, await conat.connect(nats_server.url) as pub:
        seen: list[int] = []
        await sub.subscribe("dispatch.big", dispatch=lambda msg: seen.append(len(msg.raw)))
        big = b"x" * (3 * 1024 * 1024)
        await pub.publish("dispatch.big", b"a", encoding="raw")
        await pub.publish("dispatch.big", big, encoding="raw")
        await pub.publish("dispatch.big", b"bb", encoding="raw")
        await _until(lambda: len(seen) == 3)
        assert seen == [1, len(big), 2]


async def test_callback_and_dispatch_are_exclusive(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as c:

        async def cb(msg: conat.Message) -> None: ...

        with pytest.raises(TypeError, match="not both"):
            await c.subscribe("x", callback=cb, dispatch=lambda m: None)  # type: ignore[call-overload]


async def test_drain_delivers_everything_routed_before_it(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as sub, await conat.connect(nats_server.url) as pub:
        seen: list[int] = []
        subscription = await sub.subscribe("drain.me", dispatch=lambda msg: seen.append(msg.data))
        for i in range(2000):
            await pub.publish("drain.me", i)
        await pub.flush()  # the server has routed all 2000 to the subscriber before the UNSUB
        await subscription.drain()
        assert seen == list(range(2000))
        assert subscription.closed
        await pub.publish("drain.me", -1)
        await pub.flush()
        await sub.flush()
        assert -1 not in seen


async def _until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_a_failing_dispatch_is_logged_and_the_connection_lives(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with await conat.connect(nats_server.url) as c:
        seen: list[int] = []

        def flaky(msg: conat.Message) -> None:
            if msg.data == 1:
                raise RuntimeError("router bug")
            seen.append(msg.data)

        await c.subscribe("dispatch.flaky", dispatch=flaky)
        for i in range(3):
            await c.publish("dispatch.flaky", i)
        await _until(lambda: seen == [0, 2])
        assert "router bug" in caplog.text
        assert c.is_connected
