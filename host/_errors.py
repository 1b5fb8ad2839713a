"""The host's error tree. Every error has a stable ``code`` that reaches a remote caller unchanged
(the actor runtime answers a handler's :class:`conat.ConatError` with its code), and builds its own
message from its fields::

    ConatError
    └── HostError                 "host"
        ├── BadArgument           400                 a malformed or out-of-range argument
        ├── UnknownProject        "unknown-project"   no such project on this host
        ├── ProjectExists         "project-exists"    create/import of a project this host has
        ├── WrongState            "wrong-state"       the operation is illegal in the project's state
        ├── NoCredentials         "no-credentials"    no token for the project, and none can be minted
        └── LaunchFailed          "launch-failed"     the project process could not be started

A refused operation changes nothing: the state machine is checked before anything is done.
"""

from __future__ import annotations

from conat import ConatError, ErrorCode

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

    code: ErrorCode = 400

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"bad argument {field}: {reason}")


class UnknownProject(HostError):
    """No project with this id on this host."""

    code: ErrorCode = "unknown-project"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"project {project_id} is not on this host")


class ProjectExists(HostError):
    """``create``/``import`` of a project the host already has."""

    code: ErrorCode = "project-exists"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"project {project_id} already exists on this host")


class WrongState(HostError):
    """An operation (an event of the state machine) that is illegal in the current state."""

    code: ErrorCode = "wrong-state"

    def __init__(self, state: str, event: str, project_id: str = "") -> None:
        self.state = state
        self.event = event
        self.project_id = project_id
        who = f"project {project_id} " if project_id else ""
        super().__init__(f"{who}cannot {event} while {state}")


class NoCredentials(HostError):
    """The start named no token and the host holds no key to mint one."""

    code: ErrorCode = "no-credentials"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"no credentials for project {project_id}: pass a token (this host cannot mint one)")


class LaunchFailed(HostError):
    """The project process could not be started (the reason is also on the bootlog)."""

    code: ErrorCode = "launch-failed"

    def __init__(self, project_id: str, reason: str) -> None:
        self.project_id = project_id
        self.reason = reason
        super().__init__(f"project {project_id} could not start: {reason}")
