"""Reliable sockets: ordered, acknowledged, flow-controlled message channels over the bus.

``server = await client.socket_listen("watch.*")`` accepts connections; a client calls
``sock = await client.socket_connect("watch.project-1234")``. Each side sends messages (bytes or
codec-encoded values, with headers), reads them in order, and can make requests of the other.

Guarantees: messages arrive exactly once and in order, in each direction, for as long as the socket
is open, across bus reconnects and nats-server restarts (retransmission fills whatever core NATS
dropped; duplicates are discarded). A sender never has more than the peer's window in flight:
``send`` waits for credit, ``send_nowait`` raises :class:`SocketBusy` (429). A peer that is silent for
``peer_timeout`` seconds fails the socket with :class:`PeerDead` (408), also while the bus link is
down (an outage gets ``peer_timeout`` to end). See
:mod:`conat._socket_protocol` for the protocol itself; this module only pumps frames and timers.

Wire and auth design
--------------------
Client-to-server frames are published to the *concrete* subject the client connected to (identity
lives in the subject: ``watch.project-<id>``), each with ``reply=`` set to a per-socket subject in
the client's own inbox (``<inbox_prefix>.<nuid>.<token>``, a route of the client's one wildcard
inbox subscription). The server sends every frame of that connection to that reply subject and
nowhere else. This is deliberate: under our auth model a service may publish into a client's inbox
only through NATS *response permissions* (replies to subjects it received messages with), never
through a broad ``_INBOX.>`` grant. The client's frames, including its keepalive pings, keep that
right fresh for as long as the connection lives.

Frames are msgpack bodies with no NATS headers at all. The connecting side (the entry point and
that inbox route) is :mod:`conat._socket_client`; the listening side, which routes frames to
connections by (concrete subject, reply subject), is :mod:`conat._socket_server`; messages read are
:class:`~conat._socket_message.SocketMessage`; the writer, timer and waits a socket pumps with are
in :mod:`conat._socket_pump`.

Time comes from a :class:`~conat._clock.Clock` (``clock=``), so keepalive, retransmission and
timeouts can be driven by a :class:`~conat.testing.FakeClock` in tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import warnings
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, final

from ._client import ClientState
from ._clock import Clock, SystemClock
from ._errors import (
    ConatError,
    DeadlinePassed,
    EndOfStream,
    ErrorCode,
    SocketClosed,
    Timeout,
)
from ._socket_frames import (
    FRAME_DECODER,
    MALFORMED,
    RESET_ABORTED,
    Frame,
    MessageReceived,
    SocketStatistics,
)
from ._socket_message import PendingRequests, SocketMessage, encode_payload
from ._socket_protocol import SocketProtocol, SocketState
from ._socket_pump import Alarm, Outbox, Waits

if TYPE_CHECKING:
    from ._client import Client
    from ._socket_client import InboxRoute
    from ._socket_server import SocketServer

__all__ = ["Socket", "SocketStatistics"]

log = logging.getLogger("conat.socket")

DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_CLOSE_TIMEOUT: Final = 5.0

# Module globals: on CPython 3.11 every ``SocketState.X`` is a metaclass attribute lookup (~0.1 us).
_CONNECTING: Final = SocketState.CONNECTING
_OPEN: Final = SocketState.OPEN
_CLOSING: Final = SocketState.CLOSING
_CLOSED: Final = SocketState.CLOSED


# -- the socket ------------------------------------------------------------------------------------


@final
class Socket:
    """One end of a reliable socket: the client's, or a server's connection to one client.

    Attributes:
        subject: the concrete subject the client connected to (the client's identity).
        id: the client's socket id (random, chosen by the client, the same on both ends).

    Read with ``async for msg in sock`` (ends at the peer's end of stream) or :meth:`recv`; write
    with :meth:`send`; ask with :meth:`request`. Close with :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        client: Client,
        proto: SocketProtocol,
        clock: Clock,
        *,
        subject: str,
        target: str,
        server: SocketServer | None = None,
    ) -> None:
        self._client = client
        self._proto = proto
        self._clock = clock
        self.subject = subject
        self._server = server
        self._loop = asyncio.get_running_loop()
        # clock.now, read for every frame in or out: the loop's own clock is SystemClock's time
        self._now: Callable[[], float] = self._loop.time if isinstance(clock, SystemClock) else clock.now
        self._inbox: deque[SocketMessage] = deque()
        self._requests = PendingRequests(self._loop)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waits = Waits()
        self._outbox = Outbox(client, target, subject, self._spawn, self._on_bus_closed)
        self._alarm = Alarm(clock, self._on_timer, self._spawn)
        self._batch = False
        self._finished = False
        self._closed_locally = False
        self._unlisten: Callable[[], None] | None = None
        self._inbox_route: InboxRoute | None = None
        """The client side's inbox route (:mod:`conat._socket_client`); None on a server's side."""
        self._malformed = 0

    def __repr__(self) -> str:
        side = "server" if self._server is not None else "client"
        return f"<Socket {side} {self.subject!r} id={self.id!r} {self._proto.state.value}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_server", True) is None and not getattr(self, "_finished", True):
            client = getattr(self, "_client", None)
            if client is not None and not client._core.closing:
                _warn(f"unclosed conat socket {self.subject!r}", ResourceWarning, source=self, stacklevel=2)

    # -- state -----------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._proto.id

    @property
    def state(self) -> SocketState:
        return self._proto.state

    @property
    def closed(self) -> bool:
        return self._proto.state is _CLOSED

    def statistics(self) -> SocketStatistics:
        p = self._proto.statistics()
        return SocketStatistics(
            **{f.name: getattr(p, f.name) for f in dataclasses.fields(p)},
            subject=self.subject,
            id=self.id,
            buffered=len(self._inbox),
            pending_requests=len(self._requests),
            no_responders=0 if self._inbox_route is None else self._inbox_route.no_responders,
            malformed=self._malformed,
        )

    # -- frames in -------------------------------------------------------------------------------
    def _on_bus_closed(self) -> None:
        self._fail_local(SocketClosed(self.subject, "the bus client is closed"))

    def _on_raw(self, raw: bytes) -> None:
        """Feed one frame to the protocol and handle its events; the batch's end polls (acks).

        Runs once per frame on the read loop, so decoding and event handling are inlined here.
        """
        try:
            frame: Frame = FRAME_DECODER.decode(raw)
        except MALFORMED:
            self._malformed += 1
            return
        events = self._proto.receive(frame, self._now())
        if events:
            for event in events:
                if type(event) is MessageReceived:
                    if event.reply_to:
                        self._proto.consume(event.cost)
                        self._requests.resolve(self, event)
                        continue
                    self._inbox.append(SocketMessage(self, event))
                # Opened, StreamEnded, ConnectionClosed: state that the waiters re-check.
            if self._waits.waiters:
                self._waits.notify()  # a reader waits: wake it once, it takes what is buffered
        if not self._batch:
            self._batch = True
            self._loop.call_soon(self._end_batch)

    def _end_batch(self) -> None:
        self._batch = False
        if not self._finished:
            self._pump()
            return
        frames = self._proto.poll(self._now())  # lingering: a Close for a late frame
        if frames and not self._client._core.closing:
            self._outbox.emit(frames)

    def _on_accepted(self) -> None:
        """The listener's application took this connection: grant the client the window."""
        self._proto.accepted()
        if not self._batch and not self._finished:
            self._batch = True
            self._loop.call_soon(self._end_batch)

    def _pump(self) -> None:
        frames = self._proto.poll(self._now())
        if frames:
            self._outbox.emit(frames)
        self._settle()

    def _settle(self) -> None:
        if self._proto.state is _CLOSED and not self._finished:
            self._finish()
        if self._waits:
            self._waits.notify()
        if not self._finished:
            self._rearm()

    # -- frames out, timers -------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._client._core.spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _rearm(self) -> None:
        if self._finished:
            return  # the alarm is the linger's now (see _finish), or disarmed
        deadline = self._proto.next_deadline()
        first = self._waits.earliest()
        if first is not None and (deadline is None or first < deadline):
            deadline = first
        if deadline is None:
            self._alarm.disarm()
        else:
            self._alarm.arm(deadline)

    def _on_timer(self) -> None:
        if self._finished:
            self._release_route()  # the linger after a graceful close is over
            return
        self._waits.expire(self._now())
        self._pump()

    def _add_deadline(self, deadline: float, future: asyncio.Future[Any]) -> None:
        self._waits.add_deadline(deadline, future, len(self._requests))
        self._rearm()

    async def _wait(self, deadline: float | None) -> None:
        """Wait for any change (a frame, credit, a state change) or ``deadline`` (raises DeadlinePassed)."""
        future = self._waits.waiter()
        if deadline is not None:
            self._add_deadline(deadline, future)
        await future

    # -- sending ---------------------------------------------------------------------------------
    async def send(
        self, data: Any = None, *, headers: dict[str, str] | None = None, encoding: str | None = None
    ) -> None:
        """Send one message (msgpack by default; ``encoding="json"`` or ``"raw"`` for bytes).

        Waits while the peer's window is full. Atomic with respect to cancellation: a cancelled
        ``send`` has either queued the whole message (it will be delivered) or nothing.

        Raises:
            PayloadTooLarge: the message is over ``max_message`` (413); the socket stays usable.
            PayloadError: the value cannot be encoded (400).
            SocketClosed: the socket is closed for writing; PeerDead / SocketReset if it failed.
        """
        payload, enc = encode_payload(data, headers, encoding)
        # _send and _queue, inlined (a coroutine and two calls less per message)
        proto = self._proto
        if not proto.writable:
            await self._wait_writable(None)
        frames = proto.send(payload, self._now(), headers=headers or None, encoding=enc)
        due = proto.retransmit_at  # the only deadline a send can move earlier
        alarm = self._alarm
        if due is not None and (alarm.at is None or due < alarm.at):
            alarm.arm(due)
        if frames:
            await self._outbox.write(frames)

    def send_nowait(
        self, data: Any = None, *, headers: dict[str, str] | None = None, encoding: str | None = None
    ) -> None:
        """Send one message now or raise :class:`SocketBusy` (429) if the peer's window is full."""
        payload, enc = encode_payload(data, headers, encoding)
        frames = self._proto.send(payload, self._now(), headers=headers or None, encoding=enc)
        if frames:
            self._outbox.emit(frames)
        self._rearm()

    async def _send(
        self,
        payload: bytes,
        headers: dict[str, str] | None,
        encoding: str | None,
        *,
        request: int = 0,
        reply_to: int = 0,
        error: ErrorCode | None = None,
        deadline: float | None = None,
    ) -> None:
        if not self._proto.writable:
            await self._wait_writable(deadline)
        frames = self._queue(payload, headers, encoding, request, reply_to, error)
        if frames:
            await self._outbox.write(frames)

    async def _wait_writable(self, deadline: float | None) -> None:
        """Wait until :meth:`_queue` can take a message (raises what sending would raise)."""
        proto = self._proto
        while not proto.writable:
            proto.check_can_send()
            proto.want_credit(self._now())  # probe if the window update is lost
            self._rearm()
            await self._wait(deadline)

    def _queue(
        self,
        payload: bytes,
        headers: dict[str, str] | None,
        encoding: str | None,
        request: int,
        reply_to: int,
        error: ErrorCode | None,
    ) -> list[Frame]:
        """Hand a message to the protocol (the socket is writable); return the frames to write."""
        proto = self._proto
        frames = proto.send(
            payload,
            self._now(),
            headers=headers or None,
            encoding=encoding,
            request=request,
            reply_to=reply_to,
            error=error,
        )
        due = proto.retransmit_at  # the only deadline a send can move earlier
        alarm = self._alarm
        if due is not None and (alarm.at is None or due < alarm.at):
            alarm.arm(due)
        return frames

    async def request(
        self,
        data: Any = None,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        headers: dict[str, str] | None = None,
        encoding: str | None = None,
    ) -> SocketMessage:
        """Send a request over the socket and return the peer's response.

        Raises:
            Timeout: no response within ``timeout`` seconds (408).
            RemoteError: the peer answered with ``respond_error(code, message)``.
            SocketClosed / PeerDead / SocketReset: the socket ended before the response came.
        """
        payload, enc = encode_payload(data, headers, encoding)
        rid, future = self._requests.open()
        started = self._now()
        deadline = started + timeout
        self._add_deadline(deadline, future)
        try:
            await self._send(payload, headers, enc, request=rid, deadline=deadline)
            return await future
        except DeadlinePassed:
            raise Timeout(self.subject, self._now() - started, "socket request") from None
        finally:
            self._requests.close(rid, future)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the peer has acknowledged everything sent so far.

        Raises:
            Timeout: not drained within ``timeout`` seconds.
            SocketClosed / PeerDead / SocketReset: the socket ended with data unacknowledged.
        """
        proto = self._proto
        started = self._now()
        deadline = None if timeout is None else started + timeout
        try:
            while not proto.drained:
                if proto.state is _CLOSED:
                    proto.check_can_send()
                await self._wait(deadline)
        except DeadlinePassed:
            raise Timeout(self.subject, self._now() - started, "socket drain") from None

    async def send_eof(self) -> None:
        """Half-close: the peer reads every message sent so far, then end of stream. We can still
        read. Idempotent."""
        proto = self._proto
        if proto.eof_sent:
            return
        if proto.state is not _OPEN:
            proto.check_can_send()
        frames = proto.send_eof(self._now())
        self._rearm()
        if frames:
            await self._outbox.write(frames)

    # -- receiving -------------------------------------------------------------------------------
    async def recv(self, timeout: float | None = None) -> SocketMessage:
        """The next message, in order.

        Raises:
            EndOfStream: the peer sent end of stream and every message has been read.
            Timeout: nothing within ``timeout`` seconds (408).
            SocketClosed / PeerDead / SocketReset: the socket ended (after the buffered messages).
        """
        started = deadline = None
        while True:
            inbox = self._inbox
            if inbox:  # take one, and give back its credit (an ack is due after a quarter window)
                msg = inbox.popleft()
                if self._proto.consume(msg._cost) and not self._batch and not self._finished:
                    self._batch = True
                    self._loop.call_soon(self._end_batch)
                return msg
            self._check_readable()
            if started is None and timeout is not None:
                started = self._now()  # not before: a buffered message costs no clock read
                deadline = started + timeout
            try:
                await self._wait(deadline)
            except DeadlinePassed:
                assert started is not None
                raise Timeout(self.subject, self._now() - started, "socket receive") from None

    def _check_readable(self) -> None:
        proto = self._proto
        if proto.eof_received:
            raise EndOfStream(self.subject)
        if proto.state is _CLOSED:
            raise proto.closed_error()

    def __aiter__(self) -> Socket:
        return self

    async def __anext__(self) -> SocketMessage:
        try:
            return await self.recv()
        except EndOfStream:
            raise StopAsyncIteration from None
        except SocketClosed:
            if self._closed_locally:
                raise StopAsyncIteration from None
            raise

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Close gracefully: send end of stream, wait up to ``timeout`` seconds for the peer to
        acknowledge everything, then leave (the peer is told). Idempotent; never raises for a
        socket that already failed."""
        self._closed_locally = True
        proto = self._proto
        try:
            if proto.state is _OPEN:  # a Socket is never seen CONNECTING: see _socket_client
                await self.send_eof()
            if proto.state is _CLOSING:
                deadline = self._now() + timeout
                try:
                    while proto.state is _CLOSING and not proto.drained:
                        await self._wait(deadline)
                except DeadlinePassed:
                    log.debug("socket %r: closing without all acks after %ss", self.subject, timeout)
                if proto.state is _CLOSING:
                    self._outbox.emit(proto.close(self._now()))
        except BaseException:
            self.abort("close cancelled")
            raise
        finally:
            self._settle()
        await self._flush_out()

    def abort(self, reason: str = "aborted") -> None:
        """Abort at once: unsent data is discarded and the peer's socket fails with SocketReset."""
        self._closed_locally = True
        proto = self._proto
        if proto.state is not _CLOSED:
            self._outbox.emit(proto.abort(RESET_ABORTED, reason, self._now()))
        self._settle()

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _fail_local(self, error: ConatError) -> None:
        if self._proto.state is not _CLOSED:
            self._proto.fail(error)
        self._settle()

    def _finish(self) -> None:
        """The protocol reached CLOSED: send the last frames, fail what waits, let go of routes.

        After a graceful close the client side keeps its inbox route until the protocol's linger
        ends, so that late frames get their Close (the server side's listener does the same for
        its connections: :meth:`SocketServer._forget`).
        """
        self._finished = True
        proto = self._proto
        frames = proto.poll(self._now())
        if frames and not self._client._core.closing:
            self._outbox.emit(frames)
        self._alarm.disarm()
        self._requests.fail_all(proto.closed_error())
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._server is not None:
            self._server._forget(self, proto.linger_until)
        elif proto.linger_until is not None and self._lingering and not self._client._core.closing:
            self._alarm.arm(proto.linger_until)
        else:
            self._release_route()

    def _release_route(self) -> None:
        if self._inbox_route is not None:
            self._inbox_route.release()

    @property
    def _lingering(self) -> bool:
        """Closed, and the client side's route still answers late frames (see :meth:`_finish`)."""
        return self._finished and self._inbox_route is not None and self._inbox_route.token is not None

    async def _flush_out(self) -> None:
        """Let the writer finish (the last frames matter: Fin, Close, Reset)."""
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me and t is not self._alarm.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        timer = self._alarm.task
        if timer is not None and timer is not me and not self._lingering:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)

    # -- link state ------------------------------------------------------------------------------
    def _on_client_state(self, state: ClientState) -> None:
        if self._finished:
            return
        now = self._now()
        if state is ClientState.RECONNECTING:
            self._proto.link_down(now)
            self._rearm()  # dead-peer detection goes on while the link is down
        elif state is ClientState.CONNECTED:
            frames = self._proto.link_up(now)
            if frames:
                self._outbox.emit(frames)
            self._settle()
        elif state is ClientState.CLOSED:
            self._on_bus_closed()
