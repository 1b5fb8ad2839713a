"""master's error tree. Every error has a stable ``code`` a remote caller sees unchanged (in
:class:`conat.RemoteError`), and builds its own message from its fields::

    ConatError
    ├── BadArgument              400               a malformed or out-of-range argument (conat.platform)
    └── MasterError              "master"
        ├── UnknownAccount       "unknown-account"
        ├── UnknownProject       "unknown-project"  no such project (or not one the caller may see)
        ├── UnknownHost          "unknown-host"     no such host (or not one the caller may use)
        ├── UnknownApiKey        "unknown-api-key"
        ├── NotAllowed           403                the caller may not do this (not owner, not admin)
        ├── HostOffline          "host-offline"     the host does not answer keepalives
        ├── NoCapacity           "no-capacity"      no usable online host has room
        ├── NoHost               "no-host"          the caller may use no host at all
        ├── WrongState           "wrong-state"      illegal in the project's (or host's) state
        │   └── AlreadyRunning   "already-running"  a second start
        ├── Busy                 "busy"             a move (or clone) of the project is in progress
        ├── HostFailed           "host-failed"      the host refused or failed (its code and text kept)
        ├── MoveFailed           "move-failed"      a move rolled back (the project is intact on its source)
        ├── SchemaTooNew         "schema-too-new"   the database was made by a newer master
        └── MasterLocked         "master-locked"    another master runs on this data directory

A refused call changes nothing: every check comes before the first write.
"""

from __future__ import annotations

from conat import ConatError, ErrorCode
from conat.platform import BadArgument

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


class UnknownAccount(MasterError):
    code: ErrorCode = "unknown-account"

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"no account {account_id}")


class UnknownProject(MasterError):
    """No such project, or one the caller is not a collaborator of (the two look the same, so
    that project ids cannot be probed)."""

    code: ErrorCode = "unknown-project"

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        super().__init__(f"no project {project_id}")


class UnknownHost(MasterError):
    code: ErrorCode = "unknown-host"

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        super().__init__(f"no host {host_id}")


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


class HostOffline(MasterError):
    code: ErrorCode = "host-offline"

    def __init__(self, host_id: str, status: str = "offline") -> None:
        self.host_id = host_id
        self.status = status
        super().__init__(f"host {host_id} is {status}")


class NoCapacity(MasterError):
    code: ErrorCode = "no-capacity"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"no host has room: {detail}")


class NoHost(MasterError):
    code: ErrorCode = "no-host"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"no host to use: {detail}")


class WrongState(MasterError):
    code: ErrorCode = "wrong-state"

    def __init__(self, what: str, state: str, detail: str = "") -> None:
        self.what = what
        self.state = state
        self.detail = detail
        super().__init__(f"{what} is {state}" + (f": {detail}" if detail else ""))


class AlreadyRunning(WrongState):
    code: ErrorCode = "already-running"

    def __init__(self, project_id: str, state: str) -> None:
        super().__init__(f"project {project_id}", state, "it was started already")


class Busy(MasterError):
    code: ErrorCode = "busy"

    def __init__(self, project_id: str, what: str) -> None:
        self.project_id = project_id
        self.what = what
        super().__init__(f"project {project_id} is busy: {what}")


class HostFailed(MasterError):
    """The host answered with an error (``host_code`` is its code) or could not be reached."""

    code: ErrorCode = "host-failed"

    def __init__(self, host_id: str, host_code: ErrorCode, detail: str) -> None:
        self.host_id = host_id
        self.host_code = host_code
        self.detail = detail
        super().__init__(f"host {host_id} failed ({host_code}): {detail}")


class MoveFailed(MasterError):
    code: ErrorCode = "move-failed"

    def __init__(self, project_id: str, reason: str) -> None:
        self.project_id = project_id
        self.reason = reason
        super().__init__(f"moving project {project_id} failed (it is intact on its source): {reason}")


class SchemaTooNew(MasterError):
    code: ErrorCode = "schema-too-new"

    def __init__(self, found: int, known: int) -> None:
        self.found = found
        self.known = known
        super().__init__(f"the database has schema version {found}; this master knows up to {known}")


class MasterLocked(MasterError):
    code: ErrorCode = "master-locked"

    def __init__(self, path: str, pid: object) -> None:
        self.path = path
        self.pid = pid
        super().__init__(f"another master runs on {path} (pid {pid})")
