"""request / request_many / responding, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

import conat
from conat import NoResponders, RemoteError, Timeout

pytestmark = pytest.mark.anyio


async def echo(msg: conat.Message) -> None:
    await msg.respond(msg.data)


async def test_request_reply(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        await c.subscribe("svc.echo", callback=echo)
        reply = await c.request("svc.echo", {"hello": [1, 2]}, timeout=5)
        assert reply.data == {"hello": [1, 2]}


async def test_no_responders_is_immediate_503(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(NoResponders) as e:
            await c.request("nobody.here", 1, timeout=5)
        assert e.value.code == 503 and e.value.subject == "nobody.here"
        assert loop.time() - t0 < 2.5  # well before the 5 s deadline


async def test_timeout_is_408_and_names_subject(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:

        async def silent(msg: conat.Message) -> None:
            return None

        await c.subscribe("svc.silent", callback=silent)
        with pytest.raises(Timeout) as e:
            await c.request("svc.silent", 1, timeout=0.2)
        assert e.value.code == 408 and "svc.silent" in str(e.value)
        assert e.value.elapsed >= 0.2
        assert isinstance(e.value, TimeoutError)
        assert c.statistics().pending_requests == 0


async def test_remote_error_carries_handler_code(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:

        async def handler(msg: conat.Message) -> None:
            if msg.data == "explicit":
                await msg.respond_error("ENOENT", "no such file: a/b")
            else:
                raise conat.PayloadTooLarge(10, 5)

        await c.subscribe("svc.err", callback=handler)
        with pytest.raises(RemoteError) as e:
            await c.request("svc.err", "explicit", timeout=5)
        assert e.value.code == "ENOENT" and e.value.remote_message == "no such file: a/b"
        with pytest.raises(RemoteError) as e2:
            await c.request("svc.err", "raise", timeout=5)
        assert e2.value.code == 413
        # the subscription is alive after the handler raised
        with pytest.raises(RemoteError):
            await c.request("svc.err", "explicit", timeout=5)


async def test_wait_for_interest_succeeds_when_responder_appears_later(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c, await conat.connect(nats_server.url) as s:

        async def late_responder() -> None:
            await asyncio.sleep(0.3)
            await s.subscribe("svc.late", callback=echo)

        task = asyncio.create_task(late_responder())
        reply = await c.request("svc.late", "hi", timeout=5, wait_for_interest=True)
        assert reply.data == "hi"
        await task


async def test_wait_for_interest_times_out_with_408(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        with pytest.raises(Timeout):
            await c.request("svc.never", 1, timeout=0.3, wait_for_interest=True)


async def test_request_many_ends_on_end_marker(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:

        async def stream(msg: conat.Message) -> None:
            for i in range(msg.data):
                await msg.respond(i)
            await msg.end()

        await c.subscribe("svc.stream", callback=stream)
        got = [m.data async for m in c.request_many("svc.stream", 50, timeout=5)]
        assert got == list(range(50))


async def test_request_many_max_messages_and_idle_timeout(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:

        async def endless(msg: conat.Message) -> None:
            for i in range(5):
                await msg.respond(i)

        await c.subscribe("svc.endless", callback=endless)
        got = [m.data async for m in c.request_many("svc.endless", None, max_messages=3)]
        assert got == [0, 1, 2]
        got = [m.data async for m in c.request_many("svc.endless", None, idle_timeout=0.2)]
        assert got == [0, 1, 2, 3, 4]


async def test_request_many_scatter_gather(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        for i in range(3):

            async def answer(msg: conat.Message, i: int = i) -> None:
                await msg.respond(i)

            await c.subscribe("svc.scatter", callback=answer)
        got = sorted([m.data async for m in c.request_many("svc.scatter", None, idle_timeout=0.3)])
        assert got == [0, 1, 2]


async def test_request_many_errors(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        with pytest.raises(NoResponders):
            async for _ in c.request_many("svc.none", 1):
                pass

        async def fails(msg: conat.Message) -> None:
            await msg.respond(1)
            await msg.respond_error(500, "broke mid-stream")

        await c.subscribe("svc.fails", callback=fails)
        got: list[int] = []
        with pytest.raises(RemoteError) as e:
            async for m in c.request_many("svc.fails", None, timeout=5):
                got.append(m.data)  # noqa: PERF401 - the loop must keep what arrived before the error
        assert got == [1] and e.value.code == 500


async def test_concurrent_requests(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        await c.subscribe("svc.conc", callback=echo)
        replies = await asyncio.gather(*(c.request("svc.conc", i, timeout=5) for i in range(200)))
        assert [r.data for r in replies] == list(range(200))


async def test_respond_without_reply_subject_is_an_error(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        sub = await c.subscribe("plain.msg")
        await c.publish("plain.msg", 1)
        msg = await sub.next(timeout=5)
        with pytest.raises(ValueError, match="no reply"):
            await msg.respond(2)


async def test_busy_reply_when_buffer_full(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c, await conat.connect(nats_server.url) as r:
        await r.subscribe("svc.busy", max_buffer=1)  # nobody reads it
        first = asyncio.create_task(c.request("svc.busy", 1, timeout=2))
        await asyncio.sleep(0.05)
        with pytest.raises(RemoteError) as e:
            await c.request("svc.busy", 2, timeout=2)
        assert e.value.code == 429
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)


async def test_cancelled_calls_leave_nothing_behind(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        release = asyncio.Event()

        async def slow(msg: conat.Message) -> None:
            await release.wait()
            await msg.respond(1)

        async def streamer(msg: conat.Message) -> None:
            for i in range(3):
                await msg.respond(i)
            await release.wait()

        await c.serve("svc.unused", object())  # an empty service is fine
        await c.subscribe("svc.slow", callback=slow)
        await c.subscribe("svc.streamer", callback=streamer)
        req = asyncio.create_task(c.request("svc.slow", 1, timeout=30))

        async def consume() -> list[int]:
            return [m.data async for m in c.request_many("svc.streamer", None, timeout=30)]

        many = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        assert c.statistics().pending_requests == 2
        req.cancel()
        many.cancel()
        results = await asyncio.gather(req, many, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert c.statistics().pending_requests == 0
        release.set()


async def test_a_status_header_in_a_reply_is_never_the_servers(nats_server) -> None:
    # Regression: a user header named Status in a reply made the caller raise NoResponders.
    async with await conat.connect(nats_server.url) as c:

        async def fake_503(msg: conat.Message) -> None:
            await msg.respond("hi", headers={"Status": "503"})

        await c.subscribe("svc.status", callback=fake_503)
        with pytest.raises(RemoteError) as e:  # refused in the handler (400), which the caller sees
            await c.request("svc.status", 1, timeout=5)
        assert e.value.code == 400 and "reserved" in e.value.remote_message
        # A foreign client that does send one: conat ignores it (the status comes from the status line).
        foreign = await nats.connect(nats_server.url)
        try:

            async def foreign_handler(msg: Msg) -> None:
                await foreign.publish(msg.reply, b"\x02", headers={"Status": "503", "Description": "x"})

            await foreign.subscribe("svc.foreign-status", cb=foreign_handler)
            await foreign.flush()
            reply = await c.request("svc.foreign-status", 1, timeout=10)
            assert reply.raw == b"\x02" and reply.headers == {}
        finally:
            await foreign.close()


async def test_a_huge_error_message_is_cut_and_never_kills_the_responder(nats_server) -> None:
    # Regression: an error reply bigger than max_payload made the server close the responder's
    # connection; the caller waited its whole timeout.
    async with await conat.connect(nats_server.url) as c, await conat.connect(nats_server.url) as r:

        async def handler(msg: conat.Message) -> None:
            raise ValueError("x" * (4 * r.max_payload))

        await r.subscribe("svc.huge-error", callback=handler, max_buffer=10)
        with pytest.raises(RemoteError) as e:
            await c.request("svc.huge-error", 1, timeout=5)
        assert e.value.code == 500 and len(e.value.remote_message.encode()) <= 4096
        assert e.value.remote_message.endswith("(truncated)")
        with pytest.raises(RemoteError):
            await c.request("svc.huge-error", 2, timeout=5)  # the responder is still connected
        assert r.state is conat.ClientState.CONNECTED
