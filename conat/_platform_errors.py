"""The errors master and project hosts both answer with (their branch of the tree is drawn in
conat._errors): what is wrong with a request either service gets, whichever of the two refuses it.

They live beside the platform's wire types (:mod:`conat.platform` re-exports them) because both
services raise them and master and host never import each other. The symbolic ones are registered
(:func:`conat.register_error`): a caller of either service gets the typed error back, e.g. ``except
WrongState``, with its fields. What to do: ``unknown-project`` — check the id (or create the project
first); ``wrong-state`` — wait for the state the operation needs (``status`` says where it is), or
stop it first.
"""

from __future__ import annotations

from ._error_registry import register_error
from ._errors import BAD_REQUEST, ConatError, ErrorCode

__all__ = ["BadArgument", "PlatformError", "UnknownProject", "WrongState"]


class PlatformError(ConatError):
    """Base of the errors master and hosts share."""

    code: ErrorCode = "platform"


class BadArgument(PlatformError):
    """A malformed or out-of-range argument; ``field`` names it, ``reason`` says what is wrong.

    400, a status any service may answer with: it reaches a caller as a plain
    :class:`conat.RemoteError` whose message names the field.
    """

    code: ErrorCode = BAD_REQUEST

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"bad argument {field}: {reason}")


@register_error
class UnknownProject(PlatformError):
    """No such project: none with this id ``where`` the refusal comes from (a host: on this host), or,
    from master, none the caller may see (the two look the same, so project ids cannot be probed)."""

    code: ErrorCode = "unknown-project"

    def __init__(self, project_id: str, where: str = "") -> None:
        self.project_id = project_id
        self.where = where
        super().__init__(f"no project {project_id}" + (f" on {where}" if where else ""))


@register_error
class WrongState(PlatformError):
    """An operation that is illegal in the current state of a project (or, from master, of a host).

    Args:
        state: the state (or a description of it, e.g. ``holding 2 project(s)``).
        event: the operation refused (a state machine event: ``start``, ``stop``, ``exec``...).
        project_id: the project, if the refusal is about one.
        detail: what to do, or why, in words.
        host_id: the host, if the refusal is about a host.
    """

    code: ErrorCode = "wrong-state"

    def __init__(
        self, state: str, event: str, project_id: str = "", detail: str = "", host_id: str = ""
    ) -> None:
        self.state = state
        self.event = event
        self.project_id = project_id
        self.detail = detail
        self.host_id = host_id
        who = f"project {project_id} " if project_id else f"host {host_id} " if host_id else ""
        super().__init__(f"{who}cannot {event} while {state}" + (f": {detail}" if detail else ""))
