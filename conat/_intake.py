"""Received messages in delivery order: FIFO per sender, and no sender waits behind another.

Theory of operation
-------------------
A received item is a :class:`Message`, or a future for one whose chunks are still being pulled
(the head of a chunked message). Each item may name its *sender* (the ``Conat-Sender`` header; a
chunked head always has one). NATS keeps one publisher's messages in order; conat keeps that
order across chunked messages without letting them block anyone else:

* An item whose sender has a *lane* (a chunked message of that sender is still arriving) joins
  the end of that lane.
* Otherwise a chunked item still arriving opens a lane for its sender; anything else is ready.
* When the item at the front of a lane completes (or fails), it and every completed item behind
  it move to the ready queue, up to the next one still arriving.

So a slow or dead sender's chunked message holds back only that sender's later messages (which it
tags with ``Conat-Sender`` exactly while its chunked messages are in flight), never another
sender's. Ready items leave in the order they became ready. A chunked message that fails (or is
cancelled) is dropped at once and reported to ``on_drop``; it still releases what waited behind it.

:class:`Intake` does no I/O; it only registers done-callbacks on the futures it holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import final

from ._message import Message

__all__ = ["Intake", "Item"]

Item = Message | asyncio.Future[Message]


@final
class Intake:
    """A buffer of received items, ordered per sender (see the module docstring).

    Args:
        on_ready: called (synchronously) whenever items become ready; it may :meth:`pop` them.
        on_drop: called with each chunked item that failed or was cancelled (it is not held).
    """

    __slots__ = ("_lanes", "_on_drop", "_on_ready", "_ready", "_size")

    def __init__(
        self,
        on_ready: Callable[[], object],
        on_drop: Callable[[asyncio.Future[Message]], object] | None = None,
    ) -> None:
        self._ready: deque[Item] = deque()
        self._lanes: dict[str, deque[Item]] = {}
        self._size = 0
        self._on_ready = on_ready
        self._on_drop = on_drop

    def __len__(self) -> int:
        """Items held: ready ones and those waiting in lanes."""
        return self._size

    @property
    def ready(self) -> int:
        return len(self._ready)

    def waits_for(self, sender: str | None) -> bool:
        """Whether an item from ``sender`` would wait now (a chunked message of its is arriving)."""
        return sender is not None and sender in self._lanes

    def put(self, item: Item, sender: str | None) -> None:
        """Add ``item``; ``sender`` is required for a future (a chunked head always names one)."""
        if sender is not None and self._lanes:
            lane = self._lanes.get(sender)
            if lane is not None:
                lane.append(item)
                self._size += 1
                return
        if not isinstance(item, Message):
            if not item.done():
                if sender is None:
                    raise ValueError("a chunked item needs its sender")
                self._lanes[sender] = deque((item,))
                self._size += 1
                item.add_done_callback(partial(self._advance, sender))
                return
            if self._failed(item):
                return
        self._size += 1
        self._ready.append(item)
        self._on_ready()

    def _failed(self, item: asyncio.Future[Message]) -> bool:
        if not item.cancelled() and item.exception() is None:
            return False
        if self._on_drop is not None:
            self._on_drop(item)
        return True

    def _advance(self, sender: str, _done: object) -> None:
        lane = self._lanes.get(sender)
        if lane is None:
            return
        moved = False
        while lane:
            first = lane[0]
            if isinstance(first, asyncio.Future):
                if not first.done():
                    first.add_done_callback(partial(self._advance, sender))
                    break
                if self._failed(first):
                    lane.popleft()
                    self._size -= 1
                    continue
            self._ready.append(lane.popleft())
            moved = True
        if not lane:
            del self._lanes[sender]
        if moved:
            self._on_ready()

    def pop(self) -> Item | None:
        """The oldest ready item (a Message, or the completed future of one), ``None`` if none is."""
        if not self._ready:
            return None
        self._size -= 1
        return self._ready.popleft()

    def clear(self) -> list[Item]:
        """Remove and return everything held (the caller cancels what is still arriving)."""
        items = list(self._ready)
        for lane in self._lanes.values():
            items.extend(lane)
        self._ready.clear()
        self._lanes.clear()
        self._size = 0
        return items
