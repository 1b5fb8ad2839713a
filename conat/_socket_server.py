"""The listening side of reliable sockets: :class:`SocketServer` (``client.socket_listen``).

The server's intake is one subscription on the pattern with a synchronous ``dispatch`` router (no
task per message); connections are keyed by (concrete subject, reply subject), where the reply
subject is the client socket's own inbox route (see :mod:`conat._socket` for why). Frames from an
unknown connection are answered with ``Reset(404)``, so a client whose server restarted learns it
at once. An ``Open`` makes a new connection (a :class:`~conat._socket.Socket`), which waits in the
accept backlog until :meth:`SocketServer.accept` returns it; a full backlog, or a closing server,
answers ``Reset(503)``.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from ._client import ClientState
from ._clock import Clock, SystemClock
from ._errors import ConatError, SocketClosed, SocketProtocolError, Timeout
from ._socket import DEFAULT_CLOSE_TIMEOUT, Socket
from ._socket_frames import (
    Accept,
    Close,
    Open,
    Reset,
    SocketConfig,
    decode_frame,
    encode_frame,
    socket_config,
)
from ._socket_protocol import SocketProtocol
from ._socket_pump import Waits

if TYPE_CHECKING:
    from ._client import Client
    from ._message import Message
    from ._subscription import Subscription

__all__ = ["SocketServer", "SocketServerStatistics", "listen"]

log = logging.getLogger("conat.socket")

DEFAULT_BACKLOG: Final = 1024


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
        self._waits = Waits()
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
        self._waits.notify()

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
        key = (conn.subject, conn._outbox.target)
        if self._conns.get(key) is conn:
            del self._conns[key]

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
            future = self._waits.waiter()
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
        self._waits.notify()
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
            self._waits.notify()


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
