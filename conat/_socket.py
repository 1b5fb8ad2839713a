"""Reliable sockets: ordered, acknowledged, flow-controlled message channels over the bus.

``server = await client.socket_listen("watch.*")`` accepts connections; a client calls
``sock = await client.socket_connect("watch.project-1234")``. Each side sends messages (bytes or
codec-encoded values, with headers), reads them in order, and can make requests of the other.

Guarantees: messages arrive exactly once and in order, in each direction, for as long as the socket
is open, across bus reconnects and nats-server restarts (retransmission fills whatever core NATS
dropped; duplicates are discarded). A sender never has more than the peer's window in flight:
``send`` waits for credit, ``send_nowait`` raises :class:`SocketBusy` (429). A peer that is silent for
``peer_timeout`` seconds fails the socket with :class:`PeerDead` (408). See
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

The server's intake is one subscription on the pattern with a synchronous ``dispatch`` router (no
task per message); connections are keyed by (concrete subject, reply subject). Frames are msgpack
bodies with no NATS headers at all. Frames from an unknown connection are answered with
``Reset(404)``, so a client whose server restarted learns it at once.

Time comes from a :class:`~conat._clock.Clock` (``clock=``), so keepalive, retransmission and
timeouts can be driven by a :class:`~conat._clock.FakeClock` in tests.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import warnings
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from ._client import ClientState
from ._clock import Clock, SystemClock
from ._codecs import MSGPACK, Codec, get_codec
from ._errors import (
    ConatError,
    EndOfStream,
    ErrorCode,
    Forbidden,
    NoResponders,
    PayloadError,
    RemoteError,
    SocketClosed,
    SocketProtocolError,
    Timeout,
)
from ._socket_protocol import (
    Accept,
    Close,
    Event,
    Frame,
    MessageReceived,
    Open,
    Reset,
    SocketConfig,
    SocketProtocol,
    SocketState,
    decode_frame,
    encode_frame,
)

if TYPE_CHECKING:
    from ._client import Client
    from ._message import Message
    from ._subscription import Subscription

__all__ = [
    "Socket",
    "SocketMessage",
    "SocketServer",
    "SocketServerStatistics",
    "SocketStatistics",
    "connect_socket",
    "listen",
]

log = logging.getLogger("conat.socket")

T = TypeVar("T")
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
DEFAULT_BACKLOG: Final = 1024
_FRAME_ROOM: Final = 256
"""Bytes kept free below the server's max_payload in every frame."""
_UNSET: Final[Any] = object()


class _Expired(Exception):
    """Set on a waiter by its deadline; turned into :class:`Timeout` by whoever waits."""


@final
@dataclass(frozen=True, slots=True)
class SocketStatistics:
    """A snapshot of one socket's counters (see :mod:`conat._socket_protocol` for the terms).

    ``window`` is the credit the peer still grants (bytes, 0 when full); ``unacked`` and
    ``unacked_bytes`` are frames sent but not acknowledged; ``queued`` frames wait for credit;
    ``buffered`` messages wait for this side's reader.
    """

    state: str
    subject: str
    id: str
    messages_sent: int
    messages_received: int
    frames_sent: int
    frames_received: int
    retransmitted: int
    duplicates_dropped: int
    out_of_order: int
    unacked: int
    unacked_bytes: int
    queued: int
    window: int
    buffered: int
    pending_requests: int
    no_responders: int
    malformed: int
    rto: float


@final
@dataclass(frozen=True, slots=True)
class SocketServerStatistics:
    """A snapshot of a listening socket server."""

    pattern: str
    listening: bool
    connections: int
    pending_accept: int
    accepted: int
    rejected: int
    resets_sent: int
    malformed: int


# -- messages --------------------------------------------------------------------------------------


@final
class SocketMessage:
    """One message read from a socket. ``raw`` is the payload; ``data`` decodes it (once).

    A message sent with :meth:`Socket.request` has :attr:`is_request` set; answer it with
    :meth:`respond` (or :meth:`respond_error`), over the same socket.
    """

    __slots__ = ("_cost", "_data", "_encoding", "_error", "_headers", "_request", "_socket", "raw")

    def __init__(self, socket: Socket, event: MessageReceived) -> None:
        self._socket = socket
        self.raw = event.payload
        self._headers = event.headers
        self._encoding = event.encoding
        self._request = event.request
        self._error = event.error
        self._cost = event.cost
        self._data: Any = _UNSET

    def __repr__(self) -> str:
        return f"<SocketMessage subject={self.subject!r} bytes={len(self.raw)} request={self._request}>"

    @property
    def subject(self) -> str:
        """The socket's concrete subject."""
        return self._socket.subject

    @property
    def codec(self) -> Codec:
        return get_codec(self._encoding)

    @property
    def encoding(self) -> str:
        return self._encoding or "msgpack"

    @property
    def data(self) -> Any:
        """The decoded payload (decoded on first access; raises :class:`PayloadError`)."""
        if self._data is _UNSET:
            self._data = self.codec.decode(self.raw)
        return self._data

    def decode(self, type_: type[T]) -> T:
        """Decode the payload into ``type_`` (a msgspec Struct, a builtin, a union…)."""
        return self.codec.decode_as(self.raw, type_)

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers) if self._headers else {}

    def header(self, name: str) -> str | None:
        h = self._headers
        return h.get(name) if h else None

    @property
    def is_request(self) -> bool:
        return self._request > 0

    def _require_request(self) -> int:
        if not self._request:
            raise ValueError(f"message on socket {self.subject!r} is not a request: nothing to respond to")
        return self._request

    async def respond(
        self, data: Any = None, *, headers: dict[str, str] | None = None, encoding: str | None = None
    ) -> None:
        """Answer this request over the socket (waits for credit like :meth:`Socket.send`)."""
        request = self._require_request()
        payload, enc = _encode(data, headers, encoding)
        await self._socket._send(payload, headers, enc, reply_to=request)

    async def respond_error(self, code: ErrorCode, message: str) -> None:
        """Answer with an error: the requester's ``request()`` raises ``RemoteError(code, message)``."""
        request = self._require_request()
        await self._socket._send(message.encode(), None, "raw", reply_to=request, error=code)


def _encode(data: Any, headers: dict[str, str] | None, encoding: str | None) -> tuple[bytes, str | None]:
    if headers:
        for key, value in headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise PayloadError("encode", "headers", f"header {key!r}: names and values must be str")
    if encoding is None or encoding == "msgpack":
        return MSGPACK.encode(data), None
    codec = get_codec(encoding)
    return codec.encode(data), codec.name


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
        self._target = target
        self._reply = ""
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._system_time = isinstance(clock, SystemClock)
        self._inbox: deque[SocketMessage] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._deadlines: list[tuple[float, int, asyncio.Future[Any]]] = []
        self._order = itertools.count()
        self._requests: dict[int, asyncio.Future[SocketMessage]] = {}
        self._next_request = 0
        self._outbox: deque[bytes] = deque()
        self._writing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer_at: float | None = None
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._batch = False
        self._finished = False
        self._closed_locally = False
        self._unlisten: Callable[[], None] | None = None
        self._route_token: str | None = None
        self._no_responders = 0
        self._malformed = 0

    def __repr__(self) -> str:
        side = "server" if self._server is not None else "client"
        return f"<Socket {side} {self.subject!r} id={self.id!r} {self._proto.state.value}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_server", True) is None and not getattr(self, "_finished", True):
            client = getattr(self, "_client", None)
            if client is not None and not client._closing:
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
        return self._proto.state is SocketState.CLOSED

    def statistics(self) -> SocketStatistics:
        p = self._proto.statistics()
        return SocketStatistics(
            state=p.state,
            subject=self.subject,
            id=self.id,
            messages_sent=p.messages_sent,
            messages_received=p.messages_received,
            frames_sent=p.frames_sent,
            frames_received=p.frames_received,
            retransmitted=p.retransmitted,
            duplicates_dropped=p.duplicates_dropped,
            out_of_order=p.out_of_order,
            unacked=p.unacked,
            unacked_bytes=p.unacked_bytes,
            queued=p.queued,
            window=p.window,
            buffered=len(self._inbox),
            pending_requests=len(self._requests),
            no_responders=self._no_responders,
            malformed=self._malformed,
            rto=p.rto,
        )

    # -- frames in -------------------------------------------------------------------------------
    def _route(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        """The client side's inbox route (runs on the read loop)."""
        if headers is not None and headers.get("Status") == "503":
            self._no_responders += 1  # nobody listens on the subject (yet): retransmission retries
            return
        self._on_raw(data)

    def _route_failed(self, error: BaseException) -> None:
        """The bus client is closing: its routes are failed before its connection goes."""
        self._fail_local(SocketClosed(self.subject, "the bus client is closed"))

    def _on_raw(self, raw: bytes) -> None:
        try:
            frame = decode_frame(raw)
        except SocketProtocolError:
            self._malformed += 1
            return
        self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        events = self._proto.receive(frame, self._clock.now())
        if events:
            self._handle(events)
        if not self._batch:
            self._batch = True
            self._loop.call_soon(self._end_batch)

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is MessageReceived:
                if event.reply_to:
                    self._on_response(event)
                    continue
                self._inbox.append(SocketMessage(self, event))
            # Opened, StreamEnded, ConnectionClosed: state that the waiters re-check.
        if self._waiters:
            self._notify()

    def _on_response(self, event: MessageReceived) -> None:
        self._proto.consume(event.cost)
        future = self._requests.pop(event.reply_to, None)
        if future is None or future.done():
            return  # the requester gave up
        if event.error is not None:
            text = event.payload.decode(errors="replace")
            future.set_exception(RemoteError(event.error, text, self.subject))
        else:
            future.set_result(SocketMessage(self, event))

    def _end_batch(self) -> None:
        self._batch = False
        if not self._finished:
            self._pump()

    def _pump(self) -> None:
        frames = self._proto.poll(self._clock.now())
        if frames:
            self._emit(frames)
        self._settle()

    def _settle(self) -> None:
        if self._proto.state is SocketState.CLOSED and not self._finished:
            self._finish()
        if self._waiters:
            self._notify()
        if not self._finished:
            self._rearm()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -- frames out ------------------------------------------------------------------------------
    def _emit(self, frames: list[Frame]) -> None:
        """Queue frames and make sure a writer sends them (from synchronous code)."""
        self._outbox.extend([encode_frame(f) for f in frames])
        if not self._writing:
            self._writing = True
            self._spawn(self._writer())

    async def _write_now(self, frames: list[Frame]) -> None:
        """Queue frames and send them from the calling task, unless a writer is already at it."""
        self._outbox.extend([encode_frame(f) for f in frames])
        if not self._writing:
            self._writing = True
            await self._writer()

    async def _writer(self) -> None:
        """Send the outbox in order. The caller has set ``_writing``; this clears it."""
        out = self._outbox
        publish = self._client._transport.publish
        target, reply = self._target, self._reply
        try:
            while out:
                await publish(target, out.popleft(), reply)
        except ConatError as e:
            # ClosedError: the bus client is gone. ConnectError: its outbound buffer is full while
            # reconnecting. Either way what was lost is retransmitted (or no longer matters).
            out.clear()
            log.debug("socket %r: frames not sent: %s", self.subject, e)
            if self._client._closing:
                self._fail_local(SocketClosed(self.subject, "the bus client is closed"))
        finally:
            self._writing = False
            if out and not self._client._closing:
                self._writing = True
                self._spawn(self._writer())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._client._spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- timers ----------------------------------------------------------------------------------
    def _rearm(self) -> None:
        deadline = self._proto.next_deadline()
        dl = self._deadlines
        while dl and dl[0][2].done():
            heapq.heappop(dl)
        if dl and (deadline is None or dl[0][0] < deadline):
            deadline = dl[0][0]
        if deadline is None:
            self._disarm()
        else:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._system_time:
            handle = self._timer_handle
            if handle is not None:
                if self._timer_at is not None and self._timer_at <= deadline:
                    return  # an earlier wake-up re-arms for this one
                handle.cancel()
            now = self._loop.time()
            self._timer_at = deadline = max(deadline, now)
            self._timer_handle = self._loop.call_at(deadline, self._on_system_timer)
            return
        task = self._timer_task
        if task is not None and not task.done():
            if task is asyncio.current_task():
                self._timer_at = deadline  # the timer loop is running: it picks this up
                return
            if self._timer_at is not None and self._timer_at <= deadline:
                return
            task.cancel()
        self._timer_at = deadline
        self._timer_task = self._spawn(self._clock_timer())

    def _disarm(self) -> None:
        self._timer_at = None
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        task = self._timer_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            self._timer_task = None

    def _on_system_timer(self) -> None:
        self._timer_handle = None
        self._timer_at = None
        self._on_timer()

    async def _clock_timer(self) -> None:
        """The timer for any clock but the system's: sleep on the clock, fire, repeat."""
        clock = self._clock
        me = asyncio.current_task()
        try:
            while (at := self._timer_at) is not None and self._timer_task is me:
                await clock.sleep_until(at)
                if self._timer_task is not me:
                    return
                if self._timer_at is not None and clock.now() >= self._timer_at:
                    self._timer_at = None
                    self._on_timer()
        finally:
            if self._timer_task is me:
                self._timer_task = None

    def _on_timer(self) -> None:
        if self._finished:
            return
        now = self._clock.now()
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, _, future = heapq.heappop(dl)
            if not future.done():
                future.set_exception(_Expired())
        self._pump()

    def _add_deadline(self, deadline: float, future: asyncio.Future[Any]) -> None:
        dl = self._deadlines
        if len(dl) > 64 and len(dl) > 4 * (len(self._requests) + len(self._waiters)):
            dl[:] = [e for e in dl if not e[2].done()]
            heapq.heapify(dl)
        heapq.heappush(dl, (deadline, next(self._order), future))
        self._rearm()

    async def _wait(self, deadline: float | None) -> None:
        """Wait for any change (a frame, credit, a state change) or ``deadline`` (raises _Expired)."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(future)
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
        payload, enc = _encode(data, headers, encoding)
        await self._send(payload, headers, enc)

    def send_nowait(
        self, data: Any = None, *, headers: dict[str, str] | None = None, encoding: str | None = None
    ) -> None:
        """Send one message now or raise :class:`SocketBusy` (429) if the peer's window is full."""
        payload, enc = _encode(data, headers, encoding)
        frames = self._proto.send(payload, self._clock.now(), headers=headers or None, encoding=enc)
        if frames:
            self._emit(frames)
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
        proto = self._proto
        while not proto.writable:
            proto.check_can_send()
            await self._wait(deadline)
        frames = proto.send(
            payload,
            self._clock.now(),
            headers=headers or None,
            encoding=encoding,
            request=request,
            reply_to=reply_to,
            error=error,
        )
        due = proto.retransmit_at  # the only deadline a send can move earlier
        if due is not None and (self._timer_at is None or due < self._timer_at):
            self._arm(due)
        if frames:
            await self._write_now(frames)

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
        payload, enc = _encode(data, headers, encoding)
        self._next_request += 1
        rid = self._next_request
        future: asyncio.Future[SocketMessage] = self._loop.create_future()
        self._requests[rid] = future
        started = self._clock.now()
        deadline = started + timeout
        self._add_deadline(deadline, future)
        try:
            await self._send(payload, headers, enc, request=rid, deadline=deadline)
            return await future
        except _Expired:
            raise Timeout(self.subject, self._clock.now() - started, "socket request") from None
        finally:
            self._requests.pop(rid, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: an expiry nobody awaited must not be logged

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the peer has acknowledged everything sent so far.

        Raises:
            Timeout: not drained within ``timeout`` seconds.
            SocketClosed / PeerDead / SocketReset: the socket ended with data unacknowledged.
        """
        proto = self._proto
        started = self._clock.now()
        deadline = None if timeout is None else started + timeout
        try:
            while not proto.drained:
                if proto.state is SocketState.CLOSED:
                    proto.check_can_send()
                await self._wait(deadline)
        except _Expired:
            raise Timeout(self.subject, self._clock.now() - started, "socket drain") from None

    async def send_eof(self) -> None:
        """Half-close: the peer reads every message sent so far, then end of stream. We can still
        read. Idempotent."""
        proto = self._proto
        if proto.eof_sent:
            return
        if proto.state is not SocketState.OPEN:
            proto.check_can_send()
        frames = proto.send_eof(self._clock.now())
        self._rearm()
        if frames:
            await self._write_now(frames)

    # -- receiving -------------------------------------------------------------------------------
    async def recv(self, timeout: float | None = None) -> SocketMessage:
        """The next message, in order.

        Raises:
            EndOfStream: the peer sent end of stream and every message has been read.
            Timeout: nothing within ``timeout`` seconds (408).
            SocketClosed / PeerDead / SocketReset: the socket ended (after the buffered messages).
        """
        deadline = None
        while True:
            if self._inbox:
                return self._take()
            self._check_readable()
            if deadline is None and timeout is not None:
                deadline = self._clock.now() + timeout
            try:
                await self._wait(deadline)
            except _Expired:
                raise Timeout(self.subject, timeout or 0.0, "socket receive") from None

    def _take(self) -> SocketMessage:
        msg = self._inbox.popleft()
        if self._proto.consume(msg._cost) and not self._batch and not self._finished:
            self._batch = True
            self._loop.call_soon(self._end_batch)
        return msg

    def _check_readable(self) -> None:
        proto = self._proto
        if proto.eof_received:
            raise EndOfStream(self.subject)
        if proto.state is SocketState.CLOSED:
            if proto.error is not None:
                raise proto.error
            raise SocketClosed(self.subject, "closed by peer" if proto.closed_by_peer else "closed")

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
            if proto.state is SocketState.CONNECTING:
                self._emit(proto.abort(499, "connect abandoned", self._clock.now()))
            elif proto.state is SocketState.OPEN:
                await self.send_eof()
            if proto.state is SocketState.CLOSING:
                deadline = self._clock.now() + timeout
                try:
                    while proto.state is SocketState.CLOSING and not proto.drained:
                        await self._wait(deadline)
                except _Expired:
                    log.debug("socket %r: closing without all acks after %ss", self.subject, timeout)
                if proto.state is SocketState.CLOSING:
                    self._emit(proto.close(self._clock.now()))
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
        if proto.state is not SocketState.CLOSED:
            self._emit(proto.abort(410, reason, self._clock.now()))
        self._settle()

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _fail_local(self, error: ConatError) -> None:
        if self._proto.state is not SocketState.CLOSED:
            self._proto.fail(error)
        self._settle()

    def _finish(self) -> None:
        """The protocol reached CLOSED: send the last frames, fail what waits, let go of routes."""
        self._finished = True
        proto = self._proto
        frames = proto.poll(self._clock.now())
        if frames and not self._client._closing:
            self._emit(frames)
        self._disarm()
        error = proto.error
        for future in self._requests.values():
            if not future.done():
                future.set_exception(
                    error
                    or SocketClosed(self.subject, "closed by peer" if proto.closed_by_peer else "closed")
                )
        self._requests.clear()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._route_token is not None:
            self._client._close_route(self._route_token)
            self._route_token = None
        if self._server is not None:
            self._server._forget(self)

    async def _flush_out(self) -> None:
        """Let the writer finish (the last frames matter: Fin, Close, Reset)."""
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me and t is not self._timer_task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        timer = self._timer_task
        if timer is not None and timer is not me:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)

    # -- link state ------------------------------------------------------------------------------
    def _on_client_state(self, state: ClientState) -> None:
        if self._finished:
            return
        now = self._clock.now()
        if state is ClientState.RECONNECTING:
            self._proto.link_down(now)
        elif state is ClientState.CONNECTED:
            frames = self._proto.link_up(now)
            if frames:
                self._emit(frames)
            self._settle()
        elif state is ClientState.CLOSED:
            self._fail_local(SocketClosed(self.subject, "the bus client is closed"))


# -- the server ------------------------------------------------------------------------------------


@final
class SocketServer:
    """Accepts socket connections on a subject pattern. Iterate it, or call :meth:`accept`.

    Each connection is a :class:`Socket` whose ``subject`` is the concrete subject the client
    connected on and whose ``id`` is the client's. At most ``backlog`` connections wait to be
    accepted; beyond that a client's connect fails with :class:`SocketReset` (code 503).
    """

    def __init__(
        self, client: Client, pattern: str, config: SocketConfig, clock: Clock, backlog: int
    ) -> None:
        if backlog < 1:
            raise ValueError(f"backlog must be at least 1, not {backlog}")
        self._client = client
        self.pattern = pattern
        self._config = config
        self._clock = clock
        self._backlog = backlog
        self._conns: dict[tuple[str, str], Socket] = {}
        self._pending: deque[Socket] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._sub: Subscription | None = None
        self._unlisten: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed = False
        self._accepted = 0
        self._rejected = 0
        self._resets_sent = 0
        self._malformed = 0

    def __repr__(self) -> str:
        return f"<SocketServer {self.pattern!r} connections={len(self._conns)}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_sub", None) is not None:
            client = getattr(self, "_client", None)
            if client is not None and not client._closing:
                _warn(
                    f"unclosed conat socket server {self.pattern!r}",
                    ResourceWarning,
                    source=self,
                    stacklevel=2,
                )

    async def _start(self) -> None:
        self._sub = await self._client.subscribe(self.pattern, dispatch=self._on_message)
        self._unlisten = self._client.on_state_change(self._on_client_state)

    @property
    def connections(self) -> list[Socket]:
        """The open connections, accepted or not yet."""
        return list(self._conns.values())

    def statistics(self) -> SocketServerStatistics:
        return SocketServerStatistics(
            pattern=self.pattern,
            listening=not self._closing,
            connections=len(self._conns),
            pending_accept=len(self._pending),
            accepted=self._accepted,
            rejected=self._rejected,
            resets_sent=self._resets_sent,
            malformed=self._malformed,
        )

    # -- intake (read loop) ----------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        reply = msg.reply
        conn = self._conns.get((msg.subject, reply))
        if conn is not None:
            conn._on_raw(msg.raw)
            return
        if not reply:
            self._malformed += 1
            return
        try:
            frame = decode_frame(msg.raw)
        except SocketProtocolError:
            self._malformed += 1
            return
        if isinstance(frame, Open):
            self._open(msg.subject, reply, frame)
        elif not isinstance(frame, Reset | Close | Accept):
            self._reset(reply, 404, "unknown connection")

    def _open(self, subject: str, reply: str, frame: Open) -> None:
        if self._closing:
            self._rejected += 1
            self._reset(reply, 503, "the socket server is closing")
            return
        if len(self._pending) >= self._backlog:
            self._rejected += 1
            self._reset(reply, 503, f"accept backlog of {self._backlog} is full")
            return
        proto = SocketProtocol("server", self._config, self._clock.now(), subject=subject)
        conn = Socket(self._client, proto, self._clock, subject=subject, target=reply, server=self)
        self._conns[subject, reply] = conn
        conn._on_frame(frame)
        self._pending.append(conn)
        self._notify()

    def _reset(self, reply: str, code: int, reason: str) -> None:
        self._resets_sent += 1
        if self._client._closing:
            return
        task = self._client._spawn(self._publish(reply, encode_frame(Reset(code, reason))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, subject: str, raw: bytes) -> None:
        try:
            await self._client._transport.publish(subject, raw, "")
        except ConatError as e:
            log.debug("socket server %r: reset not sent: %s", self.pattern, e)

    def _forget(self, conn: Socket) -> None:
        key = (conn.subject, conn._target)
        if self._conns.get(key) is conn:
            del self._conns[key]

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -- accepting -------------------------------------------------------------------------------
    async def accept(self, timeout: float | None = None) -> Socket:
        """The next connection (in arrival order). A connection is open when it is returned.

        Raises:
            SocketClosed: the server is closed.
            Timeout: no connection within ``timeout`` seconds.
        """
        started = self._clock.now()
        while True:
            if self._pending:
                self._accepted += 1
                return self._pending.popleft()
            if self._closing:
                raise SocketClosed(self.pattern, "the socket server is closed")
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            if timeout is None:
                await future
                continue
            remaining = started + timeout - self._clock.now()
            if remaining <= 0:
                raise Timeout(self.pattern, self._clock.now() - started, "socket accept")
            try:
                async with asyncio.timeout(remaining):
                    await future
            except TimeoutError:
                raise Timeout(self.pattern, self._clock.now() - started, "socket accept") from None

    def __aiter__(self) -> SocketServer:
        return self

    async def __anext__(self) -> Socket:
        try:
            return await self.accept()
        except SocketClosed:
            raise StopAsyncIteration from None

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Stop accepting, close every connection gracefully (up to ``timeout`` s), unsubscribe."""
        if self._closed:
            return
        self._closing = True
        self._notify()
        conns = {id(c): c for c in [*self._conns.values(), *self._pending]}
        self._pending.clear()
        if conns:
            await asyncio.gather(*(c.aclose(timeout) for c in conns.values()), return_exceptions=True)
        self._closed = True
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> SocketServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _on_client_state(self, state: ClientState) -> None:
        for conn in list(self._conns.values()):
            conn._on_client_state(state)
        if state is ClientState.CLOSED:
            self._closing = self._closed = True
            self._notify()


# -- entry points (Client.socket_listen / Client.socket_connect) -----------------------------------


def _config(
    client: Client,
    *,
    window: int | None,
    max_message: int | None,
    keepalive: float | None,
    peer_timeout: float | None,
    connect_timeout: float | None = None,
) -> SocketConfig:
    defaults = SocketConfig()
    keepalive = defaults.keepalive if keepalive is None else keepalive
    if peer_timeout is None:
        peer_timeout = max(defaults.peer_timeout, 3 * keepalive)
    return SocketConfig(
        window=defaults.window if window is None else window,
        max_message=defaults.max_message if max_message is None else max_message,
        frame_size=max(client.max_payload - _FRAME_ROOM, 256),
        keepalive=keepalive,
        peer_timeout=peer_timeout,
        connect_timeout=defaults.connect_timeout if connect_timeout is None else connect_timeout,
    )


async def listen(
    client: Client,
    pattern: str,
    *,
    clock: Clock | None = None,
    backlog: int = DEFAULT_BACKLOG,
    window: int | None = None,
    max_message: int | None = None,
    keepalive: float | None = None,
    peer_timeout: float | None = None,
) -> SocketServer:
    """See :meth:`conat.Client.socket_listen`."""
    config = _config(
        client, window=window, max_message=max_message, keepalive=keepalive, peer_timeout=peer_timeout
    )
    server = SocketServer(client, pattern, config, clock or SystemClock(), backlog)
    await server._start()
    return server


async def connect_socket(
    client: Client,
    subject: str,
    *,
    timeout: float = 10.0,
    clock: Clock | None = None,
    window: int | None = None,
    max_message: int | None = None,
    keepalive: float | None = None,
    peer_timeout: float | None = None,
) -> Socket:
    """See :meth:`conat.Client.socket_connect`."""
    client._check_open()
    client._check_subject(subject)
    if client.permissions is not None and not client.permissions.can_publish(subject):
        raise Forbidden(subject, "publish")
    config = _config(
        client,
        window=window,
        max_message=max_message,
        keepalive=keepalive,
        peer_timeout=peer_timeout,
        connect_timeout=timeout,
    )
    clock = clock or SystemClock()
    proto = SocketProtocol("client", config, clock.now(), id=client._transport.new_token(), subject=subject)
    sock = Socket(client, proto, clock, subject=subject, target=subject)

    def route(rsubject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        sock._route(rsubject, reply, data, headers)

    route.fail = sock._route_failed  # type: ignore[attr-defined]
    sock._route_token, sock._reply = client._open_route(route)
    sock._unlisten = client.on_state_change(sock._on_client_state)
    try:
        await sock._write_now(proto.connect(clock.now()))
        sock._rearm()
        while proto.state is SocketState.CONNECTING:
            await sock._wait(None)
    except BaseException:
        sock.abort("connect cancelled")
        await sock._flush_out()
        raise
    if proto.state is not SocketState.OPEN:
        error = proto.error
        await sock._flush_out()
        if isinstance(error, Timeout) and sock._no_responders:
            raise NoResponders(subject)
        raise error or SocketClosed(subject, "closed while connecting")
    return sock
