"""API keys: long-lived random secrets that an account or a host exchanges for tokens on master.

A key is shown once, at creation, and only its scrypt hash is stored. Its format::

    ck_<key id>_<secret>

- ``ck`` marks a conat key (so scanners and people recognise a leaked one);
- ``<key id>`` is 16 lower-case hex characters (64 random bits): not secret, it is how master finds the
  stored :class:`ApiKeyRecord` (and how a key is named in lists and audit logs);
- ``<secret>`` is 32 random bytes (256 bits) in unpadded base64url (43 characters).

The record stores ``scrypt(the whole key string, salt)`` with a 16-byte random salt and the scrypt
parameters used, so the parameters can be raised later without invalidating older keys. Defaults:
``n=2**14, r=8, p=1`` (16 MiB and a few tens of milliseconds per check; the key already has 256 bits of
entropy, so scrypt guards the stored hashes against a stolen database rather than against guessing),
32-byte output. The check compares in constant time (:func:`hmac.compare_digest`).

A malformed key is never an exception in :func:`verify_api_key` (it returns ``False``);
:func:`api_key_id` raises :class:`~conat.auth.ApiKeyError` with code ``"malformed"``. No message ever
contains the key.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Final

import msgspec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ._errors import ApiKeyError
from ._tokens import b64url_decode, b64url_encode

__all__ = ["API_KEY_PREFIX", "ApiKeyRecord", "api_key_id", "new_api_key", "verify_api_key"]

API_KEY_PREFIX: Final = "ck"
"""The first token of every API key."""

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_HASH_SIZE: Final = 32
_SALT_SIZE: Final = 16
_SECRET_SIZE: Final = 32
_MAX_SCRYPT_MEMORY: Final = 256 * 1024 * 1024
_KEY_RE: Final = re.compile(re.escape(API_KEY_PREFIX) + r"_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What master stores for an API key: enough to check it, nothing to recover it.

    Validated on construction and when decoded (msgspec raises ``ValidationError`` for a bad record).

    Attributes:
        key_id: the key's public id (16 lower-case hex characters).
        hash: ``scrypt(key, salt, n, r, p)``, 16 to 64 bytes.
        salt: random, at least 16 bytes.
        n, r, p: the scrypt parameters the hash was made with.
    """

    key_id: str
    hash: bytes
    salt: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{16}", self.key_id):
            raise ValueError("key_id: must be 16 lower-case hex characters")
        if not 16 <= len(self.hash) <= 64:
            raise ValueError("hash: must be 16 to 64 bytes")
        if len(self.salt) < _SALT_SIZE or len(self.salt) > 64:
            raise ValueError("salt: must be 16 to 64 bytes")
        if not (2 <= self.n and self.n & (self.n - 1) == 0):
            raise ValueError("n: must be a power of 2")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError("r, p: out of range (1 <= r <= 32, 1 <= p <= 16)")
        if 128 * self.n * self.r > _MAX_SCRYPT_MEMORY:
            raise ValueError("n, r: would need more than 256 MiB")

    def __repr__(self) -> str:
        return f"ApiKeyRecord(key_id={self.key_id!r}, n={self.n}, r={self.r}, p={self.p})"


def _hash(key: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(key.encode("ascii"))


def new_api_key(*, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> tuple[str, str, ApiKeyRecord]:
    """Make a new API key.

    Args:
        n, r, p: scrypt parameters (the defaults are documented in the module docstring).

    Returns:
        ``(key_id, key, record)``: show ``key`` to its owner once and forget it; store ``record``.

    Raises:
        ValueError: naming the parameter, for unusable scrypt parameters.
    """
    key_id = secrets.token_hex(8)
    key = f"{API_KEY_PREFIX}_{key_id}_{b64url_encode(secrets.token_bytes(_SECRET_SIZE))}"
    salt = secrets.token_bytes(_SALT_SIZE)
    # Validate the parameters before the (possibly expensive) hash.
    ApiKeyRecord(key_id=key_id, hash=bytes(_HASH_SIZE), salt=salt, n=n, r=r, p=p)
    record = ApiKeyRecord(key_id=key_id, hash=_hash(key, salt, n, r, p, _HASH_SIZE), salt=salt, n=n, r=r, p=p)
    return key_id, key, record


def _parse(key: object) -> str | None:
    """The key id of a well-formed key, else ``None``."""
    if not isinstance(key, str) or not key.isascii():
        return None
    match = _KEY_RE.fullmatch(key)
    if match is None:
        return None
    secret = b64url_decode(match.group(2))
    if secret is None or len(secret) != _SECRET_SIZE:
        return None
    return match.group(1)


def api_key_id(key: str) -> str:
    """The public id of an API key (to look its record up).

    Raises:
        ApiKeyError: ``"malformed"`` if ``key`` is not an API key. The message does not quote it.
    """
    key_id = _parse(key)
    if key_id is None:
        raise ApiKeyError("malformed", f"not a {API_KEY_PREFIX}_<id>_<secret> key")
    return key_id


def verify_api_key(key: str, record: ApiKeyRecord) -> bool:
    """Whether ``key`` is the key ``record`` was made from.

    Returns ``False`` (never raises) for a malformed key or a key with another id. The hash is
    compared in constant time; a malformed key returns early, which reveals only that it is malformed.
    """
    key_id = _parse(key)
    if key_id is None or key_id != record.key_id or not isinstance(key, str):
        return False
    candidate = _hash(key, record.salt, record.n, record.r, record.p, len(record.hash))
    return hmac.compare_digest(candidate, record.hash)
