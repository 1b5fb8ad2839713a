"""The bounded queue: every buffer between a producer that must not wait and a consumer that may.

A subscription's buffer (the connection's read loop puts, the application reads), a
``request_many``'s replies, a persist cache's change events and a watch socket's file events are
one thing: the producer never waits (a read loop that waited on one slow consumer would stall every
other), so the queue holds at most ``max_buffer`` items and refuses the rest, counting each refusal;
the owner decides what a refusal means (a 429 reply, "too slow", an overflow marker).

Theory of operation
-------------------
An item is a value, or a future for one that is still arriving (the head of a chunked message,
whose chunks are being pulled). Each item may name its *sender*. The queue keeps one sender's items
in order without letting a slow one block anybody else:

* An item whose sender has a *lane* (an item of that sender is still arriving) joins the end of
  that lane.
* Otherwise an item still arriving opens a lane for its sender; anything else is ready at once.
* When the item at the front of a lane completes (or fails), it and every completed item behind it
  become ready, up to the next one still arriving.

So a slow or dead sender's chunked message holds back only that sender's later messages, never
another sender's. Ready items leave in the order they became ready. An item that fails (or is
cancelled) while arriving is dropped (a failure is counted in ``failed`` and reported to
``on_drop``); it still releases what waited behind it. Items in lanes count against
``max_buffer`` like ready ones.

Ready items go either to the one consumer (``async for``, :meth:`pop`, :meth:`pop_all`, after
:meth:`wait`), or, with ``deliver``, straight to that function as they become ready (the read loop's
routers: nothing is buffered but what waits behind an arriving item). :meth:`close` ends the queue:
the consumer still gets what is held, then ``StopAsyncIteration`` (or the error given to ``close``).

The queue does no I/O; it only registers done-callbacks on the futures it holds. The vocabulary
and the :class:`QueueStatistics` record follow anyio's memory object streams.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar, final

__all__ = ["BoundedQueue", "QueueStatistics"]

T = TypeVar("T")

_Future = asyncio.Future


@final
@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """A snapshot of one queue's counters.

    Attributes:
        buffered: items held now (ready, or still arriving).
        max_buffer: the most items it holds.
        received: items offered while it was open.
        delivered: items handed to the consumer (or to ``deliver``).
        dropped: items refused because it was full.
        failed: items that failed while arriving (dropped from their lane).
    """

    buffered: int
    max_buffer: int
    received: int
    delivered: int
    dropped: int
    failed: int


@final
class BoundedQueue(Generic[T]):
    """A bounded FIFO, ordered per sender, from synchronous producers to one consumer.

    Items are never ``None`` (:meth:`pop` answers ``None`` for "nothing ready").

    Args:
        max_buffer: the most items held at once (ready and arriving); at least 1.
        deliver: if given, each item is handed to it as soon as it is ready, instead of being kept
            for a consumer. It must not raise.
        on_drop: called with each arriving item that failed (it is not held; a cancelled one is
            dropped silently).

    Raises:
        ValueError: ``max_buffer`` under 1.
    """

    __slots__ = (
        "_closed",
        "_deliver",
        "_error",
        "_lanes",
        "_on_drop",
        "_ready",
        "_size",
        "_waiter",
        "delivered",
        "dropped",
        "failed",
        "max_buffer",
        "received",
    )

    def __init__(
        self,
        max_buffer: int,
        *,
        deliver: Callable[[T], object] | None = None,
        on_drop: Callable[[asyncio.Future[T]], object] | None = None,
    ) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer}")
        self.max_buffer = max_buffer
        self._deliver = deliver
        self._on_drop = on_drop
        self._ready: deque[T | asyncio.Future[T]] = deque()
        self._lanes: dict[str, deque[T | asyncio.Future[T]]] = {}
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self.received = 0
        self.delivered = 0
        self.dropped = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"<BoundedQueue {self._size}/{self.max_buffer} closed={self._closed}>"

    def __len__(self) -> int:
        """Items held: ready ones and those still arriving."""
        return self._size

    @property
    def ready(self) -> int:
        """Items the consumer can take now."""
        return len(self._ready)

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            self._size, self.max_buffer, self.received, self.delivered, self.dropped, self.failed
        )

    # -- producer side ---------------------------------------------------------------------
    def put(self, item: T | asyncio.Future[T], sender: str | None = None) -> bool:
        """Offer ``item`` (a future: one still arriving, which needs its ``sender``).

        Returns False if it was refused: the queue is full (counted in ``dropped``) or closed (not
        counted). A refused future is cancelled (whoever completes it stops at once).

        Raises:
            ValueError: a future still arriving without a sender.
        """
        if self._closed:
            if isinstance(item, _Future):
                item.cancel()
            return False
        self.received += 1
        if self._size >= self.max_buffer:
            self.dropped += 1
            if isinstance(item, _Future):
                item.cancel()
            return False
        if sender is not None and self._lanes:
            lane = self._lanes.get(sender)
            if lane is not None:
                lane.append(item)
                self._size += 1
                return True
        if isinstance(item, _Future):
            if not item.done():
                if sender is None:
                    raise ValueError("an item still arriving needs its sender")
                self._lanes[sender] = deque((item,))
                self._size += 1
                item.add_done_callback(partial(self._advance, sender))
                return True
            if self._failed(item):
                return True
        deliver = self._deliver
        if deliver is not None:
            self.delivered += 1
            deliver(item if not isinstance(item, _Future) else item.result())
            return True
        self._size += 1
        self._ready.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        return True

    def close(self, error: BaseException | None = None) -> None:
        """End the queue: nothing more is taken; the consumer gets what is held, then
        ``StopAsyncIteration``, or ``error`` if given (the first error given stays)."""
        if self._error is None:
            self._error = error
        self._closed = True
        self._wake()

    def clear(self) -> list[T | asyncio.Future[T]]:
        """Remove and return everything held, ready or arriving (the caller cancels the futures)."""
        items = list(self._ready)
        for lane in self._lanes.values():
            items.extend(lane)
        self._ready.clear()
        self._lanes.clear()
        self._size = 0
        return items

    def _failed(self, item: asyncio.Future[T]) -> bool:
        """Whether a completed item is to be dropped: cancelled (silently: its owner gave it up), or
        failed (counted and reported)."""
        if item.cancelled():
            return True
        if item.exception() is None:
            return False
        self.failed += 1
        if self._on_drop is not None:
            self._on_drop(item)
        return True

    def _advance(self, sender: str, _done: object) -> None:
        lane = self._lanes.get(sender)
        if lane is None:
            return
        moved = dropped = False
        while lane:
            first = lane[0]
            if isinstance(first, _Future):
                if not first.done():
                    first.add_done_callback(partial(self._advance, sender))
                    break
                if self._failed(first):
                    lane.popleft()
                    self._size -= 1
                    dropped = True
                    continue
            self._ready.append(lane.popleft())
            moved = True
        if not lane:
            del self._lanes[sender]
        if moved and self._deliver is not None:
            while (item := self.pop()) is not None:
                self._deliver(item)
        elif moved or dropped:  # a closed queue may have just become empty: its consumer ends
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- consumer side ---------------------------------------------------------------------
    def pop(self) -> T | None:
        """The oldest ready item, ``None`` if none is ready."""
        if not self._ready:
            return None
        item = self._ready.popleft()
        self._size -= 1
        self.delivered += 1
        return item.result() if isinstance(item, _Future) else item

    def pop_all(self) -> list[T]:
        """Every ready item, oldest first."""
        items: list[T] = []
        while (item := self.pop()) is not None:
            items.append(item)
        return items

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved once an item is ready, or the queue is closed and holds nothing more
        (done at once if so), or :meth:`close` is called.

        For a consumer that waits with its own deadline (it may fail or cancel the future: the
        next call makes a new one).
        """
        w = self._waiter
        if w is None or w.done():
            w = self._waiter = asyncio.get_running_loop().create_future()
            if self._ready or (self._closed and not self._size):
                w.set_result(None)
        return w

    async def wait(self) -> None:
        """Return once an item is ready, or the queue is closed and holds nothing more."""
        while not self._ready and not (self._closed and not self._size):
            await self.waiter()

    def __aiter__(self) -> BoundedQueue[T]:
        return self

    async def __anext__(self) -> T:
        """The next item; at the end ``StopAsyncIteration``, or the error the queue was closed with.

        Closed, the queue still yields what it holds, waiting for items still arriving.
        """
        while True:
            if self._ready:
                item = self._ready.popleft()
                self._size -= 1
                self.delivered += 1
                return item.result() if isinstance(item, _Future) else item
            if self._closed and not self._size:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            await self.waiter()
