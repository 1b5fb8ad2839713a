"""Publish/subscribe against a real nats-server."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest

import conat
from conat import ClientState, InvalidSubject, PayloadError, PayloadTooLarge, Timeout

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: int
    y: int


async def test_order_of_1000_publishes(nats_server) -> None:
    async with await conat.connect(nats_server.url) as a, await conat.connect(nats_server.url) as b:
        sub = await b.subscribe("order.test")
        for i in range(1000):
            await a.publish("order.test", i)
        got = [(await sub.next(timeout=5)).data for _ in range(1000)]
        assert got == list(range(1000))


async def test_queue_group_delivers_each_message_once(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        seen: list[list[int]] = [[], [], []]

        def collector(i: int):
            async def cb(msg: conat.Message) -> None:
                seen[i].append(msg.data)

            return cb

        subs = [await c.subscribe("work.q", queue="workers", callback=collector(i)) for i in range(3)]
        async with await conat.connect(nats_server.url) as p:
            for i in range(300):
                await p.publish("work.q", i)
            await p.flush()
        await c.flush()
        for _ in range(100):
            if sum(len(s) for s in seen) == 300:
                break
            await asyncio.sleep(0.02)
        everything = sorted(x for s in seen for x in s)
        assert everything == list(range(300))
        assert sum(1 for s in seen if s) >= 2  # the load was actually shared
        for s in subs:
            await s.unsubscribe()


async def test_wildcard_subscription_reports_concrete_subject(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        star = await c.subscribe("wild.*.x")
        full = await c.subscribe("wild.>")
        await c.publish("wild.abc.x", "one")
        await c.publish("wild.def.y.z", "two")
        m = await star.next(timeout=5)
        assert (m.subject, m.data) == ("wild.abc.x", "one")
        subjects = {(await full.next(timeout=5)).subject for _ in range(2)}
        assert subjects == {"wild.abc.x", "wild.def.y.z"}


async def test_codecs_and_typed_decode(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        sub = await c.subscribe("codec.test")
        await c.publish("codec.test", {"x": 1, "y": 2})
        await c.publish("codec.test", {"x": 3, "y": 4}, encoding="json")
        await c.publish("codec.test", b"\x00\xffraw", encoding="raw")
        await c.publish("codec.test", Point(5, 6), headers={"Trace": "abc"})
        m1, m2, m3, m4 = [await sub.next(timeout=5) for _ in range(4)]
        assert m1.decode(Point) == Point(1, 2) and m1.encoding == "msgpack"
        assert m2.data == {"x": 3, "y": 4} and m2.encoding == "json" and m2.raw == b'{"x":3,"y":4}'
        assert m3.data == b"\x00\xffraw" and m3.encoding == "raw"
        assert m4.decode(Point) == Point(5, 6)
        assert m4.headers == {"Trace": "abc"}
        with pytest.raises(PayloadError) as e:
            m3.decode(Point)
        assert e.value.code == 400


async def test_bad_input_gets_clear_errors(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        with pytest.raises(InvalidSubject) as e:
            await c.publish("bad..subject", 1)
        assert e.value.code == 400 and "bad..subject" in str(e.value)
        with pytest.raises(InvalidSubject):
            await c.publish("has space", 1)
        with pytest.raises(InvalidSubject):
            await c.publish("wild.*", 1)  # a pattern is not a publish subject
        with pytest.raises(InvalidSubject):
            await c.subscribe("a.>.b")
        with pytest.raises(PayloadError) as pe:
            await c.publish("ok.subject", object())
        assert pe.value.code == 400 and "object" in str(pe.value)
        with pytest.raises(PayloadError):
            await c.publish("ok.subject", 1, encoding="yaml")
        # The client is still fine afterwards.
        sub = await c.subscribe("ok.subject")
        await c.publish("ok.subject", 7)
        assert (await sub.next(timeout=5)).data == 7


async def test_callback_exception_never_kills_subscription(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        got: list[int] = []

        async def cb(msg: conat.Message) -> None:
            if msg.data == 1:
                raise RuntimeError("boom")
            got.append(msg.data)

        await c.subscribe("cb.test", callback=cb)
        for i in range(3):
            await c.publish("cb.test", i)
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert got == [0, 2]


async def test_full_buffer_drops_and_counts(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        sub = await c.subscribe("full.test", max_buffer=5)
        for i in range(20):
            await c.publish("full.test", i)
        await c.flush()
        await asyncio.sleep(0.05)
        stats = sub.statistics()
        assert stats.received == 20 and stats.dropped == 15 and stats.buffered == 5
        assert [(await sub.next(timeout=1)).data for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_unsubscribe_ends_iteration(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        sub = await c.subscribe("unsub.test")
        await c.publish("unsub.test", 1)
        await c.flush()
        await asyncio.sleep(0.02)
        await sub.unsubscribe()
        assert [m.data async for m in sub] == [1]
        await c.publish("unsub.test", 2)  # nobody listens now: no error
        assert c.statistics().subscriptions == 0


async def test_next_timeout_raises_conat_timeout(nats_server) -> None:
    # Regression: a bare TimeoutError, outside conat's error tree.
    async with await conat.connect(nats_server.url) as c:
        sub = await c.subscribe("next.timeout")
        with pytest.raises(Timeout) as e:
            await sub.next(timeout=0.05)
        assert e.value.code == 408 and e.value.subject == "next.timeout"
        assert isinstance(e.value, TimeoutError)  # still a builtin TimeoutError too
        await c.publish("next.timeout", 1)
        assert (await sub.next(timeout=5)).data == 1  # and the subscription is still usable


async def test_headers_count_against_max_payload_and_never_kill_the_connection(nats_server) -> None:
    # Regression: headers were not counted, so the server refused the message and closed the
    # connection for good, publish() returned normally and every subscription died.
    async with await conat.connect(nats_server.url) as a, await conat.connect(nats_server.url) as b:
        sub = await b.subscribe("hdr.size")
        own = await a.subscribe("hdr.own")
        limit = a.max_payload
        with pytest.raises(PayloadTooLarge) as e:
            await a.publish("hdr.size", b"x", headers={"X-Big": "v" * limit}, encoding="raw")
        assert e.value.code == 413 and "headers" in str(e.value)
        # A payload that fits alone but not with its header is chunked, header and all.
        payload = os.urandom(limit - 100)
        await a.publish("hdr.size", payload, headers={"X-Meta": "m" * 500}, encoding="raw")
        msg = await sub.next(timeout=10)
        assert msg.raw == payload and msg.headers == {"X-Meta": "m" * 500}

        # A request near the limit with a header, and its reply, likewise.
        async def echo(m: conat.Message) -> None:
            await m.respond(m.raw, encoding="raw", headers={"X-Back": "b" * 800})

        await b.subscribe("hdr.echo", callback=echo)
        reply = await a.request("hdr.echo", payload, encoding="raw", headers={"X-Req": "r" * 800})
        assert reply.raw == payload and reply.headers == {"X-Back": "b" * 800}
        assert a.state is ClientState.CONNECTED and b.state is ClientState.CONNECTED
        await a.publish("hdr.own", "still alive")
        assert (await own.next(timeout=5)).data == "still alive"


async def test_reserved_header_names_are_refused(nats_server) -> None:
    # Regression: Conat-* user headers were dropped silently; a Status header read as the server's.
    async with await conat.connect(nats_server.url) as c:
        for name in ["Conat-Trace", "conat-encoding", "Status", "description", "Nats-Service-Error"]:
            with pytest.raises(PayloadError) as e:
                await c.publish("hdr.reserved", 1, headers={name: "x"})
            assert e.value.code == 400 and name in str(e.value)
        sub = await c.subscribe("hdr.reserved")
        await c.publish("hdr.reserved", 1, headers={"Nats-Msg-Id": "m1", "X-Status": "ok"})
        assert (await sub.next(timeout=5)).headers == {"Nats-Msg-Id": "m1", "X-Status": "ok"}


async def test_a_cancelled_subscribe_leaves_no_subscription_behind(nats_server) -> None:
    """Cancel ``subscribe`` at each of its stages (before, while and after the server confirms):
    either it returned a subscription, or nothing is left subscribed, here or on the server."""
    async with await conat.connect(nats_server.url) as c, await conat.connect(nats_server.url) as other:
        cancelled_at_confirmation = 0
        for steps in range(12):
            subject = f"cancel.sub.{steps}"
            task = asyncio.ensure_future(c.subscribe(subject))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            try:
                sub = await task
            except asyncio.CancelledError:
                assert c.statistics().subscriptions == 0
                await c.flush()  # the undo's UNSUB, like any unsubscribe's, is on its way: let it land
                with pytest.raises(conat.NoResponders):  # the server knows no subscriber either
                    await other.request(subject, 1, timeout=5)
                cancelled_at_confirmation += steps > 0
            else:
                await sub.unsubscribe()
        assert cancelled_at_confirmation, "no cancellation landed while the server confirmed"
