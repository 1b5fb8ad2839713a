"""Wire and stored types of the host (msgspec Structs): what it keeps per project in the host's
persist scope, and the exec protocol of a project process.

The runner's wire types (what master sends and gets back: :class:`Limits`, :class:`ProjectStatus`,
:class:`HostStatus`...) live in :mod:`conat.platform`, below both master and host, and are
re-exported here under the same names.

Every field that comes from the network is validated in ``__post_init__`` and refused with
:class:`~host.BadArgument` naming the field, so a bad request changes nothing.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from conat.platform import BadArgument, HostStatus, Isolation, Limits, ProjectStatus, ProjectUsage, convert

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
    "convert",
]

_MIB: Final = 1024 * 1024
MAX_COMMAND_ARGS: Final = 4096
MAX_COMMAND_BYTES: Final = 256 * 1024
MAX_EXEC_TIMEOUT: Final = 24 * 3600.0
MAX_STDIN_BYTES: Final = 16 * _MIB


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
