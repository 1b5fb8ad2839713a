"""DStream: a local, ordered cache of a persist stream that publishes optimistically.

Theory of operation
-------------------

**Following and saving.** A DStream is a :class:`~persist._follower.Follower`, like a
:class:`~persist.DKV`: it reads the stream from one cursor ``(after_seq, after_delete, stream_id)``,
history then live, so no change (delete included) is missed or seen twice; one feed task applies
each page and one saver task sends the unsaved publishes in publish order, each with a msg-id so a
resend is not stored twice. Every change is pushed to each :meth:`DStream.events` iterator without
waiting, and one holding ``max_events`` unread events is cut off (:class:`~persist.TooSlow`): the
reader starts a new one and re-reads the view. :mod:`persist._follower` tells how and why; what
follows is DStream's own part.

**Applying a page.** Deletes first, then messages, a keyed one replacing the key's cached message.

**Echo.** A publish also carries its msg-id in the ``conat-msg-id`` header, because its copy in the
feed can arrive before or after the write's own reply: whichever comes first marks the local entry
saved and the other changes nothing, so a local write is never shown twice. A saved write the feed
never shows (deleted or replaced before the feed read it) leaves the view once the feed's cursor
passes its seq or a delete range covers it.

**Order of the view.** Saved messages in seq order, then unsaved local ones in publish order; since
one saver sends them in that order, a local message keeps its place when it is saved. A keyed
publish replaces the key's previous message when it is saved (until then both are shown).

**Resync.** A page with ``resync`` (the consumer fell behind the delete log, or the stream was
re-created) reloads the cached window and emits :class:`~persist.Resync`: a reader re-reads the
view instead of patching it. The window is every message from the oldest seq the view held
(:meth:`DStream.load_older` included), or, for a re-created stream, what :meth:`DStream.open` asked
for (``from_seq`` or the last ``last`` messages). A :meth:`DStream.load_older` that spans a reload
is discarded: the reloaded view is whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any, Final, cast, final

import msgspec

from conat import Client

from ._checks import check_set_args
from ._client import DEFAULT_FEED_WAIT, DEFAULT_TIMEOUT, AStream
from ._config import StreamConfig
from ._engine import StoredMessage, Write
from ._errors import BadRequest, PersistError
from ._follower import (
    DEFAULT_MAX_EVENTS,
    MSG_ID_HEADER,
    Follower,
    Ranges,
    Resync,
    batch_of,
    decode,
    in_ranges,
    new_msg_id,
    seqs_in,
)
from ._model import SetResult
from ._wire import DEFAULT_PAGE_MSGS

__all__ = [
    "Added",
    "DStream",
    "DStreamStatistics",
    "Deleted",
    "Entry",
    "Older",
    "SaveFailed",
    "Saved",
    "StreamEvent",
]


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
class SaveFailed(msgspec.Struct, frozen=True, kw_only=True):
    """A local publish was refused and left the view; nothing was stored.

    ``error`` is usually :class:`~persist.Rejected` (a limit of the stream, named by ``limit``).
    """

    entry: Entry
    error: Exception


@final
class Older(msgspec.Struct, frozen=True, kw_only=True):
    """:meth:`DStream.load_older` put ``entries`` (seq order) before the rest of the view."""

    entries: list[Entry]


StreamEvent = Added | Saved | Deleted | SaveFailed | Older | Resync


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
class DStream(Follower[StreamEvent, _Pending]):
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
            the unsaved entry (its ``msg_id`` names it in later :class:`Saved`/:class:`SaveFailed`).

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
        probe = await self._stream.read_page(0, max_msgs=1)
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
                self._emit(SaveFailed(entry=p.entry, error=error))

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
