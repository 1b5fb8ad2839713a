"""One callout responder of a bus, and revocation shared by all of them.

A bus may run any number of responders (:class:`AuthResponder`), in any processes: they share the
load of ``$SYS.REQ.USER.AUTH`` as a queue group, and they share the bus's state through the bus
directory: the secrets, the audit log and the :class:`~conat.auth.AuthStore` (revocation floors, used
one-time tokens). Each decision reads the store, so a responder that starts, restarts or missed a
message knows every revocation at once.

What a responder cannot share is which connections it granted (the kick list): nats-server only
tells the one that answered. So a revoke is a broadcast:

1. :meth:`AuthResponder.revoke` raises the principal's floor in the store (durable, committed):
   from then on every responder sharing the store refuses the old tokens;
2. publishes a :class:`RevocationNotice` on :data:`REVOCATION_SUBJECT` in the AUTH account (only
   the bus's own static users can publish or read there): every other responder raises the floor
   in its store too (a no-op on the same file; the copy a responder on another machine would keep)
   and kicks its own connections;
3. kicks the connections it granted itself whose token revision is below the floor;
4. sweeps the cluster: asks every server for the principal's connections
   (``$SYS.REQ.SERVER.PING.CONNZ``, filtered by account and user: the user JWT's name is the
   principal) and kicks those still there. So a connection whose responder is gone (its kick list
   died with it) is kicked too, on whichever node it is. A connection at the new revision that
   another responder granted just before the revoke is kicked as well, and comes back at once: the
   servers do not know a connection's revision, and a needless reconnect is cheaper than a missed
   kick.

With the decider's "record the connection, then read the floor" (see :mod:`conat.auth._callout`), a
connect racing a revoke is refused or kicked, whichever responder answered it. A kicked client
reconnects at once with the same or a fresh token; the same token is now refused.

Each responder holds two connections: the ``auth`` user (AUTH account: callout requests and
notices) and the ``sys`` user (SYS account: kicks, the sweep and disconnect events). Given every
node's URL (or learning them from the cluster), both fail over when their node dies.

On a cluster, a responder that starts checks ``$SRV`` discovery first: a responder of the same
bus deciding with another store (another bus directory) means two authorities, whose revocations
and one-time tokens would each be half the bus's, so it refuses to start (:mod:`conat.auth._cluster`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self, final

import msgspec

import conat
from conat import ConatError, InfoResponse, Message
from subjects import InvalidSubject, Principal

from ._audit import AuditLog
from ._callout import CredentialExchange, Decider
from ._callout_service import CALLOUT_SERVICE, STORE_METADATA, AuthCallout
from ._errors import AuthStoreError
from ._secrets import BusSecrets
from ._store import AuthStore
from ._tokens import MAX_TOKEN_SIZE, TOKEN_LEEWAY
from ._verifier import PublicKeySource, TokenVerifier

__all__ = [
    "APP_ACCOUNT",
    "AUTH_USER",
    "REVOCATION_SUBJECT",
    "SYS_USER",
    "AuthResponder",
    "Revocation",
    "RevocationNotice",
]

log = logging.getLogger("conat.auth.responder")

AUTH_USER: Final = "auth"
SYS_USER: Final = "sys"
APP_ACCOUNT: Final = "APP"
REVOCATION_SUBJECT: Final = "conat.auth.revoked"
"""Where responders tell each other about revocations (AUTH account: the bus's static users only)."""
KICK_TIMEOUT: Final = 2.0
SWEEP_PAGE: Final = 1024
"""Connections per server per CONNZ answer in a revocation's sweep (nats-server's own default)."""
PEER_WAIT: Final = 10.0
"""How long a responder of a node started with routes waits for its peers before it starts."""
DISCOVERY_WAIT: Final = 0.3
"""How long a starting responder listens for other responders' ``$SRV`` answers (clusters only)."""


@final
class RevocationNotice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A revocation, as broadcast to the other responders of the bus.

    ``origin`` is the sending responder (which ignores its own notice: it kicked already).
    """

    principal: str
    below: int
    origin: str


_notice_decoder: Final = msgspec.json.Decoder(RevocationNotice)


@final
@dataclass(frozen=True, slots=True)
class Revocation:
    """What :meth:`AuthResponder.revoke` did.

    Attributes:
        principal: whose tokens are revoked.
        below: the floor now: the principal's tokens with a revision (``rev``) below it are refused
            on this bus from now on, whenever they were issued; the issuer mints new ones at this
            revision or above.
        kicked: connections this responder kicked (the other responders kick theirs and record
            each kick in the audit log).
    """

    principal: str
    below: int
    kicked: int


class _Connz(msgspec.Struct):
    class _Server(msgspec.Struct):
        id: str = ""

    class _Data(msgspec.Struct):
        class _Conn(msgspec.Struct):
            cid: int = 0
            authorized_user: str = ""

        total: int = 0
        offset: int = 0
        connections: list[_Conn] = msgspec.field(default_factory=list)

    server: _Server = msgspec.field(default_factory=_Server)
    data: _Data = msgspec.field(default_factory=_Data)


class _Disconnect(msgspec.Struct):
    class _Server(msgspec.Struct):
        id: str = ""

    class _Client(msgspec.Struct):
        id: int = 0

    server: _Server = msgspec.field(default_factory=_Server)
    client: _Client = msgspec.field(default_factory=_Client)


def _api_error(raw: bytes) -> bool:
    """Whether a nats-server system API reply reports an error."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return True
    return not isinstance(body, dict) or "error" in body


def _principal(value: str) -> str:
    try:
        return Principal.parse(value).token
    except InvalidSubject:
        raise ValueError(
            f"principal: {value!r} is not a principal (account-/host-/project-<uuid> or hub)"
        ) from None


class AuthResponder:
    """A callout responder of one bus. Create with :meth:`start`; close with :meth:`aclose`."""

    def __init__(
        self,
        bus: str,
        responder: conat.Client,
        system: conat.Client,
        callout: AuthCallout,
        audit: AuditLog,
        store: AuthStore,
    ) -> None:
        self.bus = bus
        self.callout = callout
        self.decider = callout.decider
        self.audit = audit
        self.store = store
        self.origin = secrets.token_hex(8)
        self._responder = responder
        self._system = system

    @classmethod
    async def start(
        cls,
        *,
        bus: str,
        url: str | list[str],
        public_keys: Mapping[str, bytes | str] | PublicKeySource,
        directory: Path,
        leeway: float = TOKEN_LEEWAY,
        max_lifetime: float = 3600.0,
        per_address: tuple[float, float] = (200.0, 1.0),
        per_principal: tuple[float, float] = (20.0, 1.0),
        exchange: CredentialExchange | None = None,
        peers: bool = False,
    ) -> Self:
        """Start answering the callout of ``bus``, whose server is at ``url`` (a cluster: a list of
        nodes' URLs, or one; the others are learned from it).

        ``directory`` is the bus directory: its ``secrets`` (which must exist: the bus created
        them), ``audit.sqlite`` and ``auth.sqlite`` are shared with every other responder of the
        bus. ``public_keys`` are master's token keys by kid (pinned: tokens are verified locally).
        ``per_address``/``per_principal``: connect attempts allowed as (count, per seconds), per
        responder, with bursts up to the count; beyond them a connect is refused ``rate-limited``.
        ``exchange`` judges credentials that are not conat tokens (see :class:`CredentialExchange`).
        ``peers``: the node at ``url`` was started with routes to others: wait (up to
        :data:`PEER_WAIT` seconds) until they answer before looking for another authority.

        Raises:
            AuthStoreError: the store cannot be opened, or (on a cluster) another responder of
                the bus decides with another store.
        """
        secrets_ = BusSecrets.load(directory / "secrets")
        async with contextlib.AsyncExitStack() as stack:
            responder = await conat.connect(
                url, name=f"conat-auth-{bus}", user=AUTH_USER, password=secrets_.auth_password
            )
            stack.push_async_callback(responder.aclose)
            system = await conat.connect(
                url, name=f"conat-sys-{bus}", user=SYS_USER, password=secrets_.sys_password
            )
            stack.push_async_callback(system.aclose)
            audit = await AuditLog.open(directory / "audit.sqlite")
            stack.push_async_callback(audit.aclose)
            store = await AuthStore.open(directory / "auth.sqlite")
            stack.push_async_callback(store.aclose)
            verifier = TokenVerifier(public_keys, audience=bus, leeway=leeway, max_size=MAX_TOKEN_SIZE)
            decider = Decider(
                bus=bus,
                issuer=secrets_.issuer,
                xkey=secrets_.xkey,
                verifier=verifier,
                store=store,
                audit=audit,
                account=APP_ACCOUNT,
                max_lifetime=max_lifetime,
                per_address=per_address,
                per_principal=per_principal,
                exchange=exchange,
            )
            self = cls(bus, responder, system, AuthCallout(responder, decider), audit, store)
            await self._check_single_authority(peers)
            # notices and disconnects first: nothing granted from here on can be missed by a kick
            await responder.subscribe(REVOCATION_SUBJECT, callback=self._on_notice)
            await system.subscribe(f"$SYS.ACCOUNT.{APP_ACCOUNT}.DISCONNECT", dispatch=self._on_disconnect)
            await self.callout.start()
            stack.push_async_callback(self.callout.aclose)
            stack.pop_all()
        return self

    async def revoke(self, principal: str, *, below: int | None = None) -> Revocation:
        """Refuse ``principal``'s tokens below a revision on this bus, and kick its connections.

        Args:
            principal: ``account-<uuid>``, ``host-<uuid>``, ``project-<uuid>`` or ``hub``.
            below: the issuer's new revision for the principal (master bumps its revision when it
                revokes and passes it here): tokens with ``rev`` below it are refused, tokens at or
                above it pass. ``None`` (a bus used without master): one above the bus's current
                floor. Every token issued so far at the old revision is refused, *and so is every
                token issued later at that revision*: the issuer must mint the principal's new
                tokens with ``revision=`` at least the returned floor
                (:meth:`conat.auth.TokenIssuer.issue`).

        Returns:
            The new floor and how many connections this responder kicked. Every responder of the
            bus refuses the old tokens once the floor is committed, i.e. before this returns; the
            other responders kick their connections when the notice reaches them.

        Raises:
            ValueError: ``principal`` is not a principal, or ``below`` is not a revision.
            AuthStoreError: the floor could not be recorded (nothing was kicked).
        """
        principal = _principal(principal)
        floor = await self.store.raise_floor(principal, below)
        self.audit.record(principal=principal, address="", bus=self.bus, result="revoke", reason="revoked")
        notice = RevocationNotice(principal=principal, below=floor, origin=self.origin)
        try:
            await self._responder.publish(REVOCATION_SUBJECT, msgspec.json.encode(notice), encoding="raw")
            await self._responder.flush()  # on its way to the others before we kick our own
        except ConatError as e:  # the floor is committed: responders sharing the store refuse anyway
            log.error("could not tell the other responders that %s is revoked: %s", principal, e)
        kicked = await self._kick_below(principal, floor)
        kicked += await self._sweep(principal, floor)
        return Revocation(principal, floor, kicked)

    async def _check_single_authority(self, peers: bool) -> None:
        """Refuse to serve a cluster's bus that responders with another store already serve."""
        client = self._responder
        if client.cluster is None:
            return
        if peers:
            try:
                await client.cluster_servers(PEER_WAIT, at_least=2)
            except conat.Timeout:
                log.warning(
                    "%s: no other node answered within %gs; cannot check for another authority",
                    self.bus,
                    PEER_WAIT,
                )
        others: set[str] = set()
        try:
            async for msg in client.request_many(
                f"$SRV.INFO.{CALLOUT_SERVICE}", timeout=DISCOVERY_WAIT * 3, idle_timeout=DISCOVERY_WAIT
            ):
                with contextlib.suppress(msgspec.DecodeError):
                    info = msgspec.json.decode(msg.raw, type=InfoResponse)
                    if info.metadata.get("conat.bus") == self.bus:
                        others.add(info.metadata.get(STORE_METADATA, ""))
        except (conat.NoResponders, conat.Timeout):
            return  # nobody serves the bus yet
        others.discard(self.store.id)
        if others:
            raise AuthStoreError(
                self.store.path,
                f"serve bus {self.bus!r}",
                f"responders with another auth store ({', '.join(sorted(others))}) already serve it: a bus"
                " has one authority; add a node with its join file (AuthBus.join, `conat auth join`), and"
                " more responders on the bus directory",
            )

    async def _sweep(self, principal: str, below: int) -> int:
        """Kick ``principal``'s connections on every server of the cluster but those this responder
        granted at ``below`` or above (module docstring); returns how many were kicked."""
        connections = self.decider.connections
        mine = set(connections.of(principal)) - set(connections.of(principal, below=below))
        targets: set[tuple[str, int]] = set()
        servers = len(self._system.cluster_urls) if self._system.cluster is not None else 1
        offset = 0
        while True:
            more = False
            body = {
                "account": APP_ACCOUNT,
                "user": principal,
                "auth": True,
                "limit": SWEEP_PAGE,
                "offset": offset,
            }
            try:
                async for msg in self._system.request_many(
                    "$SYS.REQ.SERVER.PING.CONNZ",
                    msgspec.json.encode(body),
                    encoding="raw",
                    timeout=KICK_TIMEOUT,
                    idle_timeout=None if servers else DISCOVERY_WAIT,
                    max_messages=servers or None,
                ):
                    try:
                        answer = msgspec.json.decode(msg.raw, type=_Connz)
                    except msgspec.DecodeError:
                        continue
                    for conn in answer.data.connections:
                        if conn.authorized_user == principal:
                            targets.add((answer.server.id, conn.cid))
                    more = more or answer.data.total > offset + SWEEP_PAGE
            except ConatError as e:
                log.warning("could not sweep the cluster for %s's connections: %s", principal, e)
                break
            if not more:
                break
            offset += SWEEP_PAGE
        results = await asyncio.gather(
            *(self._kick(principal, server, cid) for server, cid in sorted(targets - mine))
        )
        return sum(results)

    async def _on_notice(self, msg: Message) -> None:
        try:
            notice = _notice_decoder.decode(msg.raw)
            principal = _principal(notice.principal)
        except (msgspec.DecodeError, ValueError) as e:
            log.warning("ignored a malformed revocation notice: %s", e)
            return
        if notice.origin == self.origin:
            return
        try:
            floor = await self.store.raise_floor(principal, notice.below)
        except (ValueError, ConatError) as e:
            log.error("could not record the revocation of %s: %s", principal, e)
            floor = notice.below  # kick anyway: the revoker's store holds the floor
        await self._kick_below(principal, floor)

    def _on_disconnect(self, msg: Message) -> None:
        try:
            event = msgspec.json.decode(msg.raw, type=_Disconnect)
        except msgspec.DecodeError:
            return
        self.decider.connections.remove(event.server.id, event.client.id)

    async def _kick_below(self, principal: str, below: int) -> int:
        """Kick this responder's connections of ``principal`` with a revision below ``below``
        (concurrently); returns how many were still there to kick."""
        targets = self.decider.connections.of(principal, below=below)
        results = await asyncio.gather(*(self._kick(principal, server, cid) for server, cid in targets))
        return sum(results)

    async def _kick(self, principal: str, server: str, cid: int) -> bool:
        try:
            reply = await self._system.request(
                f"$SYS.REQ.SERVER.{server}.KICK",
                msgspec.json.encode({"cid": cid}),
                encoding="raw",
                timeout=KICK_TIMEOUT,
            )
        except ConatError as e:
            log.warning("could not kick %s (server %s, cid %d): %s", principal, server, cid, e)
            return False
        self.decider.connections.remove(server, cid)
        if _api_error(reply.raw):  # already gone (the disconnect event had not arrived yet)
            return False
        self.audit.record(
            principal=principal,
            address="",
            bus=self.bus,
            result="kick",
            reason="revoked",
            server=server,
            cid=cid,
        )
        return True

    async def aclose(self) -> None:
        await self.callout.aclose()
        for client in (self._system, self._responder):
            await client.aclose()
        await self.store.aclose()
        await self.audit.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
