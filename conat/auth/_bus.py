"""A bus that only authorized clients can use: nats-server with the auth callout, and its responder.

This is what master and every host run for their bus (``AuthBus.start``). The server config gets
three accounts (AUTH for the responders, APP for every authorized client, SYS for kicks), the
``auth_callout`` block with our issuer and xkey, and every static user listed in ``auth_users``
(otherwise nats-server would send them to the callout too). Every other connection goes through
the callout; there is no unauthenticated path.

The server is named ``conat-<bus>`` (:func:`subjects.bus_server_name`; a cluster node keeps its
own name as a suffix), so a client reads which bus it reached from the server's INFO before it
sends a token, and never hands a token for one bus to another.

Secrets (issuer seed, xkey seed, the two static users' passwords) live in 0600 files under the
bus directory (:class:`BusSecrets`). nats-server reads the passwords from its 0600 config file.
The bus directory also holds the audit log and the auth store (revocations, used one-time tokens),
shared by every responder of the bus: more responders, in other processes, join with
:meth:`AuthResponder.start` on the same directory.

On a cluster (``config.cluster``) the bus runs on more nodes: :meth:`AuthBus.join` gives what a
node needs (a :class:`~conat.auth.BusJoin`, written to a 0600 file), and the node starts with
:class:`~conat.auth.AuthNode` without any seed. The bus directory stays the bus's one authority
(see :mod:`conat.auth._cluster` for why).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from conat import NatsServer, ServerConfig
from subjects import bus_server_name, server_bus

from ._audit import AuditLog
from ._callout import CredentialExchange, Decider
from ._cluster import BusJoin, callout_config
from ._responder import AuthResponder, Revocation
from ._secrets import BusSecrets
from ._store import AuthStore
from ._tokens import TOKEN_LEEWAY
from ._verifier import PublicKeySource

__all__ = ["AuthBus", "callout_blocks"]

log = logging.getLogger("conat.auth.bus")


def callout_blocks(secrets_: BusSecrets, *, timeout: float = 2.0) -> dict[str, Any]:
    """The nats-server config blocks of a bus with the auth callout (merged into ServerConfig):
    :func:`~conat.auth.callout_config` with the public halves of the bus's keys."""
    return callout_config(
        issuer=secrets_.issuer.public_key,
        xkey=secrets_.xkey.public_key,
        auth_password=secrets_.auth_password,
        sys_password=secrets_.sys_password,
        timeout=timeout,
    )


def _server_name(bus: str, configured: str | None) -> str:
    """``conat-<bus>``; a configured name that does not say the bus becomes the node suffix."""
    if configured is None:
        return bus_server_name(bus)
    named = server_bus(configured)
    if named is None:
        return bus_server_name(bus, configured)
    if named != bus:
        raise ValueError(f"config.server_name: {configured!r} names bus {named!r}, this is bus {bus!r}")
    return configured


class AuthBus:
    """A running bus with the callout. Create with :meth:`start`; close with :meth:`aclose`."""

    def __init__(self, bus: str, server: NatsServer, responder: AuthResponder, directory: Path) -> None:
        self.bus = bus
        self.server = server
        self.responder = responder
        self.directory = directory

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def decider(self) -> Decider:
        return self.responder.decider

    @property
    def audit(self) -> AuditLog:
        return self.responder.audit

    @property
    def store(self) -> AuthStore:
        return self.responder.store

    @classmethod
    async def start(
        cls,
        *,
        bus: str,
        public_keys: Mapping[str, bytes | str] | PublicKeySource,
        directory: Path,
        config: ServerConfig | None = None,
        leeway: float = TOKEN_LEEWAY,
        max_lifetime: float = 3600.0,
        per_address: tuple[float, float] = (200.0, 1.0),
        per_principal: tuple[float, float] = (20.0, 1.0),
        exchange: CredentialExchange | None = None,
    ) -> Self:
        """Start the server and a responder for ``bus`` in ``directory``.

        ``public_keys`` are master's token keys by kid (pinned: the bus verifies tokens locally).
        ``per_address``/``per_principal``: connect attempts allowed as (count, per seconds), with
        bursts up to the count; beyond them a connect is refused with ``rate-limited``.
        Revocations and used one-time tokens recorded in ``directory`` by an earlier run apply at
        once. ``exchange``: credentials other than conat tokens (master's API keys) are judged by
        it (:class:`~conat.auth.CredentialExchange`).

        Raises:
            ValueError: ``config.server_name`` names another bus.
        """
        secrets_ = BusSecrets.load_or_create(directory / "secrets")
        base = config or ServerConfig()
        merged = replace(
            base,
            server_name=_server_name(bus, base.server_name),
            extra_blocks={**base.extra_blocks, **callout_blocks(secrets_)},
        )
        async with contextlib.AsyncExitStack() as stack:
            server = NatsServer(merged, directory=directory / "server")
            await server.start()
            stack.push_async_callback(server.stop)
            responder = await AuthResponder.start(
                bus=bus,
                url=server.url,
                public_keys=public_keys,
                directory=directory,
                leeway=leeway,
                max_lifetime=max_lifetime,
                per_address=per_address,
                per_principal=per_principal,
                exchange=exchange,
                peers=merged.cluster is not None and bool(merged.cluster.routes),
            )
            stack.pop_all()
        return cls(bus, server, responder, directory)

    def join(self, routes: tuple[str, ...] | None = None) -> BusJoin:
        """What a node needs to join this bus (:class:`~conat.auth.BusJoin`): write it with
        ``.write(path)`` (a 0600 file) and start the node with :class:`~conat.auth.AuthNode`.

        Args:
            routes: the route URLs the node seeds from; default this bus's own node.

        Raises:
            ValueError: the bus runs in no cluster (start it with ``config.cluster``).
        """
        cluster, own = self.server.config.cluster, self.server.cluster_url
        if cluster is None or own is None:
            raise ValueError(
                f"bus {self.bus!r} runs in no cluster: start it with config.cluster to add nodes"
            )
        secrets_ = BusSecrets.load(self.directory / "secrets")
        config = callout_blocks(secrets_)
        return BusJoin(
            bus=self.bus,
            cluster=cluster.name,
            routes=routes or (own,),
            issuer=secrets_.issuer.public_key,
            xkey=secrets_.xkey.public_key,
            auth_password=secrets_.auth_password,
            sys_password=secrets_.sys_password,
            timeout=float(config["authorization"]["timeout"]),
        )

    async def revoke(self, principal: str, *, below: int | None = None) -> Revocation:
        """Refuse ``principal``'s tokens below a revision and kick its connections: see
        :meth:`AuthResponder.revoke` (``below=None``: one above the current floor, for a bus used
        without master; mint the principal's next tokens at the returned floor)."""
        return await self.responder.revoke(principal, below=below)

    async def aclose(self) -> None:
        await self.responder.aclose()
        await self.server.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
