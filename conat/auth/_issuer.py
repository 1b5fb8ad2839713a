"""Minting conat tokens (the format: :mod:`conat.auth._tokens`).

The issuer never holds a seed: it asks its keyring (:class:`SigningKeys`, implemented by
:class:`~conat.auth.Keyring`) for the current kid and for a signature, so rotation takes effect at
the next token and seeds stay inside the keyring.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Protocol, final

from subjects import Scope

from ._tokens import (
    KID_RE,
    MAX_REVISION,
    MAX_TOKEN_TTL,
    MIN_TOKEN_TTL,
    TokenClaims,
    b64url_encode,
    is_audience,
    is_principal,
    signing_input,
)

__all__ = ["SigningKeys", "TokenIssuer"]


class SigningKeys(Protocol):
    """What :class:`TokenIssuer` needs from a keyring: the current kid, and signing with a kid.

    The seeds stay inside the keyring (:class:`conat.auth.Keyring` implements this).
    """

    @property
    def current(self) -> str:
        """The kid that signs new tokens."""
        ...

    def sign(self, kid: str, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` by key ``kid``."""
        ...


@final
class TokenIssuer:
    """Mints tokens signed with a keyring's current key.

    Args:
        keyring: the signing keys (:class:`conat.auth.Keyring`). Rotation takes effect at the next
            :meth:`issue`.
        issuer: the ``iss`` claim.
        clock: wall-clock seconds since the epoch (injectable for tests).
    """

    def __init__(
        self, keyring: SigningKeys, *, issuer: str = "hub", clock: Callable[[], float] = time.time
    ) -> None:
        if not issuer:
            raise ValueError("issuer: must not be empty")
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock

    def issue(
        self,
        sub: str,
        aud: str,
        scope: Scope,
        ttl: float,
        *,
        nbf: float | None = None,
        once: bool = False,
        revision: int = 0,
        now: float | None = None,
    ) -> str:
        """Mint a token.

        Args:
            sub: the principal (``account-<uuid>``, ``host-<uuid>``, ``project-<uuid>``, ``hub``).
            aud: the bus: ``master`` or ``host-<uuid>``.
            scope: what the token grants on that bus.
            ttl: lifetime in seconds, counted from ``nbf`` (or from now), from
                :data:`~conat.auth.MIN_TOKEN_TTL` to :data:`~conat.auth.MAX_TOKEN_TTL`.
            nbf: if given, the token is valid only from then on (not before now).
            once: a one-time token: verifiers with a replay guard accept it once.
            revision: the principal's current revision (the ``rev`` claim, see
                :mod:`conat.auth._tokens`): a bus that was told to refuse revisions below a floor
                refuses the token unless ``revision`` is at least that floor.
            now: the issue time (defaults to the issuer's clock).

        Returns:
            The token (see :mod:`conat.auth._tokens` for the format).

        Raises:
            ValueError: naming the argument, for a bad principal, audience, ttl, nbf or revision.
            TypeError: ``scope`` is not a :class:`subjects.Scope`.
        """
        if not is_principal(sub):
            raise ValueError(f"sub: {sub!r} is not a principal (account-/host-/project-<uuid> or hub)")
        if not is_audience(aud):
            raise ValueError(f"aud: {aud!r} is not a bus (master or host-<uuid>)")
        if not isinstance(scope, Scope):
            raise TypeError("scope: must be a subjects.Scope")
        if not (isinstance(ttl, int | float) and MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL):
            raise ValueError(f"ttl: must be {MIN_TOKEN_TTL:g} to {MAX_TOKEN_TTL:g} seconds, got {ttl!r}")
        iat = self._clock() if now is None else now
        if not math.isfinite(iat):
            raise ValueError("now: must be finite")
        if nbf is not None and not (math.isfinite(nbf) and nbf >= iat):
            raise ValueError("nbf: must be finite and not before the issue time")
        if not isinstance(revision, int) or isinstance(revision, bool) or not 0 <= revision <= MAX_REVISION:
            raise ValueError(f"revision: must be an int from 0 to 2**53, got {revision!r}")
        kid = self._keyring.current
        if not KID_RE.fullmatch(kid):
            raise ValueError(f"keyring: its current kid {kid!r} is not 1 to 64 of [A-Za-z0-9_-]")
        claims = TokenClaims(
            kid=kid,
            iss=self._issuer,
            sub=sub,
            aud=aud,
            iat=iat,
            exp=(iat if nbf is None else nbf) + ttl,
            jti=secrets.token_urlsafe(16),
            scope=scope,
            nbf=nbf,
            once=once,
            rev=revision,
        )
        signed = signing_input(claims)
        signature = self._keyring.sign(kid, signed.encode("ascii"))
        return f"{signed}.{b64url_encode(signature)}"

    def __repr__(self) -> str:
        return f"TokenIssuer(issuer={self._issuer!r})"
