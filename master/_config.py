"""master's configuration: the ``[master]`` table of a TOML file (``conat master serve --config``).

Secrets are never values here: master keeps its signing keys and its bus's secrets in 0600 files
under ``data_dir``, and writes the admin's API key to a 0600 file.

Example::

    [master]
    data_dir = "/var/lib/conat-master"
    port = 4222                      # master's bus (0: pick one, remembered across restarts)
    keepalive_interval = 2.0         # hosts send one keepalive per interval
    offline_after = 3                # keepalives missed before a host counts as offline
    local_hosts_dir = "/var/lib/conat-master/hosts"   # where the local provider puts its hosts
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from conat.platform import BadArgument, config_from_toml

__all__ = ["MasterConfig"]


class MasterConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything ``conat master serve`` needs.

    Attributes:
        data_dir: master's own state: database, key ring, bus, lock (0700).
        host: the address master's bus listens on (loopback unless ``allow_remote``).
        port: master's bus port (0: random the first time, then the same one).
        allow_remote: let ``host`` be a non-loopback address.
        keepalive_interval: seconds between a host's keepalives.
        offline_after: keepalives a host may miss before it counts as offline.
        token_ttl, host_token_ttl, join_ttl, project_token_ttl: token lifetimes (seconds).
        workers: actions of the work queue run at once.
        lease: seconds a worker owns an action before another may take it over (renewed while
            the action runs).
        local_hosts_dir: the local provider's directory (default ``<data_dir>/hosts``).
        local_host_options: extra ``[host]`` settings for hosts the local provider starts.
        reconcile_interval: seconds between reconciliations of the hosts table with the providers.
    """

    data_dir: str
    host: str = "127.0.0.1"
    port: int = 0
    allow_remote: bool = False
    keepalive_interval: float = 2.0
    offline_after: int = 3
    token_ttl: float = 600.0
    host_token_ttl: float = 3600.0
    join_ttl: float = 3600.0
    project_token_ttl: float = 12 * 3600.0
    workers: int = 4
    lease: float = 30.0
    local_hosts_dir: str | None = None
    local_host_options: dict[str, object] = {}
    reconcile_interval: float = 10.0
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not str(self.data_dir).startswith("/"):
            raise BadArgument("master.data_dir", f"must be an absolute path, not {self.data_dir!r}")
        if not 0 <= self.port <= 65535:
            raise BadArgument("master.port", f"must be 0..65535, not {self.port}")
        for field in ("keepalive_interval", "token_ttl", "host_token_ttl", "join_ttl", "project_token_ttl",
                      "lease", "reconcile_interval", "start_timeout"):  # fmt: skip
            if not getattr(self, field) > 0:
                raise BadArgument(f"master.{field}", "must be positive")
        if self.offline_after < 1:
            raise BadArgument("master.offline_after", "must be at least 1")
        if not 1 <= self.workers <= 64:
            raise BadArgument("master.workers", "must be 1..64")
        if self.local_hosts_dir is not None and not self.local_hosts_dir.startswith("/"):
            raise BadArgument("master.local_hosts_dir", "must be an absolute path")

    @classmethod
    def from_toml(cls, text: str) -> MasterConfig:
        """Read the ``[master]`` table. Raises :class:`BadArgument` naming the bad key."""
        return config_from_toml(cls, text, "master")

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    @property
    def hosts_dir(self) -> Path:
        return Path(self.local_hosts_dir) if self.local_hosts_dir else self.data / "hosts"

    @property
    def offline_seconds(self) -> float:
        return self.keepalive_interval * (self.offline_after + 0.5)
