"""The reference model of one stream (and KV): the semantics the SQLite engine must implement.

Pure and in memory; time is always passed in (``now``, seconds on the caller's wall clock). The engine
is tested against this model, operation by operation, so every rule below is a contract. The argument
checks (:mod:`persist._checks`) and the admission rules of steps 3 to 7 and of the trim
(:mod:`persist._admission`) are written once and shared with the engine.

Theory of operation
-------------------

A stream holds messages ``(seq, time, key?, headers, payload, ttl?)``:

- **seq** is assigned ``last_seq + 1`` on each accepted write, starting at 1. It never decreases and is
  never reused, even after deletes, expiry or eviction (``last_seq`` remembers it).
- **key**: a keyed write deletes the key's previous message in the same step, so a key has at most
  one message (a KV is a stream of keyed writes). Unkeyed messages are only ever appended.
- **size** (:func:`message_size`) counts the payload, the key and the headers in UTF-8 bytes. Every
  byte limit (``max_msg_size``, ``max_bytes``, ``max_bytes_per_second``, ``max_memory``) uses it.
- **expiry**: a message expires at ``time + max_age`` (the config *in force*, so lowering ``max_age``
  expires old messages at once) and at ``time + ttl`` if it has its own ttl, whichever is first;
  at or after that instant it is expired. Reads at ``now`` never return expired messages, and every
  mutating operation at ``now`` (``set``, ``delete``, ``update_config``) first runs :meth:`sweep` at
  ``now``, which removes them for real (the engine does that ``DELETE`` in the write's transaction).
  Since that sweep is not observable through reads at ``now``, "a rejected write changes nothing"
  means: nothing a read at ``now`` can see.

``set`` checks, in this order, and the first failure wins (nothing is written):

1. its arguments (:class:`~persist.BadRequest`; :class:`~persist.TooLarge` over a hard bound);
2. **msg-id dedup**: a msg-id seen within ``duplicate_window`` seconds (of the original write's time)
   returns the original ``SetResult`` with ``duplicate=True`` and writes nothing, *before* any other
   check, so a retried compare-and-set that succeeded the first time reports success rather than a
   conflict. The window is bounded (default 120 s, -1 for forever); it holds even if the original
   message was since deleted or overwritten, so a late retry cannot resurrect an old value. Only
   accepted writes are remembered; the payload of a duplicate is not compared. A msg-id names one
   operation: one used by a ``delete`` (below) refuses a ``set`` (``bad-request``), and the other way
   round;
3. a ``ttl`` when ``allow_msg_ttl`` is off: ``reject`` (limit ``allow_msg_ttl``);
4. ``max_msg_size``: ``reject``;
5. **compare-and-set** (``previous_seq``): for a keyed write it is compared with the seq of the key's
   current (unexpired) message, 0 meaning "the key must not exist"; for an unkeyed write with the
   stream's ``last_seq`` (the last seq ever assigned, so 0 means "nothing was ever written"; deletes
   do not change it). A mismatch raises :class:`~persist.WrongLastSequence` carrying the actual seq;
6. **rate limits**: two token buckets, one for messages and one for bytes, each holding at most one
   second of its rate and full at first use, refilled continuously from the ``now`` of the previous
   accepted write (time going backwards refills nothing). A write needs 1 message token and ``size``
   byte tokens from both, else ``reject``; so a message larger than ``max_bytes_per_second`` is always
   rejected. Only accepted writes take tokens. A config change of a rate starts a new, full bucket;
7. **capacity** (``max_msgs``, and the byte cap: ``max_bytes``, plus ``max_memory`` if ephemeral),
   counted after the key's previous message is replaced: a message larger than the byte cap is
   rejected; otherwise with ``discard="new"`` a write that would go over is rejected, and with
   ``discard="old"`` the oldest messages (lowest seqs) are evicted until it fits.

``delete`` may carry a msg-id too, remembered the same way: a delete retried with it (its reply was
lost, say) gets the first delete's result again and deletes nothing, so "did it delete something?"
has one answer however often it is asked.

:meth:`StreamModel.update_config` applies limits to the messages already stored at once: it trims the
oldest messages down to the new ``max_msgs``/byte cap whatever ``discard`` says (``discard`` decides
only about new writes), and sweeps with the new ``max_age``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar, final

import msgspec

from conat import get_codec

from ._admission import Rates, admit, trim
from ._checks import (  # message_size: defined with the checks, exported here (persist.message_size)
    check_delete_args,
    check_now,
    check_selector,
    check_seq,
    check_set_args,
    message_size,
)
from ._config import UNLIMITED, StreamConfig
from ._errors import BadRequest

T = TypeVar("T")

DEFAULT_ENCODING: Final = "msgpack"
"""The encoding label of a payload written without one (conat's default codec)."""

__all__ = [
    "DEFAULT_ENCODING",
    "DeleteResult",
    "Inventory",
    "SetResult",
    "StoredMessage",
    "StreamModel",
    "message_size",
]


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One stored message, as the model, the engine and the service's clients give it back.

    Attributes:
        seq: its sequence number (unique in the stream, forever).
        time: the ``now`` of the write that stored it.
        key: its key, or ``None`` for a plain stream message.
        headers: the user's headers.
        payload: the payload bytes (stored compressed or not: that is the engine's business).
        ttl: its own time to live in seconds, or ``None``.
        size: :func:`message_size` of it.
        encoding: the payload's codec label, opaque to persist (the client's codec name,
            ``"msgpack"`` by default); :meth:`value` decodes with it.
    """

    seq: int
    time: float
    key: str | None
    headers: dict[str, str]
    payload: bytes
    ttl: float | None
    size: int
    encoding: str = DEFAULT_ENCODING

    def value(self, type_: type[T] | None = None) -> Any:
        """The payload decoded with its ``encoding`` (a conat codec), into ``type_`` if given.

        Raises:
            conat.PayloadError: the payload does not decode (or not into ``type_``).
        """
        codec = get_codec(self.encoding)
        return codec.decode(self.payload) if type_ is None else codec.decode_as(self.payload, type_)


class SetResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of an accepted ``set``: the message's seq and time, or the original's if ``duplicate``."""

    seq: int
    time: float
    duplicate: bool = False


class DeleteResult(msgspec.Struct, frozen=True, kw_only=True):
    """The seqs a ``delete`` removed, ascending (deleting what is not there is not an error)."""

    seqs: list[int]


class _Deleted(msgspec.Struct, frozen=True, kw_only=True):
    """What a delete's msg-id is remembered with: when, and what it removed."""

    time: float
    result: DeleteResult


class Inventory(msgspec.Struct, frozen=True, kw_only=True):
    """What a stream holds at ``now``: live ``count`` and ``bytes``, and the seq range.

    ``first_seq`` is the lowest live seq (0 if empty); ``last_seq`` the last seq ever assigned.
    """

    count: int
    bytes: int
    first_seq: int
    last_seq: int


@final
class StreamModel:
    """One stream or KV, in memory (module docstring). Not thread-safe; never does I/O.

    Args:
        config: the stream's configuration (default: no limits).
    """

    def __init__(self, config: StreamConfig | None = None) -> None:
        self._config = config if config is not None else StreamConfig()
        self._messages: dict[int, StoredMessage] = {}  # insertion order is seq order: seqs only grow
        self._keys: dict[str, int] = {}
        self._bytes = 0
        self._last_seq = 0
        self._dedup: dict[str, SetResult | _Deleted] = {}
        self._rates = Rates(self._config)

    @property
    def config(self) -> StreamConfig:
        return self._config

    # ---- writes -------------------------------------------------------------------------------

    def set(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        now: float,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float | None = None,
        previous_seq: int | None = None,
        msg_id: str | None = None,
    ) -> SetResult:
        """Write one message (the order of checks is in the module docstring).

        Returns:
            the new message's seq and time; for a duplicate msg-id, the original's with ``duplicate``.

        Raises:
            BadRequest: a malformed argument.
            TooLarge: key, headers or message over persist's hard bounds.
            Rejected: a configured limit refused the write (``limit`` names it).
            WrongLastSequence: ``previous_seq`` did not match.
        """
        now = check_now("set", now)
        args = check_set_args(payload, key, headers, ttl, previous_seq, msg_id)
        self.sweep(now)
        if args.msg_id is not None and args.msg_id in self._dedup:
            seen = self._dedup[args.msg_id]
            if isinstance(seen, _Deleted):
                raise BadRequest("set", f"msg_id {args.msg_id!r} was used by a delete")
            return msgspec.structs.replace(seen, duplicate=True)
        current = self._keys.get(args.key) if args.key is not None else None
        evict = admit(
            self._config,
            self._rates,
            args,
            now=now,
            replaced=None if current is None else (current, self._messages[current].size),
            last_seq=self._last_seq,
            count=len(self._messages),
            nbytes=self._bytes,
            oldest=((seq, m.size) for seq, m in self._messages.items()),
        )
        # ---- every check passed: from here on, change things ----
        for seq in evict:
            self._remove(seq)
        if current is not None:
            self._remove(current)
        self._last_seq += 1
        message = StoredMessage(
            seq=self._last_seq,
            time=now,
            key=args.key,
            headers=args.headers,
            payload=args.payload,
            ttl=args.ttl,
            size=args.size,
        )
        self._messages[message.seq] = message
        self._bytes += args.size
        if args.key is not None:
            self._keys[args.key] = message.seq
        result = SetResult(seq=message.seq, time=now)
        if args.msg_id is not None:
            self._dedup[args.msg_id] = result
        return result

    def delete(
        self,
        *,
        now: float,
        seq: int | None = None,
        seqs: Iterable[int] | None = None,
        up_to: int | None = None,
        key: str | None = None,
        msg_id: str | None = None,
    ) -> DeleteResult:
        """Delete by exactly one of: ``seq``, ``seqs``, every seq ``<= up_to``, or ``key``.

        Missing (or already expired) messages are skipped, not errors. ``last_seq`` does not change.
        With a ``msg_id`` seen within ``duplicate_window``, returns the first delete's result and
        deletes nothing (module docstring).

        Raises:
            BadRequest: not exactly one selector, or a malformed one; a msg-id used by a ``set``.
        """
        now = check_now("delete", now)
        selector = check_delete_args(seq, seqs, up_to, key, msg_id)
        if selector.targets is not None:
            targets = selector.targets
        elif selector.up_to is not None:
            limit = selector.up_to
            targets = [s for s in self._messages if s <= limit]
        else:
            assert selector.key is not None
            found = self._keys.get(selector.key)
            targets = [] if found is None else [found]
        self.sweep(now)
        if selector.msg_id is not None and selector.msg_id in self._dedup:
            seen = self._dedup[selector.msg_id]
            if not isinstance(seen, _Deleted):
                raise BadRequest("delete", f"msg_id {selector.msg_id!r} was used by a set")
            return seen.result
        removed = [s for s in targets if s in self._messages]
        for s in removed:
            self._remove(s)
        result = DeleteResult(seqs=removed)
        if selector.msg_id is not None:
            self._dedup[selector.msg_id] = _Deleted(time=now, result=result)
        return result

    def sweep(self, now: float) -> list[int]:
        """Remove every message expired at ``now`` and forget msg-ids older than the dedup window.

        Returns:
            the removed seqs, ascending.
        """
        now = check_now("sweep", now)
        expired = [m.seq for m in self._messages.values() if self._expired(m, now)]
        for seq in expired:
            self._remove(seq)
        window = self._config.duplicate_window
        if window != UNLIMITED:
            stale = [mid for mid, r in self._dedup.items() if r.time + window <= now]
            for mid in stale:
                del self._dedup[mid]
        return expired

    def update_config(self, changes: Mapping[str, object], *, now: float) -> StreamConfig:
        """Change the config (:meth:`StreamConfig.merge`), then trim and sweep under the new limits.

        Raises:
            BadConfig: a bad change; nothing changes.
        """
        now = check_now("config", now)
        new = self._config.merge(changes)
        self._rates = self._rates.reconfigured(self._config, new)
        self._config = new
        self.sweep(now)
        oldest = ((seq, m.size) for seq, m in self._messages.items())
        for seq in trim(new, len(self._messages), self._bytes, oldest):
            self._remove(seq)
        return new

    # ---- reads (never mutate; expired messages are invisible) ----------------------------------

    def get(self, *, now: float, seq: int | None = None, key: str | None = None) -> StoredMessage | None:
        """The live message with ``seq``, or the live message of ``key`` (exactly one), or ``None``."""
        now = check_now("get", now)
        by_seq, by_key = check_selector("get", seq, key)
        found = self._keys.get(by_key) if by_key is not None else by_seq
        message = self._messages.get(found) if found is not None else None
        if message is None or self._expired(message, now):
            return None
        return message

    def get_all(self, *, now: float, from_seq: int = 0) -> list[StoredMessage]:
        """Every live message with ``seq >= from_seq``, in seq order."""
        now = check_now("get_all", now)
        start = check_seq("get_all", "from_seq", from_seq)
        return [m for m in self._messages.values() if m.seq >= start and not self._expired(m, now)]

    def keys(self, *, now: float) -> list[str]:
        """The keys with a live message, sorted."""
        now = check_now("keys", now)
        return sorted(k for k, s in self._keys.items() if not self._expired(self._messages[s], now))

    def inventory(self, *, now: float) -> Inventory:
        """Live count and bytes at ``now``, the lowest live seq and ``last_seq``."""
        live = self.get_all(now=now)
        return Inventory(
            count=len(live),
            bytes=sum(m.size for m in live),
            first_seq=live[0].seq if live else 0,
            last_seq=self._last_seq,
        )

    # ---- internals ----------------------------------------------------------------------------

    def _expired(self, message: StoredMessage, now: float) -> bool:
        max_age = self._config.max_age
        if max_age != UNLIMITED and now >= message.time + max_age:
            return True
        return message.ttl is not None and now >= message.time + message.ttl

    def _remove(self, seq: int) -> None:
        message = self._messages.pop(seq)
        self._bytes -= message.size
        if message.key is not None and self._keys.get(message.key) == seq:
            del self._keys[message.key]
