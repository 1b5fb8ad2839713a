"""The listening side of reliable sockets: :class:`SocketServer` (``client.socket_listen``).

The server's intake is one subscription on the pattern with a synchronous ``dispatch`` router (no
task per message); connections are keyed by (concrete subject, reply subject), where the reply
subject is the client socket's own inbox route (see :mod:`conat._socket` for why). Frames from an
unknown connection are answered with ``Reset(404)``, so a client whose server restarted learns it
at once. An ``Open`` makes a new connection (a :class:`~conat._socket.Socket`), which waits in the
accept backlog until :meth:`SocketServer.accept` returns it; a full backlog, or a closing server,
answers ``Reset(503)``.

What a peer can make a listener hold is bounded: a connection waiting to be accepted is granted
no credit (see "Before accept" in :mod:`conat._socket_protocol`), so the backlog holds
connections, not data; one client (one inbox prefix in the reply subject) may fill at most half
of the backlog, so a client that floods connects cannot lock the others out (``Reset(503)``); a
waiting connection that fails (its peer aborted, or went silent) leaves the backlog at once; an
``Open`` with an oversized socket id is refused (``Reset(400)``); answers to stray frames go
through one bounded writer (:class:`~conat._socket_pump.Answers`) rather than a task each; and
the intake does not reassemble chunked messages (frames never are), so no publisher can make
the listener pull a transfer or hold other connections' frames back behind one.

A connection that closed gracefully is let go of at once, but its key lingers until the protocol's
``linger_until`` (see "Closing, and a lost Close" in :mod:`conat._socket_protocol`): until then its
late frames are answered with ``Close`` rather than ``Reset(404)``. Lingering keys expire lazily
(they are kept in closing order, which is expiry order), so they cost no timer.
"""

from __future__ import annotations

import asyncio
import warnings
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from ._client import ClientState
from ._clock import Clock, SystemClock
from ._errors import DeadlinePassed, SocketClosed, SocketProtocolError, Timeout
from ._socket import DEFAULT_CLOSE_TIMEOUT, Socket
from ._socket_frames import (
    MAX_SOCKET_ID,
    RESET_MALFORMED,
    RESET_UNAVAILABLE,
    RESET_UNKNOWN,
    Accept,
    Close,
    Frame,
    Open,
    Reset,
    SocketConfig,
    decode_frame,
    socket_config,
)
from ._socket_protocol import SocketProtocol
from ._socket_pump import Alarm, Answers, Waits

if TYPE_CHECKING:
    from ._client import Client
    from ._message import Message
    from ._subscription import Subscription

__all__ = ["SocketServer", "SocketServerStatistics", "listen"]


@final
@dataclass(frozen=True, slots=True)
class SocketServerStatistics:
    """A snapshot of a listening socket server.

    ``rejected`` counts refused connects (closing, backlog full, a client over its share of it, a
    bad socket id); ``answers_dropped`` counts answers to stray frames that did not fit in the
    answer queue (the peer's next frame is answered again).
    """

    pattern: str
    listening: bool
    connections: int
    pending_accept: int
    accepted: int
    rejected: int
    resets_sent: int
    malformed: int
    answers_dropped: int


@final
class SocketServer:
    """Accepts socket connections on a subject pattern. Iterate it, or call :meth:`accept`.

    Each connection is a :class:`Socket` whose ``subject`` is the concrete subject the client
    connected on and whose ``id`` is the client's. At most ``backlog`` connections wait to be
    accepted, at most half of them from one client; beyond that a client's connect fails with
    :class:`SocketReset` (code 503). A waiting connection is open but granted no credit: its
    client's sends wait until :meth:`accept` returns it.
    """

    def __init__(
        self, client: Client, pattern: str, config: SocketConfig, clock: Clock, backlog: int
    ) -> None:
        if not (isinstance(backlog, int) and not isinstance(backlog, bool) and backlog >= 1):
            raise ValueError(f"backlog must be an int of at least 1, not {backlog!r}")
        self._client = client
        self.pattern = pattern
        self._config = config
        self._clock = clock
        self._backlog = backlog
        self._peer_share = (backlog + 1) // 2
        self._conns: dict[tuple[str, str], Socket] = {}
        self._lingering: set[tuple[str, str]] = set()
        self._linger_order: deque[tuple[float, tuple[str, str]]] = deque()  # in expiry order
        self._pending: dict[tuple[str, str], Socket] = {}  # in arrival order
        self._pending_by_peer: dict[str, int] = {}
        self._waits = Waits()
        self._alarm = Alarm(clock, self._on_timer, self._client._core.spawn)
        self._answers = Answers(client, pattern, self._spawn)
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
            if client is not None and not client._core.closing:
                _warn(
                    f"unclosed conat socket server {self.pattern!r}",
                    ResourceWarning,
                    source=self,
                    stacklevel=2,
                )

    async def _start(self) -> None:
        # Frames are never chunked: reassembling would let any publisher make us pull, and hold
        # every connection's frames back behind its transfer.
        self._sub = await self._client.subscribe(
            self.pattern, dispatch=self._on_message, reassemble=False, cluster_wide=True
        )
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
            answers_dropped=self._answers.dropped,
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
        if self._lingering and self._lingers((msg.subject, reply)):
            if not isinstance(frame, Close | Reset):
                self._answer(reply, Close())  # it missed our Close (a late Open is no new connection)
        elif isinstance(frame, Open):
            self._open(msg.subject, reply, frame, msg.raw)
        elif not isinstance(frame, Reset | Close | Accept):
            self._reset(reply, RESET_UNKNOWN, "unknown connection")

    def _lingers(self, key: tuple[str, str]) -> bool:
        self._expire_lingering()
        return key in self._lingering

    def _expire_lingering(self) -> None:
        order, now = self._linger_order, self._clock.now()
        while order and order[0][0] <= now:
            self._lingering.discard(order.popleft()[1])

    def _open(self, subject: str, reply: str, frame: Open, raw: bytes) -> None:
        """A new connection, from its Open frame (``raw``: the connection decodes it again)."""
        peer = reply.rpartition(".")[0]  # the client's inbox: one per bus connection
        refusal = None
        if self._closing:
            refusal = (RESET_UNAVAILABLE, "the socket server is closing")
        elif len(frame.id) > MAX_SOCKET_ID:
            refusal = (RESET_MALFORMED, f"socket id longer than {MAX_SOCKET_ID} characters")
        elif len(self._pending) >= self._backlog:
            refusal = (RESET_UNAVAILABLE, f"accept backlog of {self._backlog} is full")
        elif self._pending_by_peer.get(peer, 0) >= self._peer_share:
            refusal = (RESET_UNAVAILABLE, f"{self._peer_share} connections of this client already wait")
        if refusal is not None:
            self._rejected += 1
            self._reset(reply, *refusal)
            return
        proto = SocketProtocol("server", self._config, self._clock.now(), subject=subject)
        conn = Socket(self._client, proto, self._clock, subject=subject, target=reply, server=self)
        key = (subject, reply)
        self._conns[key] = conn
        self._pending[key] = conn
        self._pending_by_peer[peer] = self._pending_by_peer.get(peer, 0) + 1
        # Wake an acceptor before the connection's first batch ends: if one waits, it takes the
        # connection (and grants the window) before the Accept goes out, which then carries it.
        self._waits.notify()
        conn._on_raw(raw)

    def _unpend(self, key: tuple[str, str]) -> Socket | None:
        """Take a connection out of the backlog (accepted, or failed while it waited)."""
        conn = self._pending.pop(key, None)
        if conn is not None:
            peer = key[1].rpartition(".")[0]
            left = self._pending_by_peer[peer] - 1
            if left:
                self._pending_by_peer[peer] = left
            else:
                del self._pending_by_peer[peer]
        return conn

    def _reset(self, reply: str, code: int, reason: str) -> None:
        self._resets_sent += 1
        self._answer(reply, Reset(code, reason))

    def _answer(self, reply: str, frame: Frame) -> None:
        if not self._client._core.closing:
            self._answers.emit(reply, frame)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._client._core.spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _forget(self, conn: Socket, linger_until: float | None) -> None:
        """``conn`` is closed; if it closed gracefully, its late frames get Close until ``linger_until``.

        A connection still waiting to be accepted leaves the backlog: nobody will read it.
        """
        key = (conn.subject, conn._outbox.target)
        if self._conns.get(key) is conn:
            del self._conns[key]
        if self._pending.get(key) is conn:
            self._unpend(key)
        if linger_until is None or self._closing:
            return
        self._expire_lingering()
        self._lingering.add(key)  # a key is never reused: its reply subject is the client socket's
        self._linger_order.append((linger_until, key))

    # -- accepting -------------------------------------------------------------------------------
    async def accept(self, timeout: float | None = None) -> Socket:
        """The next connection (in arrival order). A connection is open when it is returned.

        ``timeout`` runs on the server's clock (``clock=``), like every socket timeout. Cancelling
        ``accept`` takes no connection: it stays first in line for the next caller.

        Raises:
            SocketClosed: the server is closed.
            Timeout: no connection within ``timeout`` seconds (408; ``elapsed`` as measured).
        """
        started = deadline = None
        while True:
            if self._pending:
                conn = self._unpend(next(iter(self._pending)))
                assert conn is not None
                self._accepted += 1
                conn._on_accepted()
                return conn
            if self._closing:
                raise SocketClosed(self.pattern, "the socket server is closed")
            future = self._waits.waiter()
            if timeout is not None:
                if started is None:
                    started = self._clock.now()
                    deadline = started + timeout
                assert deadline is not None
                self._waits.add_deadline(deadline, future)
                self._rearm()
            try:
                await future
            except DeadlinePassed:
                assert started is not None
                raise Timeout(self.pattern, self._clock.now() - started, "socket accept") from None

    def _rearm(self) -> None:
        at = self._waits.earliest()
        if at is None:
            self._alarm.disarm()
        else:
            self._alarm.arm(at)

    def _on_timer(self) -> None:
        self._waits.expire(self._clock.now())
        self._rearm()

    def __aiter__(self) -> SocketServer:
        return self

    async def __anext__(self) -> Socket:
        try:
            return await self.accept()
        except SocketClosed:
            raise StopAsyncIteration from None

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Stop accepting, close every connection gracefully (up to ``timeout`` s), unsubscribe.

        Idempotent. Cancelling it aborts the connections it was still closing (their peers get
        ``Reset``) and lets go of the subscription all the same: it never leaves the server half
        closed.
        """
        if self._closed:
            return
        self._closing = True
        self._waits.notify()
        conns = {id(c): c for c in [*self._conns.values(), *self._pending.values()]}
        self._pending.clear()
        self._pending_by_peer.clear()
        try:
            if conns:
                await asyncio.gather(*(c.aclose(timeout) for c in conns.values()), return_exceptions=True)
        except BaseException:
            for conn in conns.values():
                conn.abort("socket server close cancelled")  # each aclose did already; idempotent
            sub = self._let_go()
            if sub is not None:
                self._client._core.spawn(sub.unsubscribe())  # we were cancelled: do not wait for it
            raise
        sub = self._let_go()
        if sub is not None:
            await sub.unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _let_go(self) -> Subscription | None:
        """Mark the server closed and drop its hooks; return the subscription to unsubscribe."""
        self._closed = True
        self._alarm.disarm()
        self._lingering.clear()
        self._linger_order.clear()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        sub, self._sub = self._sub, None
        return sub

    async def __aenter__(self) -> SocketServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _on_client_state(self, state: ClientState) -> None:
        for conn in list(self._conns.values()):
            conn._on_client_state(state)
        if state is ClientState.CLOSED:
            self._closing = self._closed = True
            self._alarm.disarm()
            self._waits.notify()


async def listen(
    client: Client,
    pattern: str,
    *,
    clock: Clock | None,
    backlog: int,
    window: int | None,
    max_message: int | None,
    keepalive: float | None,
    peer_timeout: float | None,
) -> SocketServer:
    """See :meth:`conat.Client.socket_listen` (which holds the defaults)."""
    config = socket_config(
        client.max_payload,
        window=window,
        max_message=max_message,
        keepalive=keepalive,
        peer_timeout=peer_timeout,
    )
    server = SocketServer(client, pattern, config, clock or SystemClock(), backlog)
    await server._start()
    return server
