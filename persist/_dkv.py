"""DKV: a local cache of a persist key-value store, with optimistic writes and a merge hook.

Theory of operation
-------------------

**Cache and overlay.** The cache holds, per key, the last message the feed reported (value, seq,
tombstone or not); it follows the store exactly as a :class:`~persist.DStream` does (same cursor,
same feed task, same saver: see :mod:`persist._follower`). Local writes sit in an overlay above it
until they are saved, and reads look at the overlay first, so a write is visible at once. A key
has at most one write in flight; writes made meanwhile are folded into the next one.

**Who wins.** Without a merge hook a write is a plain set, so the last write the service commits
wins, and every cache converges to it: a message whose seq is not above the one held for its key
(the feed's echo of a write whose reply came first, say) changes nothing. With a merge hook a write
is a compare-and-set on the seq its edit was based on. If another writer got there first, the
service refuses it (:class:`~persist.WrongLastSequence`); the saver reads the key's current message
and sends ``merge(key, local, remote, prev)`` (``prev``: the value the edit was based on) as a new
compare-and-set on the remote seq, until one succeeds. So no concurrent edit is lost, and the merge
sees all three versions a three-way merge needs. The hook runs on the event loop: keep it quick.

**Deletes are tombstones.** :meth:`DKV.delete` writes a keyed message marked by the
``conat-deleted`` header, with a TTL (default one day), instead of removing the key. Other caches
learn of it from the feed like any write, and a compare-and-set or merge sees "deleted"
(:data:`MISSING`) at a seq, so a stale edit of a deleted key conflicts instead of silently
recreating it. When the TTL ends, the service's sweep removes the tombstone and the feed's delete
range drops it from every cache. A tombstone's payload is the codec's ``None``, so a direct reader
(:class:`~persist.AKV`) reads a deleted key as ``None`` until then. A TTL needs ``allow_msg_ttl``: :meth:`DKV.open` sets it in the
config of a store it creates; on a store without it, tombstones are written without a TTL (kept
until the key is written again), which is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, final

import msgspec

from conat import Client, ConatError, PayloadError

from ._checks import check_set_args
from ._client import DEFAULT_FEED_WAIT, DEFAULT_TIMEOUT, AStream
from ._config import StreamConfig
from ._engine import StoredMessage, Write
from ._errors import BadRequest, PersistError, Rejected, WrongLastSequence
from ._follower import (
    DEFAULT_MAX_EVENTS,
    MSG_ID_HEADER,
    Follower,
    Ranges,
    Resync,
    batch_of,
    decode,
    new_msg_id,
    seqs_in,
)
from ._model import SetResult

__all__ = [
    "DEFAULT_TOMBSTONE_TTL",
    "DKV",
    "MISSING",
    "TOMBSTONE_HEADER",
    "DKVStatistics",
    "KVEvent",
    "KeyChanged",
    "KeyDeleted",
    "KeySaveFailed",
    "Merge",
]

log = logging.getLogger("persist.dkv")

TOMBSTONE_HEADER: Final = "conat-deleted"
DEFAULT_TOMBSTONE_TTL: Final = 86_400.0


@final
class _Missing:
    """The type of :data:`MISSING`."""

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
"""What a merge hook gets for a key with no value (never set, or deleted); returning it deletes."""

Merge = Callable[[str, Any, Any, Any], Any]
"""``merge(key, local, remote, prev) -> value``: resolve a concurrent edit (module docstring)."""


@final
class KeyChanged(msgspec.Struct, frozen=True, kw_only=True):
    """``key`` now reads ``value``: a local write (``local``, ``seq`` None until saved) or a remote one."""

    key: str
    value: Any
    seq: int | None = None
    local: bool = False


@final
class KeyDeleted(msgspec.Struct, frozen=True, kw_only=True):
    """``key`` has no value any more (deleted here if ``local``, or by another writer)."""

    key: str
    local: bool = False


@final
class KeySaveFailed(msgspec.Struct, frozen=True, kw_only=True):
    """A local write of ``key`` was refused (``value``: what it wrote, :data:`MISSING` for a delete).

    The key reads its saved value again. ``error`` is usually :class:`~persist.Rejected`, or what
    the merge hook raised.
    """

    key: str
    value: Any
    error: Exception


KVEvent = KeyChanged | KeyDeleted | KeySaveFailed | Resync


@final
class DKVStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one :class:`DKV`.

    Attributes:
        keys: keys with a value (as :meth:`DKV.keys` counts them).
        tombstones: deleted keys whose tombstone is still held.
        unsaved: keys with a local write not yet committed or refused.
        listeners: open event iterators.
        cursor: the last seq the feed has read.
        resyncs: reloads since open.
        conflicts: compare-and-set refusals resolved by the merge hook.
    """

    keys: int
    tombstones: int
    unsaved: int
    listeners: int
    cursor: int
    resyncs: int
    conflicts: int


class _Item(NamedTuple):
    value: Any  # MISSING for a tombstone
    seq: int


class _Edit:
    """The local write of one key, until it is committed (or refused)."""

    __slots__ = (
        "base",
        "base_seq",
        "done",
        "msg_id",
        "no_ttl",
        "payload",
        "sent",
        "sent_value",
        "value",
        "version",
    )

    def __init__(self, base: Any, base_seq: int, done: asyncio.Future[None]) -> None:
        self.base = base  # the value this edit was based on (merge's ``prev``)
        self.base_seq = base_seq  # its seq: what the compare-and-set expects (0: no message)
        self.done = done
        self.value: Any = MISSING
        self.payload = b""
        self.msg_id = ""
        self.version = 0
        self.sent = 0  # the version in flight (or last sent)
        self.sent_value: Any = MISSING
        self.no_ttl = False

    @property
    def deleted(self) -> bool:
        return self.value is MISSING


_OPEN_TOKEN: Final = object()


@final
class DKV(Follower[KVEvent, str]):
    """A local cache of a persist key-value store with optimistic writes (module docstring).

    Open with :meth:`open` (or :meth:`from_stream`), close with :meth:`aclose` or ``async with``.
    Reads (:meth:`get`, :meth:`keys`, :meth:`items`, ``in``, ``len``) never do I/O.
    """

    _kind = "dkv"

    def __init__(
        self,
        stream: AStream,
        *,
        merge: Merge | None,
        tombstone_ttl: float | None,
        wait: float,
        max_events: int,
        _token: object = None,
    ) -> None:
        if _token is not _OPEN_TOKEN:
            raise TypeError("use `await DKV.open(...)` or `await DKV.from_stream(...)`")
        if tombstone_ttl is not None and not tombstone_ttl > 0:
            raise BadRequest("dkv", f"tombstone_ttl must be positive or None, not {tombstone_ttl!r}")
        super().__init__(stream, wait=wait, max_events=max_events)
        self._merge = merge
        self._ttl = tombstone_ttl
        self._data: dict[str, _Item] = {}
        self._seq_key: dict[int, str] = {}
        self._edits: dict[str, _Edit] = {}
        self._dirty: dict[str, None] = {}  # keys with a version not sent yet, in order
        self._conflicts = 0
        try:  # what a direct reader (AKV) decodes a tombstone to: None, where the codec has it
            self._tombstone = self._codec.encode(None)
        except PayloadError:
            self._tombstone = b""

    @classmethod
    async def open(
        cls,
        client: Client,
        scope: str,
        name: str,
        *,
        merge: Merge | None = None,
        tombstone_ttl: float | None = DEFAULT_TOMBSTONE_TTL,
        config: StreamConfig | Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        encoding: str = "msgpack",
        wait: float = DEFAULT_FEED_WAIT,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> DKV:
        """Open the store ``name`` of ``scope`` (the arguments of :class:`AStream`) and load it.

        Args:
            merge: resolve concurrent edits (then writes are compare-and-set); ``None``: the last
                writer wins.
            tombstone_ttl: how long a delete's tombstone is kept (s); ``None``: for ever. Unless
                ``None``, ``config`` gets ``allow_msg_ttl=True``.
            wait: how long one feed read waits for a change (s).
            max_events: the default bound of an :meth:`events` iterator.
        """
        raw: dict[str, Any] = (
            msgspec.to_builtins(config) if isinstance(config, StreamConfig) else dict(config or {})
        )
        if tombstone_ttl is not None:
            raw["allow_msg_ttl"] = True
        stream = AStream(client, scope, name, config=raw or None, timeout=timeout, encoding=encoding)
        return await cls.from_stream(
            stream, merge=merge, tombstone_ttl=tombstone_ttl, wait=wait, max_events=max_events
        )

    @classmethod
    async def from_stream(
        cls,
        stream: AStream,
        *,
        merge: Merge | None = None,
        tombstone_ttl: float | None = DEFAULT_TOMBSTONE_TTL,
        wait: float = DEFAULT_FEED_WAIT,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> DKV:
        """Like :meth:`open`, over an existing :class:`AStream` (its codec, config and timeout).

        ``stream``'s config is used as given: without ``allow_msg_ttl``, tombstones get no TTL.
        """
        self = cls(
            stream,
            merge=merge,
            tombstone_ttl=tombstone_ttl,
            wait=wait,
            max_events=max_events,
            _token=_OPEN_TOKEN,
        )
        return await self._open()

    # ---- reads -------------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` as this client sees it (its own unsaved write first), or ``default``."""
        value = self._visible(key)
        return default if value is MISSING else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._visible(key) is not MISSING

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        """The keys with a value, sorted."""
        return sorted(k for k in self._data.keys() | self._edits.keys() if self._visible(k) is not MISSING)

    def items(self) -> dict[str, Any]:
        """Every key with its value."""
        return {k: self._visible(k) for k in self.keys()}

    def statistics(self) -> DKVStatistics:
        return DKVStatistics(
            keys=len(self.keys()),
            tombstones=sum(1 for item in self._data.values() if item.value is MISSING),
            unsaved=len(self._edits),
            listeners=len(self._events),
            cursor=self._after_seq,
            resyncs=self._resyncs,
            conflicts=self._conflicts,
        )

    def _visible(self, key: str) -> Any:
        edit = self._edits.get(key)
        if edit is not None:
            return edit.value
        item = self._data.get(key)
        return MISSING if item is None else item.value

    # ---- writes ------------------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` here at once; it is saved in the background (:meth:`save` waits for it).

        Raises:
            BadRequest, TooLarge, PayloadError: a malformed key or value (nothing changed).
            ClosedError: the store is closing.
        """
        self._check_open()
        payload = self._codec.encode(value)
        self._write(key, self._codec.decode(payload), payload)

    def delete(self, key: str) -> bool:
        """Delete ``key`` here at once (a tombstone is saved in the background); whether it had a value."""
        self._check_open()
        had = self._visible(key) is not MISSING
        if had:
            self._write(key, MISSING, self._tombstone)
        return had

    def has_unsaved_changes(self) -> bool:
        return bool(self._edits)

    def _write(self, key: str, value: Any, payload: bytes) -> None:
        deleted = value is MISSING
        check_set_args(payload, key, _headers("x", deleted), self._ttl if deleted else None, None, "x")
        edit = self._edits.get(key)
        if edit is None:
            item = self._data.get(key)
            base, base_seq = (MISSING, 0) if item is None else item
            edit = _Edit(base, base_seq, asyncio.get_running_loop().create_future())
            self._edits[key] = edit
        self._set_edit(edit, value, payload)
        self._dirty[key] = None
        self._kick_saver()
        self._emit(
            KeyDeleted(key=key, local=True) if deleted else KeyChanged(key=key, value=value, local=True)
        )

    @staticmethod
    def _set_edit(edit: _Edit, value: Any, payload: bytes) -> None:
        edit.value, edit.payload = value, payload
        edit.version += 1
        edit.msg_id = new_msg_id()

    # ---- loading and following ---------------------------------------------------------------------

    async def _initial_load(self) -> list[StoredMessage]:
        return await self._read_from(0)

    async def _reload_messages(self, new_stream: bool) -> list[StoredMessage]:
        return await self._read_from(0)

    def _replace(
        self, messages: list[StoredMessage], *, resync: bool = False, new_stream: bool = False
    ) -> None:
        self._data, self._seq_key = {}, {}
        for message in messages:
            if message.key is not None:
                self._hold(message.key, _item(message))
        if resync:
            self._emit(Resync())

    def _hold(self, key: str, item: _Item) -> _Item | None:
        """Hold ``item`` for ``key`` unless a newer one is held; return the one it replaced."""
        held = self._data.get(key)
        if held is not None:
            if held.seq >= item.seq:
                return item  # stale: nothing changes
            del self._seq_key[held.seq]
        self._data[key] = item
        self._seq_key[item.seq] = key
        return held

    def _apply(self, deletes: Ranges, messages: list[StoredMessage]) -> None:
        for seq in seqs_in(deletes, self._seq_key):
            gone = self._seq_key.pop(seq)
            if self._data.pop(gone).value is not MISSING and gone not in self._edits:
                self._emit(KeyDeleted(key=gone))
        for message in messages:
            key = message.key
            if key is None:
                continue  # not a KV write
            item = _item(message)
            held = self._hold(key, item)
            if held is item or key in self._edits:
                continue
            if item.value is not MISSING:
                self._emit(KeyChanged(key=key, value=item.value, seq=item.seq))
            elif held is not None and held.value is not MISSING:
                self._emit(KeyDeleted(key=key))

    def _commit(self, key: str, item: _Item) -> None:
        """A write's own result: held unless the feed already passed its seq (then the feed knows)."""
        if item.seq > self._after_seq:
            self._hold(key, item)

    # ---- saving ------------------------------------------------------------------------------------

    def _unsaved_futures(self) -> list[asyncio.Future[None]]:
        return [e.done for e in self._edits.values() if not e.done.done()]

    def _drop_unsaved(self) -> None:
        for edit in self._edits.values():
            if not edit.done.done():
                edit.done.set_result(None)
        self._edits.clear()
        self._dirty.clear()

    def _take_batch(self) -> list[tuple[str, Write]]:
        batch = batch_of(list(self._dirty), self._write_of)
        for key, _ in batch:
            del self._dirty[key]
            edit = self._edits[key]
            edit.sent, edit.sent_value = edit.version, edit.value
        return batch

    def _write_of(self, key: str) -> Write:
        edit = self._edits[key]
        ttl = self._ttl if edit.deleted and not edit.no_ttl else None
        return Write(
            payload=edit.payload,
            key=key,
            headers=_headers(edit.msg_id, edit.deleted),
            encoding=self._codec.name,
            ttl=ttl,
            msg_id=edit.msg_id,
            previous_seq=edit.base_seq if self._merge is not None else None,
        )

    def _unsend(self, tokens: list[str]) -> None:
        for key in tokens:
            if key in self._edits:
                self._dirty[key] = None

    def _refuse(self, tokens: list[str], error: Exception) -> None:
        for key in tokens:
            edit = self._edits.get(key)
            if edit is None:
                continue
            self._emit(KeySaveFailed(key=key, value=edit.sent_value, error=error))
            if edit.version != edit.sent:
                continue  # a newer write of the key is judged on its own
            self._finish(key, edit)

    def _finish(self, key: str, edit: _Edit) -> None:
        del self._edits[key]
        self._dirty.pop(key, None)
        if not edit.done.done():
            edit.done.set_result(None)

    async def _saved(self, results: list[tuple[str, SetResult | PersistError]]) -> None:
        for key, result in results:
            edit = self._edits.get(key)
            if edit is None:
                continue
            if isinstance(result, SetResult):
                self._commit(key, _Item(edit.sent_value, result.seq))
                if edit.version == edit.sent:
                    self._finish(key, edit)
                    self._announce_if_changed(key, edit.sent_value, result.seq)
                else:  # written again meanwhile: the next write builds on this one
                    edit.base, edit.base_seq = edit.sent_value, result.seq
            elif isinstance(result, WrongLastSequence) and self._merge is not None:
                await self._resolve(key, edit, self._merge)
            elif isinstance(result, Rejected) and result.limit == "allow_msg_ttl" and edit.deleted:
                log.warning("%r does not allow TTLs: the tombstone of %r is kept for ever", self, key)
                edit.no_ttl = True
                self._dirty[key] = None
            else:
                self._refuse([key], result)

    def _announce_if_changed(self, key: str, written: Any, seq: int) -> None:
        """After a write left the overlay: tell readers if the store holds something newer."""
        item = self._data.get(key)
        if item is not None and item.seq == seq:
            return
        if item is None or item.value is MISSING:
            if written is not MISSING:
                self._emit(KeyDeleted(key=key))
        else:
            self._emit(KeyChanged(key=key, value=item.value, seq=item.seq))

    async def _resolve(self, key: str, edit: _Edit, merge: Merge) -> None:
        """A compare-and-set of ``key`` lost: merge with the current remote value and write again."""
        try:
            message = await self._stream.get(key=key)
        except (ConatError, OSError) as e:
            log.warning("%r: reading %r for a merge failed: %s", self, key, e)
            self._dirty[key] = None
            return
        self._conflicts += 1
        remote, remote_seq = MISSING, 0
        if message is not None:
            item = _item(message)
            self._commit(key, item)
            remote, remote_seq = item
        try:
            merged = merge(key, edit.value, remote, edit.base)
            payload = self._tombstone if merged is MISSING else self._codec.encode(merged)
        except Exception as e:  # the hook's failure refuses this write only
            log.exception("%r: merging %r failed", self, key)
            self._refuse([key], e)
            if key in self._edits:
                self._finish(key, edit)
            return
        value = MISSING if merged is MISSING else self._codec.decode(payload)
        edit.base, edit.base_seq = remote, remote_seq
        self._set_edit(edit, value, payload)
        self._dirty[key] = None
        self._emit(
            KeyDeleted(key=key, local=True)
            if value is MISSING
            else KeyChanged(key=key, value=value, local=True)
        )


def _headers(msg_id: str, deleted: bool) -> dict[str, str]:
    return {MSG_ID_HEADER: msg_id, TOMBSTONE_HEADER: "1"} if deleted else {MSG_ID_HEADER: msg_id}


def _item(message: StoredMessage) -> _Item:
    if TOMBSTONE_HEADER in message.headers:
        return _Item(MISSING, message.seq)
    return _Item(decode(message), message.seq)
