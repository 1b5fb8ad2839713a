"""The recent commits of one stream, in memory: a changefeed page answered without reading the file.

Pure (no I/O, no clock of its own): :class:`persist.StreamFile` feeds it each committed
transaction's effects on the event loop (:meth:`Tail.committed`), in commit order, and asks it for
a page (:meth:`Tail.page`) before it reads SQLite.

Theory of operation
-------------------
A changefeed page after ``(after_seq, after_delete)`` is: the live messages with a higher seq, the
delete-log entries with a higher id, and the cursors. The tail knows every message committed with
``seq > base_seq`` and every delete-log entry with ``id > base_delete`` (``base_*`` are the stream's
state when the tail started, or what it has since forgotten). So when a cursor is at or past both
bases, the page is computed here exactly as :func:`persist._sql.select_changes` would read it:

- a message is live if no later delete range covers it and it has not expired at ``now`` (its own
  ``ttl``, then the stream's ``max_age``: the same float comparisons as the SQL);
- a page holds at most ``max_msgs`` messages and stops before the first one that would pass
  ``max_bytes`` (it always holds one);
- deletes are the log entries after ``after_delete``, at most ``max_deletes`` of them (the cursor is
  the last one listed, else the last id); ``resync`` if the log no longer reaches the cursor.

Anything else (an older cursor, another ``stream_id``, more deletes than a page lists) is answered
``None``: the caller reads the file, which holds the whole history. The tail is bounded: it keeps
the last :data:`TAIL_MSGS` messages (and :data:`TAIL_BYTES` of them) and :data:`TAIL_DELETES` delete
entries, and moves its bases forward as it forgets.

Why it is safe: it is fed only after a transaction committed (a rolled-back one feeds nothing), on the
loop, in commit order, and read on the loop; a reader connection opened after the commit sees the
same state. So a page from memory equals the page the file gives at that moment.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Final, final

from ._config import UNLIMITED, StreamConfig
from ._model import StoredMessage

__all__ = ["TAIL_BYTES", "TAIL_DELETES", "TAIL_MSGS", "Commit", "Tail", "TailPage"]

TAIL_MSGS: Final = 512
"""Most messages the tail keeps (the most recent ones): enough for consumers that keep up."""
TAIL_BYTES: Final = 512 * 1024
"""Most bytes of messages (their ``size`` summed) the tail keeps: with the store's cap on open
streams (256 by default) the tails hold at most 128 MiB."""
TAIL_DELETES: Final = 512
"""Most delete-log entries the tail keeps (fewer than the file's log keeps: a cursor the tail
reaches is never one the file's log no longer reaches)."""


@final
class Commit:
    """What one committed transaction changed: the messages it stored, the delete-log entries it
    appended (``(id, low, high)``), and the stream's cursors after it."""

    __slots__ = ("added", "deletes", "first_delete", "last_delete", "last_seq")

    def __init__(
        self,
        added: list[StoredMessage],
        deletes: list[tuple[int, int, int]],
        last_seq: int,
        first_delete: int,
        last_delete: int,
    ) -> None:
        self.added = added
        self.deletes = deletes
        self.last_seq = last_seq
        self.first_delete = first_delete
        self.last_delete = last_delete


@final
class TailPage:
    """A changefeed page computed from memory (the fields of :class:`persist.ChangePage`)."""

    __slots__ = ("delete_cursor", "deletes", "last_seq", "messages")

    def __init__(
        self, messages: list[StoredMessage], deletes: list[tuple[int, int]], delete_cursor: int, last_seq: int
    ) -> None:
        self.messages = messages
        self.deletes = deletes
        self.delete_cursor = delete_cursor
        self.last_seq = last_seq


@final
class Tail:
    """The recent commits of one stream (module docstring).

    Args:
        last_seq, first_delete, last_delete: the stream's state when the tail starts (it knows
            nothing older).
    """

    __slots__ = (
        "_bytes",
        "_deletes",
        "_messages",
        "base_delete",
        "base_seq",
        "first_delete",
        "last_delete",
        "last_seq",
    )

    def __init__(self, last_seq: int, first_delete: int, last_delete: int) -> None:
        self.base_seq = last_seq
        self.base_delete = last_delete
        self.last_seq = last_seq
        self.first_delete = first_delete
        self.last_delete = last_delete
        self._messages: collections.deque[StoredMessage] = collections.deque()
        self._bytes = 0
        self._deletes: collections.deque[tuple[int, int, int]] = collections.deque()

    def committed(self, commit: Commit) -> None:
        """Take in one committed transaction (in commit order)."""
        self._messages.extend(commit.added)
        self._bytes += sum(m.size for m in commit.added)
        self._deletes.extend(commit.deletes)
        self.last_seq = commit.last_seq
        self.first_delete, self.last_delete = commit.first_delete, commit.last_delete
        while len(self._messages) > TAIL_MSGS or (self._bytes > TAIL_BYTES and self._messages):
            gone = self._messages.popleft()
            self._bytes -= gone.size
            self.base_seq = gone.seq
        while len(self._deletes) > TAIL_DELETES:
            self.base_delete = self._deletes.popleft()[0]

    def page(
        self,
        config: StreamConfig,
        now: float,
        after_seq: int,
        after_delete: int | None,
        max_msgs: int,
        max_bytes: int,
        max_deletes: int,
    ) -> TailPage | None:
        """The page after the cursor, or ``None`` if the tail cannot tell it (read the file)."""
        if after_seq < self.base_seq:
            return None
        if after_delete is not None and after_delete < self.last_delete:
            if after_delete < self.base_delete:
                return None
            if after_delete + 1 < self.first_delete:
                return None  # the file's log no longer reaches it: let the file say resync
            listed = [(low, high) for i, low, high in self._deletes if i > after_delete]
            if len(listed) >= max_deletes:
                return None  # a partial list and its cursor: the file's read does it
            deletes, cursor = listed, self.last_delete
        else:
            deletes, cursor = [], self.last_delete
        messages: list[StoredMessage] = []
        if after_seq < self.last_seq:
            messages = self._live_after(config, now, after_seq, max_msgs, max_bytes)
        return TailPage(messages, deletes, cursor, self.last_seq)

    def _live_after(
        self, config: StreamConfig, now: float, after_seq: int, max_msgs: int, max_bytes: int
    ) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        total = 0
        ranges = [(low, high) for _, low, high in self._deletes if high > after_seq]
        age = float(config.max_age) if config.max_age != UNLIMITED else None
        for m in _after(self._messages, after_seq):
            if m.ttl is not None and not m.time + m.ttl > now:
                continue
            if age is not None and not m.time + age > now:
                continue
            if _covered(m.seq, ranges):
                continue
            total += m.size
            if out and total > max_bytes:
                break
            out.append(m)
            if len(out) >= max_msgs:
                break
        return out


def _after(messages: collections.deque[StoredMessage], seq: int) -> Sequence[StoredMessage]:
    """The messages with a seq above ``seq`` (they are in seq order)."""
    n = len(messages)
    lo, hi = 0, n
    while lo < hi:  # a deque indexes in O(1) near its ends; the wanted part is usually the last few
        mid = (lo + hi) // 2
        if messages[mid].seq <= seq:
            lo = mid + 1
        else:
            hi = mid
    return [messages[i] for i in range(lo, n)]


def _covered(seq: int, ranges: list[tuple[int, int]]) -> bool:
    return any(low <= seq <= high for low, high in ranges)
