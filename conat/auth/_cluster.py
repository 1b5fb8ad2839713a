"""One bus on many nodes: what a node needs to join a bus (:class:`BusJoin`), and a node of a bus
that joined with it (:class:`AuthNode`).

A bus is one security domain however many nats-servers it runs on. Its *authority* is its
directory, on one machine: the secrets (the callout issuer's and the xkey's seeds, the static
users' passwords), the auth store (revocation floors, used one-time tokens) and the audit log.
Every callout responder of the bus runs where that directory is (any number of them, in any
processes, as one queue group), connected to the cluster with every node's URL, so that it fails
over to another node when its own dies. nats-server propagates the responders' subscription to
``$SYS.REQ.USER.AUTH`` over the routes: every node's authorization requests reach them, and each
decision reads the one store. So a revocation, a used one-time token or an audit row is the bus's,
whichever node a client connects to, and there is no replica to fall behind.

A node of the bus only runs nats-server. It needs the callout's *public* keys (the issuer, which
signs the user JWTs it accepts, and the xkey, which it seals requests to), the two static users'
passwords (the responders and the system user log in on whichever node they reach) and the
cluster's name and routes: a :class:`BusJoin`, written by :meth:`AuthBus.join
<conat.auth.AuthBus.join>` to a 0600 file and handed to the node's operator. It never holds a seed:
a node cannot mint user JWTs or read sealed requests. The passwords are secrets (whoever has them
can answer the callout), so the join file is one; a node's operator runs the bus's server anyway.

Why not a store per node, kept in step over the bus: revocation floors would merge (they only
grow), but "a one-time token works once per bus" needs one decider for each token, which core
NATS cannot elect without a consensus protocol, and conat's persistence lives above ``conat.auth``.
What one store costs: while the authority's machine is down no *new* connection is authorized
(connections already made keep working until their token's lifetime ends), the same as while
master, which mints every token, is down.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, Self, final

import msgspec

from conat import PROBE_ACCOUNT, ClusterConfig, NatsServer, ServerConfig, probe_blocks
from subjects import bus_server_name, parse_bus

from ._files import read_private_file, write_private_file
from ._nkeys import KeyKind, check_public_key
from ._responder import APP_ACCOUNT, AUTH_USER, SYS_USER

__all__ = ["AuthNode", "BusJoin", "callout_config"]

JOIN_VERSION: Final = 1
_MAX_JOIN_FILE: Final = 64 * 1024
MAX_CONTROL_LINE: Final = 32 * 1024


def callout_config(
    *, issuer: str, xkey: str, auth_password: str, sys_password: str, timeout: float = 2.0
) -> dict[str, Any]:
    """The nats-server config blocks of a bus with the auth callout, from public keys and the two
    static users' passwords (what every node of the bus needs; merged into ServerConfig).

    The APP account also gets the cluster-wide interest probe (:data:`conat.PROBE_SUBJECT`): in a
    cluster, its clients confirm that every node routes to their new subscriptions.
    """
    probe = probe_blocks((APP_ACCOUNT,), "SYS")["accounts"]
    return {
        "accounts": {
            "AUTH": {"users": [{"user": AUTH_USER, "password": auth_password}]},
            APP_ACCOUNT: probe[APP_ACCOUNT],
            "SYS": {"users": [{"user": SYS_USER, "password": sys_password}], **probe["SYS"]},
            PROBE_ACCOUNT: probe[PROBE_ACCOUNT],
        },
        "system_account": "SYS",
        # a token with a large scope (many projects) must reach the callout, which judges its size
        # (conat.auth.MAX_TOKEN_SIZE, well below this)
        "max_control_line": MAX_CONTROL_LINE,
        "authorization": {
            "timeout": timeout,
            "auth_callout": {
                "issuer": issuer,
                "account": "AUTH",
                "auth_users": [AUTH_USER, SYS_USER],
                "xkey": xkey,
            },
        },
    }


@final
class BusJoin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a node needs to join a bus (module docstring). ``repr`` shows no password.

    Attributes:
        bus: the bus (``master`` or ``host-<uuid>``).
        cluster: the cluster's name.
        routes: route URLs of nodes already in the cluster (one reachable seed is enough).
        issuer: the callout issuer's public account key (``A…``).
        xkey: the responders' public curve key (``X…``).
        auth_password: the AUTH account's static user (the responders).
        sys_password: the SYS account's static user (kicks, events).
        timeout: nats-server's authorization timeout (the callout's deadline), seconds.
        version: of this record.
    """

    bus: str
    cluster: str
    routes: tuple[str, ...]
    issuer: str
    xkey: str
    auth_password: str
    sys_password: str
    timeout: float = 2.0
    version: int = JOIN_VERSION

    def __post_init__(self) -> None:
        parse_bus(self.bus)
        ClusterConfig(self.cluster, routes=self.routes)  # validates the name and the URLs
        check_public_key(self.issuer, KeyKind.ACCOUNT, what="issuer")
        check_public_key(self.xkey, KeyKind.CURVE, what="xkey")
        for name in ("auth_password", "sys_password"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")
        if not (isinstance(self.timeout, int | float) and math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout: must be a positive number of seconds, got {self.timeout!r}")
        if self.version != JOIN_VERSION:
            raise ValueError(f"version: {self.version!r} is not supported (this conat reads {JOIN_VERSION})")

    def __repr__(self) -> str:
        return f"BusJoin(bus={self.bus!r}, cluster={self.cluster!r}, routes={self.routes!r})"

    def server_blocks(self) -> dict[str, Any]:
        """The callout's config blocks for a node of this bus (:func:`callout_config`)."""
        return callout_config(
            issuer=self.issuer,
            xkey=self.xkey,
            auth_password=self.auth_password,
            sys_password=self.sys_password,
            timeout=self.timeout,
        )

    def write(self, path: str | Path) -> None:
        """Write it to ``path``, a 0600 file (it holds the static users' passwords).

        Raises:
            SecretFileError, OSError: as :func:`conat.auth.write_private_file`.
        """
        write_private_file(path, msgspec.json.format(msgspec.json.encode(self)), what="bus join file")

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """Read and check a join file.

        Raises:
            SecretFileError: the file is missing, not private, or not this user's.
            ValueError: it is not a join file (the message says what is wrong, never a password).
            CredentialError: a key in it is not a key of its kind.
        """
        raw = read_private_file(path, what="bus join file", max_size=_MAX_JOIN_FILE)
        try:
            return msgspec.json.decode(raw, type=cls)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:  # __post_init__'s too
            raise ValueError(f"{path}: not a bus join file ({e})") from None


class AuthNode:
    """A nats-server of a bus, joined with a :class:`BusJoin`: no responder, no seed. Start with
    :meth:`start`; stop with :meth:`aclose`."""

    def __init__(self, join: BusJoin, server: NatsServer) -> None:
        self.join = join
        self.server = server

    @property
    def bus(self) -> str:
        return self.join.bus

    @property
    def url(self) -> str:
        return self.server.url

    @classmethod
    async def start(
        cls, join: BusJoin, *, node: str, directory: Path, config: ServerConfig | None = None
    ) -> Self:
        """Start a node named ``node`` of ``join.bus`` (its server is ``conat-<bus>.<node>``), its
        files in ``directory``. ``config`` gives the listeners (client port, the route listener's
        host and port in ``config.cluster``...); the cluster's name, routes and the callout come
        from ``join``.

        Raises:
            ValueError: ``node`` is not a name.
            ServerError: the server did not start.
        """
        base = config or ServerConfig()
        listener = base.cluster
        cluster = ClusterConfig(
            join.cluster,
            host=listener.host if listener is not None else "127.0.0.1",
            port=listener.port if listener is not None else 0,
            routes=tuple(dict.fromkeys((*join.routes, *(listener.routes if listener is not None else ())))),
        )
        merged = replace(
            base,
            server_name=bus_server_name(join.bus, node),
            cluster=cluster,
            extra_blocks={**base.extra_blocks, **join.server_blocks()},
        )
        server = NatsServer(merged, directory=directory)
        await server.start()
        return cls(join, server)

    async def aclose(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
