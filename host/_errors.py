"""The host's errors: the ``HostError`` branch of the error tree (drawn in conat._errors).

Every error has a stable ``code`` that reaches a remote caller unchanged (the actor runtime answers a
handler's :class:`conat.ConatError` with its code and fields), and builds its own message from its
fields. The symbolic ones are registered with :func:`conat.register_error`, so master (or any caller
of the runner) gets the same class back, e.g. ``except WrongState``; :class:`BadArgument` is 400, a
status any service may answer with, so it reaches a caller as a plain :class:`conat.RemoteError`.

A refused operation changes nothing: the state machine is checked before anything is done. What to
do: ``unknown-project`` — create (or import) it first; ``project-exists`` — it is there already;
``wrong-state`` — wait for the state the operation needs (``status`` says where it is), or stop it
first; ``no-credentials`` — pass the project's token; ``launch-failed`` — read the reason (also on the
bootlog), fix the host or the project, start again.
"""

from __future__ import annotations

from conat import BAD_REQUEST, ConatError, ErrorCode, register_error

__all__ = [
    "BadArgument",
    "HostError",
    "LaunchFailed",
    "NoCredentials",
    "ProjectExists",
    "UnknownProject",
    "WrongState",
]


class HostError(ConatError):
    """Base of the host's errors."""

    code: ErrorCode = "host"


class BadArgument(HostError):
    """A malformed or out-of-range argument; ``field`` names it."""

    code: ErrorCode = BAD_REQUEST

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"bad argument {field}: {reason}")


@register_error
class UnknownProject(HostError):
    """No project with this id on this host."""

    code: ErrorCode = "unknown-project"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"project {project_id} is not on this host")


@register_error
class ProjectExists(HostError):
    """``create``/``import`` of a project the host already has."""

    code: ErrorCode = "project-exists"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"project {project_id} already exists on this host")


@register_error
class WrongState(HostError):
    """An operation (an event of the state machine) that is illegal in the current state."""

    code: ErrorCode = "wrong-state"

    def __init__(self, state: str, event: str, project_id: str = "") -> None:
        self.state = state
        self.event = event
        self.project_id = project_id
        who = f"project {project_id} " if project_id else ""
        super().__init__(f"{who}cannot {event} while {state}")


@register_error
class NoCredentials(HostError):
    """The start named no token and the host holds no key to mint one."""

    code: ErrorCode = "no-credentials"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"no credentials for project {project_id}: pass a token (this host cannot mint one)")


@register_error
class LaunchFailed(HostError):
    """The project process could not be started (the reason is also on the bootlog)."""

    code: ErrorCode = "launch-failed"

    def __init__(self, project_id: str, reason: str) -> None:
        self.project_id = project_id
        self.reason = reason
        super().__init__(f"project {project_id} could not start: {reason}")
