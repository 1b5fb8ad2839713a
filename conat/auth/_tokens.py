"""conat tokens: short-lived, Ed25519-signed claims that a bus checks at connect time. This module is
the format (claims, spelling, limits); :mod:`conat.auth._issuer` mints tokens and
:mod:`conat.auth._verifier` checks them.

Token format (version 1)
------------------------

A token is one ASCII line, safe as a NATS CONNECT ``auth_token``, in a cookie and in a URL::

    conat1.<b64url(claims)>.<b64url(signature)>

- ``conat1`` names the format. A future format gets another prefix; a verifier refuses prefixes it
  does not know (``"malformed"``), so two formats can live side by side during a migration.
- ``<claims>`` are :class:`TokenClaims` encoded with msgspec's MessagePack. Their ``kid`` (1 to 64
  characters of ``[A-Za-z0-9_-]``) names the signing key: the verifier reads that one field before
  the signature is checked, to pick the public key, and trusts nothing else until it is.
- ``<signature>`` is the 64-byte Ed25519 signature (PyNaCl) of the ASCII bytes
  ``conat1.<b64url(claims)>``: the prefix is signed too.
- ``b64url`` is unpadded base64url (RFC 4648 §5). Only the canonical spelling is accepted (no padding,
  no stray bits in the last character), so every token has exactly one spelling and any change to
  any byte of it is refused.

Revision (``rev``)
------------------

Revocation never compares the issuer's clock with the verifier's. Each principal has a *revision*
that only its issuer (master) decides: every token carries the principal's revision at issue time,
and a bus refuses a principal's tokens whose ``rev`` is below the *floor* it was told (master bumps
the revision when it revokes, then tells every bus the new floor). A token minted a moment before the
revoke by a master whose clock runs ahead carries the old revision and is refused all the same.
Tokens without ``rev`` carry revision 0.

Errors: :class:`~conat.auth.TokenError` (codes in :mod:`conat.auth._errors`). Messages name the
refusal and never contain the token (it is a bearer credential), nor any part of it before the
signature is verified.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Final

import msgspec

from subjects import InvalidSubject, Scope, parse_scope

from ._errors import TokenError

__all__ = [
    "MASTER_AUDIENCE",
    "MAX_REVISION",
    "MAX_TOKEN_SIZE",
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "TOKEN_LEEWAY",
    "TOKEN_PREFIX",
    "TokenClaims",
    "peek_claims",
]

TOKEN_PREFIX: Final = "conat1"
"""The version prefix of the token format documented above."""

MAX_TOKEN_TTL: Final = 24 * 3600.0
"""The longest lifetime a token may have, in seconds. Tokens live minutes; a day is the hard cap."""

MIN_TOKEN_TTL: Final = 1.0
"""The shortest lifetime a token may have, in seconds."""

MASTER_AUDIENCE: Final = "master"
"""The audience of tokens for the master bus. A host bus's audience is ``host-<uuid>``."""

TOKEN_LEEWAY: Final = 30.0
"""The clock skew (seconds) between issuer and verifier that a verifier allows by default, on
``exp`` and ``nbf``. Clients use the same allowance to refuse their own token before sending it."""

MAX_TOKEN_SIZE: Final = 16 * 1024
"""The longest token (characters) a bus accepts; clients refuse to send longer ones. It must stay
below the bus's ``max_control_line`` so that the callout, not the protocol parser, judges it."""

MAX_REVISION: Final = 2**53
"""Revisions are integers from 0 up to this (exact in every JSON and MessagePack reader)."""

KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A key id: what a token's ``kid`` and a key file's name must be."""

SIGNATURE_SIZE: Final = 64
PUBLIC_KEY_SIZE: Final = 32
_TOKEN_RE: Final = re.compile(re.escape(TOKEN_PREFIX) + r"\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{86})")
_PEEK_MAX_SIZE: Final = 64 * 1024


class TokenClaims(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a token asserts. Times are seconds since the Unix epoch.

    Attributes:
        kid: the id of the key that signed the token.
        iss: who issued it (``hub`` for master).
        sub: the principal: ``account-<uuid>``, ``host-<uuid>``, ``project-<uuid>`` or ``hub``.
        aud: the bus the token is for: ``master`` or ``host-<uuid>``.
        iat: when it was issued.
        exp: when it stops being valid (exclusive, before leeway).
        jti: a random unique id (the key of replay protection).
        scope: what it grants on that bus.
        nbf: when it starts being valid, if later than ``iat``.
        once: a one-time token (e.g. a host join token): a verifier accepts it once.
        rev: the principal's revision when the token was issued (see "Revision" above): a bus
            refuses it once told that the principal's tokens below a higher revision are revoked.
    """

    kid: str
    iss: str
    sub: str
    aud: str
    iat: float
    exp: float
    jti: str
    scope: Scope = Scope()
    nbf: float | None = None
    once: bool = False
    rev: int = 0

    @property
    def start(self) -> float:
        """When the token starts being valid: ``nbf`` if set, else ``iat``."""
        return self.iat if self.nbf is None else self.nbf


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(TokenClaims)


def b64url_encode(raw: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    """Decode canonical unpadded base64url, or return ``None`` (any other spelling is refused)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if b64url_encode(raw) == text else None


def is_principal(value: str) -> bool:
    """Whether ``value`` is a principal (``account-/host-/project-<uuid>`` or ``hub``)."""
    try:
        parse_scope(value)
    except InvalidSubject:
        return False
    return True


def is_audience(value: str) -> bool:
    """Whether ``value`` names a bus: ``master`` or ``host-<uuid>``."""
    if value == MASTER_AUDIENCE:
        return True
    try:
        kind, _ = parse_scope(value)
    except InvalidSubject:
        return False
    return kind == "host"


def public_key_bytes(kid: str, value: bytes | str) -> bytes:
    """A public key given as raw bytes or as unpadded base64url, checked. Raises ValueError."""
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise ValueError(f"public_keys: bad kid {kid!r}")
    raw = b64url_decode(value) if isinstance(value, str) else bytes(value)
    if raw is None or len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"public_keys: key {kid!r} is not a 32-byte Ed25519 public key")
    return raw


def signing_input(claims: TokenClaims) -> str:
    """``conat1.<b64url(claims)>``: what the signature covers; the token is this, ``.``, the signature."""
    return f"{TOKEN_PREFIX}.{b64url_encode(_encoder.encode(claims))}"


def _claims_problem(claims: TokenClaims, kid: str | None) -> str | None:
    """What is inconsistent in (signature-verified) claims, or ``None``."""
    if kid is not None and claims.kid != kid:
        return "the claims name another kid than the key that signed them"
    if not KID_RE.fullmatch(claims.kid):
        return "kid is not a key id"
    if not claims.iss or not claims.jti:
        return "empty iss or jti"
    if not is_principal(claims.sub):
        return "sub is not a principal"
    if not is_audience(claims.aud):
        return "aud is not a bus"
    times = (claims.iat, claims.exp) if claims.nbf is None else (claims.iat, claims.exp, claims.nbf)
    if not all(math.isfinite(t) for t in times):
        return "a time is not finite"
    if claims.nbf is not None and claims.nbf < claims.iat:
        return "nbf is before iat"
    if not 0 < claims.exp - claims.start <= MAX_TOKEN_TTL + 1:  # + 1: float rounding of start + ttl
        return "the lifetime is empty or longer than the maximum"
    if isinstance(claims.rev, bool) or not 0 <= claims.rev <= MAX_REVISION:
        return "rev is not a revision"
    return None


def peek_claims(token: str | bytes) -> TokenClaims:
    """Read a token's claims WITHOUT verifying it: no signature, audience, time or replay check.

    For a client reading a token it holds (to learn when it expires and what it grants). Never use
    it to decide whether to trust a token: that is :meth:`~conat.auth.TokenVerifier.verify`.

    Raises:
        TokenError: ``"too-large"`` (over 64 KiB), ``"malformed"`` or ``"bad-claims"`` (including
            claims that are inconsistent).
    """
    if not isinstance(token, str | bytes | bytearray):
        raise TokenError("malformed", "not a string")
    if len(token) > _PEEK_MAX_SIZE:
        raise TokenError("too-large", f"{len(token)} characters, the limit is {_PEEK_MAX_SIZE}")
    payload, _, _ = parse_token(token)
    return decode_claims(payload, peek_kid(payload))


class _KidOnly(msgspec.Struct):
    kid: str


_kid_decoder: Final = msgspec.msgpack.Decoder(_KidOnly)


def peek_kid(payload: bytes) -> str | None:
    """The kid in (not yet verified) claims, or ``None`` if it cannot be read or is not a kid."""
    try:
        kid = _kid_decoder.decode(payload).kid
    except ValueError:  # msgspec.DecodeError, or UnicodeDecodeError for a bad UTF-8 string
        return None
    return kid if KID_RE.fullmatch(kid) else None


def decode_claims(payload: bytes, kid: str | None) -> TokenClaims:
    """The claims in ``payload``, checked for consistency (signed by ``kid``, if known).

    Raises:
        TokenError: ``"bad-claims"``.
    """
    try:
        claims = _decoder.decode(payload)
    except ValueError:  # msgspec.DecodeError, or UnicodeDecodeError for a bad UTF-8 string
        raise TokenError("bad-claims", "the claims do not decode") from None
    problem = _claims_problem(claims, kid)
    if problem is not None:
        raise TokenError("bad-claims", problem)
    return claims


def parse_token(token: str | bytes) -> tuple[bytes, bytes, bytes]:
    """Split a token into ``(claims bytes, signed bytes, signature)``, or refuse it as malformed.

    Raises:
        TokenError: ``"malformed"``.
    """
    if isinstance(token, bytes | bytearray):
        if not token.isascii():
            raise TokenError("malformed", "not ASCII")
        text = bytes(token).decode("ascii")
    elif isinstance(token, str):
        if not token.isascii():
            raise TokenError("malformed", "not ASCII")
        text = token
    else:
        raise TokenError("malformed", "not a string")
    match = _TOKEN_RE.fullmatch(text)
    if match is None:
        raise TokenError("malformed", f"not a {TOKEN_PREFIX} token")
    payload_b64, signature_b64 = match.groups()
    payload = b64url_decode(payload_b64)
    signature = b64url_decode(signature_b64)
    if payload is None or signature is None or len(signature) != SIGNATURE_SIZE:
        raise TokenError("malformed", "bad base64url")
    signed = text[: match.start(2) - 1].encode("ascii")
    return payload, signed, signature
