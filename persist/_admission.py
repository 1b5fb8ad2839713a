"""Write admission: whether a stream takes a write, and what it evicts to make room (sans-IO).

The rules of steps 3 to 7 of ``set`` and the trim of ``update_config`` (:mod:`persist._model`'s
docstring is the contract), written once for both :class:`persist.StreamModel` and
:class:`persist.StreamFile`. Nothing here does I/O: a caller passes in what it knows of the stream
(its config, counts, the key's current message) and, for eviction, an iterable of its oldest messages,
which it may produce lazily (the engine passes a SQL cursor, read only as far as needed).

Each function either raises (and changes nothing) or returns its decision; the caller applies it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Final, final

from conat import TokenBucket

from ._checks import SetArgs
from ._config import UNLIMITED, StreamConfig
from ._errors import Limit, Rejected, WrongLastSequence

__all__ = ["Rates", "admit", "byte_limit", "expired_through", "trim"]


@final
class Rates:
    """The two rate limits of a stream: a message bucket and a byte bucket (``None`` if unlimited),
    each a :class:`conat.TokenBucket` holding one second of its rate, on the stream's write times.

    Args:
        config: the config whose ``max_msgs_per_second`` and ``max_bytes_per_second`` apply.
    """

    __slots__ = ("bytes", "msgs")

    def __init__(self, config: StreamConfig) -> None:
        rate = config.max_msgs_per_second
        self.msgs = None if rate == UNLIMITED else TokenBucket(rate)
        rate = config.max_bytes_per_second
        self.bytes = None if rate == UNLIMITED else TokenBucket(rate)

    def reconfigured(self, old: StreamConfig, new: StreamConfig) -> Rates:
        """The rates under ``new``: these same buckets if neither rate changed, else new, full ones."""
        if (new.max_msgs_per_second, new.max_bytes_per_second) != (
            old.max_msgs_per_second,
            old.max_bytes_per_second,
        ):
            return Rates(new)
        return self

    def check(self, config: StreamConfig, now: float, size: int) -> None:
        """Raise :class:`Rejected` unless a write of ``size`` bytes has its tokens at ``now``."""
        bucket = self.msgs
        if bucket is not None and bucket.available(now) < 1:
            raise Rejected("max_msgs_per_second", config.max_msgs_per_second, "too many writes this second")
        bucket = self.bytes
        if bucket is not None and bucket.available(now) < size:
            raise Rejected(
                "max_bytes_per_second", config.max_bytes_per_second, f"no room for {size} bytes this second"
            )

    def take(self, now: float, size: int) -> None:
        """Take the tokens of an accepted write of ``size`` bytes."""
        if self.msgs is not None:
            self.msgs.take(now, 1)
        if self.bytes is not None:
            self.bytes.take(now, size)

    def copy(self) -> Rates:
        """Independent buckets in the same state (to restore if a transaction fails)."""
        other = Rates.__new__(Rates)
        other.msgs = None if self.msgs is None else self.msgs.copy()
        other.bytes = None if self.bytes is None else self.bytes.copy()
        return other


def byte_limit(config: StreamConfig) -> Limit:
    """The limit that sets ``config.byte_cap``: ``max_memory`` (ephemeral, and the lower) or ``max_bytes``."""
    if config.ephemeral and (config.max_bytes == UNLIMITED or config.max_memory < config.max_bytes):
        return "max_memory"
    return "max_bytes"


def admit(
    config: StreamConfig,
    rates: Rates,
    write: SetArgs,
    *,
    now: float,
    replaced: tuple[int, int] | None,
    last_seq: int,
    count: int,
    nbytes: int,
    oldest: Iterable[tuple[int, int]],
) -> list[int]:
    """Steps 3 to 7 of ``set``, in order: ttl allowed, ``max_msg_size``, compare-and-set, rates, capacity.

    Args:
        config: the config in force.
        rates: the stream's rate buckets.
        write: the write's checked arguments.
        now: the write's time.
        replaced: ``(seq, size)`` of the key's current live message, which the write replaces.
        last_seq: the last seq the stream ever assigned.
        count, nbytes: the live messages and bytes the stream holds.
        oldest: ``(seq, size)`` of the stream's messages, ascending; read only if eviction is needed,
            and only as far as needed.

    Returns:
        the seqs to evict (ascending; never ``replaced``, which goes anyway). The write is accepted:
        its tokens are taken from ``rates``.

    Raises:
        Rejected: a configured limit refused the write; nothing changed.
        WrongLastSequence: ``previous_seq`` did not match; nothing changed.
    """
    size, key, previous_seq = write.size, write.key, write.previous_seq
    if write.ttl is not None and not config.allow_msg_ttl:
        raise Rejected("allow_msg_ttl", False, "this stream does not allow a per-message ttl")
    if config.max_msg_size != UNLIMITED and size > config.max_msg_size:
        raise Rejected("max_msg_size", config.max_msg_size, f"the message is {size} bytes")
    replaced_seq = replaced[0] if replaced is not None else None
    if previous_seq is not None:
        actual = (replaced_seq or 0) if key is not None else last_seq
        if previous_seq != actual:
            raise WrongLastSequence(previous_seq, actual, key)
    rates.check(config, now, size)
    evict = _make_room(config, size, replaced, count, nbytes, oldest)
    rates.take(now, size)
    return evict


def _make_room(
    config: StreamConfig,
    size: int,
    replaced: tuple[int, int] | None,
    count: int,
    nbytes: int,
    oldest: Iterable[tuple[int, int]],
) -> list[int]:
    """The seqs to evict so a message of ``size`` fits (``replaced`` goes anyway), or reject."""
    cap = config.byte_cap
    count += 1
    total = nbytes + size
    replaced_seq = None
    if replaced is not None:
        replaced_seq = replaced[0]
        count -= 1
        total -= replaced[1]
    if cap != UNLIMITED and size > cap:
        raise Rejected(
            byte_limit(config), cap, f"the message is {size} bytes, more than the whole stream may hold"
        )

    def over(count: int, total: int) -> Limit | None:
        if config.max_msgs != UNLIMITED and count > config.max_msgs:
            return "max_msgs"
        if cap != UNLIMITED and total > cap:
            return byte_limit(config)
        return None

    limit = over(count, total)
    if limit is None:
        return []
    if config.discard == "new":
        value = config.max_msgs if limit == "max_msgs" else cap
        raise Rejected(limit, value, "the stream is full (discard new)")
    evict: list[int] = []
    for seq, message_size in oldest:
        if seq == replaced_seq:
            continue
        evict.append(seq)
        count -= 1
        total -= message_size
        if over(count, total) is None:
            break
    return evict


def trim(config: StreamConfig, count: int, nbytes: int, oldest: Iterable[tuple[int, int]]) -> list[int]:
    """The oldest seqs to remove so a stream fits ``config``'s ``max_msgs`` and byte cap (``update_config``).

    Whatever ``discard`` says: it decides only about new writes.

    Args:
        config: the new config.
        count, nbytes: the live messages and bytes the stream holds (after the sweep).
        oldest: ``(seq, size)`` of its messages, ascending; read only as far as needed.

    Returns:
        the seqs to remove, ascending (a prefix of ``oldest``).
    """
    cap = config.byte_cap

    def over() -> bool:
        return bool(config.max_msgs != UNLIMITED and count > config.max_msgs) or bool(
            cap != UNLIMITED and nbytes > cap
        )

    removed: list[int] = []
    if not over():
        return removed
    for seq, message_size in oldest:
        removed.append(seq)
        count -= 1
        nbytes -= message_size
        if not over():
            break
    return removed


# ---- expiry as an index range ------------------------------------------------------------------------

_SIGN: Final = 1 << 63
_INF_KEY: Final = 0x7FF0_0000_0000_0000
"""The order key of ``inf`` (and, negated, of ``-inf``); keys beyond are NaNs."""


def _key(x: float) -> int:
    """An int that orders like ``x`` among floats (adjacent floats get adjacent ints)."""
    bits: int = struct.unpack("<Q", struct.pack("<d", x))[0]
    return bits if bits < _SIGN else -(bits - _SIGN)


def _float(key: int) -> float:
    value: float = struct.unpack("<d", struct.pack("<Q", key if key >= 0 else -key + _SIGN))[0]
    return value


def expired_through(now: float, age: float) -> float:
    """The largest float ``t`` with ``t + age <= now`` in float arithmetic (``-inf`` if there is none).

    Why: the model's rule is "expired at ``now`` when ``time + age <= now``" (a msg-id's dedup window,
    a message's ``max_age``); as SQL that expression cannot use the index on ``time``, so every sweep
    would scan every row. Since ``t + age`` rounds monotonically in ``t``, the rule is exactly
    ``time <= expired_through(now, age)``: one index range, which a sweep with nothing to remove
    touches no row of, and which agrees with the model to the last bit (no slack to tune: a relative
    slack of 1e-6 on an epoch time is ~30 minutes, which made every sweep scan every msg-id of the
    window). Found by a search over the floats near ``now - age`` (a few dozen steps at most).
    """
    if not (math.isfinite(now) and math.isfinite(age)):
        raise ValueError(f"expired_through needs finite numbers, not {now!r}, {age!r}")

    def expired(key: int) -> bool:
        return _float(key) + age <= now

    start = _key(now - age) if math.isfinite(now - age) else -_INF_KEY
    step = 1
    if expired(start):  # search upwards for a key that is not expired
        while not (start + step >= _INF_KEY or not expired(start + step)):
            step *= 2
        lo, hi = start + step // 2, min(start + step, _INF_KEY)
    else:  # downwards for one that is
        while not (start - step <= -_INF_KEY or expired(start - step)):
            step *= 2
        lo, hi = max(start - step, -_INF_KEY), start - step // 2
        if not expired(lo):
            return -math.inf
    while hi - lo > 1:  # expired(lo) and not expired(hi)
        mid = (lo + hi) // 2
        if expired(mid):
            lo = mid
        else:
            hi = mid
    return _float(lo)
