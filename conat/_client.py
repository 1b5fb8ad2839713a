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
``Conat-Sender``, so receivers keep those behind it (and nobody else's: :mod:`conat._intake`).

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

from ._chunking import MIN_CHUNK_SIZE, ChunkHead, Receivers
from ._codecs import MSGPACK, get_codec
from ._credentials import CredentialSession
from ._errors import (
    ClosedError,
    ConatError,
    ConnectError,
    Disconnected,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
)
from ._headers import (
    CHUNKED_HEADER,
    ENCODING_HEADER,
    PULL_HEADER,
    REPLY_HEADER,
    SENDER_HEADER,
    STATUS_HEADER,
    check_user_headers,
    error_headers,
)
from ._intake import Item
from ._message import Message
from ._request import request, request_many
from ._server_config import MIN_MAX_PAYLOAD
from ._socket_frames import DEFAULT_BACKLOG, DEFAULT_CONNECT_TIMEOUT
from ._subscription import DEFAULT_MAX_BUFFER, Subscription
from ._transfer import TransferEngine
from ._transport import PermissionViolation, Transport, TransportEvents

if TYPE_CHECKING:
    from ._clock import Clock
    from ._socket import Socket
    from ._socket_server import SocketServer

__all__ = ["Client", "ClientState", "ClientStatistics"]

log = logging.getLogger("conat.client")

T = TypeVar("T")
Route = Callable[[str, str, bytes, dict[str, str] | None], None]
"""A handler of replies on one inbox token; it may have a ``fail(error)`` attribute, called when
the client closes (and, for a request's route, when the link drops)."""

DEFAULT_TIMEOUT: Final = 10.0
_SUBJECT_CACHE_MAX: Final = 4096
_ENCODING_HEADERS: Final = {name: {ENCODING_HEADER: name} for name in ("json", "raw")}
"""Shared, never mutated: a message in the default encoding (msgpack) carries no header at all."""
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
        if not self._client._closing:
            self._client._set_state(ClientState.RECONNECTING)
            self._client._fail_in_flight()

    def on_reconnected(self) -> None:
        client = self._client
        if client._credentials is not None:
            client._credentials.reconnected()
        client._max_payload = client._transport.max_payload  # another server may have another limit
        client._set_state(ClientState.CONNECTED)

    def on_closed(self) -> None:
        client = self._client
        if not client._closing and client.close_reason is None and client._credentials is not None:
            # nats-py closed for good by itself: say why when it is about the credentials
            client.close_reason = client._credentials.closed_by_server(client._transport.auth_expired)
        client._set_state(ClientState.CLOSED)

    def on_permission_violation(self, violation: PermissionViolation) -> None:
        self._client._on_violation(violation)

    def on_error(self, error: BaseException) -> None:
        log.debug("transport error: %s", error)

    def on_auth_refused(self) -> None:
        self._client._on_auth_refused()


class Client:
    """A connection to the conat bus. Create with :func:`connect`; close with :meth:`aclose`."""

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
        self._inbox_prefix = inbox_prefix
        self._transport = Transport(_Events(self))
        self._state = ClientState.CONNECTING
        self._closing = False
        self._state_listeners: list[Callable[[ClientState], object]] = []
        self._state_queues: list[asyncio.Queue[ClientState]] = []
        self._subs: dict[int, Subscription] = {}
        self._routes: dict[str, Route] = {}
        self._route_subjects: dict[str, str] = {}
        self._next_token = 0
        self._inbox = ""
        self._inbox_sid = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._violations = 0
        self._transfers = TransferEngine(
            self,
            max_reassembly_bytes=max_reassembly_bytes,
            max_outgoing_bytes=max_outgoing_bytes,
            timeout=transfer_timeout,
        )
        self._max_payload = 1 * _MIB
        self._sender_id = ""
        self._valid_subjects: set[str] = set()
        self._credentials: CredentialSession | None = None
        self.close_reason: ConatError | None = None
        """Why the client closed by itself (e.g. :class:`Unauthorized`), None otherwise."""

    # -- lifecycle -------------------------------------------------------------------------
    async def _connect(self, urls: list[str], **options: Any) -> None:
        await self._transport.connect(urls, name=self.name, inbox_prefix=self._inbox_prefix, **options)
        self._max_payload = self._transport.max_payload
        if self._max_payload < MIN_MAX_PAYLOAD:
            await self._transport.close()
            raise ConnectError(
                self._transport.connected_url or ", ".join(urls),
                f"the server's max_payload is {self._max_payload} bytes; conat needs at least"
                f" {MIN_MAX_PAYLOAD} (raise max_payload in the nats-server config)",
            )
        self._sender_id = self._transport.new_token()
        self._inbox = f"{self._inbox_prefix}.{self._transport.new_token()}."
        self._inbox_sid = await self._transport.subscribe(self._inbox + "*", None, self._on_inbox)
        self._set_state(ClientState.CONNECTED)

    async def aclose(self) -> None:
        """Close: pending requests fail with ClosedError, subscriptions end, tasks stop. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._credentials is not None:
            await self._credentials.aclose()
        closed = ClosedError("client")
        for route in list(self._routes.values()):
            fail = getattr(route, "fail", None)
            if fail is not None:
                fail(closed)
        self._routes.clear()
        for sub in list(self._subs.values()):
            sub._close_buffer()
        self._transfers.close()
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        tasks += [s._task for s in self._subs.values() if s._task is not None and s._task is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subs.clear()
        await self._transport.close()
        self._set_state(ClientState.CLOSED)
        for q in self._state_queues:
            q.put_nowait(ClientState.CLOSED)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", ClientState.CLOSED) is not ClientState.CLOSED and not getattr(
            self, "_closing", True
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
        return self._max_payload

    @property
    def connected_url(self) -> str | None:
        return self._transport.connected_url

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
                    self._spawn(_guard(result, "state callback"))
            except Exception:
                log.exception("state callback %r failed", cb)

    def statistics(self) -> ClientStatistics:
        stats = self._transport.stats
        return ClientStatistics(
            state=self._state.value,
            url=self.connected_url,
            subscriptions=len(self._subs),
            pending_requests=len(self._routes),
            in_msgs=stats.get("in_msgs", 0),
            out_msgs=stats.get("out_msgs", 0),
            in_bytes=stats.get("in_bytes", 0),
            out_bytes=stats.get("out_bytes", 0),
            reconnects=stats.get("reconnects", 0),
            permission_violations=self._violations,
            outgoing_transfers=len(self._transfers.outgoing),
            reassembly_bytes=self._transfers.budget.reserved,
        )

    # -- publish ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closing:
            raise ClosedError("client")

    def _check_subject(self, subject: str) -> None:
        """Validate a publish subject, remembering the valid ones (a bounded cache)."""
        if subject in self._valid_subjects:
            return
        validate_subject(subject)
        if len(self._valid_subjects) >= _SUBJECT_CACHE_MAX:
            self._valid_subjects.clear()
        self._valid_subjects.add(subject)

    def _encode(
        self, data: Any, headers: dict[str, str] | None, encoding: str | None
    ) -> tuple[bytes, dict[str, str] | None]:
        if encoding is None or encoding == "msgpack":
            return MSGPACK.encode(data), headers
        codec = get_codec(encoding)
        if not headers:
            return codec.encode(data), _ENCODING_HEADERS[codec.name]
        return codec.encode(data), {**headers, ENCODING_HEADER: codec.name}

    async def publish(
        self,
        subject: str,
        data: Any = None,
        *,
        headers: dict[str, str] | None = None,
        encoding: str | None = None,
        reply: str | None = None,
    ) -> None:
        """Publish ``data`` (encoded with ``encoding``, msgpack by default) to ``subject``.

        Payloads that do not fit the server's max_payload together with their headers are chunked.
        Raises :class:`InvalidSubject`, :class:`PayloadError` (unencodable, or a header name
        reserved for the wire protocol: ``Conat-*``, ``Status``...), :class:`PayloadTooLarge`
        (headers that leave no room for a chunk), :class:`Forbidden` (outside this client's grant),
        :class:`ClosedError`.
        """
        payload, headers = self._prepare(subject, data, headers, encoding)
        await self._send(subject, payload, reply or "", headers)

    def _prepare(
        self,
        subject: str,
        data: Any,
        headers: dict[str, str] | None,
        encoding: str | None,
        *,
        extensions: bool = False,
    ) -> tuple[bytes, dict[str, str] | None]:
        """Everything a publish checks before it sends: open, subject, grant, headers, encoding.

        ``extensions`` lets ``Conat-*`` extension headers of upper layers through (see
        :func:`conat._headers.is_reserved`); the bus's own stay refused.
        """
        self._check_open()
        self._check_subject(subject)
        if self.permissions is not None and not self.permissions.can_publish(subject):
            raise Forbidden(subject, "publish")
        if headers:
            check_user_headers(headers, extensions=extensions)
        return self._encode(data, headers, encoding)

    async def _reply(
        self, reply: str, data: Any, headers: dict[str, str] | None, encoding: str | None
    ) -> None:
        """Answer a request. The reply subject came from the server, and answering is governed by
        NATS response permissions, not by this client's publish grant: so no grant check here."""
        self._check_open()
        if headers:
            check_user_headers(headers)
        payload, headers = self._encode(data, headers, encoding)
        await self._send(reply, payload, "", headers, "one")

    def _reply_nowait(
        self, reply: str, data: Any, headers: dict[str, str] | None, encoding: str | None
    ) -> None:
        """:meth:`_reply` without waiting: queued for the flusher at once; a reply that needs
        chunking is sent by a task of this client."""
        self._check_open()
        if headers:
            check_user_headers(headers)
        payload, headers = self._encode(data, headers, encoding)
        headers = self._tag(headers)
        if len(payload) <= self._max_payload:
            try:
                self._transport.publish_nowait(reply, payload, "", headers)
                return
            except PayloadTooLarge:
                pass  # it fits alone, not with its headers: chunk it
        self._spawn(_guard(self._send_chunked(reply, payload, "", headers, "one"), "chunked reply"))

    def _publish_control_nowait(self, subject: str, headers: dict[str, str], payload: bytes) -> None:
        """:meth:`_publish_control` without waiting."""
        self._check_open()
        self._transport.publish_nowait(subject, payload, "", self._tag(headers))

    def _tag(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        """Add ``Conat-Sender`` while chunked messages of ours are in flight (see the docstring)."""
        if not self._transfers.outgoing:
            return headers
        return {**headers, SENDER_HEADER: self._sender_id} if headers else {SENDER_HEADER: self._sender_id}

    async def _send(
        self,
        subject: str,
        payload: bytes,
        reply: str,
        headers: dict[str, str] | None,
        receivers: Receivers = "many",
    ) -> str | None:
        """Send one message, chunked if it does not fit with its headers; returns the chunk
        transfer's id, if any. ``receivers="one"`` (a reply) frees the transfer once it is pulled."""
        headers = self._tag(headers)
        if len(payload) <= self._max_payload:
            try:  # the transport checks the size with the headers (which it encodes anyway)
                await self._transport.publish(subject, payload, reply, headers)
                return None
            except PayloadTooLarge:
                pass  # it fits alone, not with its headers: nothing was sent; chunk it
        return await self._send_chunked(subject, payload, reply, headers, receivers)

    async def _send_chunked(
        self,
        subject: str,
        payload: bytes,
        reply: str,
        headers: dict[str, str] | None,
        receivers: Receivers,
    ) -> str:
        max_payload = self._max_payload
        hdr = dict(headers) if headers else {}
        hdr[SENDER_HEADER] = self._sender_id
        if reply:
            hdr[REPLY_HEADER] = reply
        # Size the head's headers with the widest Conat-Chunked value this transfer can have: the
        # chunks then fit both in the head and in the pull answers (whose one header is shorter).
        transfer_id = self._transport.new_token()
        hdr[CHUNKED_HEADER] = ChunkHead(transfer_id, len(payload), max_payload, len(payload)).header()
        header_size = self._transport.header_size(hdr)
        chunk_size = max_payload - header_size
        if chunk_size < MIN_CHUNK_SIZE:
            raise PayloadTooLarge(header_size, max_payload - MIN_CHUNK_SIZE, "message headers")
        head = self._transfers.add_outgoing(transfer_id, payload, chunk_size, receivers)
        hdr[CHUNKED_HEADER] = head.header()
        # Pulls come to our inbox; a request's reply token doubles as the pull source (and its
        # route sees the server's 503 if nobody got the head); else the engine watches the source.
        if reply.startswith(self._inbox):
            source = reply
        else:
            source = self._new_inbox_subject()
            self._transfers.watch_source(transfer_id, source[len(self._inbox) :])
        try:
            await self._transport.publish(
                subject, self._transfers.outgoing.first_chunk(transfer_id), source, hdr
            )
        except BaseException:
            self._transfers.outgoing.discard(transfer_id)
            raise
        return transfer_id

    async def _publish_control(self, subject: str, headers: dict[str, str], payload: bytes) -> None:
        """Send a protocol message (an error reply, an end marker): never chunked, always small."""
        await self._transport.publish(subject, payload, "", self._tag(headers))

    def _reply_busy(self, reply: str, why: str) -> None:
        if not self._closing:
            headers, body = error_headers(429, why)
            self._spawn(self._publish_control(reply, headers, body))

    async def flush(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return when the server has processed everything sent so far (subscriptions included)."""
        self._check_open()
        await self._transport.flush(timeout)

    # -- subscribe -------------------------------------------------------------------------
    @overload
    async def subscribe(
        self, pattern: str, *, queue: str | None = None, max_buffer: int = DEFAULT_MAX_BUFFER
    ) -> Subscription: ...

    @overload
    async def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        callback: Callable[[Message], Awaitable[object]],
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
        """
        if callback is not None and dispatch is not None:
            raise TypeError("subscribe() takes callback or dispatch, not both")
        self._check_open()
        validate_pattern(pattern)
        if queue is not None:
            validate_subject(queue)
        if self.permissions is not None and not self.permissions.can_subscribe(pattern):
            raise Forbidden(pattern, "subscription")
        sub = Subscription(self, pattern, queue, max_buffer, dispatch)
        route = self._subscription_route(sub) if reassemble else self._plain_route(sub)
        sub.sid = await self._transport.subscribe(pattern, queue, route)
        self._subs[sub.sid] = sub
        await self._transport.flush()
        if sub._error is not None:
            await self._unsubscribe(sub)
            raise sub._error
        if callback is not None:
            sub._start_callback(callback)
        return sub

    def _subscription_route(self, sub: Subscription) -> Route:
        def route(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
            if headers is None:
                sub._put(Message(subject, reply, data, None, self), reply, None)
            else:
                item, sender = self._item(subject, reply, data, headers)
                sub._put(item, headers.get(REPLY_HEADER, reply), sender)

        return route

    def _plain_route(self, sub: Subscription) -> Route:
        def route(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
            sub._put(Message(subject, reply, data, headers, self), reply, None)

        return route

    async def _unsubscribe(self, sub: Subscription) -> None:
        sid, sub.sid = sub.sid, 0
        if sid and self._subs.pop(sid, None) is not None and not self._closing:
            await self._transport.unsubscribe(sid)

    async def _drain(self, sub: Subscription, timeout: float) -> None:
        sid = sub.sid
        if sid and sid in self._subs and not self._closing:
            try:
                await self._transport.drain(sid, timeout)
            finally:
                self._subs.pop(sid, None)
                sub.sid = 0
        else:
            await self._unsubscribe(sub)

    def _item(
        self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
    ) -> tuple[Item, str | None]:
        """The received message (or, for a chunked head, the future of it) and its sender's id."""
        if headers is None:
            return Message(subject, reply, data, None, self), None
        if CHUNKED_HEADER in headers:
            # A head always has a sender: its own tag, else (a foreign sender) its pull source.
            sender = headers.get(SENDER_HEADER) or reply
            return self._transfers.start_incoming(subject, reply, data, headers), sender
        return Message(subject, reply, data, headers, self), headers.get(SENDER_HEADER)

    # -- inbox and routes ------------------------------------------------------------------
    def _new_inbox_subject(self) -> str:
        self._next_token += 1
        return f"{self._inbox}{self._next_token:x}"

    def _open_route(self, route: Route) -> tuple[str, str]:
        subject = self._new_inbox_subject()
        token = subject[len(self._inbox) :]
        self._routes[token] = route
        return token, subject

    def _close_route(self, token: str) -> None:
        self._routes.pop(token, None)
        self._route_subjects.pop(token, None)

    def _on_inbox(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        if headers is not None and PULL_HEADER in headers:
            if reply:
                self._spawn(self._transfers.serve_pull(headers[PULL_HEADER], reply))
            return
        token = subject[len(self._inbox) :]
        route = self._routes.get(token)
        if route is not None:
            route(subject, reply, data, headers)
        elif headers is not None and headers.get(STATUS_HEADER) == "503":
            self._transfers.no_interest(token)  # perhaps a chunked message's head reached nobody

    def _fail_in_flight(self) -> None:
        """The link dropped: every reply (and chunk) on its way is lost, so fail the requests and
        chunked transfers waiting for one now, with :class:`Disconnected`, not at their deadline.

        Other routes (reliable sockets) survive a reconnect and are left alone.
        """
        for token, subject in list(self._route_subjects.items()):
            fail = getattr(self._routes.get(token), "fail", None)
            if fail is not None:
                fail(Disconnected(subject, 0.0))
        self._transfers.disconnected()

    @property
    def principal(self) -> str | None:
        """Who the bus knows this client as (from its credentials), None without credentials."""
        return self._credentials.principal if self._credentials is not None else None

    def _on_auth_refused(self) -> None:
        session = self._credentials
        error = session.refused() if session is not None else Unauthorized("the bus", "credentials refused")
        if error is not None and not self._closing:
            log.error("closing: %s", error)
            self.close_reason = error
            self._spawn_detached(self.aclose())

    def _spawn_detached(self, coro: Awaitable[object]) -> None:
        """Run ``coro`` outside the client's task set (it may close the client itself)."""
        task = asyncio.ensure_future(coro)
        _DETACHED.add(task)
        task.add_done_callback(_DETACHED.discard)

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_violation(self, violation: PermissionViolation) -> None:
        """Safety net: fail whatever the server's asynchronous refusal belongs to.

        nats-py lowercases the refused subject, so the match is case-insensitive; the local check
        against :attr:`permissions` is the primary mechanism (it raises before anything is sent).
        """
        self._violations += 1
        subject = violation.subject_lower
        if violation.operation == "subscription":
            for sub in list(self._subs.values()):
                if sub.pattern.lower() == subject:
                    sub._fail(Forbidden(sub.pattern, "subscription", "refused by the server"))
            return
        for token, target in list(self._route_subjects.items()):
            if target.lower() == subject:
                route = self._routes.get(token)
                fail = getattr(route, "fail", None)
                if fail is not None:
                    fail(Forbidden(target, "publish", "refused by the server"))

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
        payload, headers = self._prepare(subject, data, headers, encoding)
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
        """Answer RPC requests on ``subject`` with ``impl``'s public async methods."""
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
        ``keepalive`` / ``peer_timeout`` the idle ping and dead-peer times (10 s / 30 s).
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
        from ._socket import connect_socket

        return await connect_socket(
            self, subject, timeout=timeout, clock=clock, window=window, max_message=max_message,
            keepalive=keepalive, peer_timeout=peer_timeout, wait_for_interest=wait_for_interest,
        )  # fmt: skip


_DETACHED: set[asyncio.Task[Any]] = set()


async def _guard(awaitable: Awaitable[object], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("%s failed", what)
