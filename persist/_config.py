"""A stream's configuration: its limits, discard policy, TTL switch, durability and kind.

**Unlimited is -1.** Every numeric limit (``max_msgs``, ``max_age``, ``max_bytes``, ``max_msg_size``,
``max_msgs_per_second``, ``max_bytes_per_second``, ``duplicate_window``) takes a positive value or
:data:`UNLIMITED` (-1), which is also its default. Zero and other negatives are refused with
:class:`~persist.BadConfig`: 0 reads as "unlimited" in some systems (JetStream's ``max_age``) and as
"nothing allowed" in others, so persist accepts neither reading. ``max_memory`` is the exception:
an ephemeral stream lives in RAM, so its cap is always finite (positive, default 64 MiB).

**Durability** (``sync``, the SQLite ``synchronous`` pragma in WAL mode) and the writes each setting
can lose *after they were acknowledged*:

==========  ==================================================================================
``full``    (default) none. Every commit is fsynced before the ack, so acknowledged writes
            survive a process kill, an OS crash and a power loss.
``normal``  on an OS crash or power loss, the transactions committed since the last WAL checkpoint
            (by default, up to ~1000 pages of WAL) may be lost; the database stays consistent.
``off``     on an OS crash or power loss, anything not yet written back by the OS (seconds of
            writes), and the database file may be corrupt.
==========  ==================================================================================

A process crash (``kill -9``) loses no committed transaction under *any* setting: a committed
transaction is in the OS page cache, which outlives the process (measured: hundreds of thousands of
acknowledged commits over repeated ``kill -9`` s, none lost). Only the OS going down separates the
three. ``sync`` means nothing for an ephemeral
stream, which loses everything when its process stops.

Configs are frozen :class:`msgspec.Struct` s. Construct them directly (validated in
``__post_init__``), from untrusted data with :meth:`StreamConfig.from_dict` (types checked too), or
change one with :meth:`StreamConfig.merge` (what the service's ``config`` operation does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final, Literal, TypeVar

import msgspec

from ._errors import BadConfig

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_MAX_MEMORY",
    "MAX_HEADER_BYTES",
    "MAX_KEY_BYTES",
    "MAX_MESSAGE_BYTES",
    "UNLIMITED",
    "Discard",
    "StreamConfig",
    "SyncMode",
]

UNLIMITED: Final = -1
"""The value of a limit that does not apply."""

DEFAULT_MAX_MEMORY: Final = 64 * 1024 * 1024
"""Default memory cap of an ephemeral stream, in bytes (payloads, keys and headers)."""

DEFAULT_DUPLICATE_WINDOW: Final = 120.0
"""Default msg-id dedup window in seconds (JetStream's default; a client retries well within it)."""

MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024
"""Hard bound on one message's size (:func:`persist.message_size`), whatever the config says.

The engine holds a whole message in memory to compress it, and the service while reassembling its
chunks; larger data belongs in files. Over it: :class:`~persist.TooLarge`.
"""

MAX_KEY_BYTES: Final = 4096
"""Hard bound on a key's UTF-8 size."""

MAX_HEADER_BYTES: Final = 64 * 1024
"""Hard bound on a message's headers (sum of the UTF-8 sizes of names and values)."""

Discard = Literal["old", "new"]
"""What a full stream does with a write: ``old`` evicts the oldest messages, ``new`` rejects it."""

SyncMode = Literal["full", "normal", "off"]
"""SQLite's ``synchronous`` setting for the stream (see the module docstring for the loss windows)."""

_T = TypeVar("_T")

_DISCARDS: Final = ("old", "new")
_SYNCS: Final = ("full", "normal", "off")
_INT_LIMITS: Final = ("max_msgs", "max_bytes", "max_msg_size", "max_msgs_per_second", "max_bytes_per_second")
_FLOAT_LIMITS: Final = ("max_age", "duplicate_window")


class StreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The configuration of one stream. Every numeric limit is positive or :data:`UNLIMITED` (-1).

    Attributes:
        max_msgs: most messages kept.
        max_age: seconds a message lives after its write time; older ones are removed by the sweep
            and hidden from reads at once.
        max_bytes: most bytes kept (sum of :func:`persist.message_size` over the messages).
        max_msg_size: largest message accepted; a larger one is rejected (whatever ``discard``).
        max_msgs_per_second: write rate (token bucket holding one second of writes).
        max_bytes_per_second: byte rate (token bucket holding one second of bytes, so it also
            rejects any single message larger than it).
        discard: when ``max_msgs``/``max_bytes``/``max_memory`` would be exceeded, ``old`` evicts the
            oldest messages to make room, ``new`` rejects the write.
        allow_msg_ttl: whether writes may carry their own ``ttl`` (refused with ``reject`` if not).
        duplicate_window: seconds a msg-id is remembered for deduplication after its write.
        sync: durability of acknowledged writes (module docstring).
        ephemeral: kept in memory only (no file), capped by ``max_memory``; fixed at creation.
        max_memory: hard byte cap of an ephemeral stream (enforced like ``max_bytes``, with the
            same ``discard`` policy); validated but unused for a persistent stream.

    Raises:
        BadConfig: naming the first bad field.
    """

    max_msgs: int = UNLIMITED
    max_age: float = float(UNLIMITED)
    max_bytes: int = UNLIMITED
    max_msg_size: int = UNLIMITED
    max_msgs_per_second: int = UNLIMITED
    max_bytes_per_second: int = UNLIMITED
    discard: Discard = "old"
    allow_msg_ttl: bool = False
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
    sync: SyncMode = "full"
    ephemeral: bool = False
    max_memory: int = DEFAULT_MAX_MEMORY

    def __post_init__(self) -> None:
        # Direct construction does not type-check, so check types here as well as values.
        for name in _INT_LIMITS:
            _check_limit(name, getattr(self, name), integer=True)
        for name in _FLOAT_LIMITS:
            _check_limit(name, getattr(self, name), integer=False)
        if self.max_msg_size != UNLIMITED and self.max_msg_size > MAX_MESSAGE_BYTES:
            raise BadConfig("max_msg_size", f"must be at most {MAX_MESSAGE_BYTES} (persist's hard limit)")
        if self.discard not in _DISCARDS:
            raise BadConfig("discard", f"must be 'old' or 'new', not {self.discard!r}")
        if self.sync not in _SYNCS:
            raise BadConfig("sync", f"must be 'full', 'normal' or 'off', not {self.sync!r}")
        for name in ("allow_msg_ttl", "ephemeral"):
            if not isinstance(getattr(self, name), bool):
                raise BadConfig(name, f"must be a bool, not {type(getattr(self, name)).__name__}")
        memory = self.max_memory
        if not _is_int(memory) or memory <= 0:
            raise BadConfig(
                "max_memory", f"must be a positive int (an ephemeral stream's cap), not {memory!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> StreamConfig:
        """Build a config from untrusted data (a decoded request, a TOML table), checking types.

        Raises:
            BadConfig: naming the bad or unknown field.
        """
        return convert_config(data, cls)

    def to_dict(self) -> dict[str, object]:
        """The config as a plain dict (every field), e.g. for the ``config`` operation's reply."""
        return msgspec.structs.asdict(self)

    def merge(self, changes: Mapping[str, object]) -> StreamConfig:
        """A new config with ``changes`` applied (fields not named keep their value).

        ``ephemeral`` cannot change: a stream is created in memory or on disk and stays so.

        Raises:
            BadConfig: for an unknown field, a bad value, or a change of ``ephemeral``.
        """
        if not isinstance(changes, Mapping):
            raise BadConfig("changes", f"must be a mapping, not {type(changes).__name__}")
        if "ephemeral" in changes and changes["ephemeral"] != self.ephemeral:
            raise BadConfig("ephemeral", "cannot change after the stream is created")
        merged = self.to_dict()
        merged.update(changes)
        return self.from_dict(merged)

    @property
    def byte_cap(self) -> int:
        """The byte cap in force: ``max_bytes``, and also ``max_memory`` for an ephemeral stream."""
        if not self.ephemeral:
            return self.max_bytes
        if self.max_bytes == UNLIMITED:
            return self.max_memory
        return min(self.max_bytes, self.max_memory)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_limit(name: str, value: object, *, integer: bool) -> None:
    if integer:
        ok = _is_int(value)
    else:
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]
    kind = "an int" if integer else "a finite number"
    if not ok:
        raise BadConfig(name, f"must be {kind}, not {value!r}")
    assert isinstance(value, int | float)
    if value != UNLIMITED and value <= 0:
        raise BadConfig(name, f"must be positive, or {UNLIMITED} for unlimited, not {value!r}")


_AT_PATH: Final = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$")
_UNKNOWN: Final = re.compile(
    r"^Object contains unknown field `(?P<field>[^`]*)`(?: - at `\$(?P<path>[^`]*)`)?$"
)


def convert_config(data: object, kind: type[_T], prefix: str = "") -> _T:
    """``msgspec.convert(data, kind)``, every failure translated to :class:`BadConfig`.

    The field of the error is the dotted path of the offending value, under ``prefix``.
    """
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        cause = exc.__cause__
        if isinstance(cause, BadConfig):  # raised by a __post_init__
            if prefix:
                raise BadConfig(f"{prefix}.{cause.field}", cause.reason) from None
            raise cause from None
        raise _translate(str(exc), prefix) from None


def _translate(message: str, prefix: str) -> BadConfig:
    unknown = _UNKNOWN.match(message)
    if unknown:
        path = (unknown.group("path") or "") + "." + unknown.group("field")
        return BadConfig(_dotted(prefix, path), "unknown field")
    at = _AT_PATH.match(message)
    if at:
        return BadConfig(_dotted(prefix, at.group("path")), at.group("reason"))
    return BadConfig(prefix or "config", message)


def _dotted(prefix: str, path: str) -> str:
    """``prefix`` joined with msgspec's ``.a.b[0]`` path, without a leading dot."""
    joined = prefix + path
    return joined.lstrip(".") or "config"
