"""Token codec: any text or bytes as one literal subject token, and back.

Paths, keys and other arbitrary strings never go raw into a subject (they may contain ``.``,
whitespace, or be ``*``). :func:`encode_token` turns them into base64url without padding, whose
alphabet ``A-Z a-z 0-9 - _`` contains nothing the subject grammar forbids.

The empty value is the one special case: its base64url form is the empty string, which is not a
token. It is encoded as :data:`EMPTY_TOKEN` (``"="``). ``=`` is base64's padding character, which
unpadded output never contains, so the marker cannot collide with the encoding of any other value.

Guarantees:

- ``encode_token(v)`` is always a valid literal token (non-empty, no ``.``, no wildcard, no
  whitespace); note a long value still makes a subject longer than ``MAX_SUBJECT_BYTES``;
- the round trip is exact: ``decode_token(encode_token(b)) == b`` for all bytes, and
  ``decode_token_str(encode_token(s)) == s`` for all ``str``, including lone surrogates (text is
  UTF-8 with ``surrogatepass``);
- decoding is canonical: only strings that :func:`encode_token` can produce are accepted, so each
  value has exactly one token and tokens can be compared instead of values.
"""

from __future__ import annotations

import binascii
from typing import Final

from ._grammar import InvalidSubject

__all__ = ["EMPTY_TOKEN", "decode_token", "decode_token_str", "encode_token"]

EMPTY_TOKEN: Final = "="
"""The token for the empty string / empty bytes (unpadded base64url never contains ``=``)."""

_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
_PADDING: Final = (b"", b"", b"==", b"=")  # indexed by len(token) % 4; 1 is never valid


def encode_token(value: str | bytes | bytearray | memoryview) -> str:
    """Encode ``value`` as one literal token (base64url without padding; ``""`` -> ``"="``).

    Raises:
        TypeError: when ``value`` is neither ``str`` nor ``bytes``/``bytearray``/``memoryview``.
    """
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:  # bytes(12) would quietly give 12 zero bytes
        raise TypeError(f"encode_token needs str or bytes, got {type(value).__name__}")
    if not data:
        return EMPTY_TOKEN
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> bytes:
    """Decode a token made by :func:`encode_token` back into the exact bytes.

    Raises:
        InvalidSubject: ``reason="bad-token"`` if ``token`` is not the output of ``encode_token``
            (wrong alphabet, impossible length, non-zero trailing bits, or padding).
    """
    if token == EMPTY_TOKEN:
        return b""
    try:
        raw = token.encode("ascii")
        if len(raw) % 4 == 1 or b"=" in raw or b"+" in raw or b"/" in raw:
            raise ValueError
        data = binascii.a2b_base64(raw.translate(_FROM_URLSAFE) + _PADDING[len(raw) % 4], strict_mode=True)
    except (ValueError, AttributeError) as exc:  # binascii.Error is a ValueError
        shown = token if isinstance(token, str) else repr(token)
        raise InvalidSubject(shown, "bad-token", field="token") from exc
    # Reject non-canonical spellings (non-zero unused bits in the last character, or ""): one value,
    # one token.
    if encode_token(data) != token:
        raise InvalidSubject(token, "bad-token", field="token")
    return data


def decode_token_str(token: str) -> str:
    """Decode a token made by ``encode_token(some_str)`` back into that exact string.

    Raises:
        InvalidSubject: ``reason="bad-token"`` if the token is malformed or is not UTF-8 text.
    """
    data = decode_token(token)
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise InvalidSubject(token, "bad-token", field="token") from exc
