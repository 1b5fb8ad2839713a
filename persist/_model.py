"""The reference model of one stream (and KV): the semantics the SQLite engine must implement.

Pure and in memory; time is always passed in (``now``, seconds on the caller's wall clock). The engine
is tested against this model, operation by operation, so every rule below is a contract.

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
   accepted writes are remembered; the payload of a duplicate is not compared;
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

:meth:`StreamModel.update_config` applies limits to the messages already stored at once: it trims the
oldest messages down to the new ``max_msgs``/byte cap whatever ``discard`` says (``discard`` decides
only about new writes), and sweeps with the new ``max_age``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import final

import msgspec

from ._config import MAX_HEADER_BYTES, MAX_KEY_BYTES, MAX_MESSAGE_BYTES, UNLIMITED, StreamConfig
from ._errors import BadRequest, Limit, Rejected, TooLarge, WrongLastSequence

__all__ = [
    "DeleteResult",
    "Inventory",
    "Message",
    "SetResult",
    "StreamModel",
    "message_size",
]


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One stored message.

    Attributes:
        seq: its sequence number (unique in the stream, forever).
        time: the ``now`` of the write that stored it.
        key: its key, or ``None`` for a plain stream message.
        headers: the user's headers.
        payload: the payload bytes (stored compressed or not: that is the engine's business).
        ttl: its own time to live in seconds, or ``None``.
        size: :func:`message_size` of it.
    """

    seq: int
    time: float
    key: str | None
    headers: dict[str, str]
    payload: bytes
    ttl: float | None
    size: int


class SetResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of an accepted ``set``: the message's seq and time, or the original's if ``duplicate``."""

    seq: int
    time: float
    duplicate: bool = False


class DeleteResult(msgspec.Struct, frozen=True, kw_only=True):
    """The seqs a ``delete`` removed, ascending (deleting what is not there is not an error)."""

    seqs: list[int]


class Inventory(msgspec.Struct, frozen=True, kw_only=True):
    """What a stream holds at ``now``: live ``count`` and ``bytes``, and the seq range.

    ``first_seq`` is the lowest live seq (0 if empty); ``last_seq`` the last seq ever assigned.
    """

    count: int
    bytes: int
    first_seq: int
    last_seq: int


def message_size(key: str | None, headers: Mapping[str, str] | None, payload: bytes) -> int:
    """The size a message counts for in every byte limit: payload + key + header names and values (UTF-8)."""
    size = len(payload)
    if key is not None:
        size += len(key.encode())
    if headers:
        size += sum(len(name.encode()) + len(value.encode()) for name, value in headers.items())
    return size


class _Bucket:
    """A token bucket holding at most one second of ``rate``, full at first use."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp: float | None = None

    def available(self, now: float) -> float:
        if self.stamp is None:
            return self.tokens
        return min(self.rate, self.tokens + max(0.0, now - self.stamp) * self.rate)

    def take(self, now: float, cost: float) -> None:
        self.tokens = self.available(now) - cost
        self.stamp = now if self.stamp is None else max(self.stamp, now)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_now(op: str, now: object) -> float:
    if not _is_number(now):
        raise BadRequest(op, f"now must be a finite number, not {now!r}")
    assert isinstance(now, int | float)
    return float(now)


def _check_seq(op: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(op, f"{name} must be a non-negative int, not {value!r}")
    return value


def _check_utf8(op: str, name: str, text: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise BadRequest(op, f"{name} is not valid UTF-8 text") from None


def _check_key(op: str, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise BadRequest(op, f"key must be a non-empty string, not {key!r}")
    size = _check_utf8(op, "key", key)
    if size > MAX_KEY_BYTES:
        raise TooLarge("key", size, MAX_KEY_BYTES)
    return key


@final
class StreamModel:
    """One stream or KV, in memory (module docstring). Not thread-safe; never does I/O.

    Args:
        config: the stream's configuration (default: no limits).
    """

    def __init__(self, config: StreamConfig | None = None) -> None:
        self._config = config if config is not None else StreamConfig()
        self._messages: dict[int, Message] = {}  # insertion order is seq order: seqs only grow
        self._keys: dict[str, int] = {}
        self._bytes = 0
        self._last_seq = 0
        self._dedup: dict[str, SetResult] = {}
        self._msg_bucket: _Bucket | None = None
        self._byte_bucket: _Bucket | None = None
        self._reset_buckets()

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
        now = _check_now("set", now)
        data, hdrs, size = self._check_set_args(payload, key, headers, ttl, previous_seq, msg_id)
        self.sweep(now)
        if msg_id is not None and msg_id in self._dedup:
            return msgspec.structs.replace(self._dedup[msg_id], duplicate=True)
        config = self._config
        if ttl is not None and not config.allow_msg_ttl:
            raise Rejected("allow_msg_ttl", False, "this stream does not allow a per-message ttl")
        if config.max_msg_size != UNLIMITED and size > config.max_msg_size:
            raise Rejected("max_msg_size", config.max_msg_size, f"the message is {size} bytes")
        replaced = self._keys.get(key) if key is not None else None
        if previous_seq is not None:
            actual = (replaced or 0) if key is not None else self._last_seq
            if previous_seq != actual:
                raise WrongLastSequence(previous_seq, actual, key)
        self._check_rates(now, size)
        evict = self._make_room(size, replaced)

        if self._msg_bucket is not None:
            self._msg_bucket.take(now, 1)
        if self._byte_bucket is not None:
            self._byte_bucket.take(now, size)
        for seq in evict:
            self._remove(seq)
        if replaced is not None:
            self._remove(replaced)
        self._last_seq += 1
        message = Message(
            seq=self._last_seq, time=now, key=key, headers=hdrs, payload=data, ttl=ttl, size=size
        )
        self._messages[message.seq] = message
        self._bytes += size
        if key is not None:
            self._keys[key] = message.seq
        result = SetResult(seq=message.seq, time=now)
        if msg_id is not None:
            self._dedup[msg_id] = result
        return result

    def delete(
        self,
        *,
        now: float,
        seq: int | None = None,
        seqs: Iterable[int] | None = None,
        up_to: int | None = None,
        key: str | None = None,
    ) -> DeleteResult:
        """Delete by exactly one of: ``seq``, ``seqs``, every seq ``<= up_to``, or ``key``.

        Missing (or already expired) messages are skipped, not errors. ``last_seq`` does not change.

        Raises:
            BadRequest: not exactly one selector, or a malformed one.
        """
        now = _check_now("delete", now)
        given = [s for s in (seq, seqs, up_to, key) if s is not None]
        if len(given) != 1:
            raise BadRequest("delete", "give exactly one of seq, seqs, up_to, key")
        if seq is not None:
            targets = [_check_seq("delete", "seq", seq)]
        elif seqs is not None:
            if isinstance(seqs, str | bytes) or not isinstance(seqs, Iterable):
                raise BadRequest("delete", f"seqs must be a list of ints, not {seqs!r}")
            targets = sorted({_check_seq("delete", "seqs", s) for s in seqs})
        elif up_to is not None:
            limit = _check_seq("delete", "up_to", up_to)
            targets = [s for s in self._messages if s <= limit]
        else:
            found = self._keys.get(_check_key("delete", key))
            targets = [] if found is None else [found]
        self.sweep(now)
        removed = [s for s in targets if s in self._messages]
        for s in removed:
            self._remove(s)
        return DeleteResult(seqs=removed)

    def sweep(self, now: float) -> list[int]:
        """Remove every message expired at ``now`` and forget msg-ids older than the dedup window.

        Returns:
            the removed seqs, ascending.
        """
        now = _check_now("sweep", now)
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
        now = _check_now("config", now)
        new = self._config.merge(changes)
        old = self._config
        self._config = new
        if (new.max_msgs_per_second, new.max_bytes_per_second) != (
            old.max_msgs_per_second,
            old.max_bytes_per_second,
        ):
            self._reset_buckets()
        self.sweep(now)
        cap = new.byte_cap
        for seq in list(self._messages):
            over_count = new.max_msgs != UNLIMITED and len(self._messages) > new.max_msgs
            over_bytes = cap != UNLIMITED and self._bytes > cap
            if not (over_count or over_bytes):
                break
            self._remove(seq)
        return new

    # ---- reads (never mutate; expired messages are invisible) ----------------------------------

    def get(self, *, now: float, seq: int | None = None, key: str | None = None) -> Message | None:
        """The live message with ``seq``, or the live message of ``key`` (exactly one), or ``None``."""
        now = _check_now("get", now)
        if (seq is None) == (key is None):
            raise BadRequest("get", "give exactly one of seq, key")
        if key is not None:
            found = self._keys.get(_check_key("get", key))
        else:
            found = _check_seq("get", "seq", seq)
        message = self._messages.get(found) if found is not None else None
        if message is None or self._expired(message, now):
            return None
        return message

    def get_all(self, *, now: float, from_seq: int = 0) -> list[Message]:
        """Every live message with ``seq >= from_seq``, in seq order."""
        now = _check_now("get_all", now)
        start = _check_seq("get_all", "from_seq", from_seq)
        return [m for m in self._messages.values() if m.seq >= start and not self._expired(m, now)]

    def keys(self, *, now: float) -> list[str]:
        """The keys with a live message, sorted."""
        now = _check_now("keys", now)
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

    def _expired(self, message: Message, now: float) -> bool:
        max_age = self._config.max_age
        if max_age != UNLIMITED and now >= message.time + max_age:
            return True
        return message.ttl is not None and now >= message.time + message.ttl

    def _remove(self, seq: int) -> None:
        message = self._messages.pop(seq)
        self._bytes -= message.size
        if message.key is not None and self._keys.get(message.key) == seq:
            del self._keys[message.key]

    def _reset_buckets(self) -> None:
        config = self._config
        rate = config.max_msgs_per_second
        self._msg_bucket = None if rate == UNLIMITED else _Bucket(rate)
        rate = config.max_bytes_per_second
        self._byte_bucket = None if rate == UNLIMITED else _Bucket(rate)

    def _check_rates(self, now: float, size: int) -> None:
        config = self._config
        bucket = self._msg_bucket
        if bucket is not None and bucket.available(now) < 1:
            raise Rejected("max_msgs_per_second", config.max_msgs_per_second, "too many writes this second")
        bucket = self._byte_bucket
        if bucket is not None and bucket.available(now) < size:
            raise Rejected(
                "max_bytes_per_second", config.max_bytes_per_second, f"no room for {size} bytes this second"
            )

    def _byte_limit(self) -> Limit:
        config = self._config
        if config.ephemeral and (config.max_bytes == UNLIMITED or config.max_memory < config.max_bytes):
            return "max_memory"
        return "max_bytes"

    def _make_room(self, size: int, replaced: int | None) -> list[int]:
        """The seqs to evict so a message of ``size`` fits (``replaced`` goes anyway), or reject."""
        config = self._config
        cap = config.byte_cap
        count = len(self._messages) + 1
        total = self._bytes + size
        if replaced is not None:
            count -= 1
            total -= self._messages[replaced].size
        if cap != UNLIMITED and size > cap:
            raise Rejected(
                self._byte_limit(), cap, f"the message is {size} bytes, more than the whole stream may hold"
            )

        def over(count: int, total: int) -> Limit | None:
            if config.max_msgs != UNLIMITED and count > config.max_msgs:
                return "max_msgs"
            if cap != UNLIMITED and total > cap:
                return self._byte_limit()
            return None

        limit = over(count, total)
        if limit is None:
            return []
        if config.discard == "new":
            value = config.max_msgs if limit == "max_msgs" else cap
            raise Rejected(limit, value, "the stream is full (discard new)")
        evict: list[int] = []
        for seq, message in self._messages.items():
            if seq == replaced:
                continue
            evict.append(seq)
            count -= 1
            total -= message.size
            if over(count, total) is None:
                break
        return evict

    def _check_set_args(
        self,
        payload: object,
        key: object,
        headers: object,
        ttl: object,
        previous_seq: object,
        msg_id: object,
    ) -> tuple[bytes, dict[str, str], int]:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise BadRequest("set", f"payload must be bytes, not {type(payload).__name__}")
        data = bytes(payload)
        if key is not None:
            _check_key("set", key)
        hdrs: dict[str, str] = {}
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise BadRequest(
                    "set", f"headers must be a mapping of str to str, not {type(headers).__name__}"
                )
            header_bytes = 0
            for name, value in headers.items():
                if not isinstance(name, str) or not isinstance(value, str) or not name:
                    raise BadRequest("set", f"headers must map non-empty str to str, not {name!r}: {value!r}")
                header_bytes += _check_utf8("set", "a header", name) + _check_utf8("set", "a header", value)
                hdrs[name] = value
            if header_bytes > MAX_HEADER_BYTES:
                raise TooLarge("headers", header_bytes, MAX_HEADER_BYTES)
        if ttl is not None and (not _is_number(ttl) or ttl <= 0):  # type: ignore[operator]
            raise BadRequest("set", f"ttl must be a positive number of seconds, not {ttl!r}")
        if previous_seq is not None:
            _check_seq("set", "previous_seq", previous_seq)
        if msg_id is not None:
            if not isinstance(msg_id, str) or not msg_id:
                raise BadRequest("set", f"msg_id must be a non-empty string, not {msg_id!r}")
            size = _check_utf8("set", "msg_id", msg_id)
            if size > MAX_KEY_BYTES:
                raise TooLarge("msg_id", size, MAX_KEY_BYTES)
        size = message_size(key if isinstance(key, str) else None, hdrs, data)
        if size > MAX_MESSAGE_BYTES:
            raise TooLarge("message", size, MAX_MESSAGE_BYTES)
        return data, hdrs, size
