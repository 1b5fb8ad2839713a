"""The NATS headers of conat's wire protocol: their names, which ones users may not set, error replies.

Every name here is part of the wire protocol (``docs/wire-protocol.md`` describes each one for
clients in other languages). Reserved names, compared case-insensitively:

* every name starting with ``Conat-``: conat's own protocol headers (:data:`BUS_HEADERS`), plus
  extension headers of the layers above the bus (the actor call chain, ``Conat-Chain``);
* ``Status`` and ``Description``: nats-server's inline status line (``NATS/1.0 503``), which
  nats-py reports under these keys, so a user header of that name would read as the server's;
* ``Nats-Service-Error`` and ``Nats-Service-Error-Code``: the NATS micro error headers, which conat
  puts on every error reply and reads as an error on any reply.

:func:`check_user_headers` refuses them in headers a user sends (``PayloadError``, code 400), so a
user header can never be mistaken for protocol, nor silently hidden from the receiver.

Error replies (:func:`error_headers`) carry conat's code in ``Conat-Error`` and the micro pair
beside it, so the official NATS services clients see a conat error as an error too. Micro codes
are numeric: an integer conat code is sent as is, any other code (``"ENOENT"``, ``"reject"``) as
``500``, its real value staying in ``Conat-Error``. :func:`error_from_headers` reads either form.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ._error_registry import rebuild_error
from ._errors import INTERNAL, ErrorCode, PayloadError, RemoteError

__all__ = [
    "BUS_HEADERS",
    "CHUNKED_HEADER",
    "CHUNK_HEADER",
    "DESCRIPTION_HEADER",
    "ENCODING_HEADER",
    "END_HEADER",
    "ERROR_DATA_HEADER",
    "ERROR_HEADER",
    "MAX_ERROR_DATA_BYTES",
    "MAX_ERROR_TEXT_BYTES",
    "MICRO_ERROR_CODE_HEADER",
    "MICRO_ERROR_HEADER",
    "PROTOCOL_PREFIX",
    "PULL_HEADER",
    "REPLY_HEADER",
    "SENDER_HEADER",
    "STATUS_HEADER",
    "check_user_headers",
    "error_from_headers",
    "error_headers",
    "is_reserved",
    "micro_code",
    "parse_error_code",
    "truncate_text",
]

log = logging.getLogger("conat.headers")

PROTOCOL_PREFIX: Final = "Conat-"

ENCODING_HEADER: Final = "Conat-Encoding"
"""The payload's codec (``json`` or ``raw``); absent means msgpack."""
ERROR_HEADER: Final = "Conat-Error"
"""On a reply: it is an error; the value is the code, the body the message (UTF-8 text)."""
ERROR_DATA_HEADER: Final = "Conat-Error-Data"
"""Structured fields of an error reply (a JSON object), beside the code and the text."""
END_HEADER: Final = "Conat-End"
"""The end-of-stream marker of streamed replies (``request_many``); the body is empty."""
REPLY_HEADER: Final = "Conat-Reply"
"""On the head of a chunked message: the user's reply subject (the NATS reply is the pull source)."""
CHUNKED_HEADER: Final = "Conat-Chunked"
"""On the head of a chunked message: ``<id> <total> <chunk_size> <count>``."""
PULL_HEADER: Final = "Conat-Pull"
"""A receiver's pull request: ``<id> <first> <count>``; count 0 means "finished with it"."""
CHUNK_HEADER: Final = "Conat-Chunk"
"""On each chunk a sender answers a pull with: ``<id> <index>``."""
SENDER_HEADER: Final = "Conat-Sender"
"""Who sent a message, on heads and on messages sent while the sender's chunked ones are in flight."""

STATUS_HEADER: Final = "Status"
"""nats-py's key for nats-server's inline status (``503`` no responders)."""
DESCRIPTION_HEADER: Final = "Description"
MICRO_ERROR_HEADER: Final = "Nats-Service-Error"
MICRO_ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"

BUS_HEADERS: Final = frozenset(
    {
        ENCODING_HEADER,
        ERROR_HEADER,
        ERROR_DATA_HEADER,
        END_HEADER,
        REPLY_HEADER,
        CHUNKED_HEADER,
        PULL_HEADER,
        CHUNK_HEADER,
        SENDER_HEADER,
    }
)
"""The ``Conat-*`` headers the bus itself interprets."""

_RESERVED_EXACT: Final = frozenset(
    name.lower()
    for name in (*BUS_HEADERS, STATUS_HEADER, DESCRIPTION_HEADER, MICRO_ERROR_HEADER, MICRO_ERROR_CODE_HEADER)
)
_PREFIX_LOWER: Final = PROTOCOL_PREFIX.lower()

MAX_ERROR_TEXT_BYTES: Final = 4096
"""An error reply's message is cut to this many bytes (UTF-8), so it always fits one message."""
MAX_ERROR_DATA_BYTES: Final = 4096
"""An error reply's structured fields (JSON) over this size are left out (the code and text stay)."""
_MICRO_TEXT_BYTES: Final = 256


def is_reserved(name: str, *, extensions: bool = False) -> bool:
    """Whether a user may not send a header called ``name``.

    Args:
        extensions: allow ``Conat-*`` names the bus does not interpret itself (the extension
            headers of layers above the bus, such as the actor call chain).
    """
    lower = name.lower()
    if lower in _RESERVED_EXACT:
        return True
    return not extensions and lower.startswith(_PREFIX_LOWER)


def check_user_headers(headers: Mapping[str, str], *, extensions: bool = False) -> None:
    """Refuse headers that collide with the protocol's (see the module docstring).

    Raises:
        PayloadError: (code 400) naming the first reserved header.
    """
    for name in headers:
        if isinstance(name, str) and is_reserved(name, extensions=extensions):
            raise PayloadError(
                "encode",
                "headers",
                f"header {name!r} is reserved for conat's wire protocol"
                " (Conat-*, Status, Description, Nats-Service-Error*): choose another name",
            )


def parse_error_code(value: str) -> ErrorCode:
    """An error code from a header: an int when it is one (``"503"``), else the text (``"ENOENT"``)."""
    value = value.strip()
    return int(value) if value.lstrip("-").isdigit() else value


def micro_code(code: ErrorCode) -> int:
    """The numeric NATS micro code for a conat code: integers as they are, anything else 500."""
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return INTERNAL


def truncate_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (never inside a character)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    marker = " …(truncated)"
    return raw[: max(0, limit - len(marker.encode()))].decode(errors="ignore") + marker


def _one_line(text: str, limit: int) -> str:
    return truncate_text(" ".join(text.split()), limit)


def error_headers(
    code: ErrorCode, text: str, data: Mapping[str, Any] | None = None
) -> tuple[dict[str, str], bytes]:
    """The headers and body of an error reply: conat's form and NATS micro's, side by side.

    The text is cut to :data:`MAX_ERROR_TEXT_BYTES`; ``data`` (JSON-encodable) over
    :data:`MAX_ERROR_DATA_BYTES` is left out with a warning, so an error reply always fits in one
    message whatever the handler put in it.
    """
    headers = {
        ERROR_HEADER: str(code),
        MICRO_ERROR_HEADER: _one_line(text, _MICRO_TEXT_BYTES) or str(code),
        MICRO_ERROR_CODE_HEADER: str(micro_code(code)),
    }
    if data:
        try:
            encoded = msgspec.json.encode(data).decode()
        except (TypeError, msgspec.EncodeError) as e:
            log.warning("error %s: its data cannot be encoded (%s), sent without it", code, e)
        else:
            if len(encoded) <= MAX_ERROR_DATA_BYTES:
                headers[ERROR_DATA_HEADER] = encoded
            else:
                log.warning("error %s: its %d bytes of data are over %d, sent without them",
                            code, len(encoded), MAX_ERROR_DATA_BYTES)  # fmt: skip
    return headers, truncate_text(text, MAX_ERROR_TEXT_BYTES).encode()


def error_from_headers(headers: Mapping[str, str], body: bytes, subject: str) -> RemoteError | None:
    """The :class:`RemoteError` an error reply stands for, or ``None`` if it is not one.

    A conat error reply (``Conat-Error``) gives its code, text and fields, and is rebuilt as the
    error class registered for its code (:func:`conat.rebuild_error`); a NATS micro error reply from
    another service (``Nats-Service-Error-Code`` / ``Nats-Service-Error`` only) gives the micro code
    and description (the body when the description is empty), always as a plain ``RemoteError``:
    another service's codes are not ours to interpret.
    """
    code = headers.get(ERROR_HEADER)
    if code is not None:
        return rebuild_error(
            parse_error_code(code),
            body.decode(errors="replace"),
            subject=subject,
            data=_error_data(headers.get(ERROR_DATA_HEADER)),
        )
    micro = headers.get(MICRO_ERROR_CODE_HEADER)
    description = headers.get(MICRO_ERROR_HEADER)
    if micro is None and description is None:
        return None
    text = description or body.decode(errors="replace")
    return RemoteError(parse_error_code(micro) if micro else INTERNAL, text, subject)


def _error_data(text: str | None) -> dict[str, Any] | None:
    """The fields of an error reply; a malformed header is ignored (the code and text still hold)."""
    if not text:
        return None
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    return data if isinstance(data, dict) else None
