"""Request/reply over the client's inbox: :func:`request` (the first reply) and
:func:`request_many` (a stream of replies), for :class:`~conat.Client`.

Theory of operation
-------------------
A request opens a *route*: a token under the client's wildcard inbox subscription, whose handler
receives every reply to that token; the request is sent with that inbox subject as its NATS reply.
The route has a ``fail`` attribute the client calls when no reply can come any more (it closes:
:class:`ClosedError`; the link drops: :class:`Disconnected`). A reply that is the head of a
chunked message becomes a future the transfer engine completes. When the call ends, however it
ends (a reply, an error, its deadline, cancellation), the route is closed and a chunked request's
outgoing transfer is freed.

:func:`check_reply` turns a reply into what it stands for: nats-server's 503 status
(:class:`NoResponders`), a conat or NATS micro error reply (:class:`RemoteError`), or itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._backoff import Backoff, retry
from ._errors import ConatError, DeadlinePassed, Disconnected, NoResponders, PayloadTooLarge, Timeout
from ._headers import (
    ERROR_HEADER,
    MICRO_ERROR_CODE_HEADER,
    MICRO_ERROR_HEADER,
    STATUS_HEADER,
    error_from_headers,
)
from ._message import Message
from ._queue import BoundedQueue

if TYPE_CHECKING:
    from ._client import Client
    from ._core import Route

__all__ = ["INTEREST_BACKOFF", "check_reply", "request", "request_many"]

T = TypeVar("T")

INTEREST_BACKOFF: Final = Backoff(initial=0.005, maximum=0.25)
"""Between the tries of a request that waits for a responder to appear: quick at first (a service
starting beside its caller), then four times a second."""


async def request(
    client: Client,
    subject: str,
    payload: bytes,
    headers: dict[str, str] | None,
    timeout: float,
    wait_for_interest: bool = False,
) -> Message:
    """Send an encoded request and return its first reply (see :meth:`Client.request`).

    With ``wait_for_interest``, a :class:`NoResponders` answer is retried under
    :data:`INTEREST_BACKOFF` until the deadline, which then raises :class:`Timeout`.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    if not wait_for_interest:
        return await _request_once(client, subject, payload, headers, deadline, started)
    try:
        return await retry(
            lambda: _request_once(client, subject, payload, headers, deadline, started),
            backoff=INTEREST_BACKOFF,
            retry_if=_no_responders,
            deadline=deadline,
        )
    except NoResponders:
        raise Timeout(subject, loop.time() - started) from None


def _no_responders(error: Exception) -> bool:
    return isinstance(error, NoResponders)


async def _request_once(
    client: Client,
    subject: str,
    payload: bytes,
    headers: dict[str, str] | None,
    deadline: float,
    started: float,
) -> Message:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Message | asyncio.Future[Message]] = loop.create_future()

    def route(rsubject: str, reply: str, data: bytes, hdr: dict[str, str] | None) -> None:
        if not future.done():
            future.set_result(client._core.item(rsubject, reply, data, hdr)[0])

    def fail(e: BaseException) -> None:
        if not future.done():
            future.set_exception(e)

    route.fail = fail  # type: ignore[attr-defined]
    token, transfer_id = await _send_request(client, subject, payload, headers, route)
    try:
        item = await _wait_until(future, deadline)
        msg = item if isinstance(item, Message) else await _wait_until(item, deadline)
    except DeadlinePassed:
        raise Timeout(subject, loop.time() - started) from None
    except Disconnected:
        raise Disconnected(subject, loop.time() - started) from None
    finally:
        _finish_request(client, token, transfer_id)
        if not future.done():
            future.cancel()
    return check_reply(msg, subject)


async def _send_request(
    client: Client, subject: str, payload: bytes, headers: dict[str, str] | None, route: Route
) -> tuple[str, str | None]:
    """Open a reply route and send; returns the route's token and the chunk transfer's id."""
    core = client._core
    token, inbox = core.open_route(route)
    core.route_subjects[token] = subject
    try:
        return token, await core.send(subject, payload, inbox, headers)
    except BaseException:
        core.close_route(token)
        raise


def _finish_request(client: Client, token: str, transfer_id: str | None) -> None:
    core = client._core
    core.close_route(token)
    if transfer_id is not None:
        core.transfers.outgoing.discard(transfer_id)


class _ReplyStream:
    """Replies to one ``request_many``: a :class:`BoundedQueue` (ordered per responder, bounded) and
    the first error that ends the stream at once (a failed chunked reply, a dropped link)."""

    def __init__(self, limit: int) -> None:
        self.items: BoundedQueue[Message] = BoundedQueue(limit, on_drop=self._dropped)
        self.failure: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        self.items.close()  # wakes the reader, which raises the failure first

    def _dropped(self, item: asyncio.Future[Message]) -> None:
        self.fail(item.exception() or ConatError("chunked reply failed"))

    def put(self, item: Message | asyncio.Future[Message], sender: str | None) -> None:
        if not self.items.put(item, sender):
            self.items.close()  # overflowed (counted in dropped): the reader ends after what it holds


async def request_many(
    client: Client,
    subject: str,
    data: Any,
    headers: dict[str, str] | None,
    encoding: str | None,
    *,
    timeout: float,
    idle_timeout: float | None,
    max_messages: int | None,
    max_buffer: int,
) -> AsyncGenerator[Message, None]:
    """Encode and send a request, and yield its replies (see :meth:`Client.request_many`).

    Everything, checks included, happens on the first iteration (it is a generator).
    """
    payload, headers = client._core.prepare(subject, data, headers, encoding)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    stream = _ReplyStream(max_buffer)

    def route(rsubject: str, reply: str, rdata: bytes, hdr: dict[str, str] | None) -> None:
        stream.put(*client._core.item(rsubject, reply, rdata, hdr))

    def fail(e: BaseException) -> None:
        stream.fail(Disconnected(subject, loop.time() - started) if isinstance(e, Disconnected) else e)

    route.fail = fail  # type: ignore[attr-defined]
    token, transfer_id = await _send_request(client, subject, payload, headers, route)
    received = 0
    items = stream.items
    try:
        while max_messages is None or received < max_messages:
            if stream.failure is not None:
                raise stream.failure
            msg = items.pop()
            if msg is None:
                if items.dropped:
                    raise PayloadTooLarge(max_buffer + 1, max_buffer, "unread replies")
                arriving = len(items) > 0  # a chunked reply is still being pulled
                wait_until = deadline
                if idle_timeout is not None and not arriving:
                    wait_until = min(deadline, loop.time() + idle_timeout)
                try:
                    await _wait_until(items.waiter(), wait_until)
                except DeadlinePassed:
                    if received == 0 or arriving:
                        raise Timeout(subject, loop.time() - started) from None
                    return
                continue
            if msg.is_end:
                return
            yield check_reply(msg, subject)
            received += 1
    finally:
        _finish_request(client, token, transfer_id)
        for left in stream.items.clear():
            if isinstance(left, asyncio.Future):
                left.cancel()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(DeadlinePassed())


async def _wait_until(future: asyncio.Future[T], deadline: float) -> T:
    """Await ``future`` until loop time ``deadline``, then raise :class:`~conat._errors.DeadlinePassed`.

    One timer handle per wait: on the request path this is measurably cheaper than an
    ``asyncio.timeout`` scope. An expired future stays failed, which also stops a chunk transfer
    that nobody waits for any more.
    """
    timer = asyncio.get_running_loop().call_at(deadline, _expire, future)
    try:
        return await future
    finally:
        timer.cancel()


def check_reply(msg: Message, subject: str) -> Message:
    """Raise what a reply stands for: the server's 503, a conat or NATS micro error reply."""
    h = msg._headers
    if h:
        if h.get(STATUS_HEADER) == "503":
            raise NoResponders(subject)
        if ERROR_HEADER in h or MICRO_ERROR_CODE_HEADER in h or MICRO_ERROR_HEADER in h:
            error = error_from_headers(h, msg.raw, subject)
            if error is not None:
                raise error
    return msg
