"""Checking conat tokens for one bus (the format: :mod:`conat.auth._tokens`).

:meth:`TokenVerifier.verify` checks, in this order, and refuses with
:class:`~conat.auth.TokenError` whose ``code`` is:

======================  ===============================================================
``"too-large"``         the token is longer than ``max_size`` (checked before parsing)
``"malformed"``         not ASCII, wrong shape, unknown prefix, non-canonical base64
``"unknown-kid"``       no public key for the kid (never issued, or retired)
``"bad-signature"``     the signature does not verify (tampered, or signed by another key); also
                        when no kid can be read from the claims and no current key verifies them
``"bad-claims"``        the signed claims do not decode, or are inconsistent
``"wrong-audience"``    the token is for another bus
``"expired"``           ``now >= exp + leeway``
``"not-yet-valid"``     ``now + leeway < nbf`` (or ``iat`` when there is no ``nbf``)
``"replayed"``          a one-time token that was already used
``"no-replay-guard"``   a one-time token, and this verifier has no :class:`~conat.auth.ReplayGuard`
======================  ===============================================================

Replay is checked last, so a token refused for any other reason does not use up its one time. (A
bus's callout checks revocation after these and replay after that, against its own durable store:
``verify(check_replay=False)``.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol, final, runtime_checkable

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from ._errors import TokenError
from ._replay import ReplayGuard
from ._tokens import (
    TOKEN_LEEWAY,
    TokenClaims,
    decode_claims,
    is_audience,
    parse_token,
    peek_kid,
    public_key_bytes,
)

__all__ = ["PublicKeySource", "TokenVerifier"]


@runtime_checkable
class PublicKeySource(Protocol):
    """Something that knows the current public keys (a keyring). Asked at every verification."""

    def public_keys(self) -> Mapping[str, bytes]:
        """``{kid: 32-byte Ed25519 public key}``."""
        ...


def _verifies(key: VerifyKey, signed: bytes, signature: bytes) -> bool:
    try:
        key.verify(signed, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


@final
class TokenVerifier:
    """Checks tokens for one bus (see the module docstring for the checks and their order).

    Args:
        public_keys: ``{kid: public key}`` (32 raw bytes, or unpadded base64url as exported by
            :meth:`conat.auth.Keyring.export_public`), copied now; or a :class:`PublicKeySource`
            (a keyring), asked at every verification so that rotation and retirement apply at once.
        audience: this bus: ``master`` or ``host-<uuid>``. Tokens for any other bus are refused.
        leeway: allowed clock skew between issuer and verifier, in seconds, on ``exp`` and ``nbf``.
        max_size: the longest token accepted, in characters (checked before anything is parsed).
        clock: wall-clock seconds since the epoch (injectable for tests).
        replay: where one-time tokens are remembered. Without one, one-time tokens are refused.

    Raises:
        ValueError: naming the argument, for a bad key, audience, leeway or max_size.
        TypeError: ``public_keys`` is neither a mapping nor a key source.
    """

    def __init__(
        self,
        public_keys: Mapping[str, bytes | str] | PublicKeySource,
        *,
        audience: str,
        leeway: float = TOKEN_LEEWAY,
        max_size: int = 4096,
        clock: Callable[[], float] = time.time,
        replay: ReplayGuard | None = None,
    ) -> None:
        if not is_audience(audience):
            raise ValueError(f"audience: {audience!r} is not a bus (master or host-<uuid>)")
        if not (math.isfinite(leeway) and 0 <= leeway <= 300):
            raise ValueError(f"leeway: must be between 0 and 300 seconds, got {leeway!r}")
        if max_size < 1:
            raise ValueError(f"max_size: must be positive, got {max_size!r}")
        self._source: PublicKeySource | None = None
        self._keys: dict[str, VerifyKey] = {}
        if isinstance(public_keys, Mapping):
            self._keys = {kid: VerifyKey(public_key_bytes(kid, value)) for kid, value in public_keys.items()}
        elif isinstance(public_keys, PublicKeySource):
            self._source = public_keys
        else:
            raise TypeError("public_keys: must be a mapping of kid to key, or a keyring")
        self._cache: dict[tuple[str, bytes], VerifyKey] = {}
        self.audience: Final = audience
        self.leeway: Final = float(leeway)
        self.max_size: Final = max_size
        self._clock = clock
        self._replay = replay

    def verify(self, token: str | bytes, *, check_replay: bool = True) -> TokenClaims:
        """Return the claims of a valid token, or raise.

        Args:
            token: the token, untrusted.
            check_replay: ``False`` leaves the one-time check to the caller, who must then refuse a
                ``once`` token already used (a bus does it against its durable store, after its
                revocation check, so that a refused token never uses up its one time).

        Raises:
            TokenError: the token is refused; ``code`` says why. The message never contains it.
        """
        if not isinstance(token, str | bytes | bytearray):
            raise TokenError("malformed", "not a string")
        if len(token) > self.max_size:
            raise TokenError("too-large", f"{len(token)} characters, the limit is {self.max_size}")
        payload, signed, signature = parse_token(token)
        keys = self._current_keys()
        kid = peek_kid(payload)
        if kid is None:
            # No kid can be read: a tampered or foreign payload. Only a key that verifies it
            # (there are a few at most) can make it more than a bad signature.
            candidates = list(keys.items())
        elif kid in keys:
            candidates = [(kid, keys[kid])]
        else:
            raise TokenError("unknown-kid", "no public key for its kid")
        signer = next((name for name, key in candidates if _verifies(key, signed, signature)), None)
        if signer is None:
            raise TokenError("bad-signature", "the signature does not verify")
        claims = decode_claims(payload, signer)
        if claims.aud != self.audience:
            raise TokenError("wrong-audience", f"for {claims.aud!r}, this bus is {self.audience!r}")
        now = self._clock()
        if now >= claims.exp + self.leeway:
            raise TokenError("expired", f"expired {now - claims.exp:.0f}s ago (leeway {self.leeway:g}s)")
        if now + self.leeway < claims.start:
            raise TokenError("not-yet-valid", f"valid in {claims.start - now:.0f}s (leeway {self.leeway:g}s)")
        if claims.once and check_replay:
            if self._replay is None:
                raise TokenError("no-replay-guard", "a one-time token needs a verifier with a replay guard")
            if not self._replay.first_use(claims.jti, claims.exp + self.leeway, now):
                raise TokenError("replayed", "this one-time token was already used")
        return claims

    def _current_keys(self) -> Mapping[str, VerifyKey]:
        if self._source is None:
            return self._keys
        keys: dict[str, VerifyKey] = {}
        for kid, raw in self._source.public_keys().items():
            cached = self._cache.get((kid, raw))
            if cached is None:
                if len(self._cache) > 64:
                    self._cache.clear()
                cached = self._cache[(kid, raw)] = VerifyKey(public_key_bytes(kid, raw))
            keys[kid] = cached
        return keys

    def __repr__(self) -> str:
        return f"TokenVerifier(audience={self.audience!r}, leeway={self.leeway:g})"
