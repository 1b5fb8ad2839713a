"""master's errors: the ``MasterError`` branch of the error tree (drawn in conat._errors), and the
errors master shares with the hosts (:class:`BadArgument`, :class:`UnknownProject`,
:class:`WrongState`), defined once in :mod:`conat.platform` and re-exported here.

Every error has a stable ``code`` a remote caller sees unchanged and builds its own message from its
fields. The symbolic ones are registered (:func:`conat.register_error`), so a caller of master's API
gets the typed error back (``except HostOffline``), which is also a :class:`conat.RemoteError`;
:class:`NotAllowed` (403) and :class:`BadArgument` (400) are statuses and reach a caller as a plain
:class:`conat.RemoteError`.

A refused call changes nothing: every check comes before the first write.
"""

from __future__ import annotations

from conat import ConatError, ErrorCode, register_error
from conat.platform import BadArgument, UnknownProject, WrongState

__all__ = [
    "AlreadyRunning",
    "BadArgument",
    "Busy",
    "HostFailed",
    "HostOffline",
    "MasterError",
    "MasterLocked",
    "MoveFailed",
    "NoCapacity",
    "NoHost",
    "NotAllowed",
    "SchemaTooNew",
    "UnknownAccount",
    "UnknownApiKey",
    "UnknownHost",
    "UnknownProject",
    "WrongState",
]


class MasterError(ConatError):
    """Base of master's errors."""

    code: ErrorCode = "master"


@register_error
class UnknownAccount(MasterError):
    code: ErrorCode = "unknown-account"

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"no account {account_id}")


@register_error
class UnknownHost(MasterError):
    code: ErrorCode = "unknown-host"

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        super().__init__(f"no host {host_id}")


@register_error
class UnknownApiKey(MasterError):
    code: ErrorCode = "unknown-api-key"

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"no API key {key_id}")


class NotAllowed(MasterError):
    code: ErrorCode = 403

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"not allowed: {what}")


@register_error
class HostOffline(MasterError):
    code: ErrorCode = "host-offline"

    def __init__(self, host_id: str, status: str = "offline") -> None:
        self.host_id = host_id
        self.status = status
        super().__init__(f"host {host_id} is {status}")


@register_error
class NoCapacity(MasterError):
    code: ErrorCode = "no-capacity"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"no host has room: {detail}")


@register_error
class NoHost(MasterError):
    code: ErrorCode = "no-host"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"no host to use: {detail}")


@register_error
class AlreadyRunning(WrongState):
    code: ErrorCode = "already-running"

    def __init__(self, project_id: str, state: str) -> None:
        super().__init__(state, "start", project_id, "it was started already")


@register_error
class Busy(MasterError):
    code: ErrorCode = "busy"

    def __init__(self, project_id: str, what: str) -> None:
        self.project_id = project_id
        self.what = what
        super().__init__(f"project {project_id} is busy: {what}")


@register_error
class HostFailed(MasterError):
    """The host answered with an error (``host_code`` is its code) or could not be reached."""

    code: ErrorCode = "host-failed"

    def __init__(self, host_id: str, host_code: ErrorCode, detail: str) -> None:
        self.host_id = host_id
        self.host_code = host_code
        self.detail = detail
        super().__init__(f"host {host_id} failed ({host_code}): {detail}")


@register_error
class MoveFailed(MasterError):
    code: ErrorCode = "move-failed"

    def __init__(self, project_id: str, reason: str) -> None:
        self.project_id = project_id
        self.reason = reason
        super().__init__(f"moving project {project_id} failed (it is intact on its source): {reason}")


@register_error
class SchemaTooNew(MasterError):
    code: ErrorCode = "schema-too-new"

    def __init__(self, found: int, known: int) -> None:
        self.found = found
        self.known = known
        super().__init__(f"the database has schema version {found}; this master knows up to {known}")


@register_error
class MasterLocked(MasterError):
    code: ErrorCode = "master-locked"

    def __init__(self, path: str, pid: object) -> None:
        self.path = path
        self.pid = pid
        super().__init__(f"another master runs on {path} (pid {pid})")
