"""The host's errors: the ``HostError`` branch of the error tree (drawn in conat._errors), and the
errors the host shares with master (:class:`BadArgument`, :class:`UnknownProject`,
:class:`WrongState`), defined once in :mod:`conat.platform` and re-exported here.

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

from conat import ConatError, ErrorCode, register_error
from conat.platform import BadArgument, UnknownProject, WrongState

__all__ = [
    "BadArgument",
    "HostError",
    "LaunchFailed",
    "NoCredentials",
    "ProjectExists",
    "StoreChanged",
    "UnknownProject",
    "WrongState",
]


class HostError(ConatError):
    """Base of the host's errors."""

    code: ErrorCode = "host"


@register_error
class ProjectExists(HostError):
    """``create``/``import`` of a project the host already has."""

    code: ErrorCode = "project-exists"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"project {project_id} already exists on this host")


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


@register_error
class StoreChanged(HostError):
    """A SQLite store kept changing while it was copied into an archive (a snapshot or clone of a
    running project): nothing was archived; stop the project and try again."""

    code: ErrorCode = "store-changed"

    def __init__(self, store: str) -> None:
        self.store = store
        super().__init__(f"the store {store!r} changed while it was copied: stop the project and try again")
