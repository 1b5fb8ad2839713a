"""The follower: what DStream and DKV share, a local cache kept in step with one stream.

:class:`~persist.DStream` (an ordered view) and :class:`~persist.DKV` (a key-value view) hold
different caches, but they follow the stream, save local writes and tell readers of changes the same
way. That part lives here, once, in :class:`Follower`; a subclass holds the cache and the unsaved
writes and fills in the hooks (:meth:`Follower._replace`, :meth:`Follower._apply`,
:meth:`Follower._take_batch`...).

Theory of operation
-------------------

**One cursor, no gap.** A follower reads the stream with the changefeed's own step
(:meth:`AStream.read_page`: a page of changes after ``(after_seq, after_delete, stream_id)``):
history in pages that do not wait, then live pages that long-poll, all from the *same* cursor. So
history and live updates join with no gap and no duplicate, deletes made while history was loading
are reported, and a restart of the service (or of the bus) only delays the next page. Loading
history with ``get_all`` and then starting :meth:`AStream.changefeed` would lose the deletes made
between the two (the changefeed's first page carries no delete cursor), which is why the follower
keeps the cursor itself. Deletes reported by a later history page are applied to the messages of
earlier ones (:meth:`Follower._read_from`).

**One feed task.** It applies each page to the cache (:meth:`Follower._apply`): deletes first (a
page's messages are live at its snapshot, so no range of the same page can hold one of them), then
messages. A failed read is retried with backoff (:data:`RETRY_BACKOFF`); so is a page whose
applying raised (a bug is logged, it does not stop the cache from following).

**One saver at a time.** Writes go out through one saver task, started when there is something to
save and gone when there is not, which sends the unsaved writes in order, many per request
(:meth:`AStream.publish_many`: one transaction, each write judged on its own; at most 1000 writes
or 4 MiB of payload per request). Every write carries a msg-id (:func:`new_msg_id`, also in the
:data:`MSG_ID_HEADER` header so the writer can recognise its copy in the feed), so resending after a
failure is answered with the original result instead of storing twice (within the stream's
``duplicate_window``, 120 s by default). A malformed or forbidden batch is refused at once; any
other failure is retried with backoff.

**Resync.** A page with ``resync`` (the consumer fell behind the delete log, or the stream was
re-created) reloads the cache from scratch (:meth:`Follower._reload_messages`) and emits
:class:`Resync`: a reader re-reads the cache instead of patching it. Every reload bumps a
generation, so a slower load that spans one (DStream's ``load_older``) is discarded.

**Events are bounded per iterator.** Every change is pushed to each :meth:`Follower.events`
iterator (:class:`Events`) without waiting; one holding ``max_events`` unread events is cut off and
raises :class:`~persist.TooSlow`. The cache applies every change whether or not anyone reads
events, so it stays correct; the reader starts a new iterator and re-reads the cache.

**Closing.** :meth:`Follower.aclose` waits (bounded) for the saver, then cancels the feed and saver
tasks, drops (and logs) what is still unsaved and ends every event iterator. An unclosed follower
warns (``ResourceWarning``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Generic, Self, TypeVar, final

import msgspec

from conat import (
    Backoff,
    BoundedQueue,
    Clock,
    ClosedError,
    ConatError,
    PayloadError,
    QueueStatistics,
    SystemClock,
    get_codec,
)

from ._client import AStream
from ._engine import ChangePage, StoredMessage, Write
from ._errors import BadRequest, PersistError, TooSlow
from ._model import SetResult

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_EVENTS",
    "MSG_ID_HEADER",
    "RETRY_BACKOFF",
    "Events",
    "Follower",
    "Ranges",
    "Resync",
    "batch_of",
    "decode",
    "in_ranges",
    "new_msg_id",
    "seqs_in",
]

log = logging.getLogger("persist.follower")

MSG_ID_HEADER: Final = "conat-msg-id"
"""The header carrying a DStream/DKV write's msg-id, so the writer recognises its copy in the feed."""

DEFAULT_MAX_EVENTS: Final = 10_000
"""The default bound of an event iterator (unread events)."""
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
"""How long :meth:`Follower.aclose` waits for unsaved writes by default (s)."""
_BATCH_MSGS: Final = 1000
_BATCH_BYTES: Final = 4 * 1024 * 1024
RETRY_BACKOFF: Final = Backoff(initial=0.05, maximum=2.0)
"""Between the tries of a failed feed read or save (reset by the next success)."""

E = TypeVar("E")
T = TypeVar("T")
Ranges = Sequence[tuple[int, int]]
"""``(low, high)`` seq ranges, both ends included: a page's deletes."""


# ---- helpers ---------------------------------------------------------------------------------------


def new_msg_id() -> str:
    """A random msg-id (128 bits), unique across writers."""
    return secrets.token_urlsafe(16)


def in_ranges(seq: int, ranges: Ranges) -> bool:
    """Whether ``seq`` is inside one of ``ranges``."""
    return any(low <= seq <= high for low, high in ranges)


def seqs_in(ranges: Ranges, held: Mapping[int, object]) -> list[int]:
    """The seqs of ``held`` inside ``ranges`` (a range may be far wider than what is held)."""
    out: list[int] = []
    for low, high in ranges:
        if high - low < len(held):
            out.extend(s for s in range(low, high + 1) if s in held)
        else:
            out.extend(s for s in held if low <= s <= high)
    return out


def decode(message: StoredMessage) -> Any:
    """The message's value; its raw payload if it does not decode (logged, never fatal to a cache)."""
    try:
        return message.value()
    except PayloadError as e:
        log.warning("seq %d does not decode (%s); keeping its raw payload", message.seq, e)
        return message.payload


def batch_of(items: Iterable[T], write_of: Callable[[T], Write]) -> list[tuple[T, Write]]:
    """The first items that fit in one request (at least one)."""
    batch: list[tuple[T, Write]] = []
    size = 0
    for item in items:
        write = write_of(item)
        size += len(write.payload)
        if batch and (len(batch) >= _BATCH_MSGS or size > _BATCH_BYTES):
            break
        batch.append((item, write))
    return batch


# ---- events ----------------------------------------------------------------------------------------


@final
class Resync(msgspec.Struct, frozen=True, kw_only=True):
    """The cache was reloaded (the feed could not tell every change): re-read it whole."""


@final
class Events(Generic[E]):
    """An async iterator of a cache's change events, bounded (see the module docstring).

    Ends (``StopAsyncIteration``) when the cache closes or :meth:`aclose` is called.

    Raises:
        TooSlow: more than ``limit`` events were left unread: events were dropped. Start a new
            iterator and re-read the cache.
    """

    def __init__(self, what: str, limit: int, unsubscribe: Callable[[Events[E]], None]) -> None:
        self._what = what
        self._limit = limit
        self._unsubscribe = unsubscribe
        self._queue: BoundedQueue[E] = BoundedQueue(limit)

    @property
    def pending(self) -> int:
        """Events waiting to be read."""
        return len(self._queue)

    def statistics(self) -> QueueStatistics:
        """The iterator's queue: events pushed, read, and dropped (once too slow)."""
        return self._queue.statistics()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> E:
        return await self._queue.__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop receiving events (the iterator ends)."""
        self._queue.clear()
        self._end()

    def _push(self, event: E) -> None:
        queue = self._queue
        if not queue.put(event) and not queue.closed:  # full: cut off
            queue.clear()
            self._end(TooSlow(self._what, self._limit))

    def _end(self, error: TooSlow | None = None) -> None:
        self._queue.close(error)
        self._unsubscribe(self)


# ---- the follower: cursor, feed task, saver, events, lifecycle ----------------------------------


class Follower(Generic[E, T]):
    """What DStream and DKV share: a cache kept in step with one stream, plus a background saver.

    Subclasses hold the cache and fill it (:meth:`_initial_load`, :meth:`_reload_messages`,
    :meth:`_replace`, :meth:`_apply`), and hold the unsaved writes, each identified by a token ``T``
    (:meth:`has_unsaved_changes`, :meth:`_unsaved_futures`, :meth:`_take_batch`, :meth:`_saved`,
    :meth:`_refuse`, :meth:`_unsend`, :meth:`_drop_unsaved`). A subclass's ``open`` ends with
    :meth:`_open`, which loads the cache and starts the feed task.
    """

    _kind = "cache"

    def __init__(
        self, stream: AStream, *, wait: float, max_events: int, clock: Clock | None = None
    ) -> None:
        if max_events < 1:
            raise BadRequest(self._kind, f"max_events must be positive, not {max_events!r}")
        self._stream = stream
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._codec = get_codec(stream.encoding)
        self._wait = wait
        self._max_events = max_events
        self._events: dict[Events[E], None] = {}
        self._after_seq = 0
        self._after_delete: int | None = None
        self._stream_id: str | None = None
        self._feed: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._opened = False
        self._closing = False
        self._closed = False
        self._resyncs = 0
        self._generation = 0  # bumps on every reload: a load that spans one is discarded

    @property
    def stream(self) -> AStream:
        """The stream this cache follows."""
        return self._stream

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._stream.scope!r}, {self._stream.name!r})"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_opened", False) and not self._closed:
            _warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def _open(self) -> Self:
        self._replace(await self._initial_load())
        self._opened = True
        self._feed = asyncio.get_running_loop().create_task(self._follow(), name=f"{self!r} feed")
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Save what is unsaved (waiting at most ``timeout`` s), then stop. Idempotent.

        Writes still unsaved after ``timeout`` are dropped (and logged); event iterators end.
        """
        if self._closing:
            return
        self._closing = True
        if self._saver is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_saved(), timeout)
        tasks = [t for t in (self._feed, self._saver) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._saver = None
        if self.has_unsaved_changes():
            log.warning("%r closed with unsaved writes; they are dropped", self)
        self._closed = True
        self._drop_unsaved()
        for events in list(self._events):
            events._end()

    def _check_open(self) -> None:
        if self._closing:
            raise ClosedError(repr(self))

    # ---- events ------------------------------------------------------------------------------------

    def events(self, max_events: int | None = None) -> Events[E]:
        """A new iterator of the changes made from now on (at most ``max_events`` unread)."""
        limit = self._max_events if max_events is None else max_events
        if limit < 1:
            raise BadRequest(self._kind, f"max_events must be positive, not {limit!r}")
        events: Events[E] = Events(repr(self), limit, self._unsubscribe)
        if self._closed:
            events._end()
        else:
            self._events[events] = None
        return events

    def _unsubscribe(self, events: Events[E]) -> None:
        self._events.pop(events, None)

    def _emit(self, event: E) -> None:
        for events in list(self._events):
            events._push(event)

    # ---- saving ------------------------------------------------------------------------------------

    def has_unsaved_changes(self) -> bool:
        """Whether some local write is neither committed nor refused yet."""
        raise NotImplementedError

    async def save(self) -> None:
        """Wait until every write made so far is committed or refused (refusals are events).

        Raises:
            ClosedError: the cache closed before they were all saved.
        """
        await self._wait_saved()
        if self._closed and self.has_unsaved_changes():
            raise ClosedError(f"{self!r} (closed with unsaved writes)")

    async def _wait_saved(self) -> None:
        waiting = self._unsaved_futures()
        if waiting:
            await asyncio.wait(waiting)

    def _kick_saver(self) -> None:
        if self._saver is None and not self._closed:
            name = f"{self!r} saver"
            self._saver = asyncio.get_running_loop().create_task(self._save_loop(), name=name)

    async def _save_loop(self) -> None:
        delays = RETRY_BACKOFF.sequence()
        try:
            while batch := self._take_batch():
                tokens = [token for token, _ in batch]
                try:
                    results = await self._stream.publish_many([write for _, write in batch])
                except (ValueError, PermissionError) as e:  # malformed or forbidden: resending cannot help
                    self._refuse(tokens, e)
                    continue
                except (ConatError, OSError) as e:
                    log.warning("%r: saving failed (%d in a row), retrying: %s", self, delays.attempt + 1, e)
                    self._unsend(tokens)
                    await delays.sleep(self._clock)
                    continue
                delays.reset()
                await self._saved(list(zip(tokens, results, strict=True)))
        finally:
            self._saver = None  # no await between the last (empty) take and this

    # ---- following ---------------------------------------------------------------------------------

    async def _read_from(
        self, after_seq: int, after_delete: int | None = None, stream_id: str | None = None
    ) -> list[StoredMessage]:
        """Every live message after ``after_seq``, in pages that do not wait; leaves the cursor there.

        Deletes reported by later pages are applied to the messages of earlier ones.
        """
        start = after_seq
        messages: list[StoredMessage] = []
        while True:
            page = await self._stream.read_page(after_seq, after_delete=after_delete, stream_id=stream_id)
            if page.resync:  # the stream was re-created (or the log cut) while we read: start over
                after_seq, after_delete, stream_id, messages = start, None, None, []
                continue
            if page.deletes:
                messages = [m for m in messages if not in_ranges(m.seq, page.deletes)]
            messages.extend(page.messages)
            after_delete = page.delete_cursor
            stream_id = page.stream_id or stream_id
            if page.messages:
                after_seq = page.messages[-1].seq
            if not page.messages or after_seq >= page.last_seq:
                break
        self._after_seq, self._after_delete, self._stream_id = after_seq, after_delete, stream_id
        return messages

    async def _follow(self) -> None:
        delays = RETRY_BACKOFF.sequence()
        while True:
            try:
                page = await self._stream.read_page(
                    self._after_seq,
                    after_delete=self._after_delete,
                    stream_id=self._stream_id,
                    wait=self._wait,
                )
                if page.resync:
                    await self._reload(new_stream=page.stream_id != self._stream_id)
                else:
                    self._advance(page)
            except (ConatError, OSError) as e:
                log.warning("%r: feed failed (%d in a row), retrying: %s", self, delays.attempt + 1, e)
                await delays.sleep(self._clock)
            except Exception:  # a bug must not stop the cache from following: log it, go on
                log.exception("%r: applying a page failed (%d in a row), retrying", self, delays.attempt + 1)
                await delays.sleep(self._clock)
            else:
                delays.reset()

    def _advance(self, page: ChangePage) -> None:
        if page.messages:
            self._after_seq = page.messages[-1].seq
        self._after_delete = page.delete_cursor
        self._stream_id = page.stream_id or self._stream_id
        self._apply(page.deletes, page.messages)

    async def _reload(self, *, new_stream: bool) -> None:
        messages = await self._reload_messages(new_stream)
        self._generation += 1
        self._resyncs += 1
        self._replace(messages, resync=True, new_stream=new_stream)

    # ---- subclass hooks ----------------------------------------------------------------------------

    async def _initial_load(self) -> list[StoredMessage]:
        raise NotImplementedError

    async def _reload_messages(self, new_stream: bool) -> list[StoredMessage]:
        raise NotImplementedError

    def _replace(
        self, messages: list[StoredMessage], *, resync: bool = False, new_stream: bool = False
    ) -> None:
        raise NotImplementedError

    def _apply(self, deletes: Ranges, messages: list[StoredMessage]) -> None:
        raise NotImplementedError

    def _unsaved_futures(self) -> list[asyncio.Future[None]]:
        raise NotImplementedError

    def _drop_unsaved(self) -> None:
        raise NotImplementedError

    def _take_batch(self) -> list[tuple[T, Write]]:
        raise NotImplementedError

    async def _saved(self, results: list[tuple[T, SetResult | PersistError]]) -> None:
        raise NotImplementedError

    def _refuse(self, tokens: list[T], error: Exception) -> None:
        raise NotImplementedError

    def _unsend(self, tokens: list[T]) -> None:
        raise NotImplementedError
