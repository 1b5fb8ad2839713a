"""Discovery and health of every conat service in the NATS micro shapes (ADR-32): ``$SRV``.

A service (a typed service from :meth:`Client.serve`, an actor type, any service built on conat)
describes itself with a :class:`MicroService`: name, id, version, description, metadata, and its
endpoints (one per RPC method, all on the service's subject). :meth:`MicroService.advertise`
makes it answer ``$SRV.PING|INFO|STATS[.name[.id]]`` on a connection, so ``nats micro ls`` and any
micro-aware tool see conat services next to native micro services. The service counts requests,
errors and processing time per endpoint with :meth:`MicroService.record`.

Theory of operation
-------------------
One responder per connection subscribes to ``$SRV.>`` while the connection advertises at least
one service, and answers each discovery request once per matching service (as every micro
service instance does), in JSON as the convention requires. A request that names an unknown verb
or service is ignored. Answers are built from a snapshot when the request arrives; at most
:data:`MAX_PENDING_ANSWERS` answers are being sent at once per connection and requests beyond that
are dropped (and counted), so a flood of discovery requests cannot grow memory. Discovery never
fails a service: a connection whose grant does not allow ``$SRV.>`` (or whose subscription the
server refuses) serves without being discoverable.

INFO and STATS list exactly the same endpoints: a request that names no endpoint (an unknown
method, an undecodable body) is not an endpoint's request; it is counted as ``bad_requests`` in
the figures every endpoint's ``data`` carries.
"""

from __future__ import annotations

import logging
import re
import secrets
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from ._client import ClientState
from ._errors import ConatError

if TYPE_CHECKING:
    from ._client import Client
    from ._message import Message
    from ._subscription import Subscription

__all__ = [
    "MAX_PENDING_ANSWERS",
    "SRV_PATTERN",
    "EndpointInfo",
    "EndpointStatistics",
    "EndpointStats",
    "InfoResponse",
    "MicroService",
    "PingResponse",
    "StatsResponse",
    "micro_name",
]

log = logging.getLogger("conat.micro")

SRV_PATTERN: Final = "$SRV.>"
MAX_PENDING_ANSWERS: Final = 256
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_INVALID_RE: Final = re.compile(r"[^A-Za-z0-9_-]")
_SEMVER_RE: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
_VERBS: Final = ("PING", "INFO", "STATS")


# -- wire types (ADR-32) ---------------------------------------------------------------------------
class EndpointInfo(msgspec.Struct, frozen=True):
    """One endpoint in an INFO response."""

    name: str
    subject: str
    queue_group: str = ""
    metadata: dict[str, str] | None = None


class EndpointStats(msgspec.Struct, frozen=True):
    """One endpoint in a STATS response (times in nanoseconds)."""

    name: str
    subject: str
    queue_group: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int
    average_processing_time: int
    data: dict[str, Any] | None = None


class PingResponse(msgspec.Struct, frozen=True, tag_field="type", tag="io.nats.micro.v1.ping_response"):
    name: str
    id: str
    version: str
    metadata: dict[str, str]


class InfoResponse(msgspec.Struct, frozen=True, tag_field="type", tag="io.nats.micro.v1.info_response"):
    name: str
    id: str
    version: str
    metadata: dict[str, str]
    description: str
    endpoints: list[EndpointInfo]


class StatsResponse(msgspec.Struct, frozen=True, tag_field="type", tag="io.nats.micro.v1.stats_response"):
    name: str
    id: str
    version: str
    metadata: dict[str, str]
    started: str
    endpoints: list[EndpointStats]


# -- the record of one service -----------------------------------------------------------------------
@final
@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """Figures of one endpoint (times in nanoseconds), as ``$SRV.STATS`` reports them."""

    name: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int

    @property
    def average_processing_time(self) -> int:
        return self.processing_time // self.num_requests if self.num_requests else 0


class _Counters:
    __slots__ = ("errors", "last_error", "method", "name", "requests", "time_ns")

    def __init__(self, method: str) -> None:
        self.method = method
        self.name = micro_name(method)
        self.requests = 0
        self.errors = 0
        self.last_error = ""
        self.time_ns = 0


def micro_name(text: str) -> str:
    """``text`` as a micro name (``[A-Za-z0-9_-]+``): other characters become ``-``.

    An RPC method ``geo.add`` is the endpoint ``geo-add`` (its ``metadata["method"]`` keeps the
    name a caller puts in the request body).
    """
    return _INVALID_RE.sub("-", text) or "-"


def _timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@final
class MicroService:
    """One service instance as ``$SRV`` reports it, and its per-endpoint request figures.

    Args:
        name: the service name (``[A-Za-z0-9_-]+``).
        subject: the subject (or pattern) every endpoint is served on.
        methods: the RPC method names a request body may carry; one endpoint each.
        version: a semantic version.
        description: one line for ``$SRV.INFO``.
        metadata: string pairs for every response.
        queue_group: the queue group the service subscribes with ("" for none).
        service_id: this instance's id (one token); a random one by default.
        data: figures of the whole service, added to each endpoint's ``data`` in STATS.

    Raises:
        ValueError: naming the field that is invalid.
    """

    def __init__(
        self,
        name: str,
        subject: str,
        methods: Iterable[str],
        *,
        version: str = "1.0.0",
        description: str = "",
        metadata: Mapping[str, str] | None = None,
        queue_group: str = "",
        service_id: str | None = None,
        data: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"name {name!r} must match [A-Za-z0-9_-]+")
        if not _SEMVER_RE.match(version):
            raise ValueError(f"version {version!r} is not a semantic version")
        self.id = service_id if service_id is not None else secrets.token_hex(11)
        if not self.id or "." in self.id or " " in self.id or "*" in self.id or ">" in self.id:
            raise ValueError(f"id {self.id!r} must be one subject token")
        self.name = name
        self.subject = subject
        self.version = version
        self.description = description
        self.metadata = dict(metadata or {})
        self.queue_group = queue_group
        self.started = _timestamp()
        self._data = data
        self._endpoints = {method: _Counters(method) for method in methods}
        names = [c.name for c in self._endpoints.values()]
        if len(set(names)) != len(names):
            raise ValueError(
                f"methods {sorted(self._endpoints)} give duplicate endpoint names {sorted(names)}"
            )
        self.bad_requests = 0
        self._client: Client | None = None

    def __repr__(self) -> str:
        return f"<MicroService {self.name} {self.id} endpoints={list(self._endpoints)}>"

    # -- figures ---------------------------------------------------------------------------
    def record(self, method: str | None, elapsed_ns: int, error: BaseException | None) -> None:
        """Count one request to ``method``; ``None`` (or a method that is not an endpoint) counts
        a bad request, which belongs to no endpoint."""
        counters = self._endpoints.get(method) if method is not None else None
        if counters is None:
            self.bad_requests += 1
            return
        counters.requests += 1
        counters.time_ns += elapsed_ns
        if error is not None:
            counters.errors += 1
            counters.last_error = f"{type(error).__name__}: {error}"

    def endpoint_statistics(self) -> tuple[EndpointStatistics, ...]:
        """Every endpoint's figures, in the order the methods were given."""
        return tuple(
            EndpointStatistics(c.method, c.requests, c.errors, c.last_error, c.time_ns)
            for c in self._endpoints.values()
        )

    def reset_started(self) -> None:
        """Mark a restart: ``started`` becomes now."""
        self.started = _timestamp()

    # -- responses -------------------------------------------------------------------------
    def ping(self) -> PingResponse:
        return PingResponse(self.name, self.id, self.version, self.metadata)

    def info(self) -> InfoResponse:
        endpoints = [
            EndpointInfo(c.name, self.subject, self.queue_group, {"method": c.method})
            for c in self._endpoints.values()
        ]
        return InfoResponse(self.name, self.id, self.version, self.metadata, self.description, endpoints)

    def stats(self) -> StatsResponse:
        data: dict[str, Any] = {"bad_requests": self.bad_requests}
        if self._data is not None:
            data.update(self._data())
        endpoints = [
            EndpointStats(
                c.name,
                self.subject,
                self.queue_group,
                c.requests,
                c.errors,
                c.last_error,
                c.time_ns,
                c.time_ns // c.requests if c.requests else 0,
                data,
            )
            for c in self._endpoints.values()
        ]
        return StatsResponse(self.name, self.id, self.version, self.metadata, self.started, endpoints)

    def response(self, verb: str) -> PingResponse | InfoResponse | StatsResponse:
        if verb == "PING":
            return self.ping()
        if verb == "INFO":
            return self.info()
        return self.stats()

    # -- advertising -----------------------------------------------------------------------
    async def advertise(self, client: Client, *, alive: Callable[[], bool] | None = None) -> None:
        """Answer ``$SRV`` requests for this service on ``client`` until :meth:`withdraw`.

        ``alive``, if given, is asked before each answer: once it returns False the service is
        withdrawn (for services whose lifetime is a subscription's). Never raises for discovery
        itself (see the module docstring); raises ``ValueError`` if already advertised.
        """
        if self._client is not None:
            raise ValueError(f"{self!r} is already advertised")
        self._client = client
        await _responder(client).add(self, alive)

    async def withdraw(self) -> None:
        """Stop answering ``$SRV`` for this service (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            responder = _RESPONDERS.get(client)
            if responder is not None:
                await responder.remove(self)


def targets(subject: str) -> tuple[str, str | None, str | None] | None:
    """``(verb, name, id)`` of a ``$SRV`` subject (None: not a discovery request)."""
    tokens = subject.split(".")
    if len(tokens) < 2 or len(tokens) > 4 or tokens[0] != "$SRV" or tokens[1] not in _VERBS:
        return None
    name = tokens[2] if len(tokens) >= 3 else None
    ident = tokens[3] if len(tokens) == 4 else None
    return tokens[1], name, ident


# -- one responder per connection -------------------------------------------------------------------
_RESPONDERS: weakref.WeakKeyDictionary[Client, _Responder] = weakref.WeakKeyDictionary()


def _responder(client: Client) -> _Responder:
    responder = _RESPONDERS.get(client)
    if responder is None:
        responder = _RESPONDERS[client] = _Responder(client)
    return responder


@final
class _Responder:
    """The ``$SRV.>`` subscription of one connection and the services it answers for."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._services: dict[MicroService, Callable[[], bool] | None] = {}
        self._sub: Subscription | None = None
        self._pending = 0
        self.dropped = 0
        client.on_state_change(self._on_state)

    def _on_state(self, state: ClientState) -> None:
        if state is ClientState.CLOSED:
            self._services.clear()
            self._sub = None
            if _RESPONDERS.get(self._client) is self:
                del _RESPONDERS[self._client]

    async def add(self, service: MicroService, alive: Callable[[], bool] | None) -> None:
        self._services[service] = alive
        if self._sub is not None:
            return
        client = self._client
        if client.permissions is not None and not client.permissions.can_subscribe(SRV_PATTERN):
            log.debug(
                "%s: this connection may not subscribe to %s; not discoverable", service.name, SRV_PATTERN
            )
            return
        try:
            sub = await client.subscribe(SRV_PATTERN, dispatch=self._on_request)
        except ConatError as e:
            log.warning(
                "%s: cannot answer %s (%s); the service runs undiscoverable", service.name, SRV_PATTERN, e
            )
            return
        if self._sub is None and self._services:
            self._sub = sub
        else:  # a concurrent add won, or everything was withdrawn meanwhile
            await sub.unsubscribe()

    async def remove(self, service: MicroService) -> None:
        self._services.pop(service, None)
        if not self._services:
            await self._stop()

    async def _stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except ConatError as e:
                log.debug("unsubscribing from %s failed: %s", SRV_PATTERN, e)

    def _on_request(self, msg: Message) -> None:
        if not msg.reply:
            return
        found = targets(msg.subject)
        if found is None:
            return
        verb, name, ident = found
        answers: list[PingResponse | InfoResponse | StatsResponse] = []
        for service, alive in list(self._services.items()):
            if alive is not None and not alive():
                self._services.pop(service, None)
                continue
            if (name is None or name == service.name) and (ident is None or ident == service.id):
                answers.append(service.response(verb))
        if not self._services:
            self._client._core.spawn(self._stop())
        for answer in answers:
            if self._pending >= MAX_PENDING_ANSWERS:
                self.dropped += 1
                continue
            self._pending += 1
            self._client._core.spawn(self._answer(msg, answer))

    async def _answer(self, msg: Message, answer: PingResponse | InfoResponse | StatsResponse) -> None:
        try:
            await msg.respond(answer, encoding="json")
        except ConatError as e:
            log.debug("could not answer %s: %s", msg.subject, e)
        finally:
            self._pending -= 1
