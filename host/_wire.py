"""Wire and stored types of the host (msgspec Structs): what the runner takes and answers, what it
keeps per project in the host's persist scope, and the exec protocol of a project process.

Every field that comes from the network is validated in ``__post_init__`` and refused with
:class:`~host.BadArgument` naming the field, so a bad request changes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal

import msgspec

from ._errors import BadArgument
from ._states import ProjectState

__all__ = [
    "ExecExit",
    "ExecOutput",
    "ExecRequest",
    "HostStatus",
    "Isolation",
    "Limits",
    "ProjectRecord",
    "ProjectStatus",
    "ProjectUsage",
]

_MIB: Final = 1024 * 1024
MAX_COMMAND_ARGS: Final = 4096
MAX_COMMAND_BYTES: Final = 256 * 1024
MAX_EXEC_TIMEOUT: Final = 24 * 3600.0
MAX_STDIN_BYTES: Final = 16 * _MIB


def _positive_int(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadArgument(field, f"must be an integer in {low}..{high}, got {value!r}")


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resource limits of one project (the host's defaults, or what ``create`` names).

    Attributes:
        memory_mb: memory cap of the whole project (cgroup ``memory.limit_in_bytes``; without a
            memory cgroup, ``RLIMIT_AS`` of each process at 4x this, a blunter tool).
        cpu_percent: CPU share, 100 = one core (cgroup CFS quota); ``RLIMIT_CPU`` is not used, it
            would kill a long-running project.
        pids: processes and threads of the project (cgroup ``pids.max``; ``RLIMIT_NPROC`` too when
            the project has its own uid).
        open_files: ``RLIMIT_NOFILE`` of each process.
        file_size_mb: largest file a process may write (``RLIMIT_FSIZE``): a write beyond it fails
            and the file is cut at the limit.
        idle_timeout: seconds without activity after which the project is stopped (``None``: never).
    """

    memory_mb: int = 1024
    cpu_percent: int = 100
    pids: int = 256
    open_files: int = 1024
    file_size_mb: int = 1024
    idle_timeout: float | None = None

    def __post_init__(self) -> None:
        _positive_int("limits.memory_mb", self.memory_mb, 16, 1024 * 1024)
        _positive_int("limits.cpu_percent", self.cpu_percent, 1, 100 * 1024)
        _positive_int("limits.pids", self.pids, 8, 1 << 22)
        _positive_int("limits.open_files", self.open_files, 64, 1 << 20)
        _positive_int("limits.file_size_mb", self.file_size_mb, 1, 1 << 30)
        timeout = self.idle_timeout
        if timeout is not None and (
            not isinstance(timeout, int | float) or isinstance(timeout, bool) or not math.isfinite(timeout)
            or timeout <= 0
        ):  # fmt: skip
            raise BadArgument(
                "limits.idle_timeout", f"must be a positive number of seconds or null, got {timeout!r}"
            )


class Isolation(msgspec.Struct, frozen=True, kw_only=True):
    """Which isolation a project has, and exactly what is missing and why.

    ``applied`` lists what is in force (``cgroup-memory``, ``cgroup-cpu``, ``cgroup-pids``,
    ``rlimits``, ``uid``, ``netns``, ``mountns``, ``env``); ``missing`` maps each absent one to the
    reason (``"not root"``, ``"no memory cgroup controller"``, ``"bubblewrap not installed"``...).
    """

    applied: tuple[str, ...] = ()
    missing: dict[str, str] = {}


class ProjectRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the host keeps about one project (a value of the host's ``projects`` KV).

    ``pid``/``pid_started`` identify the running process across host restarts (a pid alone can be
    reused); ``cgroups`` and ``netns`` name what was made for it, so a restarted host cleans up
    exactly that.
    """

    project_id: str
    state: ProjectState = "opened"
    reason: str = ""
    limits: Limits = msgspec.field(default_factory=Limits)
    uid: int | None = None
    pid: int | None = None
    pid_started: float | None = None
    cgroups: tuple[str, ...] = ()
    netns: str | None = None
    isolation: Isolation = msgspec.field(default_factory=Isolation)
    created: float = 0.0
    changed: float = 0.0
    started: float | None = None
    exit_status: int | None = None


class ProjectUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Resource use of a running project (its whole cgroup when there is one, else its process tree)."""

    cpu_seconds: float = 0.0
    memory_bytes: int = 0
    pids: int = 0
    uptime: float = 0.0


class ProjectStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One project as the runner reports it."""

    project_id: str
    state: ProjectState
    reason: str = ""
    pid: int | None = None
    usage: ProjectUsage | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    isolation: Isolation = msgspec.field(default_factory=Isolation)
    last_activity: float | None = None


class HostStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The host and its projects (``conat host status``)."""

    host_id: str
    url: str
    projects: list[ProjectStatus]
    capabilities: Isolation


class ExecRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Run a command in the project (the first message on an exec socket).

    ``command`` is an argv (no shell unless you run one); ``cwd`` is relative to the project home;
    ``env`` adds to the project's environment; ``stdin`` is written then closed (optional);
    ``timeout`` kills the command's process group when it expires.
    """

    command: list[str]
    cwd: str = ""
    env: dict[str, str] = {}
    stdin: bytes | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.command, list) or not self.command:
            raise BadArgument("command", "must be a non-empty list of strings")
        if len(self.command) > MAX_COMMAND_ARGS:
            raise BadArgument("command", f"at most {MAX_COMMAND_ARGS} arguments")
        size = 0
        for arg in self.command:
            if not isinstance(arg, str) or "\0" in arg:
                raise BadArgument("command", "every argument must be a string without NUL")
            size += len(arg)
        for key, value in self.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise BadArgument("env", f"bad variable {key!r}")
            size += len(key) + len(value)
        if size > MAX_COMMAND_BYTES:
            raise BadArgument("command", f"command and env over {MAX_COMMAND_BYTES} bytes")
        if "\0" in self.cwd:
            raise BadArgument("cwd", "contains NUL")
        if self.stdin is not None and len(self.stdin) > MAX_STDIN_BYTES:
            raise BadArgument("stdin", f"over {MAX_STDIN_BYTES} bytes")
        timeout = self.timeout
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 < timeout <= MAX_EXEC_TIMEOUT
        ):
            raise BadArgument("timeout", f"must be in (0, {MAX_EXEC_TIMEOUT:g}] seconds, got {timeout!r}")


class ExecOutput(msgspec.Struct, frozen=True, tag="out"):
    """A piece of the command's output, in order per stream."""

    stream: Literal["stdout", "stderr"]
    data: bytes


class ExecExit(msgspec.Struct, frozen=True, tag="exit"):
    """How the command ended: ``code`` (or ``signal`` if killed), ``timed_out`` if the timeout hit."""

    code: int | None
    signal: int | None = None
    timed_out: bool = False
    error: str = ""


ExecEvent = ExecOutput | ExecExit
EXEC_EVENT_DECODER: Final = msgspec.msgpack.Decoder(ExecEvent)
EXEC_ENCODER: Final = msgspec.msgpack.Encoder()


def convert(value: Any, kind: type[Any], field: str) -> Any:
    """``msgspec.convert`` whose failures are :class:`BadArgument` naming ``field``."""
    try:
        return msgspec.convert(value, kind)
    except BadArgument:
        raise
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        raise BadArgument(field, str(exc)) from None
