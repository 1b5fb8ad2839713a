"""Subscriptions: a bounded buffer between the read loop and the consumer.

The read loop never waits on a consumer: it puts each message into the subscription's buffer and
returns. When the buffer is full the message is dropped and counted, and if its sender waits for
a reply it gets an immediate busy error (code 429) instead of a silent timeout.

A buffered item is either a :class:`Message` or a future for one whose chunks are still being
pulled. The buffer is a :class:`~conat._queue.BoundedQueue` ordered per sender: a large message
never overtakes a small one its sender published after it, and never holds back another sender's
messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self, final

from ._codecs import MSGPACK, Codec
from ._errors import ClosedError, ConatError, Timeout
from ._message import Message
from ._queue import BoundedQueue

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Subscription", "SubscriptionStatistics"]

log = logging.getLogger("conat.subscription")

DEFAULT_MAX_BUFFER: Final = 10_000


@final
@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """A snapshot of one subscription's counters."""

    pattern: str
    queue: str | None
    received: int
    delivered: int
    dropped: int
    buffered: int
    max_buffer: int
    failed_transfers: int


@final
class Subscription:
    """An async iterator of the messages matching ``pattern``. Close with :meth:`unsubscribe`.

    Guarantees: messages from one publisher arrive in the order it published them, chunked ones
    included, and a chunked message still arriving holds back no other publisher's messages; a
    message is delivered to at most one member of a queue group; the subscription is re-armed
    after a reconnect (messages published while the link was down are lost: core NATS is
    at-most-once).
    """

    def __init__(
        self,
        client: Client,
        pattern: str,
        queue: str | None,
        max_buffer: int,
        dispatch: Callable[[Message], object] | None = None,
        codec: Codec = MSGPACK,
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self._client = client
        self.pattern = pattern
        self.queue = queue
        self.max_buffer = max_buffer
        self.codec = codec
        """How a message without a ``Conat-Encoding`` header is read here (the declared encoding)."""
        self._dispatch = dispatch
        self._items: BoundedQueue[Message] = BoundedQueue(
            max_buffer, deliver=None if dispatch is None else self._call_dispatch, on_drop=self._on_drop
        )
        self._error: ConatError | None = None
        self.sid = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} queue={self.queue!r} closed={self.closed}>"

    # -- producer side (read loop)
    def _put(self, item: Message | asyncio.Future[Message], reply: str, sender: str | None) -> None:
        items = self._items
        if not items.put(item, sender) and reply and not items.closed:
            self._client._core.reply_busy(reply, f"subscription {self.pattern!r} buffer is full")

    def _on_drop(self, item: asyncio.Future[Message]) -> None:
        """A chunked message failed (its sender is gone, it was over a cap...)."""
        log.warning("dropped a chunked message on %r: %s", self.pattern, item.exception())

    def _call_dispatch(self, msg: Message) -> None:
        """A router's bug must not reach the connection's read loop (it would break the link)."""
        assert self._dispatch is not None
        try:
            self._dispatch(msg)
        except Exception:
            log.exception("dispatch on %r failed for %s", self.pattern, msg.subject)

    def _fail(self, error: ConatError) -> None:
        """End iteration with ``error`` (e.g. the server refused the subscription)."""
        self._error = error
        self._items.close(error)

    def _close_buffer(self) -> None:
        self._items.close()

    def _cancel_arriving(self) -> None:
        """Stop pulling the chunked messages still arriving (nobody will take them any more)."""
        for item in self._items.clear():
            if isinstance(item, asyncio.Future):
                item.cancel()

    # -- consumer side ---------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Message]:
        return self._items  # iterating the buffer itself: no frame of ours per message

    async def __anext__(self) -> Message:
        return await self._items.__anext__()

    async def next(self, timeout: float | None = None) -> Message:
        """The next message.

        Raises:
            Timeout: (408) none arrived within ``timeout`` seconds; the subscription stays usable.
            ClosedError: the subscription ended (unsubscribed, or its client closed).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                return await self._items.__anext__()
        except StopAsyncIteration:
            raise ClosedError("subscription") from None
        except TimeoutError:
            raise Timeout(self.pattern, loop.time() - started, "next message") from None

    def statistics(self) -> SubscriptionStatistics:
        items = self._items
        return SubscriptionStatistics(
            self.pattern,
            self.queue,
            items.received,
            items.delivered,
            items.dropped,
            len(items),
            self.max_buffer,
            items.failed,
        )

    @property
    def closed(self) -> bool:
        return self._items.closed

    # -- lifecycle -------------------------------------------------------------------------
    async def unsubscribe(self) -> None:
        """Stop receiving. Messages already buffered are still yielded; then iteration ends."""
        if self._items.closed and self.sid == 0:
            return
        self._close_buffer()
        await self._client._core.unsubscribe(self)
        if self._dispatch is not None:
            self._cancel_arriving()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    aclose = unsubscribe

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop intake without losing what is in flight: the server stops routing here, and every
        message it routed before that is still buffered or dispatched; then the subscription ends
        like :meth:`unsubscribe`. Raises :class:`Timeout` if the server does not confirm in time."""
        if not self._items.closed and self.sid:
            await self._client._core.drain(self, timeout)
        await self.unsubscribe()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.unsubscribe()

    def _start_callback(self, callback: Callable[[Message], Awaitable[object]]) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run_callback(callback), name=f"conat-sub:{self.pattern}"
        )

    async def _run_callback(self, callback: Callable[[Message], Awaitable[object]]) -> None:
        async for msg in self._items:
            try:
                await callback(msg)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("subscription callback failed on %r", msg.subject)
                if msg.reply:
                    code = e.code if isinstance(e, ConatError) else 500
                    try:
                        await msg.respond_error(code, f"{type(e).__name__}: {e}")
                    except ConatError:
                        pass
