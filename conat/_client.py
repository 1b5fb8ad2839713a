"""The conat client: publish, subscribe, request, request_many, over one NATS connection.

Theory of operation
-------------------
One connection carries everything. Subscriptions register a synchronous handler with the
transport; the handler turns the raw message into a :class:`Message` (or, for the head of a
chunked transfer, a future for one) and puts it in the subscription's bounded buffer.

Replies come back through one wildcard *inbox* subscription, ``<inbox_prefix>.<nuid>.*``. Each
request (:mod:`conat._request`), each chunk transfer being pulled and each socket owns one token
under it; a dict maps tokens to routes. Pull requests for payloads this client is sending arrive in
the same inbox and are answered from the outgoing-transfer store.

Size: a message's NATS headers count against the server's ``max_payload`` as much as its payload.
Whatever does not fit in one message is chunked (:mod:`conat._transfer`); headers that leave no
room for a chunk raise :class:`PayloadTooLarge` before anything is sent, and the transport refuses
anything over the limit, so no message can make the server close the connection.

Ordering: while any chunked message of this client is in flight, every message it sends carries
``Conat-Sender``, so receivers keep those behind it (and nobody else's: :mod:`conat._queue`).

Lifecycle: ``connecting → connected ⇄ reconnecting → closed``. Reconnects are automatic and
unbounded; subscriptions are re-armed by the transport. When the link drops, requests in flight
fail at once with :class:`Disconnected` (503, a :class:`Timeout`): their replies cannot arrive.
:meth:`Client.aclose` fails pending requests with :class:`ClosedError`, ends every subscription,
cancels conat's own tasks, and closes the connection, so nothing is left running.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, final, overload

from subjects import Permissions, validate_pattern, validate_subject

from ._codecs import get_codec
from ._core import ClientCore
from ._credentials import CredentialSession
from ._errors import ConatError, Forbidden, Timeout, Unauthorized
from ._message import Message
from ._request import request, request_many
from ._socket_frames import DEFAULT_BACKLOG, DEFAULT_CONNECT_TIMEOUT
from ._subscription import DEFAULT_MAX_BUFFER, Subscription
from ._transport import PermissionViolation, TransportEvents

if TYPE_CHECKING:
    from ._clock import Clock
    from ._socket import Socket
    from ._socket_server import SocketServer

__all__ = ["Client", "ClientState", "ClientStatistics"]

log = logging.getLogger("conat.client")

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 10.0
_MIB: Final = 1024 * 1024


class ClientState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@final
@dataclass(frozen=True, slots=True)
class ClientStatistics:
    state: str
    url: str | None
    subscriptions: int
    pending_requests: int
    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    reconnects: int
    permission_violations: int
    outgoing_transfers: int
    reassembly_bytes: int


class _Events(TransportEvents):
    def __init__(self, client: Client) -> None:
        self._client = client

    def on_disconnected(self) -> None:
        client = self._client
        if not client._core.closing:
            client._set_state(ClientState.RECONNECTING)
            client._core.fail_in_flight()

    def on_reconnected(self) -> None:
        client = self._client
        core = client._core
        if client._credentials is not None:
            client._credentials.reconnected()
        core.max_payload = core.transport.max_payload  # another server may have another limit
        client._set_state(ClientState.CONNECTED)

    def on_closed(self) -> None:
        client = self._client
        if not client._core.closing and client.close_reason is None and client._credentials is not None:
            # nats-py closed for good by itself: say why when it is about the credentials
            client.close_reason = client._credentials.closed_by_server(client._core.transport.auth_expired)
        client._set_state(ClientState.CLOSED)

    def on_permission_violation(self, violation: PermissionViolation) -> None:
        """Safety net: fail whatever the server's asynchronous refusal belongs to (the local check
        against :attr:`Client.permissions` is the primary mechanism: it raises before sending)."""
        client = self._client
        client._violations += 1
        client._core.fail_refused(violation.operation, violation.subject_lower)

    def on_error(self, error: BaseException) -> None:
        log.debug("transport error: %s", error)

    def on_auth_refused(self) -> None:
        client = self._client
        session = client._credentials
        error = session.refused() if session is not None else Unauthorized("the bus", "credentials refused")
        if error is not None and not client._core.closing:
            log.error("closing: %s", error)
            client.close_reason = error
            client._core.spawn_detached(client.aclose())


class Client:
    """A connection to the conat bus. Create with :func:`connect`; close with :meth:`aclose`.

    Its machinery is ``_core`` (:class:`~conat._core.ClientCore`): the one internal interface
    conat's own modules use.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        inbox_prefix: str = "_INBOX",
        permissions: Permissions | None = None,
        max_reassembly_bytes: int = 256 * _MIB,
        max_outgoing_bytes: int = 512 * _MIB,
        transfer_timeout: float = 60.0,
    ) -> None:
        validate_subject(inbox_prefix)
        self.name = name
        self.permissions = permissions
        self._core = ClientCore(
            self,
            _Events(self),
            inbox_prefix=inbox_prefix,
            max_reassembly_bytes=max_reassembly_bytes,
            max_outgoing_bytes=max_outgoing_bytes,
            transfer_timeout=transfer_timeout,
        )
        self._state = ClientState.CONNECTING
        self._state_listeners: list[Callable[[ClientState], object]] = []
        self._state_queues: list[asyncio.Queue[ClientState]] = []
        self._violations = 0
        self._credentials: CredentialSession | None = None
        self.close_reason: ConatError | None = None
        """Why the client closed by itself (e.g. :class:`Unauthorized`), None otherwise."""

    # -- lifecycle -------------------------------------------------------------------------
    async def _connect(self, urls: list[str], credentials: CredentialSession | None, **options: Any) -> None:
        """Connect (see :func:`conat.connect`); on failure the client is closed, and raises."""
        try:
            await self._core.open(urls, self.name, **options)
        except BaseException:
            self._core.closing = True
            self._state = ClientState.CLOSED
            raise
        self._credentials = credentials
        self._set_state(ClientState.CONNECTED)

    async def aclose(self) -> None:
        """Close: pending requests fail with ClosedError, subscriptions end, tasks stop. Idempotent."""
        core = self._core
        if core.closing:
            return
        core.closing = True
        if self._credentials is not None:
            await self._credentials.aclose()
        await core.close()
        self._set_state(ClientState.CLOSED)
        for q in self._state_queues:
            q.put_nowait(ClientState.CLOSED)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = getattr(self, "_core", None)
        if getattr(self, "_state", ClientState.CLOSED) is not ClientState.CLOSED and not getattr(
            core, "closing", True
        ):
            _warn(f"unclosed conat client {self.name or ''!s}", ResourceWarning, source=self, stacklevel=2)

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is ClientState.CONNECTED

    @property
    def max_payload(self) -> int:
        """The server's per-message limit, headers included; larger messages are chunked transparently."""
        return self._core.max_payload

    @property
    def connected_url(self) -> str | None:
        return self._core.transport.connected_url

    @property
    def cluster(self) -> str | None:
        """The cluster of the server this client is connected to (``None``: a server in no
        cluster). On a cluster, see ``subscribe(cluster_wide=True)``."""
        return self._core.transport.cluster

    @property
    def cluster_urls(self) -> tuple[str, ...]:
        """The client URLs (``host:port``) of every server of this client's cluster, its own
        included, as its server last listed them (empty in no cluster, or when the cluster does not
        advertise them). nats-server updates the list as servers join and leave."""
        return self._core.transport.cluster_urls

    @property
    def principal(self) -> str | None:
        """Who the bus knows this client as (from its credentials), None without credentials."""
        return self._credentials.principal if self._credentials is not None else None

    def on_state_change(self, callback: Callable[[ClientState], object]) -> Callable[[], None]:
        """Call ``callback(state)`` on every change (sync, or async: then it is scheduled).

        A callback that raises is logged and otherwise ignored: it can never break the client.
        Returns a function that removes the callback.
        """
        self._state_listeners.append(callback)
        return lambda: self._state_listeners.remove(callback)

    async def state_changes(self) -> AsyncIterator[ClientState]:
        """Yield each state change from now on; ends after ``CLOSED``."""
        queue: asyncio.Queue[ClientState] = asyncio.Queue(maxsize=256)
        self._state_queues.append(queue)
        try:
            while True:
                state = await queue.get()
                yield state
                if state is ClientState.CLOSED:
                    return
        finally:
            self._state_queues.remove(queue)

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        self._state = state
        for q in self._state_queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(state)
        for cb in list(self._state_listeners):
            try:
                result = cb(state)
                if asyncio.iscoroutine(result):
                    self._core.spawn(_guard(result, "state callback"))
            except Exception:
                log.exception("state callback %r failed", cb)

    def statistics(self) -> ClientStatistics:
        core = self._core
        stats = core.transport.stats
        return ClientStatistics(
            state=self._state.value,
            url=self.connected_url,
            subscriptions=len(core.subscriptions),
            pending_requests=len(core.routes),
            in_msgs=stats.get("in_msgs", 0),
            out_msgs=stats.get("out_msgs", 0),
            in_bytes=stats.get("in_bytes", 0),
            out_bytes=stats.get("out_bytes", 0),
            reconnects=stats.get("reconnects", 0),
            permission_violations=self._violations,
            outgoing_transfers=len(core.transfers.outgoing),
            reassembly_bytes=core.transfers.budget.reserved,
        )

    # -- publish ---------------------------------------------------------------------------
    async def publish(
        self,
        subject: str,
        data: Any = None,
        *,
        headers: dict[str, str] | None = None,
        encoding: str | None = None,
        reply: str | None = None,
        label: bool = True,
    ) -> None:
        """Publish ``data`` (encoded with ``encoding``, msgpack by default) to ``subject``.

        An encoding other than msgpack is named in a ``Conat-Encoding`` header, so every receiver
        can read it. ``label=False`` leaves that header out (the cheapest message: a plain PUB) for
        receivers that agreed on the encoding beforehand: a subscription made with
        ``subscribe(..., encoding=...)``, or a foreign client. Any other conat receiver reads an
        unlabelled body as msgpack.

        Payloads that do not fit the server's max_payload together with their headers are chunked.
        Raises :class:`InvalidSubject`, :class:`PayloadError` (unencodable, or a header name
        reserved for the wire protocol: ``Conat-*``, ``Status``...), :class:`PayloadTooLarge`
        (headers that leave no room for a chunk), :class:`Forbidden` (outside this client's grant),
        :class:`ClosedError`.
        """
        core = self._core
        payload, headers = core.prepare(subject, data, headers, encoding, label=label)
        await core.send(subject, payload, reply or "", headers)

    async def flush(self, timeout: float = DEFAULT_TIMEOUT, *, cluster_wide: bool = False) -> None:
        """Return when the server has processed everything sent so far (subscriptions included).

        With ``cluster_wide``, return only once every server of the cluster routes to the
        subscriptions made so far (see :mod:`conat._interest`: what holds where, and what it costs:
        one request answered by each server; nothing more on a server in no cluster). Raises
        :class:`Timeout` if some server did not confirm in time, :class:`Forbidden` if this client's
        grant does not allow asking.
        """
        self._core.check_open()
        if cluster_wide:
            from ._interest import confirm_interest

            await confirm_interest(self, timeout)
            return
        await self._core.transport.flush(timeout)

    async def cluster_servers(
        self, timeout: float = DEFAULT_TIMEOUT, *, at_least: int = 0
    ) -> tuple[str, ...]:
        """The names of the servers of this client's cluster, once each confirmed that it routes to
        this client's subscriptions (:meth:`flush` with ``cluster_wide``); on a server in no cluster,
        that server's name alone. Raises as :meth:`flush` does.

        ``at_least``: ask again (with backoff) until that many servers answer, for up to ``timeout``
        seconds: a node that just started learns its peers over its routes.
        """
        from ._interest import confirm_interest, wait_for_servers

        self._core.check_open()
        if at_least > 1:
            return await wait_for_servers(self, at_least, timeout)
        return await confirm_interest(self, timeout)

    # -- subscribe -------------------------------------------------------------------------
    @overload
    async def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        cluster_wide: bool = False,
        encoding: str | None = None,
    ) -> Subscription: ...

    @overload
    async def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        callback: Callable[[Message], Awaitable[object]],
        cluster_wide: bool = False,
        encoding: str | None = None,
    ) -> Subscription: ...

    @overload
    async def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        dispatch: Callable[[Message], object],
        reassemble: bool = True,
        cluster_wide: bool = False,
        encoding: str | None = None,
    ) -> Subscription: ...

    async def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        callback: Callable[[Message], Awaitable[object]] | None = None,
        dispatch: Callable[[Message], object] | None = None,
        reassemble: bool = True,
        cluster_wide: bool = False,
        encoding: str | None = None,
    ) -> Subscription:
        """Subscribe to ``pattern`` (wildcards allowed). Live on the server when this returns.

        Iterate the returned :class:`Subscription`, or pass ``callback`` to have each message
        handed to it in order (a callback's exception is logged, answered with an error if the
        message wants a reply, and never ends the subscription). ``queue`` joins a queue group:
        each message goes to one member. At most ``max_buffer`` messages wait; beyond that they
        are dropped and counted (requests among them get a 429 reply).

        ``dispatch`` is the low-level form for routers (the actor runtime, sockets): it is called
        synchronously from the connection's read loop with each message, in arrival order, and must
        return at once without raising; nothing is buffered except behind a chunked message that is
        still arriving. ``reassemble=False`` hands a chunked message over as it arrived (its first
        chunk, headers included) instead of pulling the rest: for routers whose own protocol never
        chunks (sockets), so that no publisher can make them pull, or hold their messages back.

        ``cluster_wide``: return once every server of the cluster routes to this subscription, so
        that a publish from a client on any other node reaches it (see :meth:`flush`; without it,
        the subscription is live on this client's server only, and other nodes learn of it a
        moment later). Services pass it where they start. A server that has not confirmed within
        :data:`~conat._interest.DEFAULT_INTEREST_TIMEOUT` seconds (its route is down or it is
        stalled: it learns of the subscription once its route works) does not fail the
        subscription: it is kept, and a warning names the servers. A grant that does not allow
        asking raises :class:`Forbidden` and leaves nothing subscribed.

        ``encoding`` declares how a message without a ``Conat-Encoding`` header is read here
        (msgpack when ``None``): with ``"raw"``, an unlabelled message (``publish(...,
        label=False)``, or a foreign client's plain publish) arrives as its bytes. A labelled
        message is always read as its label says. Raises :class:`PayloadError` for an unknown
        encoding.

        Atomic with respect to cancellation: cancelled, it leaves no subscription behind (on the
        server either).
        """
        if callback is not None and dispatch is not None:
            raise TypeError("subscribe() takes callback or dispatch, not both")
        codec = get_codec(encoding)
        core = self._core
        core.check_open()
        validate_pattern(pattern)
        if queue is not None:
            validate_subject(queue)
        if self.permissions is not None and not self.permissions.can_subscribe(pattern):
            raise Forbidden(pattern, "subscription")
        sub = Subscription(self, pattern, queue, max_buffer, dispatch, codec)
        await core.subscribe(sub, reassemble)
        if sub._error is not None:
            await core.unsubscribe(sub)
            raise sub._error
        if cluster_wide:
            from . import _interest
            from ._interest import confirm_interest

            try:
                await confirm_interest(self, _interest.DEFAULT_INTEREST_TIMEOUT, flushed=True)
            except Timeout as e:  # a node that cannot answer must not keep services from starting
                log.warning("subscribed to %r, but not confirmed on every node: %s", pattern, e)
            except BaseException:
                sub._close_buffer()
                await core.unsubscribe(sub)
                raise
        if callback is not None:
            sub._start_callback(callback)
        return sub

    # -- request / reply (conat._request) -------------------------------------------------
    async def request(
        self,
        subject: str,
        data: Any = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: dict[str, str] | None = None,
        encoding: str | None = None,
        wait_for_interest: bool = False,
    ) -> Message:
        """Send a request and return the first reply.

        Raises:
            NoResponders: nobody subscribes to ``subject`` (at once; with ``wait_for_interest``
                the request is retried with backoff until the deadline instead).
            Timeout: no reply within ``timeout`` seconds.
            Disconnected: (503, a :class:`Timeout`) the connection dropped before the reply came;
                the request may or may not have been handled. Retry after the reconnect.
            RemoteError: the handler failed (a conat error reply, or a NATS micro one from another
                service); ``code`` is the handler's.
            Forbidden: this client may not publish to ``subject``.
            PayloadError: ``data`` cannot be encoded, or a header name is reserved (400).
        """
        payload, headers = self._core.prepare(subject, data, headers, encoding)
        return await request(self, subject, payload, headers, timeout, wait_for_interest)

    def request_many(
        self,
        subject: str,
        data: Any = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        idle_timeout: float | None = None,
        max_messages: int | None = None,
        headers: dict[str, str] | None = None,
        encoding: str | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> AsyncGenerator[Message, None]:
        """Send a request and yield every reply until the stream ends (an async generator).

        It ends on the responder's end marker (:meth:`Message.end`), after ``max_messages``
        replies, after ``idle_timeout`` seconds without a reply, or at the overall ``timeout``.
        Replies are ordered per responder (a chunked one still arriving holds back no other
        responder's). If no reply at all arrives it raises :class:`Timeout`; a 503 raises
        :class:`NoResponders`, an error reply :class:`RemoteError`, a dropped link
        :class:`Disconnected`.
        """
        return request_many(
            self, subject, data, headers, encoding, timeout=timeout, idle_timeout=idle_timeout,
            max_messages=max_messages, max_buffer=max_buffer,
        )  # fmt: skip

    # -- typed services --------------------------------------------------------------------
    def service(
        self,
        protocol: Callable[..., T],
        subject: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        namespace: str | None = None,
        headers: Callable[[], dict[str, str] | None] | None = None,
    ) -> T:
        """A typed proxy: ``await client.service(Api, subject).method(...)`` sends an RPC request.

        The namespace is ``namespace``, else the protocol's ``__conat_namespace__``, else none.
        ``protocol`` is typed as a callable so that mypy accepts a ``typing.Protocol`` class.
        ``headers``, if given, is called at each call for headers to send with it (call context
        such as the actor call chain).
        """
        from ._service import make_proxy

        return make_proxy(self, protocol, subject, timeout=timeout, namespace=namespace, headers=headers)

    async def serve(
        self,
        subject: str,
        impl: object,
        *,
        queue: str | None = None,
        namespace: str | None = None,
        concurrency: int = 64,
    ) -> Subscription:
        """Answer RPC requests on ``subject`` with ``impl``'s public async methods.

        On a cluster it returns once every node routes to it (``subscribe(cluster_wide=True)``).
        """
        from ._service import serve

        return await serve(self, subject, impl, queue=queue, namespace=namespace, concurrency=concurrency)

    # -- reliable sockets ------------------------------------------------------------------
    async def socket_listen(
        self,
        subject: str,
        *,
        clock: Clock | None = None,
        backlog: int = DEFAULT_BACKLOG,
        window: int | None = None,
        max_message: int | None = None,
        keepalive: float | None = None,
        peer_timeout: float | None = None,
    ) -> SocketServer:
        """Accept reliable socket connections on ``subject`` (a pattern: ``watch.*``).

        Iterate the returned :class:`SocketServer` (or ``await server.accept()``) for connections;
        each one's ``subject`` is the concrete subject its client connected on. ``window`` is the
        credit granted to each client (bytes), ``max_message`` the largest message (16 MiB),
        ``keepalive`` / ``peer_timeout`` the idle ping and dead-peer times (10 s / 30 s). On a
        cluster it returns once every node routes to it (``subscribe(cluster_wide=True)``).
        See :mod:`conat._socket` and :mod:`conat._socket_server`.
        """
        from ._socket_server import listen

        return await listen(
            self, subject, clock=clock, backlog=backlog, window=window, max_message=max_message,
            keepalive=keepalive, peer_timeout=peer_timeout,
        )  # fmt: skip

    async def socket_connect(
        self,
        subject: str,
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        clock: Clock | None = None,
        window: int | None = None,
        max_message: int | None = None,
        keepalive: float | None = None,
        peer_timeout: float | None = None,
        wait_for_interest: bool = False,
    ) -> Socket:
        """Connect a reliable socket to the server listening on ``subject`` (a concrete subject).

        Returns once the connection is open. Raises :class:`NoResponders` (503) at once if nobody
        listens on ``subject`` (with ``wait_for_interest``, the connect is retried until
        ``timeout`` instead, and raises it only if nobody listened meanwhile),
        :class:`Timeout` (408) if no server answered within ``timeout`` seconds,
        :class:`SocketReset` if the server refused (its backlog is full), :class:`Forbidden`.
        """
        from ._socket_client import connect_socket

        return await connect_socket(
            self, subject, timeout=timeout, clock=clock, window=window, max_message=max_message,
            keepalive=keepalive, peer_timeout=peer_timeout, wait_for_interest=wait_for_interest,
        )  # fmt: skip


async def _guard(awaitable: Awaitable[object], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("%s failed", what)
