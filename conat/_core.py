"""The client's machinery, and the one internal interface conat's own modules use of a client.

:class:`~conat.Client` is the public face; everything under it is a :class:`ClientCore`,
``client._core``. Request/reply (:mod:`conat._request`), messages (:mod:`conat._message`),
subscriptions, chunked transfers (:mod:`conat._transfer`), sockets and their listeners, typed
services, ``$SRV`` discovery and credentials reach a client only through it, never through other
private members of the client. What they may use, and its contract:

- ``transport``: the connection (:class:`~conat._transport.Transport`), for raw publishes of
  protocol frames that are never chunked (socket frames, chunk answers) and connection facts.
- ``closing``: true from the moment the client starts closing; nothing new should start then.
- ``spawn(coro)``: run a task the client owns: it is cancelled and awaited when the client closes.
  ``spawn_detached(coro)`` runs one the client does not own (it may close the client itself).
- The *inbox*: one wildcard subscription ``<inbox_prefix>.<nuid>.*`` carries every reply.
  ``open_route(route)`` hands out a token under it (and its subject); ``route(subject, reply, data,
  headers)`` is then called on the read loop for each message to that token until
  ``close_route(token)``. A route may have a ``fail(error)`` attribute: called when the client
  closes (:class:`ClosedError`) and, for a route whose target is recorded in ``route_subjects``
  (a request's), when the link drops (:class:`Disconnected`) or the server refuses a publish to
  that target (:class:`Forbidden`).
- Sending: ``prepare`` (every check a publish makes, then the encoding), ``send`` (a message,
  chunked when it does not fit), ``reply`` (answer a request), ``publish_control`` (an error reply
  or an end marker: small, never chunked), ``reply_busy`` (a 429 answer without waiting);
  ``reply_nowait`` and ``publish_control_nowait`` queue an answer without waiting (for code on the
  read loop or in a completion callback).
- Receiving: ``item`` turns a raw message into a :class:`Message`, or into a future of one for the
  head of a chunked message (``transfers`` pulls the rest).
- Subscriptions: ``subscriptions`` (by sid), ``unsubscribe(sub)`` and ``drain(sub)``.

Everything here runs on the client's event loop; the routes run on its read loop and must not
block or raise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

from subjects import validate_subject

from ._chunking import MIN_CHUNK_SIZE, ChunkHead, Receivers
from ._codecs import MSGPACK, Codec, get_codec
from ._errors import BUSY, ClosedError, ConnectError, Disconnected, Forbidden, PayloadTooLarge
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
from ._message import Message
from ._server_config import MIN_MAX_PAYLOAD
from ._transfer import TransferEngine
from ._transport import Transport, TransportEvents

if TYPE_CHECKING:
    from ._client import Client
    from ._subscription import Subscription

__all__ = ["ClientCore", "Item", "Route"]

log = logging.getLogger("conat.client")

T = TypeVar("T")
Item = Message | asyncio.Future[Message]
"""A received message, or the future of one whose chunks are still arriving."""
Route = Callable[[str, str, bytes, dict[str, str] | None], None]
"""A handler of the messages to one inbox token (see the module docstring)."""

_MIB: Final = 1024 * 1024
_SUBJECT_CACHE_MAX: Final = 4096
_ENCODING_HEADERS: Final = {name: {ENCODING_HEADER: name} for name in ("json", "raw")}
"""Shared, never mutated: a message in the default encoding (msgpack) carries no header at all."""
_DETACHED: set[asyncio.Task[Any]] = set()


class ClientCore:
    """The machinery of one :class:`~conat.Client` (see the module docstring for what to use)."""

    def __init__(
        self,
        client: Client,
        events: TransportEvents,
        *,
        inbox_prefix: str,
        max_reassembly_bytes: int,
        max_outgoing_bytes: int,
        transfer_timeout: float,
    ) -> None:
        self.client = client
        self.transport = Transport(events)
        self.closing = False
        self.inbox_prefix = inbox_prefix
        self.inbox = ""
        """``<inbox_prefix>.<nuid>.``: every token's subject starts with it."""
        self.max_payload = 1 * _MIB
        self.subscriptions: dict[int, Subscription] = {}
        self.routes: dict[str, Route] = {}
        self.route_subjects: dict[str, str] = {}
        """Token -> the subject its route's messages answer (a request's target)."""
        self.transfers = TransferEngine(
            self,
            max_reassembly_bytes=max_reassembly_bytes,
            max_outgoing_bytes=max_outgoing_bytes,
            timeout=transfer_timeout,
        )
        self._sender_id = ""
        self._next_token = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._valid_subjects: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self, urls: list[str], name: str | None, **options: Any) -> None:
        """Connect and subscribe the inbox. Raises :class:`ConnectError` (and its subclasses)."""
        transport = self.transport
        await transport.connect(urls, name=name, inbox_prefix=self.inbox_prefix, **options)
        self.max_payload = transport.max_payload
        if self.max_payload < MIN_MAX_PAYLOAD:
            await transport.close()
            raise ConnectError(
                transport.connected_url or ", ".join(urls),
                f"the server's max_payload is {self.max_payload} bytes; conat needs at least"
                f" {MIN_MAX_PAYLOAD} (raise max_payload in the nats-server config)",
            )
        self._sender_id = transport.new_token()
        self.inbox = f"{self.inbox_prefix}.{transport.new_token()}."
        await transport.subscribe(self.inbox + "*", None, self._on_inbox)

    async def close(self) -> None:
        """Fail every route with :class:`ClosedError`, end every subscription, cancel and await
        the client's tasks, close the connection. The caller has set ``closing``."""
        closed = ClosedError("client")
        for route in list(self.routes.values()):
            fail = getattr(route, "fail", None)
            if fail is not None:
                fail(closed)
        self.routes.clear()
        for sub in list(self.subscriptions.values()):
            sub._close_buffer()
        self.transfers.close()
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        tasks += [s._task for s in self.subscriptions.values() if s._task is not None and s._task is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.subscriptions.clear()
        await self.transport.close()

    # -- tasks -----------------------------------------------------------------------------
    def spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task of the client's (cancelled and awaited when it closes)."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def spawn_detached(coro: Coroutine[Any, Any, object]) -> None:
        """Run ``coro`` outside the client's task set (it may close the client itself)."""
        task = asyncio.ensure_future(coro)
        _DETACHED.add(task)
        task.add_done_callback(_DETACHED.discard)

    # -- the inbox and its routes ----------------------------------------------------------
    def new_inbox_subject(self) -> str:
        self._next_token += 1
        return f"{self.inbox}{self._next_token:x}"

    def open_route(self, route: Route) -> tuple[str, str]:
        """Route the messages to a new inbox token to ``route``; returns ``(token, subject)``."""
        subject = self.new_inbox_subject()
        token = subject[len(self.inbox) :]
        self.routes[token] = route
        return token, subject

    def close_route(self, token: str) -> None:
        self.routes.pop(token, None)
        self.route_subjects.pop(token, None)

    def _on_inbox(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        if headers is not None and PULL_HEADER in headers:
            if reply:
                self.spawn(self.transfers.serve_pull(headers[PULL_HEADER], reply))
            return
        token = subject[len(self.inbox) :]
        route = self.routes.get(token)
        if route is not None:
            route(subject, reply, data, headers)
        elif headers is not None and headers.get(STATUS_HEADER) == "503":
            self.transfers.no_interest(token)  # perhaps a chunked message's head reached nobody

    def fail_in_flight(self) -> None:
        """The link dropped: every reply (and chunk) on its way is lost, so fail the requests and
        chunked transfers waiting for one now, with :class:`Disconnected`, not at their deadline.

        Other routes (reliable sockets) survive a reconnect and are left alone.
        """
        for token, subject in list(self.route_subjects.items()):
            fail = getattr(self.routes.get(token), "fail", None)
            if fail is not None:
                fail(Disconnected(subject, 0.0))
        self.transfers.disconnected()

    def fail_refused(self, operation: str, subject_lower: str) -> None:
        """The server refused a subscription or a publish to ``subject_lower`` (lowercased by
        nats-py: the match is case-insensitive): fail what it belongs to with :class:`Forbidden`."""
        if operation == "subscription":
            for sub in list(self.subscriptions.values()):
                if sub.pattern.lower() == subject_lower:
                    sub._fail(Forbidden(sub.pattern, "subscription", "refused by the server"))
            return
        for token, target in list(self.route_subjects.items()):
            if target.lower() == subject_lower:
                fail = getattr(self.routes.get(token), "fail", None)
                if fail is not None:
                    fail(Forbidden(target, "publish", "refused by the server"))

    # -- subscriptions ---------------------------------------------------------------------
    async def subscribe(self, sub: Subscription, reassemble: bool) -> None:
        """Register ``sub`` with the server and confirm it (the server has it when this returns).

        Atomic with respect to cancellation: a cancelled call leaves no subscription behind,
        neither here nor on the server.
        """
        route = self._subscription_route(sub) if reassemble else self._plain_route(sub)
        sub.sid = await self.transport.subscribe(sub.pattern, sub.queue, route)
        self.subscriptions[sub.sid] = sub
        try:
            await self.transport.flush()
        except BaseException:
            sub._close_buffer()
            await self.unsubscribe(sub)
            raise

    def _subscription_route(self, sub: Subscription) -> Route:
        client = self.client
        codec = sub.codec

        def route(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
            if headers is None:
                sub._put(Message(subject, reply, data, None, client, codec), reply, None)
            else:
                item, sender = self.item(subject, reply, data, headers, codec)
                sub._put(item, headers.get(REPLY_HEADER, reply), sender)

        return route

    def _plain_route(self, sub: Subscription) -> Route:
        client = self.client
        codec = sub.codec

        def route(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
            sub._put(Message(subject, reply, data, headers, client, codec), reply, None)

        return route

    async def unsubscribe(self, sub: Subscription) -> None:
        sid, sub.sid = sub.sid, 0
        if sid and self.subscriptions.pop(sid, None) is not None and not self.closing:
            await self.transport.unsubscribe(sid)

    async def drain(self, sub: Subscription, timeout: float) -> None:
        """Stop the server's routing to ``sub`` so that everything routed before is still handled."""
        sid = sub.sid
        if sid and sid in self.subscriptions and not self.closing:
            try:
                await self.transport.drain(sid, timeout)
            finally:
                self.subscriptions.pop(sid, None)
                sub.sid = 0
        else:
            await self.unsubscribe(sub)

    # -- receiving -------------------------------------------------------------------------
    def item(
        self,
        subject: str,
        reply: str,
        data: bytes,
        headers: dict[str, str] | None,
        default: Codec = MSGPACK,
    ) -> tuple[Item, str | None]:
        """The received message (or, for a chunked head, the future of it) and its sender's id.
        ``default``: the codec of a body without ``Conat-Encoding`` (the subscription's)."""
        if headers is None:
            return Message(subject, reply, data, None, self.client, default), None
        if CHUNKED_HEADER in headers:
            # A head always has a sender: its own tag, else (a foreign sender) its pull source.
            sender = headers.get(SENDER_HEADER) or reply
            return self.transfers.start_incoming(subject, reply, data, headers, default), sender
        return Message(subject, reply, data, headers, self.client, default), headers.get(SENDER_HEADER)

    # -- sending ---------------------------------------------------------------------------
    def check_open(self) -> None:
        if self.closing:
            raise ClosedError("client")

    def check_subject(self, subject: str) -> None:
        """Validate a publish subject, remembering the valid ones (a bounded cache)."""
        if subject in self._valid_subjects:
            return
        validate_subject(subject)
        if len(self._valid_subjects) >= _SUBJECT_CACHE_MAX:
            self._valid_subjects.clear()
        self._valid_subjects.add(subject)

    def prepare(
        self,
        subject: str,
        data: Any,
        headers: dict[str, str] | None,
        encoding: str | None,
        *,
        extensions: bool = False,
        label: bool = True,
    ) -> tuple[bytes, dict[str, str] | None]:
        """Everything a publish checks before it sends: open, subject, grant, headers, encoding.

        ``extensions`` lets ``Conat-*`` extension headers of upper layers through (see
        :func:`conat._headers.is_reserved`); the bus's own stay refused. ``label=False`` sends
        no ``Conat-Encoding`` header (see :meth:`conat.Client.publish`).
        """
        self.check_open()
        self.check_subject(subject)
        permissions = self.client.permissions
        if permissions is not None and not permissions.can_publish(subject):
            raise Forbidden(subject, "publish")
        if headers:
            check_user_headers(headers, extensions=extensions)
        return self._encode(data, headers, encoding, label)

    @staticmethod
    def _encode(
        data: Any, headers: dict[str, str] | None, encoding: str | None, label: bool = True
    ) -> tuple[bytes, dict[str, str] | None]:
        if encoding is None or encoding == "msgpack":
            return MSGPACK.encode(data), headers
        codec = get_codec(encoding)
        if not label:
            return codec.encode(data), headers
        if not headers:
            return codec.encode(data), _ENCODING_HEADERS[codec.name]
        return codec.encode(data), {**headers, ENCODING_HEADER: codec.name}

    async def reply(
        self, reply: str, data: Any, headers: dict[str, str] | None, encoding: str | None
    ) -> None:
        """Answer a request. The reply subject came from the server, and answering is governed by
        NATS response permissions, not by this client's publish grant: so no grant check here."""
        self.check_open()
        if headers:
            check_user_headers(headers)
        payload, headers = self._encode(data, headers, encoding)
        await self.send(reply, payload, "", headers, "one")

    def reply_nowait(
        self, reply: str, data: Any, headers: dict[str, str] | None, encoding: str | None
    ) -> None:
        """:meth:`reply` without waiting: queued for the flusher at once (replies sent this way go
        out in the order they were queued); one that needs chunking is sent by a task of the
        client."""
        self.check_open()
        if headers:
            check_user_headers(headers)
        payload, headers = self._encode(data, headers, encoding)
        headers = self._tag(headers)
        if len(payload) <= self.max_payload:
            try:
                self.transport.publish_nowait(reply, payload, "", headers)
                return
            except PayloadTooLarge:
                pass  # it fits alone, not with its headers: nothing was sent; chunk it
        self.spawn(_logged(self._send_chunked(reply, payload, "", headers, "one"), "chunked reply"))

    def publish_control_nowait(self, subject: str, headers: dict[str, str], payload: bytes) -> None:
        """:meth:`publish_control` without waiting."""
        self.check_open()
        self.transport.publish_nowait(subject, payload, "", self._tag(headers))

    def _tag(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        """Add ``Conat-Sender`` while chunked messages of ours are in flight (:mod:`conat._client`)."""
        if not self.transfers.outgoing:
            return headers
        return {**headers, SENDER_HEADER: self._sender_id} if headers else {SENDER_HEADER: self._sender_id}

    async def send(
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
        if len(payload) <= self.max_payload:
            try:  # the transport checks the size with the headers (which it encodes anyway)
                await self.transport.publish(subject, payload, reply, headers)
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
        max_payload = self.max_payload
        hdr = dict(headers) if headers else {}
        hdr[SENDER_HEADER] = self._sender_id
        if reply:
            hdr[REPLY_HEADER] = reply
        # Size the head's headers with the widest Conat-Chunked value this transfer can have: the
        # chunks then fit both in the head and in the pull answers (whose one header is shorter).
        transfer_id = self.transport.new_token()
        hdr[CHUNKED_HEADER] = ChunkHead(transfer_id, len(payload), max_payload, len(payload)).header()
        header_size = self.transport.header_size(hdr)
        chunk_size = max_payload - header_size
        if chunk_size < MIN_CHUNK_SIZE:
            raise PayloadTooLarge(header_size, max_payload - MIN_CHUNK_SIZE, "message headers")
        head = self.transfers.add_outgoing(transfer_id, payload, chunk_size, receivers)
        hdr[CHUNKED_HEADER] = head.header()
        # Pulls come to our inbox; a request's reply token doubles as the pull source (and its
        # route sees the server's 503 if nobody got the head); else the engine watches the source.
        if reply.startswith(self.inbox):
            source = reply
        else:
            source = self.new_inbox_subject()
            self.transfers.watch_source(transfer_id, source[len(self.inbox) :])
        try:
            await self.transport.publish(
                subject, self.transfers.outgoing.first_chunk(transfer_id), source, hdr
            )
        except BaseException:
            self.transfers.outgoing.discard(transfer_id)
            raise
        return transfer_id

    async def publish_control(self, subject: str, headers: dict[str, str], payload: bytes) -> None:
        """Send a protocol message (an error reply, an end marker): never chunked, always small."""
        await self.transport.publish(subject, payload, "", self._tag(headers))

    def reply_busy(self, reply: str, why: str) -> None:
        """Answer ``reply`` with 429 (busy) without waiting (nothing if the client is closing)."""
        if not self.closing:
            headers, body = error_headers(BUSY, why)
            self.spawn(self.publish_control(reply, headers, body))


async def _logged(work: Awaitable[object], what: str) -> None:
    """Await ``work`` in a task nobody awaits: its failure is logged, not left unretrieved."""
    try:
        await work
    except Exception:
        log.exception("%s failed", what)
