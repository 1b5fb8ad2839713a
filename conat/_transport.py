"""The one boundary between conat and nats-py.

No ``nats.*`` name or exception leaves this module: callers see conat's error tree and plain
callables. Three things here differ on purpose from stock nats-py:

* **Direct dispatch.** conat's subscriptions do not use nats-py's per-subscription queue and task.
  The read loop hands each message to a synchronous handler that only enqueues it into a bounded
  conat buffer (or resolves a request's future) and returns. One task hop less per message, and
  the overflow policy is conat's, not a silent drop deep in nats-py.
* **flush() that means it.** nats-py writes its PING straight to the socket, ahead of commands still
  sitting in its pending buffer, so ``subscribe()`` + ``flush()`` could return before the server had
  the SUB. Here the PING is queued behind everything pending.
* **Reconnect forever, detect dead links fast, never let a callback break the client.** Initial
  connect tries a bounded number of times (a clear error beats a hang); after that the client
  reconnects forever. Every user-facing callback is wrapped.
* **No message can kill the connection.** nats-server closes a connection that publishes more than
  its max_payload, headers and payload together; :meth:`Transport.publish` refuses such a message
  with :class:`PayloadTooLarge` instead of sending it.
* **The server's status is unforgeable.** ``Status``/``Description`` come only from the inline
  status line (``NATS/1.0 503``); header lines of those names from a sender are ignored.

What this module uses of nats-py beyond its public API, and why
---------------------------------------------------------------
nats-py is pinned to a minor version (``pyproject.toml``), and ``tests/conat/test_nats_py.py``
checks each item below on the installed version (presence, signature, behaviour), naming the item
and what it is for when an upgrade breaks it:

* ``Client._process_msg(sid, subject, reply, data, headers)``: overridden; the parser calls it for
  every MSG/HMSG, so direct dispatch happens here.
* ``Subscription(conn, id, subject, queue)``, ``Client._subs``, ``Client._sid``,
  ``Client._send_subscribe(sub)``, ``Client._send_unsubscribe(sid)``: a subscription registered as
  nats-py's own ``subscribe`` registers one (so its reconnect re-sends it), without its queue and task.
* ``Client._pending``, ``_pending_data_size``, ``_max_pending_size``, ``_flush_queue``,
  ``_flush_pending(force_flush)``: :meth:`Transport.publish` queues the protocol command itself
  (nats-py's ``publish`` re-validates and re-encodes the headers on every call) and kicks the flusher.
* ``Client._flusher_task``: a reply sent without an await (:meth:`Transport.publish_nowait`) wakes
  the flusher only while that task runs; otherwise the next awaited publish or the reconnect flushes.
* ``Client._send_command(cmd)``, ``Client._pongs``: :meth:`Transport.flush` queues its PING behind
  what is pending and waits for its PONG.
* ``Client._nuid``: unique tokens (inboxes, transfer ids) from nats-py's NUID generator.
* ``Client._server_info``: the server's name from its INFO, known before CONNECT (credentials), and
  its cluster.
* ``Client._process_info(info, initial_connection)``: overridden to keep the cluster's client URLs
  of the latest INFO (nats-py keeps only the first INFO): how many servers a cluster-wide interest
  confirmation waits for (:mod:`conat._interest`).
* ``Client._transport``: the socket nats-py leaves open after a refused connect, closed here.
* ``Client.options["max_reconnect_attempts"]`` and ``["allow_reconnect"]``: bounded tries at first,
  reconnects forever once connected.
* Error texts: nats-py lowercases the server's ``-ERR`` text and reports ``nats: <text>``;
  ``permissions violation for (publish|subscription) to "<subject>"`` is a refused publish or
  subscription, ``authorization violation`` refused credentials, ``authentication expired`` an
  expired user JWT (nats-py then closes for good).
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Final

import nats.errors as nats_errors
from nats.aio.client import Client as _NatsClient
from nats.aio.subscription import Subscription as _NatsSubscription

from ._errors import BadURL, ClosedError, ConnectError, PayloadError, PayloadTooLarge, Timeout, Unauthorized

__all__ = ["DirectHandler", "PermissionViolation", "Transport", "TransportEvents"]

log = logging.getLogger("conat.transport")

DirectHandler = Callable[[str, str, bytes, dict[str, str] | None], None]
"""``handler(subject, reply, payload, headers)``: runs on the read loop; must not block or raise."""

_PING: Final = b"PING\r\n"
_CRLF: Final = b"\r\n"
_HEADER_KEY_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CACHE_MAX: Final = 1024
_CACHEABLE_BYTES: Final = 512
_URL_SCHEMES: Final = ("nats", "tls", "ws", "wss")
_VIOLATION_RE: Final = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')
_STATUS_KEYS: Final = frozenset({b"status", b"description"})


class PermissionViolation(Exception):
    """An asynchronous ``-ERR 'Permissions Violation ...'`` from the server (lowercased by nats-py)."""

    def __init__(self, operation: str, subject_lower: str) -> None:
        super().__init__(f"{operation} to {subject_lower!r}")
        self.operation = operation
        self.subject_lower = subject_lower


class TransportEvents:
    """What the transport reports upwards. Override the methods you need; each is called safely."""

    def on_disconnected(self) -> None: ...
    def on_reconnected(self) -> None: ...
    def on_closed(self) -> None: ...
    def on_permission_violation(self, violation: PermissionViolation) -> None: ...
    def on_error(self, error: BaseException) -> None: ...
    def on_auth_refused(self) -> None: ...


def encode_headers(headers: dict[str, str]) -> bytes:
    """The NATS header block for ``headers``; raises :class:`PayloadError` (400) naming a bad key or value."""
    parts = [b"NATS/1.0\r\n"]
    for key, value in headers.items():
        if not isinstance(key, str) or not _HEADER_KEY_RE.fullmatch(key):
            raise PayloadError("encode", "headers", f"invalid header name {key!r}")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise PayloadError(
                "encode", "headers", f"header {key!r} needs a string without newlines, not {value!r}"
            )
        parts.append(f"{key}: {value.strip()}\r\n".encode())
    parts.append(_CRLF)
    return b"".join(parts)


def parse_headers(raw: bytes) -> dict[str, str] | None:
    """Parse a NATS header block, including the server's inline status line (``NATS/1.0 503``).

    ``Status`` and ``Description`` are set from that line only: header lines with those names
    (sent by some client) are dropped, so no sender can fake a 503.
    """
    lines = raw.split(_CRLF)
    out: dict[str, str] = {}
    first = lines[0]
    if len(first) > 9:  # "NATS/1.0 503 No Responders"
        status = first[9:12]
        if status.isdigit():
            out["Status"] = status.decode()
        description = first[13:].strip()
        if description:
            out["Description"] = description.decode(errors="replace")
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if sep and key:
            key = key.strip()
            if key.lower() in _STATUS_KEYS:
                continue
            out[key.decode("latin-1")] = value.strip().decode(errors="replace")
    return out or None


class _Connection(_NatsClient):
    """nats-py's client with a direct-dispatch table consulted before its own machinery.

    Parsed and encoded header blocks are cached (bounded): conat's own headers repeat
    (``Conat-Encoding: raw``, ``Conat-End: 1``), and nats-py's parser costs microseconds each.
    Cached dicts are shared, so nothing may mutate a received header dict.
    """

    def __init__(self) -> None:
        super().__init__()
        self.direct: dict[int, DirectHandler] = {}
        self.cluster_urls: tuple[str, ...] = ()
        """The client URLs of the servers of the cluster, as the latest INFO listed them."""
        self._parsed: dict[bytes, dict[str, str] | None] = {}
        self._encoded: dict[tuple[tuple[str, str], ...], bytes] = {}

    def header_block(self, headers: dict[str, str]) -> bytes:
        key = tuple(headers.items())
        block = self._encoded.get(key)
        if block is None:
            block = encode_headers(headers)
            if len(self._encoded) >= _CACHE_MAX:
                self._encoded.clear()
            if len(block) <= _CACHEABLE_BYTES:
                self._encoded[key] = block
        return block

    def headers_of(self, raw: bytes) -> dict[str, str] | None:
        if raw in self._parsed:
            return self._parsed[raw]
        parsed = parse_headers(raw)
        if len(raw) <= _CACHEABLE_BYTES:
            if len(self._parsed) >= _CACHE_MAX:
                self._parsed.clear()
            self._parsed[raw] = parsed
        return parsed

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        urls = info.get("connect_urls")
        if initial_connection or urls is not None:
            self.cluster_urls = tuple(u for u in urls or () if isinstance(u, str))
        await super()._process_info(info, initial_connection)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self.direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        hdr = self.headers_of(headers) if headers else None
        try:
            handler(subject.decode(), reply.decode() if reply else "", data, hdr)
        except Exception:
            log.exception("message handler failed for subject %r", subject)


class Transport:
    """A connection to the bus: publish, direct subscriptions, an honest flush, and state events."""

    def __init__(self, events: TransportEvents) -> None:
        self._events = events
        self._nc = _Connection()
        self._closing = False
        self._auth_refused = False  # the server refused our credentials at least once
        self._connected_once = False
        self._link_changed: asyncio.Future[None] | None = None  # resolved at a disconnect/reconnect

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(
        self,
        urls: list[str],
        *,
        name: str | None,
        inbox_prefix: str,
        token: str | Callable[[], str] | None = None,
        user: str | None = None,
        password: str | None = None,
        connect_timeout: float = 2.0,
        connect_attempts: int = 3,
        reconnect_time_wait: float = 0.5,
        ping_interval: float = 10.0,
        max_outstanding_pings: int = 2,
    ) -> None:
        for url in urls:
            check_url(url)
        options: dict[str, Any] = {
            "servers": urls,
            "name": name,
            "inbox_prefix": inbox_prefix,
            "connect_timeout": connect_timeout,
            "reconnect_time_wait": reconnect_time_wait,
            # Bounded at first so a wrong URL fails clearly; unbounded once connected.
            # (nats-py reads 0 as "forever", so a single attempt means reconnects off.)
            "max_reconnect_attempts": max(connect_attempts - 1, 1),
            "ping_interval": ping_interval,
            "max_outstanding_pings": max_outstanding_pings,
            "allow_reconnect": connect_attempts > 1,
            "skip_subject_validation": True,  # conat validates with `subjects`, once.
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        if token is not None:
            options["token"] = token
        if user is not None:
            options["user"] = user
        if password is not None:
            options["password"] = password
        try:
            await self._nc.connect(**options)
        except nats_errors.NoServersError:
            await self._abandon()
            last = self._nc.last_error
            if self._auth_refused or _is_auth_refusal(last):
                raise Unauthorized(", ".join(urls), _describe(last)) from None
            reason = _describe(last) or "no server answered"
            raise ConnectError(", ".join(urls), reason) from None
        except (OSError, TimeoutError, nats_errors.Error) as e:
            await self._abandon()
            if self._auth_refused or _is_auth_refusal(e) or _is_auth_refusal(self._nc.last_error):
                raise Unauthorized(", ".join(urls), "authorization violation (credentials refused)") from None
            raise ConnectError(", ".join(urls), _describe(e)) from None
        self._nc.options["max_reconnect_attempts"] = -1
        self._nc.options["allow_reconnect"] = True
        self._connected_once = True

    async def _abandon(self) -> None:
        self._closing = True
        try:
            await self._nc.close()
        except Exception:  # pragma: no cover - best effort on a half-open client
            log.debug("closing a failed connection", exc_info=True)
        # nats-py leaves the socket of a refused first connect open (a ResourceWarning later)
        await _close_socket(self._nc._transport)

    async def close(self) -> None:
        """Flush what is pending and close. Idempotent."""
        if self._nc.is_closed:
            return
        self._closing = True
        try:
            await self._nc.close()
        except Exception:
            log.debug("error while closing", exc_info=True)

    # -- state -----------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def is_closed(self) -> bool:
        return bool(self._nc.is_closed)

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    @property
    def client_id(self) -> int | None:
        cid = self._nc.client_id
        return int(cid) if cid is not None else None

    @property
    def server_name(self) -> str | None:
        """The name in the server's INFO: known once the socket is open, before CONNECT is sent."""
        name = self._nc._server_info.get("server_name")
        return name if isinstance(name, str) else None

    @property
    def cluster(self) -> str | None:
        """The cluster name in the server's INFO: ``None`` for a server that is in no cluster."""
        name = self._nc._server_info.get("cluster")
        return name if isinstance(name, str) and name else None

    @property
    def cluster_urls(self) -> tuple[str, ...]:
        """The client URLs of the cluster's servers (the latest INFO's ``connect_urls``; this server
        included). Empty when the cluster does not advertise them (``no_advertise``)."""
        return self._nc.cluster_urls

    @property
    def auth_expired(self) -> bool:
        """Whether the server closed us because our user JWT expired (nats-py then closes for good)."""
        return "authentication expired" in str(self._nc.last_error or "").lower()

    @property
    def connected_url(self) -> str | None:
        url = self._nc.connected_url
        return url.geturl() if url is not None else None

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._nc.stats)

    def header_size(self, headers: dict[str, str]) -> int:
        """Bytes ``headers`` take on the wire (counted against max_payload with the payload)."""
        return len(self._nc.header_block(headers))

    def new_token(self) -> str:
        """A 22-character random id (NUID), unique per connection and process."""
        return str(self._nc._nuid.next().decode())

    # -- data path -------------------------------------------------------------------------
    async def publish(
        self,
        subject: str,
        payload: bytes | memoryview,
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue one PUB/HPUB for the flusher. The caller has validated the subjects.

        This writes the protocol command itself (nats-py's ``publish`` re-validates and rebuilds
        the header block on every call); buffering and flushing stay nats-py's.

        Raises:
            PayloadTooLarge: (413) headers and payload together exceed the server's max_payload;
                nothing is sent (nats-server would close the connection for it).
            PayloadError: (400) a header name or value cannot be encoded.
        """
        nc = self._nc
        if self._queue(subject, payload, reply, headers):
            await nc._flush_pending(force_flush=True)
        elif nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    def publish_nowait(
        self,
        subject: str,
        payload: bytes | memoryview,
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """:meth:`publish` for callers that must not wait (a read-loop router, a completion
        callback): the command is queued and the flusher woken, nothing is awaited. Past the
        pending-bytes limit it is not written inline: the flusher writes everything queued.

        Raises: as :meth:`publish`.
        """
        self._queue(subject, payload, reply, headers)
        self._kick()

    def _queue(
        self, subject: str, payload: bytes | memoryview, reply: str, headers: dict[str, str] | None
    ) -> bool:
        """Append the command to nats-py's pending buffer; whether that buffer is now over its limit."""
        nc = self._nc
        if nc.is_closed:
            raise ClosedError("client")
        size = len(payload)
        if headers:
            block = nc.header_block(headers)
            if len(block) + size > nc.max_payload:
                raise PayloadTooLarge(len(block) + size, nc.max_payload, "message (headers included)")
            cmd = b"".join(
                (
                    f"HPUB {subject} {reply} {len(block)} {len(block) + size}\r\n".encode(),
                    block,
                    payload,
                    _CRLF,
                )
            )
        else:
            if size > nc.max_payload:
                raise PayloadTooLarge(size, nc.max_payload, "message")
            cmd = b"".join((f"PUB {subject} {reply} {size}\r\n".encode(), payload, _CRLF))
        if not nc.is_connected and nc._pending_data_size + len(cmd) > nc._max_pending_size:
            raise ConnectError(self.connected_url or "?", "outbound buffer full while reconnecting")
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        # nats-py's _send_command, inlined: one coroutine frame less per message.
        nc._pending.append(cmd)
        nc._pending_data_size += len(cmd)
        return 0 < nc._max_pending_size < nc._pending_data_size

    def _kick(self) -> None:
        """Wake nats-py's flusher if it is idle (its ``_flush_pending`` without the awaits: a
        connected client with a live flusher only needs one item in the flush queue)."""
        nc = self._nc
        queue = nc._flush_queue
        if queue is None or not queue.empty() or not nc.is_connected:
            return  # already woken; or not connected: the reconnect flushes what is pending
        flusher = nc._flusher_task
        if flusher is None or flusher.done():
            return  # nats-py flushes inline on its next awaited publish or at the reconnect
        queue.put_nowait(asyncio.get_running_loop().create_future())

    async def subscribe(self, subject: str, queue: str | None, handler: DirectHandler) -> int:
        """Register ``handler`` for ``subject``; returns the subscription id. Re-armed on reconnect."""
        nc = self._nc
        if nc.is_closed:
            raise ClosedError("client")
        nc._sid += 1
        sid: int = nc._sid
        sub = _NatsSubscription(nc, sid, subject, queue=queue or "")
        nc._subs[sid] = sub
        nc.direct[sid] = handler
        await nc._send_subscribe(sub)
        return sid

    async def unsubscribe(self, sid: int) -> None:
        nc = self._nc
        nc.direct.pop(sid, None)
        if nc._subs.pop(sid, None) is None or nc.is_closed:
            return
        if not nc.is_reconnecting:
            await nc._send_unsubscribe(sid)

    async def drain(self, sid: int, timeout: float = 10.0) -> None:
        """Unsubscribe so that every message the server routed before the UNSUB is still handled."""
        nc = self._nc
        if sid not in nc._subs or nc.is_closed or nc.is_reconnecting:
            await self.unsubscribe(sid)
            return
        await nc._send_unsubscribe(sid)
        try:
            await self.flush(timeout)
        finally:
            nc.direct.pop(sid, None)
            nc._subs.pop(sid, None)

    async def flush(self, timeout: float = 10.0) -> None:
        """Return once the server has processed every command sent before this call.

        While the link is down it waits for the reconnect, and a PING lost with the link is sent
        again on the new one (nats-py forgets its pending PONGs at a reconnect), so a flush never
        waits for an answer that cannot come.

        Raises:
            Timeout: not confirmed within ``timeout`` seconds.
            ClosedError: the client is closed.
        """
        nc = self._nc
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if nc.is_closed:
                raise ClosedError("client")
            link = self._link_changed
            if link is None or link.done():
                link = self._link_changed = loop.create_future()
            pong: asyncio.Future[Any] | None = None
            if nc.is_connected:
                pong = loop.create_future()
                nc._pongs.append(pong)
                await nc._send_command(_PING)
                await nc._flush_pending()
            remaining = started + timeout - loop.time()
            done: set[asyncio.Future[Any]] = set()
            if remaining > 0:
                waits = {link} if pong is None else {pong, link}
                done, _ = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if pong is not None and pong in done:
                return
            if not done:
                if pong is not None:
                    pong.cancel()
                raise Timeout("flush", loop.time() - started, what="flush")

    def _link_change(self) -> None:
        link, self._link_changed = self._link_changed, None
        if link is not None and not link.done():
            link.set_result(None)

    # -- nats-py callbacks, each made safe ---------------------------------------------------
    async def force_reconnect(self) -> None:
        """Reconnect now (the server re-authorizes with fresh credentials); subscriptions re-arm."""
        await self._nc.force_reconnect()

    async def _on_error(self, e: Exception) -> None:
        if _is_auth_refusal(e):
            self._auth_refused = True
            if self._connected_once:  # at a reconnect (the first connect raises instead)
                # nats-py abandons the refused attempt's socket without closing it
                await _close_socket(self._nc._transport)
                self._safe(self._events.on_auth_refused)
            return
        text = str(e)
        m = _VIOLATION_RE.search(text)
        if m:
            self._safe(self._events.on_permission_violation, PermissionViolation(m.group(1), m.group(2)))
            return
        if self._closing and isinstance(e, nats_errors.ConnectionClosedError | OSError):
            return
        self._safe(self._events.on_error, e)

    async def _on_disconnected(self) -> None:
        self._link_change()
        self._safe(self._events.on_disconnected)

    async def _on_reconnected(self) -> None:
        self._link_change()
        self._safe(self._events.on_reconnected)

    async def _on_closed(self) -> None:
        self._link_change()
        self._safe(self._events.on_closed)

    @staticmethod
    def _safe(fn: Callable[..., Any], *args: Any) -> None:
        try:
            result = fn(*args)
            if isinstance(result, Awaitable):  # pragma: no cover - events are sync by contract
                raise TypeError("transport event handlers must be synchronous")
        except Exception:
            log.exception("transport event handler %r failed", fn)


def check_url(url: str) -> str:
    """Validate one server URL (``nats://host:port`` and friends) with :mod:`urllib.parse`, as
    nats-py parses it; raise :class:`BadURL` naming what is wrong."""
    if not isinstance(url, str) or not url:
        raise BadURL(repr(url), "expected a non-empty URL string")
    if "://" not in url:
        raise BadURL(url, "missing scheme (expected nats://host:port)")
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:  # a port that is not a number or out of range, an unclosed "[..."
        raise BadURL(url, str(e)) from None
    if parts.scheme not in _URL_SCHEMES:
        raise BadURL(url, f"unsupported scheme {parts.scheme!r} (use one of {', '.join(_URL_SCHEMES)})")
    if not host:
        raise BadURL(url, "missing host")
    if port == 0:
        raise BadURL(url, "bad port 0")
    return url


async def _close_socket(transport: Any) -> None:
    """Close a nats-py transport that nats-py itself left open (best effort)."""
    if transport is None:
        return
    try:
        transport.close()
        await transport.wait_closed()
    except Exception:  # best effort on a socket nobody uses any more
        log.debug("closing an abandoned socket", exc_info=True)


def _is_auth_refusal(e: BaseException | None) -> bool:
    return isinstance(e, nats_errors.AuthorizationError) or "authorization violation" in str(e).lower()


def _describe(e: BaseException | None) -> str:
    if e is None:
        return ""
    text = str(e) or type(e).__name__
    if "authorization violation" in text.lower():
        return "authorization violation (credentials refused)"
    return text.removeprefix("nats: ")
