"""The argument checks of persist's stream operations, shared by the model and the engine.

Pure functions, no I/O. :class:`persist.StreamModel` and :class:`persist.StreamFile` both call these,
so a malformed argument raises the same error from both (the engine is tested against the model).
Each check raises :class:`~persist.BadRequest` for a malformed argument and
:class:`~persist.TooLarge` for one over a hard bound (``MAX_KEY_BYTES``, ``MAX_HEADER_BYTES``,
``MAX_MESSAGE_BYTES``); ``op`` names the operation in the error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TypeGuard, final

import msgspec

from ._config import MAX_HEADER_BYTES, MAX_KEY_BYTES, MAX_MESSAGE_BYTES
from ._errors import BadRequest, TooLarge

__all__ = [
    "DeleteArgs",
    "SetArgs",
    "check_delete_args",
    "check_encoding",
    "check_key",
    "check_msg_id",
    "check_now",
    "check_selector",
    "check_seq",
    "check_set_args",
    "check_utf8",
    "is_number",
    "message_size",
]


def message_size(key: str | None, headers: Mapping[str, str] | None, payload: bytes) -> int:
    """The size a message counts for in every byte limit: payload + key + header names and values (UTF-8)."""
    size = len(payload)
    if key is not None:
        size += len(key.encode())
    if headers:
        size += sum(len(name.encode()) + len(value.encode()) for name, value in headers.items())
    return size


def is_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a finite ``int`` or ``float`` (``bool`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_now(op: str, now: object) -> float:
    """``now`` as a float. Raises :class:`BadRequest` unless it is a finite number."""
    if not is_number(now):
        raise BadRequest(op, f"now must be a finite number, not {now!r}")
    return float(now)


def check_seq(op: str, name: str, value: object) -> int:
    """``value`` (the argument ``name``) as a seq. Raises :class:`BadRequest` unless a non-negative int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(op, f"{name} must be a non-negative int, not {value!r}")
    return value


def check_utf8(op: str, name: str, text: str) -> int:
    """The UTF-8 length of ``text``. Raises :class:`BadRequest` if it cannot be encoded (lone surrogates)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise BadRequest(op, f"{name} is not valid UTF-8 text") from None


def check_key(op: str, key: object) -> str:
    """``key``, checked: a non-empty UTF-8 string of at most ``MAX_KEY_BYTES`` (else :class:`TooLarge`)."""
    if not isinstance(key, str) or not key:
        raise BadRequest(op, f"key must be a non-empty string, not {key!r}")
    size = check_utf8(op, "key", key)
    if size > MAX_KEY_BYTES:
        raise TooLarge("key", size, MAX_KEY_BYTES)
    return key


def check_encoding(op: str, encoding: object) -> str:
    """``encoding`` (the payload's codec label), checked: a non-empty UTF-8 string."""
    if not isinstance(encoding, str) or not encoding:
        raise BadRequest(op, f"encoding must be a non-empty string, not {encoding!r}")
    check_utf8(op, "encoding", encoding)
    return encoding


def check_selector(op: str, seq: object, key: object) -> tuple[int | None, str | None]:
    """The ``(seq, key)`` selector of a read, checked: exactly one of them is given (and not ``None``)."""
    if (seq is None) == (key is None):
        raise BadRequest(op, "give exactly one of seq, key")
    if key is not None:
        return None, check_key(op, key)
    return check_seq(op, "seq", seq), None


@final
class SetArgs(msgspec.Struct, frozen=True, kw_only=True):
    """The arguments of a ``set``, checked (:func:`check_set_args`).

    Attributes:
        payload: the payload, as ``bytes``.
        key: the key, or ``None``.
        headers: a copy of the headers (empty if none were given).
        ttl: the ttl as given (a positive finite number), or ``None``.
        previous_seq: the compare-and-set seq, or ``None``.
        msg_id: the msg-id, or ``None``.
        size: :func:`message_size` of the message.
    """

    payload: bytes
    key: str | None
    headers: dict[str, str]
    ttl: float | None
    previous_seq: int | None
    msg_id: str | None
    size: int


def check_set_args(
    payload: object,
    key: object,
    headers: object,
    ttl: object,
    previous_seq: object,
    msg_id: object,
) -> SetArgs:
    """Check the arguments of a ``set`` (step 1 of the model's order of checks).

    Raises:
        BadRequest: a malformed argument (the first one, in parameter order).
        TooLarge: the key, the headers, the msg-id or the whole message over persist's hard bounds.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise BadRequest("set", f"payload must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    checked_key = check_key("set", key) if key is not None else None
    hdrs: dict[str, str] = {}
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise BadRequest("set", f"headers must be a mapping of str to str, not {type(headers).__name__}")
        header_bytes = 0
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str) or not name:
                raise BadRequest("set", f"headers must map non-empty str to str, not {name!r}: {value!r}")
            header_bytes += check_utf8("set", "a header", name) + check_utf8("set", "a header", value)
            hdrs[name] = value
        if header_bytes > MAX_HEADER_BYTES:
            raise TooLarge("headers", header_bytes, MAX_HEADER_BYTES)
    checked_ttl: float | None = None
    if ttl is not None:
        if not is_number(ttl) or ttl <= 0:
            raise BadRequest("set", f"ttl must be a positive number of seconds, not {ttl!r}")
        checked_ttl = ttl
    checked_seq = check_seq("set", "previous_seq", previous_seq) if previous_seq is not None else None
    checked_id = check_msg_id("set", msg_id)
    size = message_size(checked_key, hdrs, data)
    if size > MAX_MESSAGE_BYTES:
        raise TooLarge("message", size, MAX_MESSAGE_BYTES)
    return SetArgs(
        payload=data,
        key=checked_key,
        headers=hdrs,
        ttl=checked_ttl,
        previous_seq=checked_seq,
        msg_id=checked_id,
        size=size,
    )


def check_msg_id(op: str, msg_id: object) -> str | None:
    """A msg-id: ``None``, or a non-empty string of at most ``MAX_KEY_BYTES`` in UTF-8.

    Raises:
        BadRequest: not a non-empty string.
        TooLarge: longer than ``MAX_KEY_BYTES``.
    """
    if msg_id is None:
        return None
    if not isinstance(msg_id, str) or not msg_id:
        raise BadRequest(op, f"msg_id must be a non-empty string, not {msg_id!r}")
    size = check_utf8(op, "msg_id", msg_id)
    if size > MAX_KEY_BYTES:
        raise TooLarge("msg_id", size, MAX_KEY_BYTES)
    return msg_id


@final
class DeleteArgs(msgspec.Struct, frozen=True, kw_only=True):
    """The selector of a ``delete``, checked (:func:`check_delete_args`): exactly one field is set.

    Attributes:
        targets: the seqs of ``seq=`` or ``seqs=``, ascending and without repeats.
        up_to: the bound of ``up_to=``.
        key: the key of ``key=``.
        msg_id: the delete's msg-id (a retry with it gets the first result), or ``None``.
    """

    targets: list[int] | None
    up_to: int | None
    key: str | None
    msg_id: str | None = None


def check_delete_args(
    seq: object, seqs: object, up_to: object, key: object, msg_id: object = None
) -> DeleteArgs:
    """Check the selector of a ``delete``: exactly one of ``seq``, ``seqs``, ``up_to``, ``key``; and
    its ``msg_id``, if any (:func:`check_msg_id`).

    Raises:
        BadRequest: not exactly one selector, or a malformed one.
        TooLarge: a key or msg-id over ``MAX_KEY_BYTES``.
    """
    given = [s for s in (seq, seqs, up_to, key) if s is not None]
    if len(given) != 1:
        raise BadRequest("delete", "give exactly one of seq, seqs, up_to, key")
    mid = check_msg_id("delete", msg_id)
    if seq is not None:
        return DeleteArgs(targets=[check_seq("delete", "seq", seq)], up_to=None, key=None, msg_id=mid)
    if seqs is not None:
        if isinstance(seqs, str | bytes) or not isinstance(seqs, Iterable):
            raise BadRequest("delete", f"seqs must be a list of ints, not {seqs!r}")
        targets = sorted({check_seq("delete", "seqs", s) for s in seqs})
        return DeleteArgs(targets=targets, up_to=None, key=None, msg_id=mid)
    if up_to is not None:
        return DeleteArgs(targets=None, up_to=check_seq("delete", "up_to", up_to), key=None, msg_id=mid)
    return DeleteArgs(targets=None, up_to=None, key=check_key("delete", key), msg_id=mid)
