"""persist's errors: the ``PersistError`` branch of the error tree (drawn in conat._errors).

Every error carries a stable symbolic ``code`` and structured fields, and builds its own message from
them. The codes are part of the wire contract: every class the service sends is registered with
:func:`conat.register_error`, so a caller over the bus gets the same class back, rebuilt from its
fields (and also a :class:`conat.RemoteError` with the same code).

``reject`` versus ``too-large``: ``reject`` means the stream's *configuration* refused the write
(``max_msg_size``, ``max_msgs`` with discard new, a rate limit...), so another stream, or the same one
reconfigured, would accept it. ``too-large`` means the input is over a bound built into persist
(:data:`persist.MAX_MESSAGE_BYTES`, :data:`persist.MAX_KEY_BYTES`...), which no config lifts.

What to do on each: ``reject`` — slow down, shrink, or reconfigure; ``wrong-last-sequence`` — read
again and retry the compare-and-set with the new ``actual`` seq; ``bad-path``/``outside-scope``/
``too-large``/``bad-config``/``bad-request`` — fix the caller (retrying cannot help); ``not-found`` —
create the stream first; ``corrupt`` — restore from backup; ``storage`` — fix the host (free space,
permissions, the disk), then retry: a write transaction that failed was rolled back whole, so none of
its writes was stored (retry them with the same msg-ids); ``root-in-use`` — stop the other service, or
give this one another root (one persist service per root).

:class:`BadConfig`, :class:`BadRequest` and :class:`BadPath` (with :class:`OutsideScope`) are also
builtin :class:`ValueError` s, as configuration errors are throughout conat.
"""

from __future__ import annotations

from typing import Literal

from conat import ConatError, ErrorCode, register_error

__all__ = [
    "BadConfig",
    "BadPath",
    "BadRequest",
    "Corrupt",
    "Limit",
    "NotFound",
    "OutsideScope",
    "PersistError",
    "Rejected",
    "RootInUse",
    "StorageError",
    "TooLarge",
    "TooSlow",
    "WrongLastSequence",
]

Limit = Literal[
    "max_msgs",
    "max_bytes",
    "max_msg_size",
    "max_msgs_per_second",
    "max_bytes_per_second",
    "max_memory",
    "allow_msg_ttl",
]
"""The config field whose limit refused a write (:attr:`Rejected.limit`)."""


class PersistError(ConatError):
    """Base of every error persist raises. Branch on the class or on ``code``, never on the text."""

    code: ErrorCode = "persist"


@register_error
class Rejected(PersistError):
    """A configured limit refused a write; nothing was written.

    Attributes:
        limit: the config field that refused it (``"max_msgs"``, ``"max_bytes_per_second"``...).
        value: the limit's configured value.
        detail: what the write would have needed (for people).
    """

    code: ErrorCode = "reject"

    def __init__(self, limit: Limit, value: float | bool, detail: str) -> None:
        self.limit = limit
        self.value = value
        self.detail = detail
        super().__init__(f"write rejected by {limit}={value!r}: {detail}")


@register_error
class WrongLastSequence(PersistError):
    """A compare-and-set write (``previous_seq``) found another last seq; nothing was written.

    Attributes:
        expected: the ``previous_seq`` the caller gave.
        actual: the seq it was compared with (the key's last seq for a keyed write, 0 when the key
            does not exist; the stream's last assigned seq otherwise).
        key: the key of a keyed write, else ``None``.
    """

    code: ErrorCode = "wrong-last-sequence"

    def __init__(self, expected: int, actual: int, key: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        self.key = key
        what = f"key {key!r}" if key is not None else "stream"
        super().__init__(f"wrong last sequence for {what}: expected {expected}, actual {actual}")


@register_error
class BadPath(PersistError, ValueError):
    """A storage path is malformed: unknown scope kind, bad id, empty/absolute/overlong name, NUL...

    Attributes:
        path: the path as given (``repr`` of it if it was not a string).
        reason: what is wrong with it.
    """

    code: ErrorCode = "bad-path"

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"bad storage path {path!r}: {reason}")


@register_error
class OutsideScope(BadPath):
    """A storage path climbs out of its scope (``..``), or a resolved file falls outside its root.

    Attributes:
        path: the path as given.
        scope: the scope (``projects/<id>``, ``hub``) or root directory it had to stay inside.
    """

    code: ErrorCode = "outside-scope"

    def __init__(self, path: str, scope: str) -> None:
        self.scope = scope
        super().__init__(path, f"it is outside its scope {scope!r}")


@register_error
class TooLarge(PersistError, ValueError):
    """Input is over a bound built into persist (not a configured limit: that is :class:`Rejected`).

    Attributes:
        what: what is too large (``"message"``, ``"key"``, ``"headers"``).
        size: its size in bytes.
        limit: the bound, in bytes.
    """

    code: ErrorCode = "too-large"

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"{what} of {size} bytes is over persist's limit of {limit} bytes")


@register_error
class BadConfig(PersistError, ValueError):
    """A configuration field has a bad type or value, or is unknown.

    Attributes:
        field: the field's name or path (``"max_msgs"``, ``"sync.projects"``, ``"CONAT_SYNC_HUB"``).
        reason: what is wrong with it.
    """

    code: ErrorCode = "bad-config"

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"bad config {field}: {reason}")


@register_error
class BadRequest(PersistError, ValueError):
    """An operation's arguments are malformed (wrong type, conflicting selectors, negative seq...).

    Attributes:
        op: the operation (``"set"``, ``"delete"``...).
        reason: what is wrong.
    """

    code: ErrorCode = "bad-request"

    def __init__(self, op: str, reason: str) -> None:
        self.op = op
        self.reason = reason
        super().__init__(f"bad {op} request: {reason}")


@register_error
class NotFound(PersistError):
    """The stream (or another named object) does not exist.

    Attributes:
        what: what was looked for (``"stream projects/<id>/x"``).
    """

    code: ErrorCode = "not-found"

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} not found")


@register_error
class Corrupt(PersistError):
    """Stored data cannot be read back (bad row, undecodable payload, failed integrity check).

    Attributes:
        what: the file or object (``path``, ``"seq 17 of projects/<id>/x"``).
        detail: what was found wrong.
    """

    code: ErrorCode = "corrupt"

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"{what} is corrupt: {detail}")


@register_error
class StorageError(PersistError):
    """The disk or file system failed under an operation (disk full, file too large, I/O error,
    permission denied, database locked...); not corruption, which is :class:`Corrupt`.

    The data already stored is unaffected: a write transaction that fails is rolled back whole.

    Attributes:
        operation: what was being done (``"open"``, ``"read"``, ``"write"``, ``"quarantine"``).
        path: the stream's file (``"ephemeral stream"`` for a memory-only one).
        detail: the underlying error (``"SQLITE_FULL: database or disk is full"``).
    """

    code: ErrorCode = "storage"

    def __init__(self, operation: str, path: str, detail: str) -> None:
        self.operation = operation
        self.path = path
        self.detail = detail
        super().__init__(f"storage failure during {operation} on {path}: {detail}")


@register_error
class RootInUse(PersistError):
    """Another persist service holds the storage root, so this one may not start on it.

    Two services on one root would both write its stream files (:mod:`persist._rootlock`).

    Attributes:
        root: the storage root.
        holder: who holds it (``"pid 4242 on host-a since 2026-01-01T00:00:00+00:00"``).
    """

    code: ErrorCode = "root-in-use"

    def __init__(self, root: str, holder: str) -> None:
        self.root = root
        self.holder = holder
        super().__init__(
            f"the storage root {root} is in use by another persist service ({holder}):"
            " stop it, or give this one another root (one persist service per root)"
        )


class TooSlow(PersistError):
    """A reader of change events fell behind its bounded buffer and was cut off.

    The cache it reads from stays consistent (it applies every change whether or not events are
    read); only this iterator ended. Start a new one and read the current state from the cache.

    Attributes:
        what: the stream whose events were dropped.
        limit: the buffer's bound, in events.
    """

    code: ErrorCode = "too-slow"

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(f"change events of {what} were not read fast enough (more than {limit} pending)")
