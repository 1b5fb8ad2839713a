"""nats-server configuration: validated option records and the config-file renderer. Pure, no I/O.

Rendering has two steps, so that later features (auth callout, accounts, TLS) extend one place:

1. :func:`config_tree` turns a :class:`ServerConfig` into a plain tree of dicts, lists, strings,
   numbers and booleans that mirrors the nats-server config file. ``ServerConfig.extra_blocks`` is
   deep-merged into that tree last, so a caller can add whole blocks (``accounts``,
   ``authorization { auth_callout {...} }``, ``system_account``) or single keys inside the generated
   ones (``websocket.token_cookie``) without touching this module.
2. :func:`dumps_conf` serializes any such tree in the nats-server config syntax.

Strings are always double-quoted. nats-server's lexer knows only the escapes ``\\xXX``, ``\\t``,
``\\n``, ``\\r``, ``\\"`` and ``\\\\`` (not JSON's ``\\uXXXX``), so :func:`quote` emits exactly those
and leaves other characters, ``$`` and non-ASCII included, literal: inside quotes nothing is expanded.

Security defaults: every listener binds to loopback unless ``allow_remote=True``; the HTTP monitoring
endpoint is off unless ``monitor_port`` is set, and then it binds to 127.0.0.1 only, always.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, final

import msgspec

from subjects import Permissions

from ._chunking import MIN_CHUNK_SIZE

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "MAX_PAYLOAD_LIMIT",
    "MIN_MAX_PAYLOAD",
    "ClusterConfig",
    "LeafNodeConfig",
    "LeafUser",
    "ServerConfig",
    "WebsocketConfig",
    "config_tree",
    "dumps_conf",
    "server_config_from",
    "is_loopback",
    "quote",
    "render",
]

DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
"""nats-server's own default ``max_payload``: 1 MiB."""

MAX_PAYLOAD_LIMIT: Final = 64 * 1024 * 1024
"""The largest ``max_payload`` nats-server accepts with its default ``max_pending`` (64 MiB)."""

MIN_MAX_PAYLOAD: Final = 16 * 1024
"""The smallest ``max_payload`` conat works with: a message's headers count against the limit, and a
chunked message's head carries conat's headers (about 250 bytes), the user's, and a chunk of at
least ``MIN_CHUNK_SIZE`` (1 KiB); 16 KiB leaves room for all of them. Clients refuse to connect
to a server with less."""

MONITOR_HOST: Final = "127.0.0.1"
"""The monitoring endpoint exposes connection details without auth: it never leaves loopback."""

ROUTE_POOL_SIZE: Final = -1
"""Route pooling off: one ordered route per pair of nodes (see :class:`ClusterConfig`)."""

_ROUTE_SCHEMES: Final = ("nats-route://", "nats://", "tls://")
_LEAF_SCHEMES: Final = ("nats-leaf://", "nats://", "tls://", "ws://", "wss://")
_NAME_RE: Final = re.compile(r"\S+")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_port(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ValueError(f"{name}: must be an int in 0..65535 (0 = random), got {value!r}")


def _check_host(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{name}: must be a host name or IP address, got {value!r}")


def _check_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{name}: must be a non-empty string without spaces, got {value!r}")


def _check_urls(name: str, value: Sequence[str], schemes: tuple[str, ...]) -> None:
    for url in value:
        if not isinstance(url, str) or not url.startswith(schemes) or len(url) <= url.index("//") + 2:
            raise ValueError(f"{name}: {url!r} is not a URL starting with one of {', '.join(schemes)}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface (``localhost``, ``127.x.y.z``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _as_tuple(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # a lone URL would otherwise become a tuple of characters
        return (value,)
    return tuple(value)


@final
@dataclass(frozen=True, slots=True)
class WebsocketConfig:
    """A websocket listener (for browsers and ``ws://`` clients).

    Attributes:
        host: address to bind; loopback unless the server config has ``allow_remote=True``.
        port: 0 picks a random free port (nats-server's ``-1``).
        no_tls: plain ``ws://``. Terminate TLS at a proxy in front of it. ``False`` requires a
            ``tls`` block, which you pass through ``ServerConfig.extra_blocks["websocket"]``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    no_tls: bool = True

    def __post_init__(self) -> None:
        _check_host("websocket.host", self.host)
        _check_port("websocket.port", self.port)


@final
@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Routes to other nats-servers of the same cluster (a full mesh, formed by gossip).

    Attributes:
        name: the cluster name; every node of a cluster uses the same one.
        host: address to bind the route listener.
        port: 0 picks a random free port.
        routes: seed URLs (``nats-route://host:port``) of other nodes. One reachable seed is enough:
            nodes learn each other from it. Listing the node itself is harmless.

    Every node is rendered with ``pool_size: -1``: one route per pair of nodes, carrying every
    account in order, rather than nats-server's default pool of routes each pinned to some
    accounts (and a separate one for the system account). A client's interest changes and its
    later requests to the system account then travel on the same connection, in order, which is
    what makes interest confirmable cluster-wide (:mod:`conat._interest`). Every node of a cluster
    must agree on it. Costs nothing that matters here: conat's clients, not the routes, bound
    throughput.
    """

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    routes: Sequence[str] = ()

    def __post_init__(self) -> None:
        _check_name("cluster.name", self.name)
        _check_host("cluster.host", self.host)
        _check_port("cluster.port", self.port)
        object.__setattr__(self, "routes", _as_tuple(self.routes))
        _check_urls("cluster.routes", self.routes, _ROUTE_SCHEMES)


@final
@dataclass(frozen=True, slots=True)
class LeafUser:
    """A login for leaf links on a hub, and what its link may carry.

    The permissions are the link's, seen from the hub: ``publish`` is what the leaf may send into
    the hub, ``subscribe`` what the hub sends down to it (nats-server forwards nothing else, either
    way). A leaf link has no response permissions: replies that cross it must be allowed by name.
    For a host's leaf, :func:`subjects.leaf_permissions` gives the policy's lists.

    Attributes:
        user: the login name (also shown in the hub's logs).
        password: its password (the config file is 0600 for that reason).
        permissions: what the link may carry (:class:`subjects.Permissions`).
        account: the hub's account the link lands in.
    """

    user: str
    password: str
    permissions: Permissions
    account: str = "APP"

    def __post_init__(self) -> None:
        _check_name("leafnodes.users.user", self.user)
        _check_name("leafnodes.users.account", self.account)
        if not isinstance(self.password, str) or not self.password:
            raise ValueError(f"leafnodes.users.password: must be a non-empty string (user {self.user!r})")
        if not isinstance(self.permissions, Permissions):
            raise ValueError(  # noqa: TRY004 -- a config names its bad field one way: ValueError
                f"leafnodes.users.permissions: must be a subjects.Permissions, got {self.permissions!r}"
            )

    def __repr__(self) -> str:
        return f"LeafUser(user={self.user!r}, account={self.account!r}, permissions={self.permissions!r})"

    def to_conf(self) -> dict[str, Any]:
        """The user's entry in its account's ``users`` (leaf links only)."""
        nats = self.permissions.to_nats()
        return {
            "user": self.user,
            "password": self.password,
            "permissions": {"publish": dict(nats["pub"]), "subscribe": dict(nats["sub"])},
            "allowed_connection_types": ["LEAFNODE"],
        }


@final
@dataclass(frozen=True, slots=True)
class LeafNodeConfig:
    """Leaf-node links: accept leaf nodes (a hub), link to a hub (a leaf), or both.

    Attributes:
        listen_host: address to bind the leaf-node listener (used only if ``listen_port`` is set).
        listen_port: ``None`` = do not accept leaf nodes; 0 = a random free port.
        remotes: the hub's URLs (``nats-leaf://[user:pass@]host:port``), one per node of the hub's
            cluster: **one** link, to the first that answers, failing over to the others (not one
            link per URL, which would deliver every message once per link). They may carry
            credentials: the config file is written mode 0600 for that reason.
        account: the local account the link binds to (a bus with accounts: ``APP``); ``None``
            for a server without accounts.
        users: the hub side: logins for leaf links, each with what its link may carry
            (:class:`LeafUser`). They go in their account with ``allowed_connection_types`` leaf
            only, and skip the hub's auth callout. A hub with users needs accounts (a bus with auth).
    """

    listen_host: str = "127.0.0.1"
    listen_port: int | None = None
    remotes: Sequence[str] = ()
    account: str | None = None
    users: Sequence[LeafUser] = ()

    def __post_init__(self) -> None:
        _check_host("leafnodes.listen_host", self.listen_host)
        _check_port("leafnodes.listen_port", self.listen_port, optional=True)
        object.__setattr__(self, "remotes", _as_tuple(self.remotes))
        _check_urls("leafnodes.remotes", self.remotes, _LEAF_SCHEMES)
        if self.account is not None:
            _check_name("leafnodes.account", self.account)
        object.__setattr__(self, "users", tuple(self.users))
        for user in self.users:
            if not isinstance(user, LeafUser):
                raise ValueError(f"leafnodes.users: must be LeafUser records, got {user!r}")  # noqa: TRY004
        names = [user.user for user in self.users]
        if len(set(names)) != len(names):
            raise ValueError(f"leafnodes.users: user names must be unique, got {names!r}")
        if self.users and self.listen_port is None:
            raise ValueError("leafnodes.users: a hub's leaf users need listen_port")
        if self.listen_port is None and not self.remotes:
            raise ValueError("leafnodes: set listen_port, remotes, or both")


@final
@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Options of a conat-managed nats-server. Validated on construction (``ValueError`` names the field).

    Attributes:
        host: client listener address. Loopback only unless ``allow_remote``.
        port: client port; 0 picks a random free port (nats-server's ``-1``).
        allow_remote: permit non-loopback listen addresses (client, websocket, cluster, leaf).
        max_payload: largest message in bytes, headers included; conat chunks anything bigger.
            1 MiB (NATS's default); from 16 KiB (what conat needs) up to 64 MiB (NATS's limit).
        server_name: the server's name (in logs and INFO); nats-server uses its id if ``None``.
        monitor_port: HTTP monitoring endpoint (``/varz``, ``/connz``...). ``None`` = off; 0 = random.
            Always bound to 127.0.0.1: it is unauthenticated.
        websocket: a websocket listener, or ``None``.
        cluster: cluster routes, or ``None``.
        leafnodes: leaf-node links, or ``None``.
        ping_interval: seconds between server pings to idle clients (``None`` = server default, 2 min).
        ping_max: unanswered pings before the server drops a client (``None`` = server default, 2).
        debug: log debug lines (connections opened and closed). Never trace: it would log payloads.
        mappings: subject mappings, source pattern -> destination (nats-server's ``mappings``; e.g.
            the ones that split a keyed actor type's keys into partitions: ``actors.subject_mapping``).
            They apply to the accounts clients use: the default one, or every account of
            ``extra_blocks["accounts"]`` but the system account (a bus with auth).
        extra_blocks: deep-merged into the generated tree (see :func:`config_tree`); the extension
            point for accounts, authorization and other blocks this record does not model.
    """

    host: str = "127.0.0.1"
    port: int = 0
    allow_remote: bool = False
    max_payload: int = DEFAULT_MAX_PAYLOAD
    server_name: str | None = None
    monitor_port: int | None = None
    websocket: WebsocketConfig | None = None
    cluster: ClusterConfig | None = None
    leafnodes: LeafNodeConfig | None = None
    ping_interval: float | None = None
    ping_max: int | None = None
    debug: bool = False
    mappings: Mapping[str, str] = field(default_factory=dict)
    extra_blocks: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_host("host", self.host)
        _check_port("port", self.port)
        if (
            not isinstance(self.max_payload, int)
            or isinstance(self.max_payload, bool)
            or not MIN_MAX_PAYLOAD <= self.max_payload <= MAX_PAYLOAD_LIMIT
        ):
            raise ValueError(
                f"max_payload: must be an int in {MIN_MAX_PAYLOAD}..{MAX_PAYLOAD_LIMIT} bytes (conat needs"
                f" at least {MIN_MAX_PAYLOAD} for its headers and chunks of {MIN_CHUNK_SIZE}), got"
                f" {self.max_payload!r}"
            )
        if self.server_name is not None:
            _check_name("server_name", self.server_name)
        _check_port("monitor_port", self.monitor_port, optional=True)
        for name, kind in (("websocket", WebsocketConfig), ("cluster", ClusterConfig)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"{name}: must be a {kind.__name__} or None, got {value!r}")
        if self.leafnodes is not None and not isinstance(self.leafnodes, LeafNodeConfig):
            raise ValueError(f"leafnodes: must be a LeafNodeConfig or None, got {self.leafnodes!r}")
        if self.ping_interval is not None and not (
            isinstance(self.ping_interval, int | float)
            and math.isfinite(self.ping_interval)
            and self.ping_interval > 0
        ):
            raise ValueError(
                f"ping_interval: must be a positive number of seconds, got {self.ping_interval!r}"
            )
        if self.ping_max is not None and (not isinstance(self.ping_max, int) or self.ping_max < 1):
            raise ValueError(f"ping_max: must be a positive int, got {self.ping_max!r}")
        if not isinstance(self.mappings, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and _NAME_RE.fullmatch(k) and _NAME_RE.fullmatch(v)
            for k, v in self.mappings.items()
        ):
            raise ValueError(
                f"mappings: must map subject patterns to destinations (no spaces), got {self.mappings!r}"
            )
        object.__setattr__(self, "mappings", MappingProxyType(dict(self.mappings)))
        if not isinstance(self.extra_blocks, Mapping):
            # ValueError like every other field (a config names its bad field one way), though a type check.
            raise ValueError(f"extra_blocks: must be a mapping, got {self.extra_blocks!r}")  # noqa: TRY004
        object.__setattr__(self, "extra_blocks", MappingProxyType(dict(self.extra_blocks)))
        if not self.allow_remote:
            for name, host in self._listen_hosts():
                if not is_loopback(host):
                    raise ValueError(
                        f"{name}: {host!r} is not a loopback address; pass allow_remote=True to listen on it"
                    )

    def _listen_hosts(self) -> list[tuple[str, str]]:
        hosts = [("host", self.host)]
        if self.websocket is not None:
            hosts.append(("websocket.host", self.websocket.host))
        if self.cluster is not None:
            hosts.append(("cluster.host", self.cluster.host))
        if self.leafnodes is not None and self.leafnodes.listen_port is not None:
            hosts.append(("leafnodes.listen_host", self.leafnodes.listen_host))
        return hosts


def _port(value: int) -> int:
    return -1 if value == 0 else value


def config_tree(
    config: ServerConfig, *, log_file: str | None = None, pid_file: str | None = None
) -> dict[str, Any]:
    """Build the nats-server config as a tree of plain values (see the module docstring).

    Args:
        config: the validated options.
        log_file: make nats-server write its log to this file instead of stderr. conat's
            :class:`~conat._server.NatsServer` leaves it ``None``: it reads readiness from stderr.
        pid_file: make nats-server write its pid to this file.

    Returns:
        A fresh dict; ``config.extra_blocks`` is merged in last (a ``None`` value there deletes the key).
    """
    tree: dict[str, Any] = {"host": config.host, "port": _port(config.port)}
    if config.server_name is not None:
        tree["server_name"] = config.server_name
    tree["max_payload"] = config.max_payload
    if config.ping_interval is not None:
        tree["ping_interval"] = f"{round(config.ping_interval * 1000)}ms"
    if config.ping_max is not None:
        tree["ping_max"] = config.ping_max
    if config.debug:
        tree["debug"] = True
    if log_file is not None:
        tree["log_file"] = log_file
        tree["logtime"] = True
    if pid_file is not None:
        tree["pid_file"] = pid_file
    if config.monitor_port is not None:
        tree["http"] = f"{MONITOR_HOST}:{_port(config.monitor_port)}"
    if (ws := config.websocket) is not None:
        tree["websocket"] = {"host": ws.host, "port": _port(ws.port), "no_tls": ws.no_tls}
    if (cl := config.cluster) is not None:
        tree["cluster"] = {
            "name": cl.name,
            "host": cl.host,
            "port": _port(cl.port),
            "routes": list(cl.routes),
            "pool_size": ROUTE_POOL_SIZE,
        }
    if (leaf := config.leafnodes) is not None:
        block: dict[str, Any] = {}
        if leaf.listen_port is not None:
            block["host"] = leaf.listen_host
            block["port"] = _port(leaf.listen_port)
        if leaf.remotes:
            remote: dict[str, Any] = {"urls": list(leaf.remotes)}  # one link, failing over
            if leaf.account is not None:
                remote["account"] = leaf.account
            block["remotes"] = [remote]
        tree["leafnodes"] = block
    _deep_merge(tree, config.extra_blocks)
    if config.leafnodes is not None and config.leafnodes.users:
        _add_leaf_users(tree, config.leafnodes.users)
    if config.mappings:
        accounts = tree.get("accounts")
        if isinstance(accounts, dict) and accounts:
            system = tree.get("system_account")
            for name, account in accounts.items():
                if name != system and isinstance(account, dict):
                    account.setdefault("mappings", {}).update(config.mappings)
        else:
            tree.setdefault("mappings", {}).update(config.mappings)
    return tree


def _add_leaf_users(tree: dict[str, Any], users: Sequence[LeafUser]) -> None:
    """Add the hub's leaf users to their accounts (beside the users already there). They are
    static logins: they skip the auth callout (``auth_users``), which the hub must have (without
    accounts and auth, nats-server would demand a login of every client)."""
    callout = tree.get("authorization", {}).get("auth_callout")
    accounts = tree.get("accounts")
    if not isinstance(callout, dict) or not isinstance(accounts, dict):
        raise ValueError(  # noqa: TRY004 -- the config's content is wrong, not a Python type
            "leafnodes.users: leaf users need a hub with accounts and the auth callout (a bus with auth)"
        )
    for user in users:
        account = accounts.setdefault(user.account, {})
        account["users"] = [*account.get("users", []), user.to_conf()]
    callout["auth_users"] = [*callout.get("auth_users", []), *(user.user for user in users)]


def _deep_merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _deep_merge(into[key], value)
        else:
            into[key] = value


def render(config: ServerConfig, *, log_file: str | None = None, pid_file: str | None = None) -> str:
    """Render ``config`` as nats-server config-file text: ``dumps_conf(config_tree(config, ...))``."""
    return dumps_conf(config_tree(config, log_file=log_file, pid_file=pid_file))


_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(value: str) -> str:
    """Quote a string for a nats-server config file (see the module docstring for the escapes)."""
    out = ['"']
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"config keys must be non-empty strings, got {key!r}")
    return key if _BARE_KEY_RE.fullmatch(key) else quote(key)


def _value(value: object, indent: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"cannot write {value!r} in a nats-server config")
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        inner = indent + "  "
        return "{\n" + _body(value, inner) + indent + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        inner = indent + "  "
        return "[\n" + "".join(f"{inner}{_value(v, inner)}\n" for v in value) + indent + "]"
    raise TypeError(f"cannot write a {type(value).__name__} in a nats-server config: {value!r}")


def _body(tree: Mapping[str, Any], indent: str) -> str:
    return "".join(f"{indent}{_key(k)}: {_value(v, indent)}\n" for k, v in tree.items() if v is not None)


def dumps_conf(tree: Mapping[str, Any]) -> str:
    """Serialize a tree of dicts, lists, str, int, float and bool as nats-server config text.

    Keys that are identifiers stay bare, others are quoted. ``None`` values are skipped.

    Raises:
        TypeError: for a value of another type, a non-string key, or a non-finite float.
    """
    return "# generated by conat; do not edit: it is rewritten at every start\n" + _body(tree, "")


_FILE_FIELDS: Final[dict[type, frozenset[str]]] = {
    ServerConfig: frozenset(ServerConfig.__dataclass_fields__) - {"extra_blocks"},
    ClusterConfig: frozenset(ClusterConfig.__dataclass_fields__),
    LeafNodeConfig: frozenset(LeafNodeConfig.__dataclass_fields__) - {"users"},
    WebsocketConfig: frozenset(WebsocketConfig.__dataclass_fields__),
}
_BLOCKS: Final = {"cluster": ClusterConfig, "leafnodes": LeafNodeConfig, "websocket": WebsocketConfig}


def server_config_from(data: Mapping[str, Any]) -> ServerConfig:
    """A :class:`ServerConfig` from plain data (a TOML file's): the same fields and blocks
    (``cluster``, ``leafnodes``, ``websocket``), validated the same way.

    Leaf users and ``extra_blocks`` are not read from data (they hold secrets and raw config).

    Raises:
        ValueError: an unknown or malformed field (the message names it).
    """

    def check(block: Mapping[str, Any], kind: type, where: str) -> None:
        if not isinstance(block, Mapping):  # bad content of a file: a ValueError like every field's
            raise ValueError(f"{where or 'config'}: must be a table, got {block!r}")  # noqa: TRY004
        unknown = sorted(set(block) - _FILE_FIELDS[kind])
        if unknown:
            raise ValueError(f"{where + '.' if where else ''}{unknown[0]}: not a field of {kind.__name__}")
        if kind is ServerConfig:
            for name, sub in _BLOCKS.items():
                if name in block:
                    check(block[name], sub, name)

    check(data, ServerConfig, "")
    try:
        return msgspec.convert(dict(data), ServerConfig)
    except msgspec.ValidationError as e:
        raise ValueError(str(e)) from None
