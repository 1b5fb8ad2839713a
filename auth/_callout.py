"""The auth callout responder: nats-server asks, we decide, nats-server enforces.

For every connect that is not a static service user, nats-server publishes an authorization
request (a JWT signed by the server's nkey, encrypted to our xkey) on ``$SYS.REQ.USER.AUTH`` in
the AUTH account. :class:`Decider` turns it into an answer: decrypt, verify the server's
signature, check the connection type, rate-limit by client address, verify the conat token
(signature, kid, audience = this bus, time window, replay, revocation), rate-limit by
principal, map principal and scope to a :class:`subjects.Grant`, and sign a user JWT with those
permissions (always with explicit denies), the private inbox prefix and response permissions,
expiring with the token. A refusal is an authorization response carrying only the reason code,
so the client learns nothing beyond "Authorization Violation". Every decision goes to the audit
log, without token bytes.

:class:`AuthCallout` is the actor that serves the subject; several (in processes of their own)
share the load as a queue group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, final

from aiolimiter import AsyncLimiter

from actors import Actor, Reply
from conat import ConatError, Message
from conat.auth import (
    AUTH_CALLOUT_SUBJECT,
    XKEY_HEADER,
    AuthorizationRequest,
    CurveKeyPair,
    KeyPair,
    TokenError,
    TokenVerifier,
    authorization_response,
    parse_authorization_request,
    user_jwt,
)
from subjects import grant

from ._audit import AuditLog

__all__ = ["AuthCallout", "Connections", "Decider", "Decision", "Revocations"]

log = logging.getLogger("conat.auth.callout")

_LIMITER_CAP: Final = 50_000


@final
@dataclass(frozen=True, slots=True)
class Decision:
    """What the decider answered: the signed response, and what the audit log records."""

    response: bytes
    granted: bool
    principal: str
    reason: str
    address: str
    server: str
    cid: int
    inbox_prefix: str = ""


@final
class Revocations:
    """Principals whose credentials issued before a moment are refused (in memory; master keeps
    the durable list and replays it into a restarted responder)."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def revoke(self, principal: str, now: float) -> None:
        self._since[principal] = now

    def revoked(self, principal: str, issued_at: float) -> bool:
        since = self._since.get(principal)
        return since is not None and issued_at <= since


@final
class Connections:
    """Which live connections (server id, client id) belong to which principal, for kicks."""

    def __init__(self) -> None:
        self._by_principal: dict[str, set[tuple[str, int]]] = {}
        self._owner: dict[tuple[str, int], str] = {}

    def add(self, principal: str, server: str, cid: int) -> None:
        key = (server, cid)
        self._owner[key] = principal
        self._by_principal.setdefault(principal, set()).add(key)

    def remove(self, server: str, cid: int) -> None:
        principal = self._owner.pop((server, cid), None)
        if principal is not None:
            keys = self._by_principal.get(principal)
            if keys is not None:
                keys.discard((server, cid))
                if not keys:
                    del self._by_principal[principal]

    def of(self, principal: str) -> list[tuple[str, int]]:
        return sorted(self._by_principal.get(principal, ()))

    def __len__(self) -> int:
        return len(self._owner)


class _Limiters:
    """One leaky bucket per key (address or principal), pruned when too many are remembered."""

    def __init__(self, rate: float, per: float) -> None:
        self.rate, self.per = rate, per
        self._buckets: dict[str, AsyncLimiter] = {}

    async def allow(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _LIMITER_CAP:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.has_capacity(self.rate)}
            bucket = self._buckets[key] = AsyncLimiter(self.rate, self.per)
        if not bucket.has_capacity():
            return False
        await bucket.acquire()  # has capacity: returns at once
        return True


@dataclass
class Decider:
    """The decision procedure of one bus (see the module docstring).

    Attributes:
        bus: this bus (``master`` or ``host-<uuid>``): the audience tokens must name.
        issuer: the account key named as ``auth_callout.issuer``; signs responses and user JWTs.
        xkey: the responder's curve key (``auth_callout.xkey``), if requests are encrypted.
        verifier: checks conat tokens (keys, audience, leeway, replay).
        account: the account authorized clients are placed in (config mode: its name).
        max_lifetime: cap on a user JWT's lifetime in seconds (the token's ``exp`` usually ends it
            first; the JWT expiry is only the safety net behind the client's own refresh).
        allowed_types: connection types accepted (``nats``, ``websocket``; nats-server does not
            enforce ``allowed_connection_types`` on the callout path, so we do).
        allowed_kinds: client kinds accepted (``Client``; leaf nodes use static config).
    """

    bus: str
    issuer: KeyPair
    verifier: TokenVerifier
    xkey: CurveKeyPair | None = None
    audit: AuditLog | None = None
    account: str = "APP"
    max_lifetime: float = 3600.0
    allowed_types: frozenset[str] = frozenset({"nats", "websocket"})
    allowed_kinds: frozenset[str] = frozenset({"Client"})
    per_address: tuple[float, float] = (200.0, 1.0)
    per_principal: tuple[float, float] = (20.0, 1.0)
    clock: Callable[[], float] = time.time
    revocations: Revocations = field(default_factory=Revocations)
    connections: Connections = field(default_factory=Connections)

    def __post_init__(self) -> None:
        self._by_address = _Limiters(*self.per_address)
        self._by_principal = _Limiters(*self.per_principal)

    async def decide(self, payload: bytes, server_xkey: str | None) -> Decision | None:
        """The answer to one authorization request; None if it is not a request we can answer
        (undecryptable or not signed by a server: nats-server did not send it)."""
        try:
            raw = self.xkey.open(payload, server_xkey) if self.xkey is not None and server_xkey else payload
            request = parse_authorization_request(raw.decode("ascii", errors="replace"))
        except (ConatError, UnicodeError, ValueError) as e:
            log.warning("ignored a malformed authorization request: %s", e)
            return None
        decision = await self._decide(request)
        if self.audit is not None:
            self.audit.record(
                principal=decision.principal,
                address=decision.address,
                bus=self.bus,
                result="grant" if decision.granted else "refuse",
                reason=decision.reason,
                server=decision.server,
                cid=decision.cid,
            )
        return decision

    async def _decide(self, request: AuthorizationRequest) -> Decision:
        now = self.clock()
        info = request.client_info
        address, server, cid = info.host, request.server_id.id, info.id

        def refuse(reason: str, principal: str = "") -> Decision:
            response = authorization_response(
                user_nkey=request.user_nkey, server_id=server, issuer=self.issuer, error=reason
            )
            return Decision(self._seal(response, request), False, principal, reason, address, server, cid)

        if info.kind not in self.allowed_kinds or info.type not in self.allowed_types:
            return refuse("connection-type")
        if not await self._by_address.allow(address):
            return refuse("rate-limited")
        token = request.connect_opts.auth_token or request.connect_opts.password
        if not token:
            return refuse("no-credentials")
        try:
            claims = self.verifier.verify(token)
        except TokenError as e:
            return refuse(str(e.code))
        principal = claims.sub
        if not await self._by_principal.allow(principal):
            return refuse("rate-limited", principal)
        if self.revocations.revoked(principal, claims.iat):
            return refuse("revoked", principal)
        try:
            access = grant(principal, claims.scope, self.bus)
        except (ConatError, ValueError) as e:
            log.warning("no grant for %s: %s", principal, e)
            return refuse("bad-claims", principal)
        expires = min(float(claims.exp), now + self.max_lifetime)
        jwt = user_jwt(
            user_nkey=request.user_nkey,
            account=self.account,
            name=principal,
            permissions=access.permissions.to_nats(),
            responses=(access.responses.max, access.responses.ttl) if access.responses else None,
            expires=expires,
            issuer=self.issuer,
        )
        response = authorization_response(user_nkey=request.user_nkey, server_id=server, issuer=self.issuer, jwt=jwt)
        self.connections.add(principal, server, cid)
        return Decision(self._seal(response, request), True, principal, "ok", address, server, cid, access.inbox_prefix)

    def _seal(self, response: str, request: AuthorizationRequest) -> bytes:
        data = response.encode("ascii")
        server_xkey = request.server_id.xkey
        if self.xkey is not None and server_xkey:
            return self.xkey.seal(data, server_xkey)
        return data


class AuthCallout(Actor, subject=AUTH_CALLOUT_SUBJECT, queue="conat-auth", idle=None, max_buffer=10_000):
    """Answers nats-server's authorization requests (build with ``factory=lambda: AuthCallout(d)``)."""

    def __init__(self, decider: Decider) -> None:
        self.decider = decider

    async def receive(self, msg: Message) -> Any:
        decision = await self.decider.decide(msg.raw, msg.header(XKEY_HEADER))
        if decision is None:
            return Reply(b"", encoding="raw")  # an empty reply is a refusal
        return Reply(decision.response, encoding="raw")
