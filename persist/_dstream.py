"""DStream: a local, ordered cache of a persist stream that publishes optimistically.

Theory of operation
-------------------

**One cursor, no gap.** The cache follows the stream with the changefeed's own read (a page of
changes after ``(after_seq, after_delete, stream_id)``): history in pages that do not wait, then
live pages that long-poll, all from the *same* cursor. So history and live updates join with no gap
and no duplicate, deletes made while history was loading are reported, and a restart of the
service (or of the bus) only delays the next page. Loading history with ``get_all`` and then
starting :meth:`AStream.changefeed` would lose the deletes made between the two (the changefeed's
first page carries no delete cursor), which is why the follower reads pages itself
(``AStream._page``, the changefeed's own step).

**One feed task, one saver at a time.** The feed task applies each page to the cache: deletes
first (a page's messages are live at its snapshot, so no range of the same page can hold one of
them), then messages, a keyed one replacing the key's cached message. Writes go out through one
saver task, started when there is something to save and gone when there is not, which sends the
unsaved writes in publish order, many per request (:meth:`AStream.publish_many`: one transaction,
each write judged on its own). Every write carries a msg-id, so resending after a failure is
answered with the original result instead of storing twice (within the stream's
``duplicate_window``, 120 s by default).

**Echo.** A write also carries its msg-id in the ``conat-msg-id`` header, because its copy in the
feed can arrive before or after the write's own reply: whichever comes first marks the local entry
saved and the other changes nothing, so a local write is never shown twice. A saved write the feed
never shows (deleted or replaced before the feed read it) leaves the view once the feed's cursor
passes its seq or a delete range covers it.

**Order of the view.** Saved messages in seq order, then unsaved local ones in publish order; since
one saver sends them in that order, a local message keeps its place when it is saved. A keyed
publish replaces the key's previous message when it is saved (until then both are shown).

**Resync.** A page with ``resync`` (the consumer fell behind the delete log, or the stream was
re-created) reloads the cached window from scratch and emits :class:`Resync`: a reader re-reads the
view instead of patching it.

**Events are bounded per iterator.** Every change is pushed to each :meth:`DStream.events`
iterator without waiting; one holding ``max_events`` unread events is cut off and raises
:class:`~persist.TooSlow`. The cache applies every change whether or not anyone reads events, so it
stays correct; the reader starts a new iterator and re-reads the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import warnings
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Generic, Self, TypeVar, cast, final

import msgspec

from conat import Client
from conat._codecs import get_codec
from conat._errors import ClosedError, ConatError, PayloadError

from ._checks import check_set_args
from ._client import DEFAULT_FEED_WAIT, DEFAULT_TIMEOUT, AStream
from ._config import StreamConfig
from ._engine import ChangePage, StoredMessage, Write
from ._errors import BadRequest, PersistError, TooSlow
from ._model import SetResult
from ._wire import DEFAULT_PAGE_BYTES, DEFAULT_PAGE_MSGS

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_EVENTS",
    "MSG_ID_HEADER",
    "Added",
    "DStream",
    "DStreamStatistics",
    "Deleted",
    "Entry",
    "Events",
    "Older",
    "Reject",
    "Resync",
    "Saved",
    "StreamEvent",
]

log = logging.getLogger("persist.dstream")

MSG_ID_HEADER: Final = "conat-msg-id"
"""The header carrying a DStream/DKV write's msg-id, so the writer recognises its copy in the feed."""

DEFAULT_MAX_EVENTS: Final = 10_000
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
_BATCH_MSGS: Final = 1000
_BATCH_BYTES: Final = 4 * 1024 * 1024
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 2.0

E = TypeVar("E")
T = TypeVar("T")
Ranges = Sequence[tuple[int, int]]


def new_msg_id() -> str:
    """A random msg-id (128 bits), unique across writers."""
    return secrets.token_urlsafe(16)


# ---- events ----------------------------------------------------------------------------------------


@final
class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a :class:`DStream` view.

    Attributes:
        value: the decoded payload (a local publish shows the value as the stream's codec returns
            it, e.g. a tuple as a list, so every client sees the same value).
        seq: its seq, or ``None`` while it is not saved.
        time: the write time the service gave it, or ``None`` while it is not saved.
        key: its key, or ``None``.
        headers: its headers (without ``conat-msg-id``).
        ttl: its own time to live (s), or ``None``.
        msg_id: the msg-id of a DStream/DKV write (``None`` for one made otherwise).
    """

    value: Any
    seq: int | None = None
    time: float | None = None
    key: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    ttl: float | None = None
    msg_id: str | None = None

    @property
    def saved(self) -> bool:
        return self.seq is not None


@final
class Added(msgspec.Struct, frozen=True, kw_only=True):
    """``entry`` entered the view: a local publish (not saved yet) or a message from the feed."""

    entry: Entry


@final
class Saved(msgspec.Struct, frozen=True, kw_only=True):
    """A local publish was committed: ``entry`` now has its seq (same ``msg_id`` as when added)."""

    entry: Entry


@final
class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    """``entry`` left the view: deleted, expired, evicted, or replaced by a newer message of its key."""

    entry: Entry


@final
class Reject(msgspec.Struct, frozen=True, kw_only=True):
    """A local publish was refused and left the view; nothing was stored.

    ``error`` is usually :class:`~persist.Rejected` (a limit of the stream, named by ``limit``).
    """

    entry: Entry
    error: Exception


@final
class Older(msgspec.Struct, frozen=True, kw_only=True):
    """:meth:`DStream.load_older` put ``entries`` (seq order) before the rest of the view."""

    entries: list[Entry]


@final
class Resync(msgspec.Struct, frozen=True, kw_only=True):
    """The cache was reloaded (the feed could not tell every change): re-read it whole."""


StreamEvent = Added | Saved | Deleted | Reject | Older | Resync


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
        self._queue: deque[E] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._too_slow = False
        self._ended = False

    @property
    def pending(self) -> int:
        """Events waiting to be read."""
        return len(self._queue)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> E:
        while not self._queue:
            if self._too_slow:
                raise TooSlow(self._what, self._limit)
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop receiving events (the iterator ends)."""
        self._queue.clear()
        self._end()

    def _push(self, event: E) -> None:
        if self._ended:
            return
        if len(self._queue) >= self._limit:
            self._too_slow = True
            self._queue.clear()
            self._end()
            return
        self._queue.append(event)
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._unsubscribe(self)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


# ---- the follower: cursor, feed task, saver, events, lifecycle ----------------------------------


class _Follower(Generic[E, T]):
    """What DStream and DKV share: a cache kept in step with one stream, plus a background saver.

    Subclasses hold the cache (:meth:`_replace`, :meth:`_apply`) and the unsaved writes, each
    identified by a token ``T`` (:meth:`_take_batch`, :meth:`_saved`, :meth:`_refuse`,
    :meth:`_unsend`).
    """

    _kind = "cache"

    def __init__(self, stream: AStream, *, wait: float, max_events: int) -> None:
        if max_events < 1:
            raise BadRequest(self._kind, f"max_events must be positive, not {max_events!r}")
        self._stream = stream
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
        delay = _BACKOFF_MIN
        try:
            while batch := self._take_batch():
                tokens = [token for token, _ in batch]
                try:
                    results = await self._stream.publish_many([write for _, write in batch])
                except (ValueError, PermissionError) as e:  # malformed or forbidden: resending cannot help
                    self._refuse(tokens, e)
                    continue
                except (ConatError, OSError) as e:
                    log.warning("%r: saving failed, retrying in %.2fs: %s", self, delay, e)
                    self._unsend(tokens)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                    continue
                delay = _BACKOFF_MIN
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
            page = await self._page(after_seq, after_delete, stream_id, 0.0)
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

    async def _page(
        self, after_seq: int, after_delete: int | None, stream_id: str | None, wait: float, max_msgs: int = 0
    ) -> ChangePage:
        # the changefeed's own step, so this cursor carries the delete cursor too (module docstring)
        return await self._stream._page(
            after_seq, after_delete, stream_id, max_msgs or DEFAULT_PAGE_MSGS, DEFAULT_PAGE_BYTES, wait
        )

    async def _follow(self) -> None:
        delay = _BACKOFF_MIN
        while True:
            try:
                page = await self._page(self._after_seq, self._after_delete, self._stream_id, self._wait)
                if page.resync:
                    await self._reload(new_stream=page.stream_id != self._stream_id)
                else:
                    self._advance(page)
            except (ConatError, OSError) as e:
                log.warning("%r: feed failed, retrying in %.2fs: %s", self, delay, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            except Exception:  # a bug must not stop the cache from following: log it, go on
                log.exception("%r: applying a page failed, retrying in %.2fs", self, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            else:
                delay = _BACKOFF_MIN

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


def in_ranges(seq: int, ranges: Ranges) -> bool:
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


# ---- DStream -----------------------------------------------------------------------------------------


@final
class DStreamStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one :class:`DStream`.

    Attributes:
        messages: entries in the view (saved and unsaved).
        unsaved: local publishes not yet committed or refused.
        listeners: open event iterators.
        cursor: the last seq the feed has read.
        resyncs: reloads since open.
    """

    messages: int
    unsaved: int
    listeners: int
    cursor: int
    resyncs: int


class _Pending:
    """A local publish until the feed shows it (or it is refused, or gone)."""

    __slots__ = ("announced", "done", "entry", "write")

    def __init__(self, entry: Entry, write: Write, done: asyncio.Future[None]) -> None:
        self.entry = entry
        self.write = write
        self.done = done
        self.announced = False  # Saved was emitted


_OPEN_TOKEN: Final = object()


@final
class DStream(_Follower[StreamEvent, _Pending]):
    """A local ordered cache of a persist stream, with optimistic publishing (module docstring).

    Open with :meth:`open` (or :meth:`from_stream`), close with :meth:`aclose` or ``async with``.
    Reading the view (``len``, iteration, :meth:`entries`, :meth:`get`) never does I/O.
    """

    _kind = "dstream"

    def __init__(
        self,
        stream: AStream,
        *,
        from_seq: int,
        last: int | None,
        wait: float,
        max_events: int,
        _token: object = None,
    ) -> None:
        if _token is not _OPEN_TOKEN:
            raise TypeError("use `await DStream.open(...)` or `await DStream.from_stream(...)`")
        if from_seq < 0 or (last is not None and last < 0):
            raise BadRequest("dstream", "from_seq and last must not be negative")
        if from_seq > 1 and last is not None:
            raise BadRequest("dstream", "give from_seq or last, not both")
        super().__init__(stream, wait=wait, max_events=max_events)
        self._from_seq = max(from_seq, 1)
        self._last = last
        self._committed: dict[int, Entry] = {}  # seq order
        self._by_key: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}  # by msg-id, publish order
        self._outbox: deque[_Pending] = deque()
        self._low = 1  # every live message with seq >= _low is in the view
        self._journals: list[list[tuple[int, int]]] = []
        self._older_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        client: Client,
        scope: str,
        name: str,
        *,
        config: StreamConfig | Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        encoding: str = "msgpack",
        from_seq: int = 0,
        last: int | None = None,
        wait: float = DEFAULT_FEED_WAIT,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> DStream:
        """Open the stream ``name`` of ``scope`` (the arguments of :class:`AStream`) and load it.

        Args:
            from_seq: load the messages with ``seq >= from_seq`` (default: all).
            last: load only the last ``last`` messages (:meth:`load_older` fetches more).
            wait: how long one feed read waits for a change (s).
            max_events: the default bound of an :meth:`events` iterator.
        """
        stream = AStream(client, scope, name, config=config, timeout=timeout, encoding=encoding)
        return await cls.from_stream(stream, from_seq=from_seq, last=last, wait=wait, max_events=max_events)

    @classmethod
    async def from_stream(
        cls,
        stream: AStream,
        *,
        from_seq: int = 0,
        last: int | None = None,
        wait: float = DEFAULT_FEED_WAIT,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> DStream:
        """Like :meth:`open`, over an existing :class:`AStream` (its codec, config and timeout)."""
        self = cls(stream, from_seq=from_seq, last=last, wait=wait, max_events=max_events, _token=_OPEN_TOKEN)
        return await self._open()

    # ---- the view ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._committed) + len(self._pending)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    def entries(self) -> list[Entry]:
        """The view: saved messages in seq order, then unsaved local ones in publish order."""
        return [*self._committed.values(), *(p.entry for p in self._pending.values())]

    def values(self) -> list[Any]:
        return [e.value for e in self.entries()]

    def get(self, seq: int) -> Entry | None:
        """The saved entry ``seq`` of the view, or ``None``."""
        return self._committed.get(seq)

    def statistics(self) -> DStreamStatistics:
        return DStreamStatistics(
            messages=len(self),
            unsaved=len(self._unsaved_futures()),
            listeners=len(self._events),
            cursor=self._after_seq,
            resyncs=self._resyncs,
        )

    # ---- writes ------------------------------------------------------------------------------------

    def publish(
        self,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float | None = None,
    ) -> Entry:
        """Add ``value`` to the view at once and save it in the background.

        Returns:
            the unsaved entry (its ``msg_id`` names it in later :class:`Saved`/:class:`Reject`).

        Raises:
            BadRequest, TooLarge, PayloadError: malformed arguments (nothing was added).
            ClosedError: the stream is closing.
        """
        self._check_open()
        payload = self._codec.encode(value)
        msg_id = new_msg_id()
        all_headers = {**(headers or {}), MSG_ID_HEADER: msg_id}
        check_set_args(payload, key, all_headers, ttl, None, msg_id)
        entry = Entry(
            value=self._codec.decode(payload),
            key=key,
            headers=dict(headers or {}),
            ttl=ttl,
            msg_id=msg_id,
        )
        write = Write(
            payload=payload, key=key, headers=all_headers, encoding=self._codec.name, ttl=ttl, msg_id=msg_id
        )
        pending = _Pending(entry, write, asyncio.get_running_loop().create_future())
        self._pending[msg_id] = pending
        self._outbox.append(pending)
        self._kick_saver()
        self._emit(Added(entry=entry))
        return entry

    def has_unsaved_changes(self) -> bool:
        return any(not p.done.done() for p in self._pending.values())

    # ---- older history ----------------------------------------------------------------------------

    async def load_older(self, n: int) -> int:
        """Put up to ``n`` messages older than the view's first at its front (emits :class:`Older`).

        Returns:
            how many were added (0 once the whole stream is held).
        """
        self._check_open()
        async with self._older_lock:
            generation = self._generation
            journal: list[tuple[int, int]] = []  # deletes the feed applies while we fetch
            self._journals.append(journal)
            try:
                messages, low = await self._fetch_older(n, self._low)
            finally:
                self._journals.remove(journal)
            if generation != self._generation or not messages:
                return 0  # a reload replaced the view meanwhile: it is whole again
            entries = [self._entry(m) for m in messages if not in_ranges(m.seq, journal)]
            entries = [e for e in entries if e.key is None or e.key not in self._by_key]
            self._committed = {**{e.seq: e for e in entries if e.seq is not None}, **self._committed}
            self._by_key.update({e.key: e.seq for e in entries if e.key is not None and e.seq is not None})
            self._low = low
            self._emit(Older(entries=entries))
            return len(entries)

    async def _fetch_older(self, n: int, low: int) -> tuple[list[StoredMessage], int]:
        """Up to ``n`` live messages below ``low`` (the newest of them), and the new low.

        Seq ranges widen while they come back empty, so a long run of deleted seqs costs a few
        requests, not one per ``n`` seqs.
        """
        out: list[StoredMessage] = []
        span = n
        while len(out) < n and low > 1:
            need = n - len(out)
            start = max(1, low - span)
            got: list[StoredMessage] = []
            pages = cast(
                "AsyncGenerator[list[StoredMessage], None]",
                self._stream.get_all(start, max_msgs=min(span, DEFAULT_PAGE_MSGS)),
            )
            async with contextlib.aclosing(pages):
                async for batch in pages:
                    got.extend(m for m in batch if m.seq < low)
                    if batch[-1].seq >= low:
                        break
            if len(got) > need:
                got = got[-need:]
                start = got[0].seq
            out = got + out
            low = start
            span *= 2
        return out, low

    # ---- loading and following ---------------------------------------------------------------------

    async def _initial_load(self) -> list[StoredMessage]:
        if self._last is None:
            self._low = self._from_seq
            return await self._read_from(self._from_seq - 1)
        probe = await self._page(0, None, None, 0.0, max_msgs=1)
        after = max(probe.last_seq - self._last, 0)
        messages = await self._read_from(after, probe.delete_cursor, probe.stream_id or None)
        self._low = after + 1
        if len(messages) < self._last and after > 0:
            # the feed's delete cursor (the probe's) is older than this read, so deletes still come
            older, self._low = await self._fetch_older(self._last - len(messages), self._low)
            messages = older + messages
        return messages

    async def _reload_messages(self, new_stream: bool) -> list[StoredMessage]:
        if new_stream:
            return await self._initial_load()
        return await self._read_from(self._low - 1)

    def _entry(self, message: StoredMessage) -> Entry:
        headers = dict(message.headers)
        msg_id = headers.pop(MSG_ID_HEADER, None)
        return Entry(
            value=decode(message),
            seq=message.seq,
            time=message.time,
            key=message.key,
            headers=headers,
            ttl=message.ttl,
            msg_id=msg_id,
        )

    def _replace(
        self, messages: list[StoredMessage], *, resync: bool = False, new_stream: bool = False
    ) -> None:
        self._committed, self._by_key = {}, {}
        for message in messages:
            self._add(self._entry(message), emit=False)
        held = {e.msg_id for e in self._committed.values()}
        for msg_id, p in list(self._pending.items()):
            if msg_id in held or (p.entry.seq is not None and (new_stream or p.entry.seq <= self._after_seq)):
                self._settle(p)
        if resync:
            self._emit(Resync())

    def _add(self, entry: Entry, *, emit: bool) -> None:
        assert entry.seq is not None
        if entry.key is not None:
            old = self._by_key.get(entry.key)
            if old is not None and old < entry.seq:
                replaced = self._committed.pop(old, None)
                if replaced is not None and emit:
                    self._emit(Deleted(entry=replaced))
            self._by_key[entry.key] = entry.seq
        self._committed[entry.seq] = entry

    def _apply(self, deletes: Ranges, messages: list[StoredMessage]) -> None:
        for journal in self._journals:
            journal.extend(deletes)
        for seq in seqs_in(deletes, self._committed):
            entry = self._committed.pop(seq)
            if entry.key is not None and self._by_key.get(entry.key) == seq:
                del self._by_key[entry.key]
            self._emit(Deleted(entry=entry))
        for message in messages:
            entry = self._entry(message)
            pending = self._pending.get(entry.msg_id) if entry.msg_id is not None else None
            self._add(entry, emit=True)
            if pending is None:
                self._emit(Added(entry=entry))
                continue
            self._settle(pending)
            if not pending.announced:
                self._emit(Saved(entry=entry))
        for p in list(self._pending.values()):
            saved = p.entry.seq
            if saved is not None and (saved <= self._after_seq or in_ranges(saved, deletes)):
                self._settle(p)  # saved, then gone before the feed read it
                self._emit(Deleted(entry=p.entry))

    def _settle(self, pending: _Pending) -> None:
        """``pending`` leaves the local part of the view (its future resolves)."""
        self._pending.pop(pending.entry.msg_id or "", None)
        if not pending.done.done():
            pending.done.set_result(None)

    # ---- saving ------------------------------------------------------------------------------------

    def _unsaved_futures(self) -> list[asyncio.Future[None]]:
        return [p.done for p in self._pending.values() if not p.done.done()]

    def _drop_unsaved(self) -> None:
        for p in list(self._pending.values()):
            if not p.done.done():
                self._settle(p)
        self._outbox.clear()

    def _take_batch(self) -> list[tuple[_Pending, Write]]:
        batch = batch_of(self._outbox, lambda p: p.write)
        for _ in batch:
            self._outbox.popleft()
        return batch

    def _unsend(self, tokens: list[_Pending]) -> None:
        self._outbox.extendleft(reversed([p for p in tokens if p.entry.msg_id in self._pending]))

    def _refuse(self, tokens: list[_Pending], error: Exception) -> None:
        for p in tokens:
            if p.entry.msg_id in self._pending:
                self._settle(p)
                self._emit(Reject(entry=p.entry, error=error))

    async def _saved(self, results: list[tuple[_Pending, SetResult | PersistError]]) -> None:
        for p, result in results:
            if p.entry.msg_id not in self._pending:
                continue  # the feed showed it already
            if not isinstance(result, SetResult):
                self._refuse([p], result)
                continue
            saved = msgspec.structs.replace(p.entry, seq=result.seq, time=result.time)
            p.entry, p.announced = saved, True
            if not p.done.done():
                p.done.set_result(None)
            self._emit(Saved(entry=saved))
            if result.seq <= self._after_seq:  # the feed passed it without showing it: gone
                self._settle(p)
                self._emit(Deleted(entry=saved))
