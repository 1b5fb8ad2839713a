"""Discovery and health in the NATS micro shapes (ADR-32): ``$SRV.PING|INFO|STATS[.name[.id]]``.

Each actor type in a process is one micro "service instance": name = the actor's name, id = the
system's instance id plus the type, endpoints = its RPC methods (all on the type's subject). So
``nats micro ls`` and any micro-aware tool see conat actors next to native micro services. The
responses are JSON, as the convention requires; ``data`` of each endpoint carries conat's own
figures (active keys, passivations, restarts, drops...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._runtime import ActorRuntime

__all__ = ["SRV_PATTERN", "micro_response", "targets"]

SRV_PATTERN: Final = "$SRV.>"
_VERBS: Final = {"PING": "ping_response", "INFO": "info_response", "STATS": "stats_response"}


def targets(subject: str, runtimes: list[ActorRuntime]) -> tuple[str, list[ActorRuntime]] | None:
    """The verb and the runtimes a ``$SRV`` subject addresses (None: not ours or malformed)."""
    tokens = subject.split(".")
    if len(tokens) < 2 or len(tokens) > 4 or tokens[1] not in _VERBS:
        return None
    chosen = runtimes
    if len(tokens) >= 3:
        chosen = [r for r in chosen if r.spec.name == tokens[2]]
    if len(tokens) == 4:
        chosen = [r for r in chosen if service_id(r) == tokens[3]]
    return tokens[1], chosen


def service_id(runtime: ActorRuntime) -> str:
    return f"{runtime.instance_id}-{runtime.spec.name}"


def micro_response(verb: str, runtime: ActorRuntime) -> dict[str, Any]:
    spec = runtime.spec
    body: dict[str, Any] = {
        "type": f"io.nats.micro.v1.{_VERBS[verb]}",
        "name": spec.name,
        "id": service_id(runtime),
        "version": spec.version,
        "metadata": {"conat.actor": runtime.cls.__qualname__, "conat.keyed": str(spec.keyed).lower()},
    }
    methods = sorted(runtime.dispatcher.endpoints)
    if verb == "INFO":
        body["description"] = spec.description or (runtime.cls.__doc__ or "").strip().split("\n")[0]
        body["endpoints"] = [
            {
                "name": m,
                "subject": spec.subject,
                "queue_group": runtime.queue or "",
                "metadata": {"method": m},
            }
            for m in methods
        ]
    elif verb == "STATS":
        stats = runtime.statistics()
        by_name = {e.name: e for e in stats.endpoints}
        data = {
            "active_keys": stats.active_keys,
            "running_keys": stats.running_keys,
            "buffered": stats.buffered,
            "activations": stats.activations,
            "activation_failures": stats.activation_failures,
            "passivations": stats.passivations,
            "crashes": stats.crashes,
            "restarts": stats.restarts,
            "dead_letters": stats.dead_letters,
            "dropped": stats.dropped,
            "rejected_stopping": stats.rejected_stopping,
        }
        names = methods + sorted(set(by_name) - set(methods))
        endpoints = []
        for m in names:
            e = by_name.get(m)
            endpoints.append(
                {
                    "name": m,
                    "subject": spec.subject,
                    "queue_group": runtime.queue or "",
                    "num_requests": e.num_requests if e else 0,
                    "num_errors": e.num_errors if e else 0,
                    "last_error": e.last_error if e else "",
                    "processing_time": e.processing_time if e else 0,
                    "average_processing_time": e.average_processing_time if e else 0,
                    "data": data,
                }
            )
        body["started"] = stats.started
        body["endpoints"] = endpoints
    return body
