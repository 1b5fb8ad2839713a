"""The persist service's wire protocol: one request struct per operation, msgpack-encoded.

A request goes to ``persist.<scope>.api`` (:func:`api_subject`); its body is one of the structs
below, told apart by the ``op`` tag. A success reply is the operation's result (msgpack); a refusal
is an error reply whose code is the :class:`~persist.PersistError` code and whose data carries the
error's fields, so the client raises the same typed error the engine raised (every persist error
the service sends is registered with :func:`conat.register_error`).

``stream`` is the stream's name inside the scope (``"bootlog"``, ``"patches/a.txt"``); the scope comes
from the subject, so a caller allowed on one scope can never name another's stream.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from subjects import persist_scope

from ._engine import DEFAULT_PAGE_BYTES, DEFAULT_PAGE_MSGS, Write
from ._model import Inventory

__all__ = [
    "DEFAULT_PAGE_BYTES",
    "DEFAULT_PAGE_MSGS",
    "MAX_PAGE_BYTES",
    "MAX_INVENTORY",
    "MAX_KEYS",
    "MAX_PAGE_MSGS",
    "MAX_WAIT",
    "ConfigOp",
    "DeleteOp",
    "GetOp",
    "InventoryOp",
    "KeysOp",
    "ReadOp",
    "Request",
    "ResetOp",
    "ResetResult",
    "SetManyOp",
    "SetOp",
    "StreamInventory",
    "api_subject",
]

MAX_PAGE_MSGS: Final = 10_000
"""The service's cap on ``ReadOp.max_msgs``: a larger request gets pages of this many at most."""
MAX_PAGE_BYTES: Final = 8 * 1024 * 1024
"""The service's cap on ``ReadOp.max_bytes``: whatever a client asks, a page it is sent holds at most
this many bytes of messages (or one message, if that one is larger)."""
MAX_KEYS: Final = 10_000
"""Most keys in one reply of ``keys`` (``KeysOp.limit`` is capped at it)."""
MAX_INVENTORY: Final = 1000
"""Most streams in one page of a listing (``InventoryOp.limit`` is capped at it)."""
MAX_WAIT: Final = 60.0
"""The longest a changefeed read waits for a change before answering with an empty page (s)."""


class _Op(msgspec.Struct, frozen=True, kw_only=True, tag_field="op", forbid_unknown_fields=True):
    stream: str


class SetOp(_Op, frozen=True, tag="set"):
    """Write one message. ``config`` is the config of the stream if this write creates it."""

    payload: bytes
    key: str | None = None
    headers: dict[str, str] | None = None
    encoding: str = "msgpack"
    ttl: float | None = None
    msg_id: str | None = None
    previous_seq: int | None = None
    config: dict[str, Any] | None = None


class SetManyOp(_Op, frozen=True, tag="set_many"):
    """Write several messages in one transaction; each is judged on its own."""

    writes: list[Write]
    config: dict[str, Any] | None = None


class GetOp(_Op, frozen=True, tag="get"):
    seq: int | None = None
    key: str | None = None


class DeleteOp(_Op, frozen=True, tag="delete"):
    """Delete by exactly one of ``seq``, ``seqs``, ``up_to`` (every seq at or below), ``key``.

    With ``msg_id``, a retry gets the first delete's result (what it removed) and deletes nothing.
    """

    seq: int | None = None
    seqs: list[int] | None = None
    up_to: int | None = None
    key: str | None = None
    msg_id: str | None = None


class ReadOp(_Op, frozen=True, tag="read"):
    """One page of changes after a cursor: ``get_all`` (``wait=0``) and the changefeed (``wait>0``).

    With ``wait`` > 0 and nothing to report, the service holds the request until a change commits
    or ``wait`` seconds pass (a long poll), so history and live updates come through the same
    cursor: no gap, no duplicate, and a restart of the service only delays the next page.
    ``max_msgs`` and ``max_bytes`` bound a page (by message count and by bytes, the messages'
    sizes summed; at least one message is always sent); the service caps both
    (:data:`MAX_PAGE_MSGS`, :data:`MAX_PAGE_BYTES`) and reads no more than the page it sends.
    """

    after_seq: int = 0
    after_delete: int | None = None
    stream_id: str | None = None
    max_msgs: int = DEFAULT_PAGE_MSGS
    max_bytes: int = DEFAULT_PAGE_BYTES
    wait: float = 0.0
    config: dict[str, Any] | None = None


class KeysOp(_Op, frozen=True, tag="keys"):
    """A page of the stream's keys, sorted, after ``after``: at most ``limit`` keys (capped at
    :data:`MAX_KEYS`) and :data:`MAX_PAGE_BYTES` of key text; page on with the last key."""

    after: str | None = None
    limit: int = MAX_KEYS


class ConfigOp(_Op, frozen=True, tag="config"):
    """Read the config (``changes`` is None) or change it (then trim and sweep under it)."""

    changes: dict[str, Any] | None = None


class ResetOp(_Op, frozen=True, tag="reset"):
    """An operator's reset of a quarantined (corrupt) stream: it starts again empty, or with
    ``restore`` from its archive copy (:meth:`persist.StreamStore.reset`). A sound stream is refused."""

    restore: bool = False


class ResetResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a reset did: the paths it moved aside, and whether the archive was restored."""

    moved_aside: list[str]
    restored: bool


class InventoryOp(msgspec.Struct, frozen=True, kw_only=True, tag_field="op", tag="inventory"):
    """List the streams of the scope whose name starts with ``prefix`` and sorts after ``after``,
    in name order, at most ``limit`` of them (capped at :data:`MAX_INVENTORY`): page with ``after``
    set to the last name of the previous page."""

    prefix: str = ""
    after: str | None = None
    limit: int = MAX_INVENTORY


class StreamInventory(msgspec.Struct, frozen=True, kw_only=True):
    """One stream of a scope: its name, what it holds, and its limits; or why they cannot be read.

    Attributes:
        name: the stream's name in its scope.
        inventory, config: its counts and config (``None`` if ``error``).
        error: the code of what is wrong with it (``corrupt``, ``storage``), else ``None``: one bad
            stream is listed as such, and does not fail the listing.
        message: the error's message.
        error_data: the error's fields, so a client rebuilds the typed error (``Corrupt.detail``).
    """

    name: str
    inventory: Inventory | None = None
    config: dict[str, Any] | None = None
    error: str | None = None
    message: str | None = None
    error_data: dict[str, Any] | None = None


Request = SetOp | SetManyOp | GetOp | DeleteOp | ReadOp | KeysOp | ConfigOp | ResetOp | InventoryOp

REQUEST_DECODER: Final = msgspec.msgpack.Decoder(Request)


def api_subject(scope: str) -> str:
    """``persist.<scope>.api``: where the persist service of ``scope`` takes requests."""
    return persist_scope(scope, "api")
