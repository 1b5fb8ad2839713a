"""What master mints (tokens for every bus) and how an API key becomes a connection.

Tokens (``conat.auth.TokenIssuer``, master's key ring; every token carries its principal's current
revision, so a revocation refuses exactly the older ones):

=========================  ==================  =====================  =========================
for                        principal           bus (``aud``)          lifetime (default)
=========================  ==================  =====================  =========================
an account's programs      ``account-<a>``     ``master``             ``token_ttl`` (10 min)
``tokens.connect(h)``      ``account-<a>``     ``host-<h>``           ``token_ttl``; scope: the
                                                                      projects it may open there
a host's agent             ``host-<h>``        ``master``             ``token_ttl``
a host's own bus           ``host-<h>``        ``host-<h>``           ``host_token_ttl`` (1 h)
a joining host             ``host-<h>``        ``master``, one-time   ``join_ttl`` (1 h)
a project's process        ``project-<p>``     ``host-<h>``           ``project_token_ttl`` (12 h)
master itself              ``hub``             any                    ``token_ttl``
=========================  ==================  =====================  =========================

**API key exchange.** Programs hold an API key (``ck_<id>_<secret>``, stored scrypt-hashed). They
connect to master's bus with the key itself as the credential: the bus's callout hands anything
that is not a conat token to :class:`ApiKeyExchange`, which looks the key up, checks it (scrypt,
in a worker thread so the event loop never stalls) and answers with claims for its owner at the
owner's current revision, valid for a minute. On that connection the program asks for a real
token (``tokens.master``; hosts ``host.master_token``) and uses that from then on, asking again
before it expires. The key travels only to master's bus, never to a host. A successful check is
remembered (by the key's SHA-256, in memory) so a refresh costs no scrypt; deleting the key, its
account or its host forgets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from conat.auth import (
    MASTER_AUDIENCE,
    ApiKeyError,
    Keyring,
    TokenClaims,
    TokenIssuer,
    api_key_id,
    verify_api_key,
)
from subjects import HUB, Scope, account_scope, host_scope, project_scope

from ._db import Database

__all__ = ["ApiKeyExchange", "Issuer", "TokenPolicy"]

_EXCHANGE_TTL: Final = 60.0
_VERIFIED_CACHE: Final = 10_000


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """Token lifetimes (seconds)."""

    token_ttl: float = 600.0
    host_token_ttl: float = 3600.0
    join_ttl: float = 3600.0
    project_token_ttl: float = 12 * 3600.0


class Issuer:
    """Mints every token master hands out (see the module docstring)."""

    def __init__(self, keyring: Keyring, policy: TokenPolicy, wall: Callable[[], float]) -> None:
        self.keyring = keyring
        self.policy = policy
        self._wall = wall
        self._issuer = TokenIssuer(keyring, clock=wall)

    def public_keys(self) -> dict[str, str]:
        """Master's public token keys, ``{kid: base64url}`` (``Keyring.export_public``): what hosts pin."""
        keys: dict[str, str] = msgspec.json.decode(self.keyring.export_public())
        return keys

    def hub(self, aud: str, ttl: float | None = None) -> str:
        return self._issuer.issue(HUB, aud, Scope(), ttl or self.policy.token_ttl)

    def account_master(self, account_id: str, revision: int) -> tuple[str, float]:
        return self._mint(
            account_scope(account_id), MASTER_AUDIENCE, Scope(), self.policy.token_ttl, revision
        )

    def account_host(
        self, account_id: str, revision: int, host_id: str, projects: list[str], hosts: list[str], admin: bool
    ) -> tuple[str, float]:
        scope = Scope(projects=tuple(projects), hosts=tuple(hosts), admin=admin)
        return self._mint(
            account_scope(account_id), host_scope(host_id), scope, self.policy.token_ttl, revision
        )

    def host_master(self, host_id: str, revision: int) -> tuple[str, float]:
        return self._mint(host_scope(host_id), MASTER_AUDIENCE, Scope(), self.policy.token_ttl, revision)

    def host_own(self, host_id: str, revision: int) -> tuple[str, float]:
        scope = host_scope(host_id)
        return self._mint(scope, scope, Scope(), self.policy.host_token_ttl, revision)

    def join(self, host_id: str, revision: int) -> tuple[str, float]:
        return self._mint(
            host_scope(host_id), MASTER_AUDIENCE, Scope(), self.policy.join_ttl, revision, once=True
        )

    def project(self, project_id: str, host_id: str, revision: int) -> tuple[str, float]:
        return self._mint(
            project_scope(project_id), host_scope(host_id), Scope(), self.policy.project_token_ttl, revision
        )

    def _mint(
        self, sub: str, aud: str, scope: Scope, ttl: float, revision: int, *, once: bool = False
    ) -> tuple[str, float]:
        now = self._wall()
        return self._issuer.issue(sub, aud, scope, ttl, revision=revision, once=once, now=now), now + ttl


class ApiKeyExchange:
    """The master bus's :class:`conat.auth.CredentialExchange`: API keys stand for their owner."""

    def __init__(self, db: Database, wall: Callable[[], float]) -> None:
        self.db = db
        self._wall = wall
        self._verified: OrderedDict[bytes, str] = OrderedDict()

    def forget(self, key_id: str) -> None:
        """Drop a key (deleted, or its owner was) from the memory of verified keys."""
        for digest in [d for d, k in self._verified.items() if k == key_id]:
            del self._verified[digest]

    def forget_all(self) -> None:
        self._verified.clear()

    async def claims(self, credential: str, bus: str) -> TokenClaims | None:
        if bus != MASTER_AUDIENCE:
            return None
        try:
            key_id = api_key_id(credential)
        except ApiKeyError:
            return None
        async with self.db.reading() as tx:
            found = await tx.key(key_id)
            if found is None:
                return None
            record, account_id, host_id, _name, _created = found
            if account_id is not None:
                account = await tx.account(account_id)
                if account is None or account.deleted is not None:
                    return None
                principal, revision = account_scope(account_id), account.revision
            else:
                assert host_id is not None
                host = await tx.host(host_id)
                if host is None or host.status == "deleted":
                    return None
                principal, revision = host_scope(host_id), host.revision
        digest = hashlib.sha256(credential.encode()).digest()
        if self._verified.get(digest) != key_id:
            if not await asyncio.to_thread(verify_api_key, credential, record):
                return None
            self._verified[digest] = key_id
            while len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(digest)
        now = self._wall()
        return TokenClaims(
            kid="api-key", iss=HUB, sub=principal, aud=bus, iat=now, exp=now + _EXCHANGE_TTL,
            jti=secrets.token_urlsafe(16), rev=revision,
        )  # fmt: skip
