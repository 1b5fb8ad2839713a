"""The platform's wire types: what master and project hosts say to each other and to accounts.

master and host never import each other (DESIGN.md §1): they meet here, one layer below both. This
module is pure data and typed interfaces (msgspec Structs and Protocols), so it holds no behaviour
either side could come to depend on.

Three APIs, each a typed Protocol a caller uses with ``client.service(Protocol, subject)``:

================================  =============================  ===================================
subject                           served by / called by          Protocols (RPC namespace)
================================  =============================  ===================================
``master.account-<a>.api``        master / account ``a``         :class:`AccountsApi` (``accounts``),
                                                                 :class:`ProjectsApi` (``projects``),
                                                                 :class:`HostsApi` (``hosts``),
                                                                 :class:`TokensApi` (``tokens``)
``master.host-<h>.api``           master / host ``h``            :class:`MasterHostApi` (``host``)
``runner.host-<h>`` (master bus)  host ``h``'s agent / master    :class:`HostRunner` (no namespace)
================================  =============================  ===================================

The broker enforces who may publish where (``subjects.grant``); the callee trusts the subject, never
a payload's claim of identity.

Validation: every field that comes from the network and has a range is checked in
``__post_init__``; a bad one raises :class:`BadArgument` (code 400) naming the field, before
anything happens. msgspec passes it through decoding unchanged, so a handler's caller gets the
code and the field.

Errors both services answer with are here too, registered so either side's callers get them back
typed: :class:`BadArgument` (400), :class:`UnknownProject`, :class:`WrongState` (their branch of
the tree is drawn in ``conat._errors``).

Names are stable: the runner's types (``Limits``, ``ProjectStatus``...) keep the names they had in
the host package, which re-exports them.
"""

from __future__ import annotations

import math
import tomllib
import uuid
from typing import Any, ClassVar, Final, Literal, Protocol, TypeVar

import msgspec

from ._platform_errors import BadArgument, PlatformError, UnknownProject, WrongState

__all__ = [
    "Account",
    "AccountsApi",
    "ApiKeyInfo",
    "BadArgument",
    "Connection",
    "DesiredState",
    "ExecReply",
    "HostInfo",
    "HostLoad",
    "HostRunner",
    "HostStatus",
    "HostTokens",
    "HostsApi",
    "Isolation",
    "Keepalive",
    "KeepaliveReply",
    "Limits",
    "MAX_NAME",
    "MAX_TITLE",
    "MasterHostApi",
    "MoveResult",
    "NewAccount",
    "NewApiKey",
    "NewHost",
    "PlatformError",
    "Project",
    "ProjectReport",
    "ProjectState",
    "ProjectStatus",
    "ProjectUsage",
    "ProjectsApi",
    "RegisterRequest",
    "Registration",
    "RevocationEntry",
    "SnapshotInfo",
    "StateReport",
    "TokensApi",
    "TransferResult",
    "UnknownProject",
    "WrongState",
    "check_id",
    "check_text",
    "config_from_toml",
    "convert",
]

_MIB: Final = 1024 * 1024
MAX_TITLE: Final = 200
MAX_NAME: Final = 100


_Config = TypeVar("_Config")


def config_from_toml(cls: type[_Config], text: str, table: str) -> _Config:
    """The ``[table]`` of a TOML config file as ``cls`` (a msgspec Struct that checks itself in
    ``__post_init__``); :class:`BadArgument` naming the bad key, or ``config`` if it is not TOML."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadArgument("config", f"not TOML: {e}") from None
    try:
        return msgspec.convert(doc.get(table, {}), cls)
    except msgspec.ValidationError as e:
        raise BadArgument(table, str(e)) from None


def check_id(value: object, field: str) -> str:
    """``value`` as a canonical UUID string (lower-case, hyphenated), else :class:`BadArgument`."""
    if isinstance(value, str) and len(value) == 36:
        try:
            if str(uuid.UUID(value)) == value:
                return value
        except ValueError:
            pass
    raise BadArgument(field, f"must be a canonical UUID, not {value!r}")


def _int_in(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadArgument(field, f"must be an integer in {low}..{high}, got {value!r}")


def check_text(value: object, field: str, limit: int, *, empty: bool = False) -> str:
    """``value`` as a name or title: at most ``limit`` characters, none a control character.

    A control character (C0 or DEL) in a name would reach terminals and logs, so it is refused.

    Args:
        value: what the caller sent.
        field: the argument's name, for the error.
        limit: most characters allowed.
        empty: whether "" is allowed (an optional field); otherwise at least one character.

    Raises:
        BadArgument: ``value`` is not such a string.
    """
    if (
        not isinstance(value, str)
        or len(value) > limit
        or (not value and not empty)
        or any(ord(c) < 32 or c == "\x7f" for c in value)
    ):
        least = 0 if empty else 1
        raise BadArgument(field, f"must be {least} to {limit} printable characters")
    return value


def _text(field: str, value: object, limit: int) -> None:
    check_text(value, field, limit, empty=True)


# -- the runner's types (moved here from the host package) -------------------------------------------

ProjectState = Literal["opened", "starting", "running", "stopping", "error"]
"""A project's state on its host (the host's state machine, ``host.TRANSITIONS``)."""


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
        _int_in("limits.memory_mb", self.memory_mb, 16, 1024 * 1024)
        _int_in("limits.cpu_percent", self.cpu_percent, 1, 100 * 1024)
        _int_in("limits.pids", self.pids, 8, 1 << 22)
        _int_in("limits.open_files", self.open_files, 64, 1 << 20)
        _int_in("limits.file_size_mb", self.file_size_mb, 1, 1 << 30)
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


# -- results of the account API -----------------------------------------------------------------------

DesiredState = Literal["running", "stopped"]
"""What master wants of a project; its ``state`` is what the host last reported (or ``unknown``)."""


class Account(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    name: str
    admin: bool = False
    created: float = 0.0


class NewAccount(msgspec.Struct, frozen=True, kw_only=True):
    """A new account and its first API key (shown once)."""

    account: Account
    api_key: str
    key_id: str


class ApiKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    name: str = ""
    created: float = 0.0


class NewApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """An API key, shown once: keep ``api_key`` (with ``account_id``) in a 0600 file."""

    key_id: str
    api_key: str
    account_id: str


class Project(msgspec.Struct, frozen=True, kw_only=True):
    """A project as master knows it. ``state`` is the host's last report (``unknown`` while its
    host is offline, ``moving`` during a move); ``desired`` is what master drives it towards."""

    project_id: str
    title: str
    owner: str
    collaborators: list[str] = []
    host_id: str | None = None
    desired: DesiredState = "stopped"
    state: str = "opened"
    reason: str = ""
    created: float = 0.0
    last_activity: float | None = None


class HostInfo(msgspec.Struct, frozen=True, kw_only=True):
    host_id: str
    name: str
    owner: str
    collaborators: list[str] = []
    shared: bool = False
    region: str = ""
    capacity: int = 0
    status: str = "new"
    last_seen: float | None = None
    bus_url: str = ""
    public_key: str = ""
    provider: str = ""
    projects: int = 0


class NewHost(msgspec.Struct, frozen=True, kw_only=True):
    """A new host and its one-time join token (``conat host serve --master URL --join-token-file F``)."""

    host: HostInfo
    join_token: str
    expires: float


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """Credentials for one host's bus (``tokens.connect``): connect to ``url`` with ``token``."""

    url: str
    token: str
    expires: float
    host_id: str
    projects: list[str] = []


class ExecReply(msgspec.Struct, frozen=True, kw_only=True):
    """The collected outcome of a command run in a project (``projects.exec``)."""

    stdout: bytes = b""
    stderr: bytes = b""
    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str = ""


class SnapshotInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    created: float
    bytes: int
    sha256: str = ""


class TransferResult(msgspec.Struct, frozen=True, kw_only=True):
    """One transfer of a project's home, as sent (or received and verified): a tar archive, or a
    ``btrfs send`` stream where both hosts keep homes as btrfs subvolumes (``files`` is then 0)."""

    bytes: int
    sha256: str
    files: int = 0
    seconds: float = 0.0
    format: Literal["tar", "btrfs"] = "tar"


class MoveResult(msgspec.Struct, frozen=True, kw_only=True):
    """How a move (or clone) ended. ``state`` is ``done`` or ``failed``; a failed move left the
    project intact on its source, and ``reason`` says why. ``downtime`` is from the stop on the
    source to running again on the destination (0 for a project that was not running)."""

    move_id: str
    project_id: str
    source: str
    destination: str
    state: Literal["queued", "running", "done", "failed"]
    reason: str = ""
    new_project_id: str | None = None
    transfer: TransferResult | None = None
    seconds: float = 0.0
    downtime: float = 0.0


# -- the host API (master.host-<h>.api) --------------------------------------------------------------


class RegisterRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A host introduces itself (first with its join token, later with its own key).

    ``renew_key``: issue the host a new API key (the first registration always does).
    ``public_key``: the host bus's callout issuer key (names which bus signs its users).
    """

    bus_url: str
    capacity: int = 100
    region: str = ""
    public_key: str = ""
    renew_key: bool = False

    def __post_init__(self) -> None:
        _text("bus_url", self.bus_url, 400)
        _int_in("capacity", self.capacity, 0, 1_000_000)
        _text("region", self.region, MAX_NAME)
        _text("public_key", self.public_key, 200)


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """What a host gets when it registers: master's public token keys to pin (never a secret of
    master's) and, when asked or the first time, its own API key."""

    host_id: str
    public_keys: dict[str, str]
    api_key: str | None = None
    revocation_seq: int = 0
    keepalive_interval: float = 2.0


class HostLoad(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Health and load in a keepalive."""

    projects: int = 0
    running: int = 0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    healthy: bool = True
    detail: str = ""

    def __post_init__(self) -> None:
        _int_in("load.projects", self.projects, 0, 10_000_000)
        _int_in("load.running", self.running, 0, 10_000_000)
        for field in ("cpu_percent", "memory_percent"):
            value = getattr(self, field)
            if not isinstance(value, int | float) or not 0 <= value <= 100 * 1024:
                raise BadArgument(f"load.{field}", f"must be a percentage, got {value!r}")
        _text("load.detail", self.detail, 400)


class Keepalive(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    capacity: int = 100
    load: HostLoad = msgspec.field(default_factory=HostLoad)

    def __post_init__(self) -> None:
        _int_in("capacity", self.capacity, 0, 1_000_000)


class KeepaliveReply(msgspec.Struct, frozen=True, kw_only=True):
    """``revocation_seq``: the newest revocation; a host behind it catches up (``revocations``)."""

    revocation_seq: int
    interval: float


class ProjectReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    project_id: str
    state: ProjectState
    reason: str = ""
    last_activity: float | None = None

    def __post_init__(self) -> None:
        check_id(self.project_id, "project_id")
        _text("reason", self.reason, 4000)


class StateReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Project states (and activity). ``complete``: these are all the host's projects, so master
    may reconcile (projects missing from a complete report are not on the host)."""

    projects: list[ProjectReport] = []
    complete: bool = False

    def __post_init__(self) -> None:
        if len(self.projects) > 100_000:
            raise BadArgument("projects", "at most 100000 per report")


class RevocationEntry(msgspec.Struct, frozen=True, kw_only=True):
    """Refuse ``principal``'s tokens whose revision is below ``below`` (``seq`` orders them)."""

    seq: int
    principal: str
    below: int


class HostTokens(msgspec.Struct, frozen=True, kw_only=True):
    """The host's own token for its bus, and fresh tokens for the projects it asked about."""

    host_token: str
    expires: float
    projects: dict[str, str] = {}


# -- typed interfaces ---------------------------------------------------------------------------------


class AccountsApi(Protocol):
    """``accounts.*`` on ``master.account-<a>.api``."""

    __conat_namespace__: ClassVar[str] = "accounts"

    async def whoami(self) -> Account: ...
    async def create(self, name: str, admin: bool = False) -> NewAccount: ...
    async def delete(self, account_id: str) -> None: ...
    async def create_api_key(self, name: str = "") -> NewApiKey: ...
    async def list_api_keys(self) -> list[ApiKeyInfo]: ...
    async def delete_api_key(self, key_id: str) -> None: ...


class ProjectsApi(Protocol):
    """``projects.*`` on ``master.account-<a>.api``."""

    __conat_namespace__: ClassVar[str] = "projects"

    async def create(
        self, title: str, host_id: str | None = None, limits: Limits | None = None
    ) -> Project: ...
    async def get(self, project_id: str) -> Project: ...
    async def start(self, project_id: str, wait: bool = False) -> Project: ...
    async def stop(self, project_id: str, wait: bool = False) -> Project: ...
    async def restart(self, project_id: str, wait: bool = False) -> Project: ...
    async def status(self, project_id: str) -> Project: ...
    async def delete(self, project_id: str) -> None: ...
    async def move(self, project_id: str, host_id: str, wait: bool = True) -> MoveResult: ...
    async def add_collaborator(self, project_id: str, account_id: str) -> Project: ...
    async def remove_collaborator(self, project_id: str, account_id: str) -> Project: ...
    async def create_snapshot(self, project_id: str, name: str | None = None) -> SnapshotInfo: ...
    async def clone(
        self, project_id: str, title: str, host_id: str | None = None, wait: bool = True
    ) -> MoveResult: ...
    async def exec(
        self,
        project_id: str,
        command: list[str],
        timeout: float = 60.0,
        cwd: str = "",
        stdin: bytes | None = None,
    ) -> ExecReply: ...
    async def list(self) -> list[Project]: ...


class HostsApi(Protocol):
    """``hosts.*`` on ``master.account-<a>.api``."""

    __conat_namespace__: ClassVar[str] = "hosts"

    async def get(self, host_id: str) -> HostInfo: ...
    async def create(
        self,
        name: str,
        region: str = "",
        capacity: int = 100,
        shared: bool = False,
        provider: str | None = None,
    ) -> NewHost: ...
    async def delete(self, host_id: str) -> None: ...
    async def set_shared(self, host_id: str, shared: bool) -> HostInfo: ...
    async def add_collaborator(self, host_id: str, account_id: str) -> HostInfo: ...
    async def remove_collaborator(self, host_id: str, account_id: str) -> HostInfo: ...
    async def list(self) -> list[HostInfo]: ...


class TokensApi(Protocol):
    """``tokens.*`` on ``master.account-<a>.api``: credentials for the buses."""

    __conat_namespace__: ClassVar[str] = "tokens"

    async def connect(self, host_id: str, projects: list[str] | None = None) -> Connection: ...
    async def master(self) -> str: ...


class MasterHostApi(Protocol):
    """``host.*`` on ``master.host-<h>.api``: what a host tells and asks master."""

    __conat_namespace__: ClassVar[str] = "host"

    async def register(self, request: RegisterRequest) -> Registration: ...
    async def keepalive(self, keepalive: Keepalive) -> KeepaliveReply: ...
    async def report(self, report: StateReport) -> None: ...
    async def revocations(self, since: int) -> list[RevocationEntry]: ...
    async def tokens(self, projects: list[str] | None = None) -> HostTokens: ...
    async def master_token(self) -> str: ...


class HostRunner(Protocol):
    """``runner.host-<h>`` on master's bus, served by host ``h``'s agent; only master calls it.

    The project methods are the host runner's (``host.Runner``); the others are the agent's own:
    ``exec`` runs a command in a project, ``bootlog`` appends to a project's bootlog, ``revoke``
    applies a revocation to the host bus's callout, ``move_in``/``move_out``/``move_abort`` and
    ``snapshot`` carry a project's files and persist stores.
    """

    async def create(self, project_id: str, limits: Limits | None = None) -> ProjectStatus: ...
    async def start(
        self, project_id: str, token: str | None = None, wait: float | None = None
    ) -> ProjectStatus: ...
    async def stop(self, project_id: str, wait: float | None = None) -> ProjectStatus: ...
    async def restart(
        self, project_id: str, token: str | None = None, wait: float | None = None
    ) -> ProjectStatus: ...
    async def status(self, project_id: str) -> ProjectStatus: ...
    async def host_status(self) -> HostStatus: ...
    async def delete(self, project_id: str) -> None: ...
    async def exec(
        self,
        project_id: str,
        command: list[str],
        timeout: float = 60.0,
        cwd: str = "",
        stdin: bytes | None = None,
    ) -> ExecReply: ...
    async def bootlog(
        self,
        project_id: str,
        phase: str,
        message: str = "",
        progress: float | None = None,
        error: str | None = None,
    ) -> None: ...
    async def revoke(self, principal: str, below: int) -> int: ...
    async def move_in(self, project_id: str, transfer_id: str, limits: Limits | None = None) -> None: ...
    async def move_out(
        self, project_id: str, transfer_id: str, url: str, token: str, new_project_id: str | None = None
    ) -> TransferResult: ...
    async def move_abort(self, project_id: str, transfer_id: str) -> None: ...
    async def snapshot(self, project_id: str, name: str) -> SnapshotInfo: ...
    async def list(self) -> list[ProjectStatus]: ...


def convert(value: Any, kind: type[Any], field: str) -> Any:
    """``msgspec.convert`` whose failures are :class:`BadArgument` naming ``field``."""
    try:
        return msgspec.convert(value, kind)
    except BadArgument:
        raise
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        raise BadArgument(field, str(exc)) from None
