"""The host's configuration: the ``[host]`` table of a TOML file (``conat host serve --config``).

Secrets are never values here: the config names *files* (the pinned public keys, and either the
master key ring of a local/test setup or the host's own token file), each of which must be 0600.

Example::

    [host]
    data_dir = "/var/lib/conat-host"
    projects_dir = "/data/projects"          # project homes: <projects_dir>/<project id>
    public_keys = "/etc/conat/master.pub"    # master's pinned token keys (or signing_keys)
    signing_keys = "/etc/conat/keys"         # local/test only: mint the host's and projects' tokens
    port = 4222                              # the host bus (0: pick one, remembered across restarts)
    stop_projects_on_shutdown = false        # projects keep running across a host restart
    [host.limits]
    memory_mb = 2048
    idle_timeout = 3600
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

from conat.platform import config_from_toml

from ._errors import BadArgument
from ._wire import Limits

__all__ = ["HostConfig"]


class HostConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything ``conat host serve`` needs (see the module docstring).

    Attributes:
        data_dir: the host's own state: bus, persist stores of the host scope, project records'
            files, logs, credentials (0700).
        host_id: this host's id; default: the one kept in ``<data_dir>/host-id`` (made once).
        projects_dir: where project homes live (default ``<data_dir>/projects``).
        port: the bus's client port (0: random the first time, then the same one).
        public_keys: file of master's pinned public token keys (``Keyring.export_public`` format).
        signing_keys: a key ring directory to mint tokens with (local setups and tests only).
        credentials: the host's own token file for its bus (when it cannot mint one).
        limits: default limits of new projects.
        uid_base, uid_count: the uid range projects get (one each) when the host runs as root.
        netns, mountns, cgroups: use these isolation mechanisms where the host can.
        stop_grace: seconds between SIGTERM and SIGKILL when stopping a project.
        start_timeout: seconds a start may take, once launched, until the project answers on the bus.
        max_parallel_starts: starts launched at once; more wait their turn (a project's Python
            starting costs about a CPU-second: fifty at once on two cores would all time out).
        stop_projects_on_shutdown: stop every project when the host stops (else they keep running
            and the next start adopts them).
        idle_check: seconds between checks for idle projects (and log rotation, token renewal).
        project_token_ttl: lifetime of the project tokens the host mints.
        project_command: the project program (default ``python -m host.project``).
    """

    data_dir: str
    host_id: str | None = None
    projects_dir: str | None = None
    port: int = 0
    public_keys: str | None = None
    signing_keys: str | None = None
    credentials: str | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    uid_base: int = 200_000
    uid_count: int = 100_000
    netns: bool = True
    mountns: bool = True
    cgroups: bool = True
    stop_grace: float = 10.0
    start_timeout: float = 30.0
    max_parallel_starts: int = 8
    stop_projects_on_shutdown: bool = False
    idle_check: float = 30.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    project_token_ttl: float = 3600.0
    project_command: list[str] | None = None

    def __post_init__(self) -> None:
        for field in ("data_dir", "projects_dir", "public_keys", "signing_keys", "credentials"):
            value = getattr(self, field)
            if value is not None and not str(value).startswith("/"):
                raise BadArgument(f"host.{field}", f"must be an absolute path, not {value!r}")
        if self.host_id is not None:
            try:
                if str(uuid.UUID(self.host_id)) != self.host_id:
                    raise ValueError
            except ValueError:
                raise BadArgument("host.host_id", f"must be a canonical UUID, not {self.host_id!r}") from None
        if self.max_parallel_starts < 1:
            raise BadArgument("host.max_parallel_starts", "must be at least 1")
        if not 0 <= self.port <= 65535:
            raise BadArgument("host.port", f"must be 0..65535, not {self.port}")
        if self.uid_base < 1000 or self.uid_count < 1 or self.uid_base + self.uid_count > 2**31:
            raise BadArgument("host.uid_base", "uid range must lie within 1000..2^31")
        for field in ("stop_grace", "start_timeout", "idle_check", "project_token_ttl"):
            if not getattr(self, field) > 0:
                raise BadArgument(f"host.{field}", "must be positive")
        if self.public_keys is None and self.signing_keys is None:
            raise BadArgument("host.public_keys", "name master's pinned public keys (or signing_keys)")
        if self.signing_keys is None and self.credentials is None:
            raise BadArgument("host.credentials", "name the host's token file (or signing_keys)")

    @classmethod
    def from_toml(cls, text: str) -> HostConfig:
        """Read the ``[host]`` table. Raises :class:`BadArgument` naming the bad key."""
        return config_from_toml(cls, text, "host")

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    @property
    def projects(self) -> Path:
        return Path(self.projects_dir) if self.projects_dir else self.data / "projects"

    def resolved_host_id(self) -> str:
        """The configured id, else the one kept in ``<data_dir>/host-id`` (created on first use)."""
        if self.host_id is not None:
            return self.host_id
        path = self.data / "host-id"
        try:
            return str(uuid.UUID(path.read_text().strip()))
        except FileNotFoundError:
            self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
            ident = str(uuid.uuid4())
            path.write_text(ident + "\n")
            return ident
