"""The connecting side of a reliable socket: :func:`connect_socket` and the socket's inbox route.

A client socket sends its frames to the concrete subject it connects to, each with ``reply=`` set
to a token of the client's inbox, and receives every frame of the connection on that token (see
:mod:`conat._socket`, "Wire and auth design"). :class:`InboxRoute` is that token's route: it feeds
the frames to the socket, and it turns nats-server's "no responders" into an answer while
connecting. After a graceful close it keeps the token until the protocol's linger ends, so late
frames still get their Close (the listening side does the same in :mod:`conat._socket_server`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from ._clock import Clock, SystemClock
from ._errors import Forbidden, NoResponders, SocketClosed, Timeout
from ._headers import STATUS_HEADER
from ._socket import Socket
from ._socket_frames import socket_config
from ._socket_protocol import SocketProtocol, SocketState

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["InboxRoute", "connect_socket"]

_CONNECTING = SocketState.CONNECTING
_OPEN = SocketState.OPEN


@final
class InboxRoute:
    """The route of a client socket's inbox token (runs on the read loop).

    Attributes:
        token: the inbox token, ``None`` once released (or dropped with the client's routes).
        no_responders: nats-server's "no responders" answers to this socket's frames.
    """

    __slots__ = ("_sock", "no_responders", "token", "wait_for_interest")

    def __init__(self, sock: Socket, wait_for_interest: bool) -> None:
        self._sock = sock
        self.wait_for_interest = wait_for_interest
        self.no_responders = 0
        self.token: str | None = None

    def __call__(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        sock = self._sock
        if headers is not None and headers.get(STATUS_HEADER) == "503":
            # Nobody listens on the subject. Connecting, that is the answer (unless we wait for a
            # listener: then retransmission retries); once open, it is a listener restarting, and
            # the protocol's own timers decide.
            self.no_responders += 1
            if sock._proto.state is _CONNECTING and not self.wait_for_interest:
                sock._fail_local(NoResponders(sock.subject))
            return
        sock._on_raw(data)

    def fail(self, error: BaseException) -> None:
        """The bus client is closing: its routes are failed before its connection goes."""
        sock = self._sock
        sock._on_bus_closed()
        if sock._finished:
            sock._alarm.disarm()
            self.token = None  # the client drops every route itself

    def release(self) -> None:
        if self.token is not None:
            self._sock._client._core.close_route(self.token)
            self.token = None


async def connect_socket(
    client: Client,
    subject: str,
    *,
    timeout: float,
    clock: Clock | None,
    window: int | None,
    max_message: int | None,
    keepalive: float | None,
    peer_timeout: float | None,
    wait_for_interest: bool = False,
) -> Socket:
    """See :meth:`conat.Client.socket_connect` (which holds the defaults)."""
    core = client._core
    core.check_open()
    core.check_subject(subject)
    if client.permissions is not None and not client.permissions.can_publish(subject):
        raise Forbidden(subject, "publish")
    config = socket_config(
        client.max_payload,
        window=window,
        max_message=max_message,
        keepalive=keepalive,
        peer_timeout=peer_timeout,
        connect_timeout=timeout,
    )
    clock = clock or SystemClock()
    proto = SocketProtocol("client", config, clock.now(), id=core.transport.new_token(), subject=subject)
    sock = Socket(client, proto, clock, subject=subject, target=subject)
    route = sock._inbox_route = InboxRoute(sock, wait_for_interest)
    route.token, sock._outbox.reply = core.open_route(route)
    sock._unlisten = client.on_state_change(sock._on_client_state)
    try:
        await sock._outbox.write(proto.connect(clock.now()))
        sock._rearm()
        while proto.state is _CONNECTING:
            await sock._wait(None)
    except BaseException:
        sock.abort("connect cancelled")
        await sock._flush_out()
        raise
    if proto.state is not _OPEN:
        error = proto.error
        await sock._flush_out()
        if isinstance(error, Timeout) and route.no_responders:
            raise NoResponders(subject)
        raise error or SocketClosed(subject, "closed while connecting")
    return sock
