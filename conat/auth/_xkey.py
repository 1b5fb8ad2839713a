"""Curve (X25519) nkeys and the ``xkv1`` sealed box of the NATS auth callout's ``xkey``.

When ``auth_callout { xkey: "X…" }`` is set, nats-server encrypts every authorization request to
that public key, so the client's token or password never crosses the bus in clear. The request
carries the server's own curve key in the ``Nats-Server-Xkey`` header; the responder opens the
request with its seed and that key, and may seal its reply to the same key (the server accepts a
sealed or a plain reply, telling them apart by the ``eyJ`` that starts a plain JWT).

Wire format, the same as the Go nkeys library's ``Seal``/``Open``::

    b"xkv1" + nonce (24 random bytes) + crypto_box(message, nonce, recipient_public, sender_private)

``crypto_box`` is X25519 + XSalsa20-Poly1305 (libsodium, through PyNaCl's :class:`nacl.public.Box`):
authenticated, so a box that was altered, or sealed by anyone but the claimed sender, fails to
open with :class:`XkeyError` ``"bad-mac"`` rather than yielding garbage.

Errors: :class:`~conat.auth.XkeyError` with codes ``"bad-version"`` (no ``xkv1`` tag),
``"bad-length"`` (too short to hold a nonce and a MAC) and ``"bad-mac"``; malformed keys raise
:class:`~conat.auth.NkeyError` (the tree and every code: :mod:`conat.auth._errors`).
"""

from __future__ import annotations

from typing import Final, final

import nacl.exceptions
import nacl.public
import nacl.utils

from ._errors import NkeyError, XkeyError
from ._nkeys import (
    RAW_KEY_SIZE,
    KeyKind,
    decode_public_key,
    decode_seed,
    encode_public_key,
    encode_seed,
)

__all__ = ["XKEY_VERSION", "CurveKeyPair"]

XKEY_VERSION: Final = b"xkv1"
"""The tag that starts every sealed box."""

NONCE_SIZE: Final = nacl.public.Box.NONCE_SIZE  # 24
MAC_SIZE: Final = 16  # Poly1305 tag
_MIN_SEALED: Final = len(XKEY_VERSION) + NONCE_SIZE + MAC_SIZE

@final
class CurveKeyPair:
    """An X25519 nkey pair (``"X…"`` public key, ``"SX…"`` seed) that seals and opens boxes.

    The seed is the secret: kept in memory, returned by :attr:`seed` when asked, never in ``repr``.
    """

    __slots__ = ("_private", "_public_key")

    def __init__(self, raw_private: bytes) -> None:
        """Wrap a raw 32-byte X25519 private key. Prefer :meth:`from_seed` or :meth:`create`."""
        if not isinstance(raw_private, bytes) or len(raw_private) != RAW_KEY_SIZE:
            raise ValueError(f"raw_private: must be {RAW_KEY_SIZE} bytes")
        self._private = nacl.public.PrivateKey(raw_private)
        self._public_key = encode_public_key(KeyKind.CURVE, bytes(self._private.public_key))

    @classmethod
    def create(cls) -> CurveKeyPair:
        """A new random curve key pair."""
        return cls(nacl.utils.random(RAW_KEY_SIZE))

    @classmethod
    def from_seed(cls, seed: str) -> CurveKeyPair:
        """The key pair of an encoded curve seed (``"SX…"``).

        Raises:
            NkeyError: the seed is malformed, or not a curve seed (``"bad-prefix"``).
        """
        kind, raw = decode_seed(seed)
        if kind is not KeyKind.CURVE:
            raise NkeyError("bad-prefix", "seed", f"expected a curve seed ('SX…'), got a seed of kind {kind}")
        return cls(raw)

    @property
    def public_key(self) -> str:
        """The encoded public key (``"X…"``): what goes into ``auth_callout { xkey }``."""
        return self._public_key

    @property
    def seed(self) -> str:
        """The encoded seed (``"SX…"``): the secret."""
        return encode_seed(KeyKind.CURVE, bytes(self._private))

    def _box(self, peer_public: str, what: str) -> nacl.public.Box:
        kind, raw = decode_public_key(peer_public, what)
        if kind is not KeyKind.CURVE:
            raise NkeyError("bad-prefix", what, f"expected a curve key ('X…'), got kind {kind}")
        return nacl.public.Box(self._private, nacl.public.PublicKey(raw))

    def seal(self, message: bytes, recipient_public: str) -> bytes:
        """Encrypt and authenticate ``message`` for ``recipient_public`` with a fresh random nonce.

        Returns:
            ``b"xkv1" + nonce + box``; only the recipient's seed opens it, and only as coming from us.

        Raises:
            NkeyError: ``recipient_public`` is not a curve public key.
        """
        box = self._box(recipient_public, "recipient public key")
        nonce = nacl.utils.random(NONCE_SIZE)
        return XKEY_VERSION + bytes(box.encrypt(bytes(message), nonce))

    def open(self, sealed: bytes, sender_public: str) -> bytes:
        """Decrypt a box that ``sender_public`` sealed for us.

        Raises:
            XkeyError: ``"bad-version"``, ``"bad-length"``, or ``"bad-mac"`` (altered, or sealed by
                another key, or for another recipient).
            NkeyError: ``sender_public`` is not a curve public key.
        """
        box = self._box(sender_public, "sender public key")
        sealed = bytes(sealed)
        if not sealed.startswith(XKEY_VERSION):
            raise XkeyError("bad-version", f"does not start with {XKEY_VERSION!r}")
        if len(sealed) < _MIN_SEALED:
            raise XkeyError("bad-length", f"{len(sealed)} bytes is shorter than the {_MIN_SEALED} minimum")
        body = sealed[len(XKEY_VERSION) :]
        try:
            return box.decrypt(body[NONCE_SIZE:], body[:NONCE_SIZE])
        except nacl.exceptions.CryptoError:
            detail = "authentication failed: altered, or not sealed by that sender for us"
            raise XkeyError("bad-mac", detail) from None

    def __repr__(self) -> str:
        return f"CurveKeyPair(public_key={self._public_key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CurveKeyPair):
            return NotImplemented
        return self._public_key == other._public_key

    def __hash__(self) -> int:
        return hash(self._public_key)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("CurveKeyPair holds a secret and cannot be pickled; store its seed deliberately")
