"""NATS nkeys: Ed25519 key pairs written as checksummed base32 strings, on PyNaCl.

An nkey string is ``base32_nopad(prefix + raw32 + crc16_le)``:

* a **public key** has one prefix byte whose top five bits name its kind, so the first
  character reads ``O`` (operator), ``A`` (account), ``U`` (user), ``N`` (server), ``C`` (cluster)
  or ``X`` (curve, an X25519 key: see :mod:`conat.auth._xkey`). 35 bytes, 56 characters.
* a **seed** (the secret) has two prefix bytes: ``S`` (18 << 3) in the top five bits of the first,
  and the public kind spread over the remaining eleven bits, so it reads ``SA…``, ``SU…``, ``SX…``.
  36 bytes, 58 characters. The 32 raw bytes are the Ed25519 seed (or the X25519 private key).
* the checksum is CRC-16/XMODEM (poly 0x1021, init 0) of everything before it, little-endian.

Decoding is strict, like the Go library and then some: the alphabet is upper-case RFC 4648 base32
without padding, the length must be exact, the checksum must match, and the string must be the
*canonical* encoding of its bytes (a seed's last character carries two unused bits: a string that
differs only there is refused rather than silently read as the same key). The checksum catches any
burst of up to 16 flipped bits, so every single-character typo in a key or seed is refused.

Errors: :class:`~conat.auth.NkeyError` (codes ``bad-nkey``, ``bad-checksum``, ``bad-prefix``,
``bad-signature``; the tree and every code: :mod:`conat.auth._errors`).

Messages never contain a seed, not even a corrupted one: they name the part that is wrong.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
from typing import Final, final

import nacl.exceptions
import nacl.signing
import nacl.utils

from ._errors import NkeyError

__all__ = [
    "KeyKind",
    "KeyPair",
    "check_public_key",
    "crc16",
    "decode_public_key",
    "decode_seed",
    "encode_public_key",
    "encode_seed",
    "public_key_kind",
    "verify_signature",
]

RAW_KEY_SIZE: Final = 32
"""Bytes in a raw Ed25519 public key, Ed25519 seed, or X25519 key."""

SIGNATURE_SIZE: Final = 64
"""Bytes in an Ed25519 signature."""

PUBLIC_KEY_LENGTH: Final = 56
"""Characters in an encoded public key (35 bytes)."""

SEED_LENGTH: Final = 58
"""Characters in an encoded seed (36 bytes)."""

_SEED_PREFIX: Final = 18 << 3  # "S"
_PRIVATE_PREFIX: Final = 15 << 3  # "P", the Go library's 64-byte private key form; never accepted here


@enum.unique
class KeyKind(enum.StrEnum):
    """The role of an nkey, read from its prefix. The value is the name used in messages."""

    OPERATOR = "operator"
    ACCOUNT = "account"
    USER = "user"
    SERVER = "server"
    CLUSTER = "cluster"
    CURVE = "curve"

    @property
    def prefix_byte(self) -> int:
        """The public-key prefix byte (its top five bits are the base32 letter)."""
        return _PREFIX_BYTES[self]

    @property
    def letter(self) -> str:
        """The first character of a public key of this kind (``"A"`` for an account)."""
        return _B32_ALPHABET[self.prefix_byte >> 3]

    @property
    def can_sign(self) -> bool:
        """Ed25519 kinds sign; a curve key only seals and opens boxes."""
        return self is not KeyKind.CURVE


_PREFIX_BYTES: Final[dict[KeyKind, int]] = {
    KeyKind.OPERATOR: 14 << 3,
    KeyKind.ACCOUNT: 0,
    KeyKind.USER: 20 << 3,
    KeyKind.SERVER: 13 << 3,
    KeyKind.CLUSTER: 2 << 3,
    KeyKind.CURVE: 23 << 3,
}
_KINDS_BY_PREFIX: Final[dict[int, KeyKind]] = {byte: kind for kind, byte in _PREFIX_BYTES.items()}
_B32_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16_TABLE: Final = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection, no final xor) of ``data``."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _b32encode(data: bytes) -> str:
    """RFC 4648 base32, upper case, without ``=`` padding (the nkey alphabet)."""
    return base64.b32encode(data).decode("ascii").rstrip("=")


def _b32decode(text: str, what: str) -> bytes:
    """The inverse of :func:`_b32encode`; refuses anything that is not its canonical output."""
    if not text.isascii() or "=" in text:
        raise NkeyError("bad-nkey", what, "not base32 (only A-Z and 2-7 are allowed)")
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise NkeyError("bad-nkey", what, "not base32 (only A-Z and 2-7 are allowed)") from None
    if _b32encode(data) != text:
        raise NkeyError("bad-nkey", what, "not a canonical base32 encoding (wrong length or stray bits)")
    return data


def _with_crc(data: bytes) -> str:
    return _b32encode(data + crc16(data).to_bytes(2, "little"))


def _checked(text: str, length: int, what: str) -> bytes:
    """Decode ``text`` of ``length`` characters and strip its verified checksum."""
    if not isinstance(text, str):
        raise NkeyError("bad-nkey", what, f"must be a str, got {type(text).__name__}")
    if len(text) != length:
        raise NkeyError("bad-nkey", what, f"must be {length} characters long, got {len(text)}")
    raw = _b32decode(text, what)
    body, stored = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc16(body) != stored:
        raise NkeyError("bad-checksum", what, "checksum does not match (a character is wrong)")
    return body


def _check_raw(raw: bytes, what: str) -> None:
    if not isinstance(raw, bytes) or len(raw) != RAW_KEY_SIZE:
        size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
        raise ValueError(f"{what}: raw key must be {RAW_KEY_SIZE} bytes, got {size}")


def encode_public_key(kind: KeyKind, raw: bytes) -> str:
    """Encode a raw 32-byte public key of ``kind`` (``"A…"``, ``"U…"``, ``"X…"``...).

    Raises:
        ValueError: ``raw`` is not 32 bytes.
    """
    _check_raw(raw, f"{kind} public key")
    return _with_crc(bytes([kind.prefix_byte]) + raw)


@functools.lru_cache(maxsize=1024)  # the same server and issuer keys come back at every connect
def decode_public_key(key: str, what: str = "public key") -> tuple[KeyKind, bytes]:
    """Decode a public nkey into its kind and 32 raw bytes.

    Args:
        key: the encoded key.
        what: the key's role, for the error message (``"issuer"``, ``"user_nkey"``).

    Raises:
        NkeyError: ``"bad-nkey"``, ``"bad-checksum"``, or ``"bad-prefix"`` (a seed, a private key,
            or an unknown kind).
    """
    body = _checked(key, PUBLIC_KEY_LENGTH, what)
    kind = _KINDS_BY_PREFIX.get(body[0])
    if kind is None:
        if body[0] & 0xF8 in (_SEED_PREFIX, _PRIVATE_PREFIX):
            raise NkeyError("bad-prefix", what, "this is a secret (seed or private key), not a public key")
        raise NkeyError("bad-prefix", what, f"unknown key kind {key[0]!r}")
    return kind, body[1:]


def public_key_kind(key: str) -> KeyKind:
    """The kind of a valid public nkey. Raises :class:`NkeyError` if it is not one."""
    return decode_public_key(key)[0]


def check_public_key(key: str, *kinds: KeyKind, what: str = "public key") -> KeyKind:
    """Validate a public nkey and, if ``kinds`` are given, that it is one of them.

    Returns:
        The key's kind.

    Raises:
        NkeyError: the key is malformed (see :func:`decode_public_key`), or ``"bad-prefix"`` if its
            kind is not among ``kinds``.
    """
    kind = decode_public_key(key, what)[0]
    if kinds and kind not in kinds:
        wanted = " or ".join(str(k) for k in kinds)
        raise NkeyError("bad-prefix", what, f"expected a key of kind {wanted}, got kind {kind}")
    return kind


def encode_seed(kind: KeyKind, raw: bytes) -> str:
    """Encode a raw 32-byte seed (Ed25519 seed, or X25519 private key for curve) of ``kind``.

    Raises:
        ValueError: ``raw`` is not 32 bytes.
    """
    _check_raw(raw, f"{kind} seed")
    p = kind.prefix_byte
    return _with_crc(bytes([_SEED_PREFIX | p >> 5, (p & 31) << 3]) + raw)


def decode_seed(seed: str, what: str = "seed") -> tuple[KeyKind, bytes]:
    """Decode a seed (``"SA…"``, ``"SU…"``, ``"SX…"``) into its kind and 32 raw secret bytes.

    Raises:
        NkeyError: ``"bad-nkey"``, ``"bad-checksum"``, or ``"bad-prefix"`` (not a seed, or a seed of
            an unknown kind). The message never repeats the seed.
    """
    body = _checked(seed, SEED_LENGTH, what)
    if body[0] & 0xF8 != _SEED_PREFIX:
        raise NkeyError("bad-prefix", what, "not a seed (a seed starts with 'S')")
    if body[1] & 0x07:
        raise NkeyError("bad-prefix", what, "malformed seed prefix")
    kind = _KINDS_BY_PREFIX.get((body[0] & 0x07) << 5 | body[1] >> 3)
    if kind is None:
        raise NkeyError("bad-prefix", what, "seed of an unknown key kind")
    return kind, body[2:]


def verify_signature(public_key: str, data: bytes, signature: bytes, what: str = "signature") -> None:
    """Check an Ed25519 ``signature`` of ``data`` by the signing nkey ``public_key``.

    Raises:
        NkeyError: ``"bad-signature"`` if it does not verify (or is not 64 bytes); the key errors
            of :func:`decode_public_key`, and ``"bad-prefix"`` for a curve key (it cannot sign).
    """
    kind, raw = decode_public_key(public_key, "signer public key")
    if not kind.can_sign:
        raise NkeyError("bad-prefix", "signer public key", "a curve key cannot sign")
    _verify_raw(raw, data, signature, what)


def _verify_raw(raw: bytes, data: bytes, signature: bytes, what: str) -> None:
    if len(signature) != SIGNATURE_SIZE:
        raise NkeyError("bad-signature", what, f"must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        nacl.signing.VerifyKey(raw).verify(bytes(data), bytes(signature))
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        raise NkeyError("bad-signature", what, "does not verify with this public key") from None


def _signing_kind(kind: KeyKind | str) -> KeyKind:
    try:
        kind = KeyKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in KeyKind if k.can_sign)
        raise ValueError(f"kind: must be one of {names}; got {kind!r}") from None
    if not kind.can_sign:
        raise ValueError("kind: a KeyPair signs, so it cannot be a curve key; use CurveKeyPair")
    return kind


@final
class KeyPair:
    """An Ed25519 nkey pair (operator, account, user, server or cluster) that signs and verifies.

    Build one with :meth:`from_seed` or :meth:`create`. The seed is the secret: it is kept only in
    memory, returned by :attr:`seed` when asked, and never appears in ``repr`` or error messages.
    Curve (``"SX…"``) seeds belong to :class:`conat.auth.CurveKeyPair` instead.
    """

    __slots__ = ("_kind", "_public_key", "_raw_seed", "_signing_key")

    def __init__(self, kind: KeyKind | str, raw_seed: bytes) -> None:
        """Wrap a raw 32-byte Ed25519 seed. Prefer :meth:`from_seed` or :meth:`create`.

        Raises:
            ValueError: ``kind`` is not a signing kind (curve keys are :class:`CurveKeyPair`s), or
                ``raw_seed`` is not 32 bytes.
        """
        kind = _signing_kind(kind)
        _check_raw(raw_seed, f"{kind} seed")
        self._kind = kind
        self._raw_seed = raw_seed
        self._signing_key = nacl.signing.SigningKey(raw_seed)
        self._public_key = encode_public_key(kind, bytes(self._signing_key.verify_key))

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        """The key pair of an encoded seed (``"SA…"``, ``"SU…"``...).

        Raises:
            NkeyError: the seed is malformed, or is a curve seed (``"bad-prefix"``).
        """
        kind, raw = decode_seed(seed)
        if not kind.can_sign:
            raise NkeyError("bad-prefix", "seed", "a curve seed; load it with CurveKeyPair.from_seed")
        return cls(kind, raw)

    @classmethod
    def create(cls, kind: KeyKind | str) -> KeyPair:
        """A new random key pair of ``kind`` (``KeyKind.ACCOUNT`` or ``"account"``...), from the OS's
        CSPRNG through libsodium.

        Raises:
            ValueError: ``kind`` is not a signing kind.
        """
        return cls(kind, nacl.utils.random(RAW_KEY_SIZE))

    @property
    def kind(self) -> KeyKind:
        return self._kind

    @property
    def public_key(self) -> str:
        """The encoded public key, safe to share (``"A…"`` for an account)."""
        return self._public_key

    @property
    def seed(self) -> str:
        """The encoded seed: the secret. Store it like a password; never log it."""
        return encode_seed(self._kind, self._raw_seed)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._signing_key.sign(bytes(data)).signature

    def verify(self, data: bytes, signature: bytes) -> None:
        """Check ``signature`` of ``data`` against this key.

        Raises:
            NkeyError: ``"bad-signature"``.
        """
        _verify_raw(bytes(self._signing_key.verify_key), data, signature, "signature")

    def __repr__(self) -> str:
        return f"KeyPair(kind={self._kind.value!r}, public_key={self._public_key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyPair):
            return NotImplemented
        return self._public_key == other._public_key

    def __hash__(self) -> int:
        return hash(self._public_key)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the seed somewhere it was not asked to go: refuse loudly.
        raise TypeError("KeyPair holds a secret and cannot be pickled; store its seed deliberately")
