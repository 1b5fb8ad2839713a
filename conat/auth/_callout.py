"""The auth callout responder: nats-server asks, we decide, nats-server enforces.

For every connect that is not a static service user, nats-server publishes an authorization
request (a JWT signed by the server's nkey, encrypted to our xkey) on ``$SYS.REQ.USER.AUTH`` in
the AUTH account. :class:`Decider` turns it into an answer: decrypt (a request without the xkey
header is ignored when xkey is configured: fail closed), verify the server's signature, check the
connection type, rate-limit by client address, verify the conat token (signature, kid, audience =
this bus, time window), rate-limit by principal, map principal and scope to a
:class:`subjects.Grant`, record the pending connection, check revocation and one-time use against
the bus's durable :class:`~conat.auth.AuthStore`, and sign a user JWT with those permissions (always
with explicit denies and an explicit ``>`` for "everything"), the private inbox prefix and response
permissions. A refusal is an authorization response carrying only the reason code (nats-server
logs it; the client only ever sees "Authorization Violation"). Every decision goes to the audit
log, without token bytes.

Expiry: the user JWT expires at the token's ``exp`` plus the leeway (the window in which this bus
accepts the token; it allows for the issuer's clock being behind ours), capped by
``max_lifetime``. A token with less than :data:`MIN_CONNECTION_LIFETIME` left in that window is
refused as ``expired``: nats-server would refuse (or at once disconnect) a user JWT that is already
expired by its clock, and the audit log must say what really happened.

Revocation against a racing connect: the decider records the connection (principal, server, client
id, token revision) *before* it reads the revocation floor, and a revoke writes the floor *before*
it kicks the recorded connections. So either the decision reads the new floor (refused) or the
connection was recorded before the floor was written and the kick finds it; nats-server knows the
client id from the moment the client's socket is accepted, so a kick also closes a client whose
authorization is still in flight.

:class:`~conat.auth.AuthCallout` (:mod:`conat.auth._callout_service`) is the service that asks the
decider; several (in processes of their own, see :class:`~conat.auth.AuthResponder`) share the load.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, final

from conat import ConatError, TokenBucket
from subjects import grant

from ._audit import AuditLog
from ._errors import AuthStoreError, TokenError
from ._nats_claims import (
    XKEY_HEADER,
    AuthorizationRequest,
    authorization_response,
    parse_authorization_request,
    user_jwt,
)
from ._nkeys import KeyPair
from ._store import AuthStore
from ._tokens import TOKEN_PREFIX, TokenClaims
from ._verifier import TokenVerifier
from ._xkey import CurveKeyPair

__all__ = ["MIN_CONNECTION_LIFETIME", "Connections", "CredentialExchange", "Decider", "Decision"]

log = logging.getLogger("conat.auth.callout")

_LIMITER_CAP: Final = 50_000

MIN_CONNECTION_LIFETIME: Final = 3.0
"""A token with less time than this (seconds) left in the bus's acceptance window is refused as
expired: its user JWT would expire (by whole seconds) before or as the client gets to use it."""


class CredentialExchange(Protocol):
    """Judges credentials that are not conat tokens, for the bus's issuer (master's API keys).

    :meth:`claims` gets the credential as the client sent it and returns the claims it stands for
    (principal, audience = this bus, revision, a short expiry), or ``None`` to refuse it
    (``bad-credential``). The decision then goes on exactly as for a verified token: rate limits,
    grant, revocation floor, audit. Raising :class:`conat.ConatError` refuses the connection as
    ``exchange-unavailable`` (fail closed).
    """

    async def claims(self, credential: str, bus: str) -> TokenClaims | None: ...


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
class Connections:
    """The connections this responder granted, for kicks: principal, (server id, client id), the
    token's revision, and when the user JWT expires.

    An entry is added when a connection is granted (before its revocation check, see the module
    docstring) and removed when nats-server reports the disconnect, when it is kicked, when its
    check refused it, or once its user JWT has expired (nats-server has closed it by then), so
    memory is bounded by the connections alive within one token lifetime.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[str, int, float]] = {}
        self._by_principal: dict[str, set[tuple[str, int]]] = {}
        self._expiries: list[tuple[float, str, int]] = []

    def add(
        self, principal: str, server: str, cid: int, revision: int = 0, expires: float = float("inf")
    ) -> None:
        key = (server, cid)
        self.remove(server, cid)
        self._entries[key] = (principal, revision, expires)
        self._by_principal.setdefault(principal, set()).add(key)
        if expires != float("inf"):
            heapq.heappush(self._expiries, (expires, server, cid))

    def remove(self, server: str, cid: int) -> None:
        key = (server, cid)
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._by_principal.get(entry[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_principal[entry[0]]

    def prune(self, now: float) -> None:
        """Forget connections whose user JWT has expired."""
        while self._expiries and self._expiries[0][0] <= now:
            expires, server, cid = heapq.heappop(self._expiries)
            entry = self._entries.get((server, cid))
            if entry is not None and entry[2] == expires:
                self.remove(server, cid)

    def of(self, principal: str, *, below: int | None = None) -> list[tuple[str, int]]:
        """``(server, cid)`` of ``principal``'s connections (whose token revision is below
        ``below``, if given), sorted."""
        keys = self._by_principal.get(principal, ())
        return sorted(k for k in keys if below is None or self._entries[k][1] < below)

    def __len__(self) -> int:
        return len(self._entries)


class _Limiters:
    """One token bucket per key (address or principal): ``rate`` attempts per ``per`` seconds, as a
    burst; full buckets are forgotten when too many are remembered."""

    def __init__(self, rate: float, per: float) -> None:
        self.rate, self.per = rate, per
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _LIMITER_CAP:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[key] = TokenBucket(self.rate / self.per, capacity=self.rate)
        return bucket.try_take(now)


@dataclass
class Decider:
    """The decision procedure of one bus (see the module docstring).

    Attributes:
        bus: this bus (``master`` or ``host-<uuid>``): the audience tokens must name.
        issuer: the account key named as ``auth_callout.issuer``; signs responses and user JWTs.
        verifier: checks conat tokens (keys, audience, leeway); one-time use is checked here,
            against ``store``.
        store: the bus's durable revocation floors and used one-time tokens.
        xkey: the responder's curve key (``auth_callout.xkey``). When set, every request must be
            sealed to it: one without the xkey header is ignored (nats-server then refuses).
        account: the account authorized clients are placed in (config mode: its name).
        max_lifetime: cap on a user JWT's lifetime in seconds (the token's ``exp`` plus the leeway
            usually ends it first; the JWT expiry is only the safety net behind the client's own
            refresh).
        allowed_types: connection types accepted (``nats``, ``websocket``; nats-server does not
            enforce ``allowed_connection_types`` on the callout path, so we do).
        allowed_kinds: client kinds accepted (``Client``; leaf nodes use static config).
        exchange: judges credentials that are not conat tokens (None: only tokens are accepted).
    """

    bus: str
    issuer: KeyPair
    verifier: TokenVerifier
    store: AuthStore
    xkey: CurveKeyPair | None = None
    audit: AuditLog | None = None
    account: str = "APP"
    max_lifetime: float = 3600.0
    allowed_types: frozenset[str] = frozenset({"nats", "websocket"})
    allowed_kinds: frozenset[str] = frozenset({"Client"})
    per_address: tuple[float, float] = (200.0, 1.0)
    per_principal: tuple[float, float] = (20.0, 1.0)
    clock: Callable[[], float] = time.time
    connections: Connections = field(default_factory=Connections)
    exchange: CredentialExchange | None = None

    def __post_init__(self) -> None:
        self._by_address = _Limiters(*self.per_address)
        self._by_principal = _Limiters(*self.per_principal)

    async def decide(self, payload: bytes, server_xkey: str | None) -> Decision | None:
        """The answer to one authorization request; None if it is not a request we can answer
        (not sealed to our xkey although xkey is configured, undecryptable, or not signed by a
        server: nats-server did not send it, or sent it in a form we do not accept)."""
        try:
            if self.xkey is None:
                raw = payload
            elif server_xkey:
                raw = self.xkey.open(payload, server_xkey)
            else:
                log.warning(
                    "ignored an authorization request without the %s header (xkey is required)", XKEY_HEADER
                )
                return None
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
        if not self._by_address.allow(address, now):
            return refuse("rate-limited")
        token = request.connect_opts.auth_token or request.connect_opts.password
        if not token:
            return refuse("no-credentials")
        if self.exchange is not None and not token.startswith(f"{TOKEN_PREFIX}."):
            try:
                exchanged = await self.exchange.claims(token, self.bus)
            except ConatError as e:
                log.error("credential exchange failed: %s", e)
                return refuse("exchange-unavailable")
            if exchanged is None:
                return refuse("bad-credential")
            if exchanged.aud != self.bus:
                return refuse("wrong-audience", exchanged.sub)
            claims = exchanged
        else:
            try:
                claims = self.verifier.verify(token, check_replay=False)
            except TokenError as e:
                return refuse(str(e.code))
        principal = claims.sub
        if not self._by_principal.allow(principal, now):
            return refuse("rate-limited", principal)
        try:
            access = grant(principal, claims.scope, self.bus)
        except (ConatError, ValueError) as e:
            log.warning("no grant for %s: %s", principal, e)
            return refuse("bad-claims", principal)
        expires = min(claims.exp + self.verifier.leeway, now + self.max_lifetime)
        if expires - now < MIN_CONNECTION_LIFETIME:
            return refuse("expired", principal)
        # Record first, then check (module docstring): a revoke that commits its floor after our
        # read finds this connection and kicks it.
        self.connections.prune(now)
        self.connections.add(principal, server, cid, claims.rev, expires)
        try:
            reason = await self._check_store(claims.sub, claims.rev, claims.jti, claims.once, claims.exp, now)
        except BaseException:
            self.connections.remove(server, cid)
            raise
        if reason is not None:
            self.connections.remove(server, cid)
            return refuse(reason, principal)
        jwt = user_jwt(
            user_nkey=request.user_nkey,
            account=self.account,
            name=principal,
            permissions=access.permissions.to_nats(),
            responses=(access.responses.max, access.responses.ttl) if access.responses else None,
            expires=expires,
            issuer=self.issuer,
            now=now,
        )
        response = authorization_response(
            user_nkey=request.user_nkey, server_id=server, issuer=self.issuer, jwt=jwt
        )
        return Decision(
            self._seal(response, request), True, principal, "ok", address, server, cid, access.inbox_prefix
        )

    async def _check_store(
        self, principal: str, revision: int, jti: str, once: bool, exp: float, now: float
    ) -> str | None:
        """The refusal reason from the durable state (revoked, replayed), or None. Revocation comes
        first so that a revoked one-time token is not used up; a store that cannot answer refuses
        (fail closed)."""
        try:
            if revision < await self.store.floor(principal):
                return "revoked"
            if once and not await self.store.first_use(jti, exp + self.verifier.leeway, now):
                return "replayed"
        except AuthStoreError as e:
            log.error("refusing %s: %s", principal, e)
            return "store-unavailable"
        return None

    def _seal(self, response: str, request: AuthorizationRequest) -> bytes:
        data = response.encode("ascii")
        server_xkey = request.server_id.xkey
        if self.xkey is not None and server_xkey:
            return self.xkey.seal(data, server_xkey)
        return data
