"""A key's mailbox: a bounded FIFO of messages plus the runtime's own turns (timers, passivation).

Messages from the bus count against ``max_buffer``; when it is full the router refuses the message
(a request gets a 429 reply at once) and counts the drop. Runtime turns are never refused: there is
at most one per live timer, so they are bounded by the actor's own code.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar, final

__all__ = ["Mailbox", "MailboxStatistics"]

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot of one mailbox (anyio's ``MemoryObjectStreamStatistics`` vocabulary)."""

    key: str
    buffered: int
    max_buffer: int
    received: int
    processed: int
    dropped: int


@final
class Mailbox(Generic[T]):
    """FIFO with a cap on bus messages; ``put`` returns False (and counts a drop) when full."""

    __slots__ = ("_items", "_messages", "dropped", "key", "max_buffer", "processed", "received")

    def __init__(self, key: str, max_buffer: int) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer}")
        self.key = key
        self.max_buffer = max_buffer
        self._items: deque[tuple[T, bool]] = deque()
        self._messages = 0
        self.received = 0
        self.processed = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Queue a bus message; False if the mailbox is full (the caller must answer it)."""
        self.received += 1
        if self._messages >= self.max_buffer:
            self.dropped += 1
            return False
        self._items.append((item, True))
        self._messages += 1
        return True

    def put_internal(self, item: T) -> None:
        """Queue a runtime turn (never refused)."""
        self._items.append((item, False))

    def get(self) -> T:
        item, counted = self._items.popleft()
        if counted:
            self._messages -= 1
            self.processed += 1
        return item

    def peek(self) -> T:
        return self._items[0][0]

    def drain(self) -> list[T]:
        """Remove and return everything queued (used when stopping)."""
        items = [item for item, _ in self._items]
        self._items.clear()
        self._messages = 0
        return items

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            self.key, self._messages, self.max_buffer, self.received, self.processed, self.dropped
        )
