"""A bus that only authorized clients can use: nats-server with the auth callout, its responder,
its audit log and the system connection that kicks revoked principals.

This is what master and every host run for their bus (``AuthBus.start``). The server config gets
three accounts (AUTH for the responder, APP for every authorized client, SYS for kicks), the
``auth_callout`` block with our issuer and xkey, and every static user listed in ``auth_users``
(otherwise nats-server would send them to the callout too). Every other connection goes through
the callout; there is no unauthenticated path.

Secrets (issuer seed, xkey seed, the two static users' passwords) live in 0600 files under the
bus directory, are generated on first start and are never put in environment variables, argv or
logs. nats-server reads the passwords from its 0600 config file.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Self, final

import msgspec

import conat
from actors import ActorSystem
from conat import ConatError, Message, NatsServer, ServerConfig
from conat._paths import write_private
from conat.auth import CurveKeyPair, KeyPair, MemoryReplayGuard, TokenVerifier

from ._audit import AuditLog
from ._callout import AuthCallout, Decider

__all__ = ["AuthBus", "BusSecrets", "callout_blocks"]

log = logging.getLogger("conat.auth.bus")

AUTH_USER: Final = "auth"
SYS_USER: Final = "sys"
APP_ACCOUNT: Final = "APP"
KICK_TIMEOUT: Final = 2.0
MAX_CONTROL_LINE: Final = 32 * 1024
MAX_TOKEN_BYTES: Final = 16 * 1024


def _read_secret(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & 0o077:
        raise ConatError(f"secret file {path} is readable by others (mode {mode & 0o777:o}); make it 0600")
    return path.read_text().strip()


def _secret(directory: Path, name: str, make: Any) -> str:
    path = directory / name
    value = _read_secret(path)
    if value is None:
        value = make()
        write_private(path, value.encode())
    return value


@final
@dataclass(frozen=True, slots=True)
class BusSecrets:
    """The bus's own secrets. ``repr`` shows public keys only."""

    issuer: KeyPair
    xkey: CurveKeyPair
    auth_password: str
    sys_password: str

    def __repr__(self) -> str:
        return f"BusSecrets(issuer={self.issuer.public_key}, xkey={self.xkey.public_key})"

    @classmethod
    def load_or_create(cls, directory: Path) -> Self:
        """Load the secrets from ``directory`` (0700), creating missing ones (0600 files)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        issuer = _secret(directory, "issuer.seed", lambda: KeyPair.create("account").seed)
        xkey = _secret(directory, "xkey.seed", lambda: CurveKeyPair.create().seed)
        return cls(
            issuer=KeyPair.from_seed(issuer),
            xkey=CurveKeyPair.from_seed(xkey),
            auth_password=_secret(directory, "auth.password", lambda: secrets.token_urlsafe(32)),
            sys_password=_secret(directory, "sys.password", lambda: secrets.token_urlsafe(32)),
        )


def callout_blocks(secrets_: BusSecrets, *, timeout: float = 2.0) -> dict[str, Any]:
    """The nats-server config blocks of a bus with the auth callout (merged into ServerConfig)."""
    return {
        "accounts": {
            "AUTH": {"users": [{"user": AUTH_USER, "password": secrets_.auth_password}]},
            APP_ACCOUNT: {},
            "SYS": {"users": [{"user": SYS_USER, "password": secrets_.sys_password}]},
        },
        "system_account": "SYS",
        # a token with a large scope (many projects) must reach the callout, which judges its size
        "max_control_line": MAX_CONTROL_LINE,
        "authorization": {
            "timeout": timeout,
            "auth_callout": {
                "issuer": secrets_.issuer.public_key,
                "account": "AUTH",
                "auth_users": [AUTH_USER, SYS_USER],
                "xkey": secrets_.xkey.public_key,
            },
        },
    }


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


class AuthBus:
    """A running bus with the callout. Create with :meth:`start`; close with :meth:`aclose`."""

    def __init__(
        self,
        bus: str,
        server: NatsServer,
        responder: conat.Client,
        system: conat.Client,
        actors: ActorSystem,
        decider: Decider,
        audit: AuditLog,
    ) -> None:
        self.bus = bus
        self.server = server
        self._responder = responder
        self._system = system
        self._actors = actors
        self.decider = decider
        self.audit = audit

    @property
    def url(self) -> str:
        return self.server.url

    @classmethod
    async def start(
        cls,
        *,
        bus: str,
        public_keys: Mapping[str, bytes],
        directory: Path,
        config: ServerConfig | None = None,
        leeway: float = 30.0,
        max_lifetime: float = 3600.0,
        per_address: tuple[float, float] = (200.0, 1.0),
        per_principal: tuple[float, float] = (20.0, 1.0),
    ) -> Self:
        """Start the server, the responder and the audit log for ``bus`` in ``directory``.

        ``public_keys`` are master's token keys by kid (pinned: the bus verifies tokens locally).
        ``per_address``/``per_principal``: connect attempts allowed as (count, per seconds), with
        bursts up to the count; beyond them a connect is refused with ``rate-limited``.
        """
        secrets_ = BusSecrets.load_or_create(directory / "secrets")
        base = config or ServerConfig(server_name=f"conat-{bus}")
        merged = replace(base, extra_blocks={**base.extra_blocks, **callout_blocks(secrets_)})
        async with contextlib.AsyncExitStack() as stack:
            server = NatsServer(merged, directory=directory / "server")
            await server.start()
            stack.push_async_callback(server.stop)
            responder = await conat.connect(
                server.url, name=f"conat-auth-{bus}", user=AUTH_USER, password=secrets_.auth_password
            )
            stack.push_async_callback(responder.aclose)
            system = await conat.connect(
                server.url, name=f"conat-sys-{bus}", user=SYS_USER, password=secrets_.sys_password
            )
            stack.push_async_callback(system.aclose)
            audit = await AuditLog.open(directory / "audit.sqlite")
            stack.push_async_callback(audit.aclose)
            # one-time tokens (host join) are refused after their first use on this bus
            verifier = TokenVerifier(
                public_keys, audience=bus, leeway=leeway, max_size=MAX_TOKEN_BYTES, replay=MemoryReplayGuard()
            )
            decider = Decider(
                bus=bus,
                issuer=secrets_.issuer,
                xkey=secrets_.xkey,
                verifier=verifier,
                audit=audit,
                account=APP_ACCOUNT,
                max_lifetime=max_lifetime,
                per_address=per_address,
                per_principal=per_principal,
            )
            actors = ActorSystem(responder)
            await actors.start(AuthCallout, factory=lambda: AuthCallout(decider))
            stack.push_async_callback(actors.stop)
            self = cls(bus, server, responder, system, actors, decider, audit)
            await system.subscribe(f"$SYS.ACCOUNT.{APP_ACCOUNT}.DISCONNECT", dispatch=self._on_disconnect)
            stack.pop_all()
        return self

    def _on_disconnect(self, msg: Message) -> None:
        try:
            event = msgspec.json.decode(msg.raw, type=_Disconnect)
        except msgspec.DecodeError:
            return
        self.decider.connections.remove(event.server.id, event.client.id)

    async def revoke(self, principal: str) -> int:
        """Refuse ``principal``'s credentials issued until now and kick its live connections:
        each re-authorizes at once (a fresh credential may pass) or stays out. Returns how many
        connections were kicked."""
        now = time.time()
        self.decider.revocations.revoke(principal, now)
        kicked = 0
        for server, cid in self.decider.connections.of(principal):
            try:
                reply = await self._system.request(
                    f"$SYS.REQ.SERVER.{server}.KICK",
                    msgspec.json.encode({"cid": cid}),
                    encoding="raw",
                    timeout=KICK_TIMEOUT,
                )
            except ConatError as e:
                log.warning("could not kick %s (server %s, cid %d): %s", principal, server, cid, e)
                continue
            self.decider.connections.remove(server, cid)
            if _api_error(reply.raw):  # already gone (the disconnect event had not arrived yet)
                continue
            kicked += 1
            self.audit.record(
                principal=principal, address="", bus=self.bus, result="kick", reason="revoked", server=server, cid=cid
            )
        self.audit.record(principal=principal, address="", bus=self.bus, result="revoke", reason="revoked")
        return kicked

    async def aclose(self) -> None:
        await self._actors.stop()
        for client in (self._system, self._responder):
            await client.aclose()
        await self.audit.aclose()
        await self.server.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
