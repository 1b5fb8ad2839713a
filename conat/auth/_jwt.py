"""NATS JWTs: JSON claims signed with an nkey, as nats-server and the Go ``jwt/v2`` library write them.

A token is three base64url segments without padding::

    b64({"typ":"JWT","alg":"ed25519-nkey"}) . b64(claims JSON) . b64(Ed25519 signature)

The signature covers the ASCII bytes of the first two segments joined by ``.``, and is made by the
nkey whose public key is the ``iss`` claim. There is no separate key lookup: a token names its
signer, so verifying proves only that *that key* signed it. Who may sign is policy, which is why
:func:`verify_jwt` takes an expected ``issuer`` (and ``audience``) and callers should pass them.

Claims are plain dicts here (the NATS-specific shapes live in :mod:`conat.auth._nats_claims`).
``iat``, ``exp`` and ``nbf`` are integer Unix seconds; ``exp``/``nbf`` of 0 or absent mean "no limit",
as in the Go library (which omits zero values).

Decoding is strict: no padding, no characters outside the base64url alphabet, and each segment must
be the canonical encoding of its bytes, so there is exactly one accepted spelling of a token.

Errors: :class:`~conat.auth.JwtError` with codes ``"bad-jwt"`` (malformed, wrong header, claims
not an object, ``iss`` not an nkey), ``"bad-signature"``, ``"wrong-issuer"``, ``"wrong-audience"``,
``"expired"``, ``"not-yet-valid"`` (the tree and every code: :mod:`conat.auth._errors`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ._errors import JwtError, NkeyError
from ._nkeys import KeyPair, verify_signature

__all__ = [
    "DEFAULT_LEEWAY",
    "JWT_HEADER",
    "decode_jwt",
    "encode_jwt",
    "verify_jwt",
]

JWT_HEADER: Final = {"typ": "JWT", "alg": "ed25519-nkey"}
"""The header of every NATS v2 JWT (``alg`` names the nkey flavour of Ed25519)."""

DEFAULT_LEEWAY: Final = 5.0
"""Seconds of clock skew tolerated on ``exp``/``nbf``: hosts of a cluster disagree a little, and
NATS truncates times to whole seconds."""

_HEADER_SEGMENT: Final = base64.urlsafe_b64encode(msgspec.json.encode(JWT_HEADER)).rstrip(b"=").decode()
_ENCODER: Final = msgspec.json.Encoder()
_B64URL_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str, part: str) -> bytes:
    if not segment or not set(segment) <= _B64URL_CHARS:
        raise JwtError("bad-jwt", f"{part} is not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("bad-jwt", f"{part} is not base64url without padding") from None
    if _b64encode(data) != segment:
        raise JwtError("bad-jwt", f"{part} is not a canonical base64url encoding")
    return data


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec reports bad UTF-8 in a string this way
        raise JwtError("bad-jwt", f"{part} is not JSON") from None
    if not isinstance(value, dict):
        raise JwtError("bad-jwt", f"{part} is not a JSON object")
    return value


def _jti(claims: Mapping[str, Any]) -> str:
    # Like the Go library: base32 (no padding) of SHA-512/256 over the claims without "jti". The
    # server never re-verifies it; it only has to be unique, and a hash of claims that include
    # "iat" and a fresh subject key is.
    digest = hashlib.new("sha512_256", _ENCODER.encode(claims)).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def encode_jwt(claims: Mapping[str, Any], signer: KeyPair, *, now: float | None = None) -> str:
    """Sign ``claims`` with ``signer`` into a NATS JWT.

    Sets ``iss`` to the signer's public key, ``iat`` to ``now`` (whole seconds) and ``jti`` to a
    hash of the other claims; every other claim is written as given, in the given order.

    Args:
        claims: JSON-serializable claims. ``iss``, if present, must already be the signer's key.
        signer: the key that signs; its public key becomes ``iss``.
        now: the issue time in Unix seconds; default the system clock.

    Raises:
        ValueError: ``claims`` carries another ``iss`` than the signer's.
        TypeError: a claim value cannot be written as JSON.
    """
    iss = claims.get("iss")
    if iss is not None and iss != signer.public_key:
        raise ValueError(f"claims.iss: {iss!r} is not the signer's public key {signer.public_key!r}")
    body: dict[str, Any] = {k: v for k, v in claims.items() if k not in ("jti", "iss", "iat")}
    body["iss"] = signer.public_key
    body["iat"] = int(time.time() if now is None else now)
    body = {"jti": _jti(body), **body}
    try:
        claims_segment = _b64encode(_ENCODER.encode(body))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"claims: cannot be written as JSON: {exc}") from None
    signing_input = f"{_HEADER_SEGMENT}.{claims_segment}"
    signature = signer.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64encode(signature)}"


def _split(token: str) -> tuple[str, str, str]:
    if not isinstance(token, str):
        raise JwtError("bad-jwt", f"must be a str, got {type(token).__name__}")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("bad-jwt", f"must have 3 dot-separated parts, got {len(parts)}")
    return parts[0], parts[1], parts[2]


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a JWT's header and claims **without verifying anything**.

    For logging and for picking a verification policy; never trust the result. Use
    :func:`verify_jwt` to act on a token.

    Raises:
        JwtError: ``"bad-jwt"`` if it is not three base64url segments, or header/claims are not
            JSON objects.
    """
    header_b64, claims_b64, signature_b64 = _split(token)
    header = _json_object(_b64decode(header_b64, "header"), "header")
    claims = _json_object(_b64decode(claims_b64, "claims"), "claims")
    _b64decode(signature_b64, "signature")
    return header, claims


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JwtError("bad-jwt", f"claim {name!r} must be a number of Unix seconds, got {value!r}")
    return float(value)


def verify_jwt(
    token: str,
    *,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY,
) -> dict[str, Any]:
    """Verify a NATS JWT and return its claims.

    Checks, in order: the structure and header (``typ`` JWT, ``alg`` ed25519-nkey); that ``iss`` is
    a signing nkey; the Ed25519 signature by ``iss``; ``iss == issuer``; ``aud == audience``; and the
    time window ``nbf - leeway <= now <= exp + leeway``.

    Args:
        token: the encoded JWT.
        issuer: the public key that must have signed it; ``None`` accepts any signer, which proves
            only that the token is intact.
        audience: the ``aud`` it must carry; ``None`` skips the check.
        now: the current time in Unix seconds; default the system clock.
        leeway: seconds of tolerated clock skew.

    Raises:
        JwtError: with the code of the first failed check (see the module docstring).
    """
    header_b64, claims_b64, signature_b64 = _split(token)
    header = _json_object(_b64decode(header_b64, "header"), "header")
    if header.get("typ") != "JWT" or header.get("alg") != JWT_HEADER["alg"]:
        raise JwtError(
            "bad-jwt",
            f"header must be typ 'JWT', alg 'ed25519-nkey'; got {header.get('typ')!r}, {header.get('alg')!r}",
        )
    claims = _json_object(_b64decode(claims_b64, "claims"), "claims")
    signature = _b64decode(signature_b64, "signature")
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise JwtError("bad-jwt", "claim 'iss' is missing")
    signing_input = f"{header_b64}.{claims_b64}".encode("ascii")
    try:
        verify_signature(iss, signing_input, signature)
    except NkeyError as exc:
        if exc.code == "bad-signature":
            raise JwtError("bad-signature", f"signature does not verify with iss {iss!r}") from None
        raise JwtError("bad-jwt", f"claim 'iss' is not a signing nkey: {exc.detail}") from None
    if issuer is not None and iss != issuer:
        raise JwtError("wrong-issuer", f"signed by {iss!r}, expected {issuer!r}")
    if audience is not None and claims.get("aud") != audience:
        raise JwtError("wrong-audience", f"audience is {claims.get('aud')!r}, expected {audience!r}")
    at = time.time() if now is None else now
    exp = _time_claim(claims, "exp")
    if exp is not None and at > exp + leeway:
        raise JwtError("expired", f"expired at {exp:.0f}, now is {at:.0f}")
    nbf = _time_claim(claims, "nbf")
    if nbf is not None and at + leeway < nbf:
        raise JwtError("not-yet-valid", f"not valid before {nbf:.0f}, now is {at:.0f}")
    return claims
