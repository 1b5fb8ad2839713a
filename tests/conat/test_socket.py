"""Reliable sockets on a real nats-server: order, many clients, requests, backpressure, close, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import types
from collections.abc import AsyncIterator

import msgspec
import pytest

import conat
from conat import (
    ClientState,
    EndOfStream,
    NoResponders,
    PayloadTooLarge,
    PeerDead,
    RemoteError,
    Socket,
    SocketBusy,
    SocketClosed,
    SocketReset,
    SocketServer,
    SocketState,
    Timeout,
)
from conat._socket_frames import (
    Accept,
    Ack,
    Data,
    Frame,
    Head,
    Open,
    Ping,
    Reset,
    decode_frame,
    encode_frame,
)
from conat.testing import FakeClock

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: int
    y: int


@contextlib.asynccontextmanager
async def socket_pair(
    url: str, subject: str, *, listen: dict[str, object] | None = None, **connect: object
) -> AsyncIterator[tuple[Socket, Socket, SocketServer]]:
    """A client socket on ``subject`` (its own bus connection) and the server's end of it.

    The server is already accepting when the client connects, as an accept loop would be: so the
    client has its full window as soon as ``socket_connect`` returns.
    """
    pattern = subject.rsplit(".", 1)[0] + ".*"
    async with await conat.connect(url) as a, await conat.connect(url) as b:
        server = await b.socket_listen(pattern, **listen or {})  # type: ignore[arg-type]
        async with server:
            accepting = asyncio.create_task(server.accept(timeout=5))
            await asyncio.sleep(0)
            sock = await a.socket_connect(subject, **connect)  # type: ignore[arg-type]
            async with sock:
                conn = await accepting
                yield sock, conn, server


async def test_ordered_delivery_both_ways_with_codecs_and_headers(nats_server) -> None:
    async with socket_pair(nats_server.url, "order.one") as (sock, conn, _):
        assert conn.subject == "order.one" and conn.id == sock.id and sock.state is SocketState.OPEN

        async def pump(src: Socket, n: int) -> None:
            for i in range(n):
                await src.send(i)

        await asyncio.gather(pump(sock, 500), pump(conn, 500))
        assert [(await conn.recv(timeout=5)).data for _ in range(500)] == list(range(500))
        assert [(await sock.recv(timeout=5)).data for _ in range(500)] == list(range(500))

        await sock.send({"x": 1, "y": 2}, encoding="json", headers={"Trace": "t1"})
        await sock.send(b"\x00\xff", encoding="raw")
        await sock.send(Point(3, 4))
        m1, m2, m3 = [await conn.recv(timeout=5) for _ in range(3)]
        assert m1.decode(Point) == Point(1, 2) and m1.encoding == "json" and m1.headers == {"Trace": "t1"}
        assert m2.raw == b"\x00\xff" and m2.data == b"\x00\xff" and m2.encoding == "raw"
        assert m3.decode(Point) == Point(3, 4) and m3.subject == "order.one" and not m3.is_request
        stats = sock.statistics()
        assert stats.messages_sent == 503 and stats.messages_received == 500 and stats.state == "open"


async def test_many_clients_one_server_by_subject_and_id(nats_server) -> None:
    async with (
        await conat.connect(nats_server.url) as b,
        await conat.connect(nats_server.url) as c1,
        await conat.connect(nats_server.url) as c2,
        await b.socket_listen("many.*") as server,
    ):
        socks = [await (c1 if i % 2 else c2).socket_connect(f"many.project-{i}") for i in range(6)]
        conns = [await server.accept(timeout=5) for _ in range(6)]
        assert {c.subject for c in conns} == {f"many.project-{i}" for i in range(6)}
        assert {c.id for c in conns} == {s.id for s in socks} and len({s.id for s in socks}) == 6
        stats = server.statistics()
        assert (stats.connections, stats.accepted, stats.pending_accept) == (6, 6, 0)
        for s in socks:
            await s.send(s.subject)
        for c in conns:
            assert (await c.recv(timeout=5)).data == c.subject  # identity lives in the subject
            await c.send(f"hello {c.subject}")
        for s in socks:
            assert (await s.recv(timeout=5)).data == f"hello {s.subject}"
        for s in socks:
            await s.aclose()


async def test_request_response_in_both_directions(nats_server) -> None:
    async def answer(sock: Socket) -> None:
        async for msg in sock:
            if msg.data == "fail":
                await msg.respond_error("EBAD", "no good")
            else:
                await msg.respond(msg.data * 2, headers={"Side": sock.subject})

    async with socket_pair(nats_server.url, "rpc.one") as (sock, conn, _):
        tasks = [asyncio.create_task(answer(sock)), asyncio.create_task(answer(conn))]
        reply = await sock.request(21, timeout=5)
        assert reply.data == 42 and reply.headers == {"Side": "rpc.one"}
        assert (await conn.request("ab", timeout=5)).data == "abab"  # the server asks the client
        assert [m.data for m in await asyncio.gather(*(sock.request(i, timeout=5) for i in range(20)))] == [
            2 * i for i in range(20)
        ]
        with pytest.raises(RemoteError) as e:
            await sock.request("fail", timeout=5)
        assert e.value.code == "EBAD" and e.value.remote_message == "no good"
        msg = await conn.request(1, timeout=5)
        with pytest.raises(ValueError, match="not a request"):
            await msg.respond(1)
        await sock.send_eof()  # the server's answer loop ends at end of stream
        await tasks[1]
        assert sock.statistics().pending_requests == 0
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_backpressure_full_window_blocks_or_raises_busy(nats_server) -> None:
    async with socket_pair(nats_server.url, "bp.one", listen={"window": 4096}) as (sock, conn, _):
        sent = 0
        with pytest.raises(SocketBusy) as e:
            while True:
                sock.send_nowait(b"x" * 100, encoding="raw")
                sent += 1
        assert e.value.code == 429 and 20 < sent < 40
        await sock.drain(timeout=5)  # acknowledged: the server holds them, but nobody read them
        assert sock.statistics().window == 0 and conn.statistics().buffered == sent
        blocked = asyncio.create_task(sock.send(b"y", encoding="raw"))
        await sock.drain(timeout=5)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done()
        for _ in range(sent):
            assert (await conn.recv(timeout=5)).raw == b"x" * 100
        await asyncio.wait_for(blocked, 5)
        assert (await conn.recv(timeout=5)).raw == b"y"


async def test_drain_waits_for_every_ack(nats_server) -> None:
    async with socket_pair(nats_server.url, "drain.one") as (sock, conn, _):
        for i in range(200):
            await sock.send(i)
        await sock.drain(timeout=5)
        stats = sock.statistics()
        assert stats.unacked == 0 and stats.unacked_bytes == 0 and stats.queued == 0
        assert conn.statistics().buffered == 200


async def test_close_gives_end_of_stream_after_the_last_message(nats_server) -> None:
    async with socket_pair(nats_server.url, "eof.one") as (sock, conn, _):
        await sock.send("last")
        await sock.send_eof()
        with pytest.raises(SocketClosed) as e:
            await sock.send("too late")
        assert e.value.code == "closed" and isinstance(e.value, conat.ClosedError)
        assert [m.data async for m in conn] == ["last"]  # iteration ends at end of stream
        with pytest.raises(EndOfStream) as eof:
            await conn.recv(timeout=5)
        assert eof.value.code == "eof"
        await conn.send("after eof")  # half-closed: the other direction still works
        assert (await sock.recv(timeout=5)).data == "after eof"
        await conn.aclose()
        with pytest.raises(EndOfStream):
            await sock.recv(timeout=5)
        for _ in range(100):
            if sock.closed and conn.closed:
                break
            await asyncio.sleep(0.01)
        assert sock.state is conn.state is SocketState.CLOSED


async def test_aclose_tells_the_peer(nats_server) -> None:
    async with socket_pair(nats_server.url, "bye.one") as (sock, conn, server):
        await sock.send(1)
        await sock.aclose()
        assert sock.closed
        assert [m.data async for m in conn] == [1]
        for _ in range(100):
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn.closed
        with pytest.raises(SocketClosed, match="closed by peer"):
            await conn.send(2)
        assert server.statistics().connections == 0


async def test_abort_resets_the_peer(nats_server) -> None:
    async with socket_pair(nats_server.url, "abort.one") as (sock, conn, _):
        conn.abort("going away")
        with pytest.raises(SocketReset) as e:
            await sock.recv(timeout=5)
        assert e.value.code == "reset" and e.value.reason_code == 410 and "going away" in str(e.value)


async def test_large_message_is_fragmented_and_reassembled(nats_server) -> None:
    async with socket_pair(nats_server.url, "big.one") as (sock, conn, _):
        big = os.urandom(3 * 1024 * 1024)  # three times max_payload, and more than the window
        await sock.send(big, encoding="raw")
        await conn.send(big[::-1], encoding="raw")
        assert (await conn.recv(timeout=10)).raw == big
        assert (await sock.recv(timeout=10)).raw == big[::-1]
        assert sock.statistics().frames_sent > 4


async def test_oversized_message_is_413_and_the_socket_stays_usable(nats_server) -> None:
    async with socket_pair(
        nats_server.url, "cap.one", listen={"max_message": 10_000}, max_message=20_000
    ) as (sock, conn, _):
        with pytest.raises(PayloadTooLarge) as e:
            await sock.send(b"x" * 10_001, encoding="raw")  # over the server's cap
        assert e.value.code == 413 and e.value.limit == 10_000
        with pytest.raises(PayloadTooLarge):
            await conn.send(b"x" * 20_001, encoding="raw")  # over the client's cap
        with pytest.raises(conat.PayloadError):
            await sock.send(object())
        await sock.send("fine")
        assert (await conn.recv(timeout=5)).data == "fine"


async def test_connect_errors(nats_server) -> None:
    async with await conat.connect(nats_server.url) as a:
        with pytest.raises(NoResponders) as e:
            await a.socket_connect("nobody.listens", timeout=0.3)
        assert e.value.code == 503
        with pytest.raises(conat.InvalidSubject):
            await a.socket_connect("wild.*")
        assert a.statistics().pending_requests == 0  # the socket's inbox route is gone


async def test_unknown_connection_is_reset(nats_server) -> None:
    async with await conat.connect(nats_server.url) as a:
        old = await conat.connect(nats_server.url)
        first = await old.socket_listen("gone.*")
        accepting = asyncio.create_task(first.accept(timeout=5))
        await asyncio.sleep(0)
        sock = await a.socket_connect("gone.one")
        await accepting
        await old.aclose()  # the serving process dies without a word...
        async with (
            await conat.connect(nats_server.url) as new,
            await new.socket_listen("gone.*") as second,  # ...and comes back without its state
        ):
            await sock.send("hello?")
            with pytest.raises(SocketReset) as e:
                await sock.recv(timeout=5)
            assert e.value.reason_code == 404 and "unknown connection" in str(e.value)
            assert second.statistics().resets_sent >= 1
        await sock.aclose()
        await first.aclose()


async def test_dead_peer_and_request_timeout_on_a_fake_clock(nats_server) -> None:
    clock = FakeClock()
    async with await conat.connect(nats_server.url) as a:
        b = await conat.connect(nats_server.url)
        server = await b.socket_listen("dead.*", clock=clock)
        sock = await a.socket_connect("dead.one", clock=clock, keepalive=5, peer_timeout=15)
        conn = await server.accept(timeout=5)
        await sock.send(1)
        assert (await conn.recv(timeout=5)).data == 1

        request = asyncio.create_task(sock.request("unanswered", timeout=2))
        await clock.advance(3)
        with pytest.raises(Timeout) as t:
            await request
        assert t.value.code == 408 and "socket request" in str(t.value)
        assert sock.state is SocketState.OPEN  # the peer still answers keepalives

        await b.aclose()  # the server side goes away without a word (last heard from at t=0)
        await clock.advance(11)  # t=14: pings at 5 and 10 went unanswered, not yet dead
        assert sock.state is SocketState.OPEN
        await clock.advance(2)  # t=16: past peer_timeout
        assert sock.state is SocketState.CLOSED
        with pytest.raises(PeerDead) as e:
            await sock.recv()
        assert e.value.code == 408 and isinstance(e.value, TimeoutError)
        assert sock.statistics().frames_sent >= 3  # keepalive pings went out meanwhile
        await sock.aclose()
        await server.aclose()


async def test_socket_survives_a_nats_server_restart(fresh_nats_server) -> None:
    server = fresh_nats_server
    async with (
        await conat.connect(server.url, reconnect_time_wait=0.1) as a,
        await conat.connect(server.url, reconnect_time_wait=0.1) as b,
        await b.socket_listen("restart.*") as listener,
    ):
        sock = await a.socket_connect("restart.one")
        conn = await listener.accept(timeout=5)
        got: list[int] = []

        async def read() -> None:
            got.extend([msg.data async for msg in conn])

        reader = asyncio.create_task(read())
        for i in range(50):
            await sock.send(i)
        await sock.drain(timeout=5)

        await server.kill()
        for _ in range(500):
            if a.state is ClientState.RECONNECTING and b.state is ClientState.RECONNECTING:
                break
            await asyncio.sleep(0.01)
        for i in range(50, 100):
            await sock.send(i)  # into nats-py's buffer, or nowhere
        for i in range(30):
            await conn.send(i)
        await server.restart()
        for i in range(100, 150):
            await sock.send(i)

        assert [(await sock.recv(timeout=10)).data for _ in range(30)] == list(range(30))
        await sock.drain(timeout=10)
        await sock.aclose()
        await asyncio.wait_for(reader, 10)
        assert got == list(range(150))  # nothing lost, duplicated or reordered
        assert sock.statistics().retransmitted + conn.statistics().retransmitted > 0


# -- cancellation: cancel the caller at each await point; the socket stays usable -------------------


async def _fill_window(sock: Socket) -> int:
    """Send until the peer's window is shut and every frame is acknowledged (nobody reads them)."""
    sent = 0
    with pytest.raises(SocketBusy):
        while True:
            sock.send_nowait(sent)
            sent += 1
    await sock.drain(timeout=5)
    assert sock.statistics().window == 0
    return sent


async def _started(task: asyncio.Task[object]) -> None:
    """Let ``task`` run to its first suspension (a wait that nothing in the test resolves)."""
    await asyncio.sleep(0)
    assert not task.done()


async def _cancelled(task: asyncio.Task[object]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_send_blocked_on_a_full_window_sends_nothing(nats_server) -> None:
    async with socket_pair(nats_server.url, "cancel.send", listen={"window": 4096}) as (sock, conn, _):
        sent = await _fill_window(sock)
        blocked = asyncio.create_task(sock.send("never"))
        await _started(blocked)
        await _cancelled(blocked)
        stats = sock.statistics()
        assert sock.state is SocketState.OPEN and stats.queued == 0 and stats.messages_sent == sent

        after = asyncio.create_task(sock.send("after"))  # waits for credit, as the peer reads
        got = [(await conn.recv(timeout=5)).data for _ in range(sent + 1)]
        await asyncio.wait_for(after, 5)
        assert got == [*range(sent), "after"]  # the cancelled "never" was never queued
        assert conn.statistics().buffered == 0 and sock.statistics().queued == 0


async def test_cancel_recv_loses_no_message(nats_server) -> None:
    async with socket_pair(nats_server.url, "cancel.recv") as (sock, conn, _):
        for timeout in (None, 30.0):
            waiting = asyncio.create_task(conn.recv(timeout=timeout))
            await _started(waiting)
            await _cancelled(waiting)
        assert conn.state is SocketState.OPEN and conn.statistics().buffered == 0

        await sock.send("first")
        await sock.send("second")
        assert [(await conn.recv(timeout=5)).data for _ in range(2)] == ["first", "second"]
        reader = asyncio.create_task(conn.recv(timeout=5))  # a waiter after the cancelled ones
        await _started(reader)
        await sock.send("third")
        assert (await asyncio.wait_for(reader, 5)).data == "third"


async def test_cancel_request_waiting_for_its_response(nats_server) -> None:
    async with socket_pair(nats_server.url, "cancel.req") as (sock, conn, _):
        pending = asyncio.create_task(sock.request("slow", timeout=30))
        held = await conn.recv(timeout=5)  # a real handler holds the request and does not answer
        assert held.is_request and held.data == "slow"
        await _cancelled(pending)
        assert sock.statistics().pending_requests == 0 and sock.state is SocketState.OPEN

        await held.respond("too late")  # the requester is gone: the answer is dropped on arrival

        async def answer() -> None:
            msg = await conn.recv(timeout=5)
            await msg.respond(msg.data * 2)

        reply, _ = await asyncio.gather(sock.request(21, timeout=5), answer())
        assert reply.data == 42  # not "too late": that one never reached a waiter or the inbox
        stats = sock.statistics()
        assert stats.pending_requests == 0 and stats.buffered == 0
        await sock.send("plain")
        assert (await conn.recv(timeout=5)).data == "plain"


async def test_cancel_request_waiting_for_credit_sends_nothing(nats_server) -> None:
    async with socket_pair(nats_server.url, "cancel.reqc", listen={"window": 4096}) as (sock, conn, _):
        sent = await _fill_window(sock)
        pending = asyncio.create_task(sock.request("never", timeout=30))
        await _started(pending)
        await _cancelled(pending)
        assert sock.statistics().pending_requests == 0 and sock.statistics().queued == 0

        got = [await conn.recv(timeout=5) for _ in range(sent)]
        assert [m.data for m in got] == list(range(sent)) and not any(m.is_request for m in got)

        async def answer() -> None:
            msg = await conn.recv(timeout=5)
            await msg.respond(msg.data + 1)

        reply, _ = await asyncio.gather(sock.request(1, timeout=5), answer())
        assert reply.data == 2


async def test_cancel_connect_waiting_for_accept(nats_server) -> None:
    from conat._socket_frames import Open, Reset, decode_frame

    async with (
        await conat.connect(nats_server.url) as a,
        await conat.connect(nats_server.url) as b,
        await b.subscribe("cancel.connect.one") as sub,  # hears the Open, never accepts
    ):
        connecting = asyncio.create_task(a.socket_connect("cancel.connect.one", timeout=30))
        first = await sub.next(timeout=5)
        assert isinstance(decode_frame(first.raw), Open)
        await _cancelled(connecting)
        assert a.statistics().pending_requests == 0  # the socket's inbox route is gone

        while True:  # skip Open retransmits that were on their way: the peer is told with a Reset
            frame = decode_frame((await sub.next(timeout=5)).raw)
            if not isinstance(frame, Open):
                break
        assert isinstance(frame, Reset) and frame.code == 410 and "connect cancelled" in frame.reason

        async with (  # the client is still usable
            await b.socket_listen("cancel.later.*") as server,
            await a.socket_connect("cancel.later.one") as sock,
        ):
            conn = await server.accept(timeout=5)
            await sock.send("hello")
            assert (await conn.recv(timeout=5)).data == "hello"


# -- clocks, close and linger ----------------------------------------------------------------------


class LateClock:
    """A fake clock whose sleepers wake ``late`` seconds after their deadline, as real timers may:
    a timeout then measures more than it was configured for."""

    def __init__(self, late: float) -> None:
        self.fake = FakeClock()
        self.late = late

    def now(self) -> float:
        return self.fake.now()

    def wall(self) -> float:
        return self.fake.wall()

    async def sleep_until(self, deadline: float) -> None:
        await self.fake.sleep_until(deadline + self.late)


async def test_accept_timeout_runs_on_the_servers_clock(nats_server) -> None:
    clock = LateClock(0.5)
    async with (
        await conat.connect(nats_server.url) as b,
        await b.socket_listen("acc.*", clock=clock) as server,
    ):
        accepting = asyncio.create_task(server.accept(timeout=5))
        await clock.fake.advance(4)
        assert not accepting.done()
        await clock.fake.advance(2)
        assert accepting.done()  # no real time passed: the timeout is on the clock
        with pytest.raises(Timeout) as e:
            await accepting
        assert e.value.code == 408 and "socket accept" in str(e.value)
        assert e.value.elapsed == 5.5  # measured on the clock, not the configured 5
        assert server.statistics().accepted == 0


async def test_recv_timeout_reports_the_measured_time(nats_server) -> None:
    clock = LateClock(0.5)
    async with socket_pair(nats_server.url, "late.one", listen={"clock": clock}, clock=clock) as (_, conn, _):
        receiving = asyncio.create_task(conn.recv(timeout=2))
        await clock.fake.advance(3)
        with pytest.raises(Timeout) as e:
            await receiving
        assert e.value.elapsed == 2.5 and "socket receive" in str(e.value)


async def test_cancelled_server_close_still_lets_go(nats_server) -> None:
    async with (
        await conat.connect(nats_server.url) as a,
        await conat.connect(nats_server.url) as b,
    ):
        server = await b.socket_listen("cclose.*")
        subscriptions = b.statistics().subscriptions
        sock = await a.socket_connect("cclose.one", window=4096)  # the client grants little credit
        conn = await server.accept(timeout=5)
        sent = await _fill_window(conn)  # and reads nothing: the connection cannot finish closing
        closing = asyncio.create_task(server.aclose(timeout=30))
        await _started(closing)
        await _cancelled(closing)
        assert server.statistics().listening is False and conn.closed
        for _ in range(100):  # no second aclose() needed: the subscription goes all the same
            if b.statistics().subscriptions < subscriptions:
                break
            await asyncio.sleep(0.01)
        assert b.statistics().subscriptions == subscriptions - 1
        await server.aclose()  # idempotent
        got = [(await sock.recv(timeout=5)).data for _ in range(sent)]
        assert got == list(range(sent))  # what was delivered stays readable, then the abort:
        with pytest.raises(SocketReset) as e:
            await sock.recv(timeout=5)
        assert e.value.reason_code == 410 and "close cancelled" in str(e.value)
        await sock.aclose()


async def test_a_closed_server_connection_answers_late_frames_with_close(nats_server) -> None:
    from conat._socket_frames import Accept, Ack, Close, Fin, Open, Ping, Reset, decode_frame, encode_frame

    clock = FakeClock()
    reply = "raw.linger.reply"
    async with (
        await conat.connect(nats_server.url) as raw,
        await conat.connect(nats_server.url) as b,
        await b.socket_listen("linger.*", clock=clock, peer_timeout=30) as server,
        await raw.subscribe(reply) as inbox,
    ):

        async def send(frame: object) -> None:
            await raw._core.transport.publish("linger.one", encode_frame(frame), reply)  # type: ignore[arg-type]

        async def expect(kind: type) -> object:
            while True:
                frame = decode_frame((await inbox.next(timeout=5)).raw)
                if isinstance(frame, kind):
                    return frame
                assert isinstance(frame, Accept | Ack | Ping), frame

        await send(Open("raw-1", 1 << 20, 1 << 20))  # a client speaking the protocol by hand
        conn = await server.accept(timeout=5)
        await send(Fin(1))
        closing = asyncio.create_task(conn.aclose())
        fin = await expect(Fin)
        await send(Ack(fin.seq, 1 << 20))  # type: ignore[attr-defined]
        await asyncio.wait_for(closing, 5)
        assert conn.closed and await expect(Close) == Close()
        assert server.statistics().connections == 0

        await send(Ping())  # as if that Close had been lost: the peer's keepalive...
        assert await expect(Close | Reset) == Close()  # ...is answered with Close, not Reset(404)
        await send(Open("raw-1", 1 << 20, 1 << 20))  # a late duplicate Open is no new connection
        assert await expect(Close | Reset) == Close()
        assert server.statistics().resets_sent == 0 and server.statistics().pending_accept == 0

        await clock.advance(30)  # past the linger: the connection is unknown
        await send(Ping())
        reset = await expect(Close | Reset)
        assert isinstance(reset, Reset) and reset.code == 404


async def test_a_closed_client_socket_answers_late_frames_with_close(nats_server) -> None:
    from conat._socket_frames import Close, Ping, decode_frame, encode_frame

    clock = FakeClock()
    async with (
        await conat.connect(nats_server.url) as a,
        await conat.connect(nats_server.url) as b,
        await b.socket_listen("clinger.*") as server,
        await b.subscribe("clinger.one") as wire,  # hears what the client sends the server
    ):
        sock = await a.socket_connect("clinger.one", clock=clock, peer_timeout=30)
        conn = await server.accept(timeout=5)
        routes = a.statistics().pending_requests
        await sock.send_eof()
        await sock.drain(timeout=5)
        await sock.aclose()  # returns at once; the client's route lingers
        for _ in range(100):
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn.closed and conn._proto.error is None  # closed by peer, cleanly
        assert a.statistics().pending_requests == routes

        await b._core.transport.publish(sock._outbox.reply, encode_frame(Ping()), "")  # a late frame
        while True:
            frame = decode_frame((await wire.next(timeout=5)).raw)
            if isinstance(frame, Close):
                break  # the client said Close again (what came before it was the first goodbye)
        with pytest.raises(SocketClosed):
            await sock.request("too late", timeout=1)  # its deadline must not cut the linger short
        await clock.advance(2)
        assert a.statistics().pending_requests == routes
        await clock.advance(28)
        assert a.statistics().pending_requests == routes - 1  # the linger is over: route gone


def test_socket_defaults_have_one_source() -> None:
    import inspect

    from conat._socket_frames import DEFAULT_BACKLOG, DEFAULT_CONNECT_TIMEOUT, SocketConfig

    listen = inspect.signature(conat.Client.socket_listen).parameters
    connect = inspect.signature(conat.Client.socket_connect).parameters
    assert listen["backlog"].default is DEFAULT_BACKLOG
    assert connect["timeout"].default is DEFAULT_CONNECT_TIMEOUT == SocketConfig().connect_timeout


async def test_backlog_is_validated(nats_server) -> None:
    async with await conat.connect(nats_server.url) as b:
        for bad in (0, True, 2.5):
            with pytest.raises(ValueError, match=r"^backlog must be"):
                await b.socket_listen("backlog.*", backlog=bad)  # type: ignore[arg-type]
        assert b.statistics().subscriptions == 0


# -- hostile peers: raw frames on a real bus (every byte from the network is hostile) ---------------


class RawPeer:
    """A socket client played by hand: frames built with the frame module, published on the bus
    with a reply subject of our choosing, and whatever the listener answers read off that subject."""

    def __init__(self, client: conat.Client, subject: str, reply: str, inbox: conat.Subscription) -> None:
        self.client, self.subject, self.reply, self.inbox = client, subject, reply, inbox

    async def send(self, frame: Frame) -> None:
        await self.client.publish(self.subject, encode_frame(frame), encoding="raw", reply=self.reply)

    async def expect(self, kind: type | types.UnionType) -> Frame:
        """The next frame of ``kind`` sent to our reply subject (Accepts, Acks and Pings are skipped)."""
        while True:
            frame = decode_frame((await self.inbox.next(timeout=5)).raw)
            if isinstance(frame, kind):
                return frame
            assert isinstance(frame, Accept | Ack | Ping), frame


@contextlib.asynccontextmanager
async def raw_peer(url: str, subject: str, reply: str) -> AsyncIterator[RawPeer]:
    async with await conat.connect(url) as raw, await raw.subscribe(reply) as inbox:
        yield RawPeer(raw, subject, reply, inbox)


@contextlib.asynccontextmanager
async def accepted_raw_peer(
    url: str, name: str, window: int
) -> AsyncIterator[tuple[SocketServer, RawPeer, Socket]]:
    """A listener on ``<name>.*`` granting ``window``, a raw peer connected on ``<name>.hostile``,
    and the listener's end of that connection, accepted (so the peer holds the whole window)."""
    async with (
        await conat.connect(url) as b,
        await b.socket_listen(f"{name}.*", window=window) as server,
        raw_peer(url, f"{name}.hostile", f"raw.{name}.1") as peer,
    ):
        accepting = asyncio.create_task(server.accept(timeout=5))
        await peer.send(Open("raw-1", 1 << 20, 1 << 20))
        yield server, peer, await accepting


async def _read_until_failed(conn: Socket) -> tuple[list[bytes], conat.SocketError]:
    got: list[bytes] = []
    while True:
        try:
            got.append((await conn.recv(timeout=5)).raw)
        except conat.SocketError as e:
            return got, e


async def test_a_peer_that_overruns_the_window_is_reset_and_others_are_unaffected(nats_server) -> None:
    window = 8192
    async with accepted_raw_peer(nats_server.url, "overrun", window) as (server, peer, conn):
        accept = await peer.expect(Accept)
        assert isinstance(accept, Accept) and accept.limit == window
        chunk = b"x" * 1000  # 1032 credit units a frame: 8 fit under 8192, the 9th is over
        for seq in range(1, 41):  # 40 kB into an 8 kB window, ignoring every Ack
            await peer.send(Data(seq, chunk))
        reset = await peer.expect(Reset)
        assert isinstance(reset, Reset) and reset.code == 429 and "beyond the credit" in reset.reason
        got, error = await _read_until_failed(conn)
        assert got == [chunk] * 8  # what the window allowed, in order, and nothing more
        assert isinstance(error, conat.SocketProtocolError) and "overran the window" in str(error)
        assert conn.statistics().buffered_bytes <= window + 1032 and server.statistics().connections == 0

        async with await conat.connect(nats_server.url) as a:  # the listener still serves others
            accepting = asyncio.create_task(server.accept(timeout=5))
            async with await a.socket_connect("overrun.fine") as sock:
                other = await accepting
                await sock.send("hello")
                assert (await other.recv(timeout=5)).data == "hello"


async def test_frames_beyond_a_gap_are_held_only_within_the_window(nats_server) -> None:
    window = 8192
    async with accepted_raw_peer(nats_server.url, "gap", window) as (_, peer, conn):
        for seq in range(1000, 10, -1):  # seq 1 never comes; everything else is held, or not
            await peer.send(Data(seq, b"y" * 1000))
        reset = await peer.expect(Reset)
        assert isinstance(reset, Reset) and reset.code == 429
        assert conn.statistics().out_of_order <= window // 1032 + 1
        assert conn.statistics().buffered_bytes <= window + 1032
        got, error = await _read_until_failed(conn)
        assert got == [] and isinstance(error, conat.SocketProtocolError)


async def test_headers_count_against_the_window_on_the_wire(nats_server) -> None:
    async with accepted_raw_peer(nats_server.url, "hdr", 8192) as (_, peer, conn):
        for seq in range(1, 21):  # empty messages with 100 kB of headers each
            await peer.send(Head(seq, b"", False, {"h": "x" * 100_000}, "raw"))
        reset = await peer.expect(Reset)
        assert isinstance(reset, Reset) and reset.code == 429
        got, _ = await _read_until_failed(conn)
        assert len(got) == 1  # the first was within the window (nothing before it); the second not


async def test_a_connection_waiting_to_be_accepted_holds_no_data(nats_server) -> None:
    async with (
        await conat.connect(nats_server.url) as a,
        await conat.connect(nats_server.url) as b,
        await b.socket_listen("pre.*", window=8192) as server,
        raw_peer(nats_server.url, "pre.hostile", "raw.pre.1") as peer,
    ):
        await peer.send(Open("raw-1", 1 << 20, 1 << 20))
        accept = await peer.expect(Accept)
        assert isinstance(accept, Accept) and accept.limit == 0  # nobody accepted it yet
        assert server.statistics().pending_accept == 1
        await peer.send(Data(1, b"z" * 1000))
        reset = await peer.expect(Reset)
        assert isinstance(reset, Reset) and reset.code == 429
        for _ in range(100):  # the failed connection leaves the backlog: nobody gets it
            if server.statistics().pending_accept == 0:
                break
            await asyncio.sleep(0.01)
        assert server.statistics().pending_accept == 0 and server.statistics().connections == 0

        sock = await a.socket_connect("pre.client")  # a client that keeps to the rules...
        async with sock:
            with pytest.raises(SocketBusy):
                sock.send_nowait("early")  # ...has no credit before accept
            sending = asyncio.create_task(sock.send("waits"))
            await _started(sending)
            await asyncio.sleep(0.05)
            assert not sending.done() and server.statistics().pending_accept == 1
            conn = await server.accept(timeout=5)  # accepting grants the window
            await asyncio.wait_for(sending, 5)
            assert (await conn.recv(timeout=5)).data == "waits"
            assert sock.statistics().window > 0

        accepting = asyncio.create_task(server.accept(timeout=5))  # an acceptor already waits:
        await asyncio.sleep(0)
        async with await a.socket_connect("pre.ready") as sock:
            assert sock.statistics().window == 8192  # the Accept itself carried the window
            sock.send_nowait("at once")
            assert (await (await accepting).recv(timeout=5)).data == "at once"


async def test_one_client_cannot_fill_the_whole_backlog(nats_server) -> None:
    async with (
        await conat.connect(nats_server.url) as a,
        await conat.connect(nats_server.url) as b,
        await b.socket_listen("flood.*", backlog=4) as server,
        raw_peer(nats_server.url, "flood.hostile", "raw.flood.*") as peer,
    ):
        for i in range(10):  # ten connects from one inbox prefix ("raw.flood")
            await peer.client.publish(
                "flood.hostile", encode_frame(Open(f"raw-{i}", 1 << 20, 1 << 20)), encoding="raw",
                reply=f"raw.flood.{i}",
            )  # fmt: skip
        answers: dict[str, Frame] = {}
        while len(answers) < 10:
            msg = await peer.inbox.next(timeout=5)
            frame = decode_frame(msg.raw)
            if isinstance(frame, Accept | Reset):
                answers.setdefault(msg.subject, frame)
        accepted = [s for s, f in answers.items() if isinstance(f, Accept)]
        refused = [f for f in answers.values() if isinstance(f, Reset)]
        assert len(accepted) == 2 and all(f.code == 503 for f in refused)  # half the backlog
        assert "of this client already wait" in refused[0].reason
        stats = server.statistics()
        assert stats.pending_accept == 2 and stats.rejected == 8

        async with await a.socket_connect("flood.legit") as sock:  # another client still gets in
            assert server.statistics().pending_accept == 3
            conns = [await server.accept(timeout=5) for _ in range(3)]
            assert conns[-1].id == sock.id
            for conn in conns[:2]:
                conn.abort()  # the raw peer would never acknowledge a graceful close


async def test_an_oversized_socket_id_is_refused(nats_server) -> None:
    async with (
        await conat.connect(nats_server.url) as b,
        await b.socket_listen("bigid.*") as server,
        raw_peer(nats_server.url, "bigid.hostile", "raw.bigid.1") as peer,
    ):
        await peer.send(Open("i" * 100_000, 1 << 20, 1 << 20))
        reset = await peer.expect(Reset)
        assert isinstance(reset, Reset) and reset.code == 400 and "socket id" in reset.reason
        stats = server.statistics()
        assert stats.pending_accept == 0 and stats.connections == 0 and stats.rejected == 1


async def test_a_flood_of_stray_frames_costs_no_task_per_frame(nats_server) -> None:
    # Regression: every frame for an unknown connection spawned a task to publish its Reset.
    async with (
        await conat.connect(nats_server.url) as b,
        await b.socket_listen("stray.*") as server,
        raw_peer(nats_server.url, "stray.one", "raw.stray.*") as peer,
    ):
        before = len(asyncio.all_tasks())
        ping = encode_frame(Ping())
        for i in range(5000):  # as the read loop would hand them over: all at once
            server._on_message(conat.Message("stray.one", f"raw.stray.{i}", ping, None, b))
        assert len(asyncio.all_tasks()) - before <= 2
        stats = server.statistics()
        assert stats.resets_sent == 5000 and 0 < stats.answers_dropped < 5000
        first = await peer.inbox.next(timeout=5)  # the ones that fit are answered
        assert decode_frame(first.raw) == Reset(404, "unknown connection")


async def test_chunked_messages_on_the_listener_subject_hold_back_no_socket(nats_server) -> None:
    # Regression: the listener's subscription reassembled chunked messages, and a dispatch
    # subscription keeps later messages behind a transfer still arriving. Two chunked heads whose
    # sender never serves the pulls held back every socket on the listener for 18 s, again and
    # again. Socket frames are never chunked: the listener no longer reassembles anything.
    from conat._chunking import CHUNKED_HEADER, ChunkHead

    async with (
        socket_pair(nats_server.url, "hol.one") as (sock, conn, server),
        await conat.connect(nats_server.url) as evil,
        await evil.subscribe("raw.hol.pulls") as pulls,  # hears pulls, if any come; never answers
    ):
        for tid in ("t1", "t2"):
            head = ChunkHead(tid, 4 * 65536, 65536, 4)
            await evil._core.transport.publish(
                "hol.evil", b"x" * 65536, "raw.hol.pulls", {CHUNKED_HEADER: head.header()}
            )
        await evil.flush()
        await sock.send("after")
        assert (await conn.recv(timeout=5)).data == "after"
        assert server.statistics().malformed == 2 and pulls.statistics().received == 0


async def test_connect_fails_at_once_when_nobody_listens(nats_server) -> None:
    # Regression: NATS said "no responders" at once, and connect waited for its whole timeout.
    clock = FakeClock()  # it never moves: only the server's answer can end the connect
    async with await conat.connect(nats_server.url) as a:
        with pytest.raises(NoResponders) as e:
            await asyncio.wait_for(a.socket_connect("nobody.here", clock=clock, timeout=5), 5)
        assert e.value.code == 503 and a.statistics().pending_requests == 0

        connecting = asyncio.create_task(
            a.socket_connect("later.one", clock=clock, timeout=30, wait_for_interest=True)
        )
        await asyncio.sleep(0.1)  # no responders, retried on the clock: still connecting
        assert not connecting.done()
        async with (
            await conat.connect(nats_server.url) as b,
            await b.socket_listen("later.*") as server,
        ):
            await clock.advance(5)  # the next Open finds the listener
            async with await asyncio.wait_for(connecting, 5) as sock:
                conn = await server.accept(timeout=5)
                assert conn.id == sock.id

        late = asyncio.create_task(
            a.socket_connect("never.one", clock=clock, timeout=3, wait_for_interest=True)
        )
        await asyncio.sleep(0.1)
        await clock.advance(3)
        with pytest.raises(NoResponders):
            await asyncio.wait_for(late, 5)  # nobody listened all along


async def test_dead_peer_detection_goes_on_while_the_link_is_down(fresh_nats_server) -> None:
    # Regression: while the bus link was down, dead-peer detection paused, so recv() without a
    # timeout waited forever for a nats-server that never came back.
    clock = FakeClock()
    async with (
        await conat.connect(fresh_nats_server.url, reconnect_time_wait=0.1) as a,
        await conat.connect(fresh_nats_server.url, reconnect_time_wait=0.1) as b,
    ):
        server = await b.socket_listen("down.*", clock=clock, keepalive=5, peer_timeout=15)
        accepting = asyncio.create_task(server.accept())
        await asyncio.sleep(0)
        sock = await a.socket_connect("down.one", clock=clock, keepalive=5, peer_timeout=15)
        conn = await accepting
        receiving = [asyncio.create_task(sock.recv()), asyncio.create_task(conn.recv())]
        await fresh_nats_server.kill()
        for _ in range(500):
            if a.state is ClientState.RECONNECTING and b.state is ClientState.RECONNECTING:
                break
            await asyncio.sleep(0.01)
        assert a.state is b.state is ClientState.RECONNECTING
        await clock.advance(14)
        assert not any(t.done() for t in receiving) and sock.state is SocketState.OPEN
        await clock.advance(2)  # the outage has lasted peer_timeout
        for task in receiving:
            assert task.done()
            with pytest.raises(PeerDead):
                await task
        await fresh_nats_server.restart()
        await sock.aclose()
        await server.aclose()
