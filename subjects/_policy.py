"""The auth policy: what one connection of one principal may do on one bus, as pure data.

The auth callout verifies a token, then calls :func:`grant` with the token's ``sub`` (the principal),
its ``scope`` and its ``aud`` (the bus), and turns the :class:`Grant` into the user JWT:
``permissions.to_nats()`` gives ``pub``/``sub``, ``responses.to_nats()`` gives ``resp``, and the
client is told ``inbox_prefix``. Nothing here does I/O; the same input always gives an equal grant.

The policy
----------
``i(x)`` is ``_INBOX.x.>`` (the inbox pattern of principal ``x``), ``pub`` is :data:`PUBLIC_PATTERN`.
Every grant also carries the *explicit denies* ``$SYS.>`` and ``_INBOX.>`` on publish and ``$SYS.>``
on subscribe, :data:`DEFAULT_RESPONSES` (see "Responses" below), and may publish
:data:`~subjects.INTEREST_PROBE` (every server of a cluster answers it, about an empty account, so a
client can confirm that its subscriptions are known on every node; it tells nothing else).

=================================  ==============================================  ==============================
principal / bus                    publish allow                                   subscribe allow
=================================  ==============================================  ==============================
account ``a`` / master             ``master.account-a.api``, pub                   ``i(account-a)``, pub
account ``a`` / host bus           for p in scope.projects: ``*.project-p``,       the same, plus ``i(account-a)``
(scope P, HS)                      ``*.project-p.>``, ``project.<p>.>``,           (deny ``_INBOX.project-p``,
                                   ``bootlog.project.<p>``; for h in HS:           ``_INBOX.project-p.>``)
                                   ``bootlog.host.<h>``; pub
host ``h`` / master                ``master.host-h.api``, ``bootlog.host.<h>``,    ``runner.host-h``,
                                   pub                                             ``i(host-h)``, pub
host ``h`` / ``host-h`` (own)      everything                                      everything
host ``h`` / another host's bus    pub                                             ``i(host-h)``, pub
project ``p`` / a host bus         ``*.project-p``, ``*.project-p.>``,             the same, plus ``i(project-p)``
                                   ``project.<p>.>``, pub
project ``p`` / master             pub                                             ``i(project-p)``, pub
hub / any bus                      everything                                      everything
=================================  ==============================================  ==============================

"Everything" is an unrestricted allow list minus the explicit denies above; it reaches nats-server as
an explicit ``allow: [">"]`` (an empty list next to the response permissions every grant carries
would mean "publish nothing" to nats-server, see :mod:`subjects._permissions`).

Decisions, and why
------------------
- **The token's scope is already specific to its bus**: master mints a host-bus token listing the
  projects the account may open *there*, so every p in ``scope.projects`` is granted, without this
  module knowing which host runs which project. ``bootlog.project.<p>`` comes with p: whoever may
  open a project may follow it starting (its persist subjects are covered by ``*.project-p.>``).
- **An account's scope on the master bus is ignored**: there it may only call its own API
  (``master.account-a.api``); master checks every method, collaborator lists and the admin flag
  itself. ``admin`` never widens bus permissions: an admin opening a project gets a token for that
  project like anyone else, so "admin" stays one audited code path in master.
- **A project is granted on any host bus**, not only "its" host's: master issues a project's
  credentials for the bus of the host that runs it when it starts the project, and ``aud`` pins the
  token to that bus. Its scope is ignored. The project does not get its bootlog (the host writes it).
- **Accounts' ``*.project-p.>`` would include project p's inbox** (``_INBOX.project-p.>``): it is
  denied explicitly on subscribe, and publishing into any inbox is denied for everyone.
- **Nobody publishes into an inbox** (``_INBOX.>`` is a publish deny in every grant, hub included).
  Replies go through NATS response permissions, which nats-server checks *after* the deny list
  (verified on 2.15: a service with ``pub.deny: ["_INBOX.>"]`` and ``resp`` can answer a request,
  ``max`` is enforced, and a spoofed publish to the same inbox is refused).
- **Hub and a host on its own bus may subscribe to every inbox** (this departs from "nobody
  subscribes beyond its own inbox"). NATS lists cannot say "everything except other principals'
  inboxes" while allowing one's own (deny wins over allow, and ``_INBOX.>`` covers ``_INBOX.hub.>``),
  and these two need "everything" for services and ``$SRV.>`` discovery whose subjects this module
  cannot enumerate. It costs nothing: master mints every token (it could grant itself anything), and
  a host runs the callout and the server of its own bus. Every other grant lists its subscribe
  subjects explicitly and never covers another principal's inbox or ``_INBOX.>``.
- **Every grant can answer**, not only services'. conat's chunked transfers
  are *pulled* by the receiver (:mod:`conat._chunking`): an account sending a large payload answers
  the receiver's pull requests, which needs ``resp`` like any service. ``resp`` only allows answering
  messages the connection was allowed to receive, so for a client it adds nothing else.
- **Subscribe allow patterns never end in ``*``** (nats-server 2.15 admits a subscription when its
  pattern read as a literal matches an allow pattern, so ``a.*`` would let ``a.>`` through; see
  :mod:`subjects._permissions`). Only literals and ``x.>`` forms are used.
- **A leading ``*`` also spans ``$SYS``**: ``*.project-p`` matches ``$SYS.project-p``, so conat's
  strict ``can_subscribe`` refuses a *subscription* to ``*.project-p`` even for p itself (nats-server
  would admit it and filter ``$SYS`` at delivery). Services subscribe with a literal first token
  (``fs.project-p``, ``persist.project-p.>``); the allow pattern is still what publishing needs.
- Principals of no known kind cannot be represented (they have no inbox, and :func:`inbox_prefix`
  rejects them): they are malformed input and raise. A known principal on a bus it has no business
  on (a project on master, a host on another host's bus) gets the minimal grant: own inbox and
  ``public.>``, never an error.
- Every publish allow pattern ``p`` comes with its partitioned twin ``$CONAT.part.*.*.p``
  (:func:`partitioned_pattern`): nats-server applies an account's subject mapping *before* it checks
  a publish, so a principal publishing ``persist.project-p.kv`` on a bus that partitions
  ``persist.*.>`` is checked on ``$CONAT.part.<n>.<i>.persist.project-p.kv``. The twin reaches
  nothing the principal could not reach by publishing ``p`` itself: a partition's owner refuses a
  message whose key is not of its partition (``actors``).

Responses
---------
nats-server records a reply subject each time it delivers a message carrying it, and resets the
count and the clock for that subject on every such delivery; the connection may then publish at most
``max`` messages to it within ``ttl`` seconds. A reliable socket's server sends *every* frame
of a connection to one reply subject of the client, refreshed by each client frame (keepalive 10 s,
peer timeout 30 s), and a chunked transfer answers one pull with a window of chunks. So the default
is generous: 10 000 replies per received message, for 120 s (four peer timeouts).

Errors (both ``ValueError`` s with code 400, beside conat's error tree in ``conat._errors``):
:class:`~subjects.InvalidSubject` with reason ``"bad-scope"`` (a principal, ``field="principal"``) or
``"bad-id"`` (scope ids, ``field="projects"``/``"hosts"``); :class:`InvalidBus` (reason ``"bad-bus"``).
A ``Scope``/``ResponsePermission`` field of the wrong type raises ``TypeError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, final
from uuid import UUID

import msgspec

from ._grammar import InvalidSubject
from ._names import (
    HUB,
    INTEREST_PROBE,
    PUBLIC_PATTERN,
    ScopeKind,
    _uuid,
    account_scope,
    bootlog_host,
    bootlog_project,
    host_scope,
    inbox_pattern,
    inbox_prefix,
    master_account_api,
    master_host_api,
    parse_scope,
    partitioned_pattern,
    project_pattern,
    project_scope,
    runner_host,
    scope_patterns,
)
from ._permissions import Permissions

__all__ = [
    "DEFAULT_RESPONSES",
    "MASTER_BUS",
    "SERVER_NAME_PREFIX",
    "Grant",
    "InvalidBus",
    "Principal",
    "ResponsePermission",
    "Scope",
    "bus_server_name",
    "grant",
    "leaf_permissions",
    "parse_bus",
    "server_bus",
]

MASTER_BUS: Final = "master"
"""The control-plane bus. Every other bus is a host bus, named by the host's scope ``host-<uuid>``."""

_SYS_DENY: Final = "$SYS.>"
_INBOX_DENY: Final = "_INBOX.>"
_PUBLISH_DENY: Final = (_SYS_DENY, _INBOX_DENY)
_SUBSCRIBE_DENY: Final = (_SYS_DENY,)


class InvalidBus(ValueError):
    """A bus name that is neither :data:`MASTER_BUS` nor ``host-<uuid>``.

    Fields: ``bus`` (the offending value, ``repr()`` when not a string) and ``reason`` (stable).
    """

    code: Final = 400
    reason: Final = "bad-bus"

    def __init__(self, bus: object) -> None:
        self.bus = bus if isinstance(bus, str) else repr(bus)
        shown = self.bus if len(self.bus) <= 80 else self.bus[:77] + "..."
        super().__init__(f"invalid bus {shown!r}: is neither {MASTER_BUS!r} nor host-<uuid>")

    def __reduce__(self) -> tuple[type[InvalidBus], tuple[str]]:
        return (type(self), (self.bus,))


def parse_bus(bus: str) -> str | None:
    """The host id of a host bus, or ``None`` for :data:`MASTER_BUS`.

    Raises:
        InvalidBus: ``bus`` is neither ``"master"`` nor ``host-<canonical uuid>``.
    """
    if bus == MASTER_BUS:
        return None
    try:
        kind, ident = parse_scope(bus)
    except InvalidSubject:
        raise InvalidBus(bus) from None
    if kind != "host":
        raise InvalidBus(bus)
    return ident


SERVER_NAME_PREFIX: Final = "conat-"
"""A bus's nats-servers are named ``conat-<bus>`` (``conat-<bus>.<node>`` in a cluster): their INFO
then tells a client which bus they serve before it sends any credential (:func:`server_bus`)."""


def bus_server_name(bus: str, node: str | None = None) -> str:
    """The nats-server name of a server of ``bus``: ``conat-<bus>``, or ``conat-<bus>.<node>``.

    Raises:
        InvalidBus: ``bus`` is not a bus.
        ValueError: ``node`` is empty or holds whitespace.
    """
    parse_bus(bus)
    if node is None:
        return f"{SERVER_NAME_PREFIX}{bus}"
    if not node or any(c.isspace() for c in node):
        raise ValueError(f"node: must be a non-empty name without whitespace, got {node!r}")
    return f"{SERVER_NAME_PREFIX}{bus}.{node}"


def server_bus(server_name: str) -> str | None:
    """The bus a server serves, read from its name (:func:`bus_server_name`); ``None`` if the name
    does not follow that convention (a server that is not a conat bus, or names itself otherwise).
    Never raises."""
    if not isinstance(server_name, str) or not server_name.startswith(SERVER_NAME_PREFIX):
        return None
    bus = server_name[len(SERVER_NAME_PREFIX) :].partition(".")[0]
    try:
        parse_bus(bus)
    except InvalidBus:
        return None
    return bus


@final
@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection is: ``account-<uuid>``, ``host-<uuid>``, ``project-<uuid>`` or ``hub``.

    ``kind`` is the scope kind, ``id`` the canonical UUID string (``None`` for the hub). ``str()``
    gives the principal token back. Construction validates that ``id`` fits ``kind``.

    Raises (at construction):
        InvalidSubject: ``reason="bad-scope"`` for an unknown kind or an id on the hub,
            ``reason="bad-id"`` for a missing or non-canonical id.
    """

    kind: ScopeKind
    id: str | None

    def __post_init__(self) -> None:
        self.token  # noqa: B018 -- validates kind and id

    @classmethod
    def parse(cls, principal: str) -> Principal:
        """Parse a principal token.

        Raises:
            InvalidSubject: ``reason="bad-scope"``, ``field="principal"`` for anything else.
        """
        try:
            kind, ident = parse_scope(principal)
        except InvalidSubject as exc:
            raise InvalidSubject(exc.subject, "bad-scope", field="principal") from None
        return cls(kind, ident)

    @property
    def token(self) -> str:
        """The principal token (also a scope token): ``account-<uuid>``, ..., ``hub``."""
        kind, ident = self.kind, self.id
        if kind == "hub" and ident is None:
            return HUB
        if kind == "account":
            return account_scope(_id(ident, kind))
        if kind == "host":
            return host_scope(_id(ident, kind))
        if kind == "project":
            return project_scope(_id(ident, kind))
        raise InvalidSubject(f"{kind!r} {ident!r}", "bad-scope", field="principal")

    def __str__(self) -> str:
        return self.token


def _id(ident: str | None, kind: str) -> str:
    if ident is None:
        raise InvalidSubject("None", "bad-id", field=kind)
    return ident


def _ids(field: str, value: object) -> tuple[str, ...]:
    """Canonical, sorted, duplicate-free ids; ``field`` names the Scope field in errors."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"Scope.{field} must be a tuple of UUID strings, got {value!r}")
    ids: set[str] = set()
    for item in value:
        if not isinstance(item, str | UUID):
            raise InvalidSubject(repr(item), "bad-id", field=field)
        ids.add(_uuid(item, field))
    return tuple(sorted(ids))


@final
class Scope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What a token grants on its bus; signed into the token, so it is part of the wire format.

    - ``projects``: ids of the projects the principal may open on this bus;
    - ``hosts``: ids of the hosts it owns or collaborates on (their boot logs);
    - ``admin``: the account flag. It does not widen any bus permission (see the module docstring).

    Ids are canonical UUID strings (``uuid.UUID`` values are accepted and converted). Both tuples
    are normalized to sorted and duplicate-free, so equal scopes compare and encode equal. Unknown
    fields are refused when decoding: an older verifier fails closed on a newer token.

    Raises (at construction; wrapped in ``msgspec.ValidationError`` when decoding):
        InvalidSubject: ``reason="bad-id"``, ``field`` = ``"projects"`` or ``"hosts"``.
        TypeError: a field of the wrong type (a bare string instead of a tuple, a non-bool admin).
    """

    projects: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    admin: bool = False

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "projects", _ids("projects", self.projects))
        msgspec.structs.force_setattr(self, "hosts", _ids("hosts", self.hosts))
        if not isinstance(self.admin, bool):
            raise TypeError(f"Scope.admin must be a bool, got {self.admin!r}")


@final
class ResponsePermission(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """NATS response permission (the JWT's ``resp``): answer received messages' reply subjects.

    After each delivery of a message with reply subject ``r``, the connection may publish at most
    ``max`` messages to ``r`` within ``ttl`` seconds, whatever its publish lists say.

    Raises (at construction):
        ValueError: ``max`` < 1 or ``ttl`` not a positive finite number.
        TypeError: a field of the wrong type.
    """

    max: int
    ttl: float

    def __post_init__(self) -> None:
        if not isinstance(self.max, int) or isinstance(self.max, bool):
            raise TypeError(f"max must be an int, got {self.max!r}")
        if self.max < 1:
            raise ValueError(f"max must be >= 1, got {self.max}")
        if not isinstance(self.ttl, int | float) or isinstance(self.ttl, bool):
            raise TypeError(f"ttl must be a number, got {self.ttl!r}")
        if not (math.isfinite(self.ttl) and self.ttl > 0):
            raise ValueError(f"ttl must be positive and finite, got {self.ttl}")

    def to_nats(self) -> dict[str, int]:
        """The user JWT's ``resp`` claim: ``{"max": <replies>, "ttl": <nanoseconds>}``.

        Both are non-zero: nats-server reads 0 as "its default" (1 reply, 2 minutes).
        """
        nanoseconds = round(self.ttl * 1e9)
        return {"max": self.max, "ttl": nanoseconds if nanoseconds > 0 else 1}


DEFAULT_RESPONSES: Final = ResponsePermission(max=10_000, ttl=120.0)
"""What every grant may answer (see "Responses" in the module docstring for the sizing)."""


@final
class Grant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The outcome of :func:`grant` for one connection (encodable, e.g. for the audit log).

    - ``permissions``: the publish/subscribe lists (``permissions.to_nats()`` for the JWT);
    - ``inbox_prefix``: ``_INBOX.<principal>``, the prefix the client must connect with;
    - ``responses``: the JWT's ``resp`` claim, or ``None`` for a connection that cannot answer.
    """

    permissions: Permissions
    inbox_prefix: str
    responses: ResponsePermission | None = None


def _grant(
    who: str,
    publish: Iterable[str] | None,
    subscribe: Iterable[str] | None,
    subscribe_deny: Iterable[str] = (),
) -> Grant:
    """A grant with the explicit denies, own inbox, ``public.>`` and the interest probe always added.

    ``None`` means "everything" (minus the denies); patterns keep their first-seen order.
    """
    inbox = inbox_prefix(who)
    if publish is None:
        publish_allow = None
    else:  # each subject also as a bus's subject mapping may partition it: checked after mapping
        allowed = (*publish, PUBLIC_PATTERN)
        publish_allow = tuple(dict.fromkeys((*allowed, *map(partitioned_pattern, allowed), INTEREST_PROBE)))
    subscribe_allow = (
        None if subscribe is None else tuple(dict.fromkeys((*subscribe, inbox_pattern(who), PUBLIC_PATTERN)))
    )
    permissions = Permissions(
        publish_allow=publish_allow,
        publish_deny=_PUBLISH_DENY,
        subscribe_allow=subscribe_allow,
        subscribe_deny=tuple(dict.fromkeys((*_SUBSCRIBE_DENY, *subscribe_deny))),
    )
    return Grant(permissions=permissions, inbox_prefix=inbox, responses=DEFAULT_RESPONSES)


def _project_subjects(project: str) -> tuple[str, ...]:
    """Every subject of project ``p``'s own services: ``*.project-p``, ``*.project-p.>``, ``project.<p>.>``."""
    return (*scope_patterns(project_scope(project)), project_pattern(project))


def grant(principal: str, scope: Scope, bus: str) -> Grant:
    """What a connection of ``principal`` with ``scope`` may do on ``bus`` (the module's table).

    Args:
        principal: the verified token's subject: ``account-<uuid>``, ``host-<uuid>``,
            ``project-<uuid>`` or ``hub``.
        scope: the verified token's scope (only an account's scope on a host bus is used).
        bus: the bus being connected to (the token's ``aud``): ``master`` or ``host-<uuid>``.

    Returns:
        An equal :class:`Grant` for equal arguments. A known principal on a bus it has no business
        on gets the minimal grant (own inbox and ``public.>``), not an error.

    Raises:
        InvalidSubject: ``principal`` is not a principal (``reason="bad-scope"``).
        InvalidBus: ``bus`` is not a bus.
        TypeError: ``scope`` is not a :class:`Scope`.
    """
    if not isinstance(scope, Scope):
        raise TypeError(f"scope must be a Scope, got {type(scope).__name__}")
    return _cached_grant(principal, scope, bus)


@functools.lru_cache(maxsize=4096)
def _cached_grant(principal: str, scope: Scope, bus: str) -> Grant:
    """Grants are immutable and compiling their patterns costs a fraction of a millisecond: both
    the callout and the client compute the same ones at every (re)connect."""
    who = Principal.parse(principal)
    host = parse_bus(bus)
    token = who.token
    if who.kind == "hub":
        return _grant(token, None, None)
    if who.kind == "host":
        if host is None:
            ident = _id(who.id, "host")
            return _grant(token, (master_host_api(ident), bootlog_host(ident)), (runner_host(ident),))
        if host == who.id:
            return _grant(token, None, None)
    elif who.kind == "account":
        if host is None:
            return _grant(token, (master_account_api(_id(who.id, "account")),), ())
        subjects: list[str] = []
        inboxes: list[str] = []
        for project in scope.projects:
            subjects += (*_project_subjects(project), bootlog_project(project))
            inboxes += (inbox_prefix(project_scope(project)), inbox_pattern(project_scope(project)))
        subjects += (bootlog_host(h) for h in scope.hosts)
        return _grant(token, subjects, subjects, inboxes)
    elif who.kind == "project" and host is not None:
        subjects = list(_project_subjects(_id(who.id, "project")))
        return _grant(token, subjects, subjects)
    return _grant(token, (), ())


def leaf_permissions(host: UUID | str) -> Permissions:
    """What the leaf link of host ``h``'s bus to master's bus may carry (seen from master's side:
    publish is host to master, subscribe is master to host). conat's ``LeafUser`` puts it on the
    link; nats-server forwards nothing else, either way.

    The lists are host ``h``'s grant on the master bus (``master.host-h.api`` and its bootlog up;
    ``runner.host-h`` and its inbox down; ``public.>`` both ways), widened by what the link must
    carry for others: ``runner.host-h.>`` down (the runner's actor per project) and master's reply
    inboxes ``_INBOX.hub.>`` up. A leaf link has no response permissions, so the replies of the
    host's services to master's requests cross as publishes: a host could publish into master's
    inboxes (never into another principal's), and master's clients take such a reply for what it
    is, an answer from a host. Publishing into ``$SYS`` is denied.

    Raises:
        InvalidSubject: ``host`` is not a canonical UUID (``reason="bad-id"``).
    """
    ident = _uuid(host, "host")
    up = grant(host_scope(ident), Scope(), MASTER_BUS).permissions
    down_allow = up.subscribe_allow or ()
    return Permissions(
        publish_allow=(*(up.publish_allow or ()), inbox_pattern(HUB)),
        publish_deny=(_SYS_DENY,),
        subscribe_allow=(*down_allow[:1], f"{runner_host(ident)}.>", *down_allow[1:]),
        subscribe_deny=_SUBSCRIBE_DENY,
    )
