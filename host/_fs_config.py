"""The file server's configuration (:class:`FileServerConfig`), validated when it is made."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal

import msgspec

__all__ = ["PROJECT_ID", "FileServerConfig"]

PROJECT_ID: Final = "[project_id]"
_POSITIVE: Final = (
    "rescan", "max_read", "max_patch", "rate", "time_cap", "max_entries", "background",
    "transfers", "chunk", "watch_idle", "watch_queue", "watch_dirs", "threads", "audit_rows",
)  # fmt: skip


class FileServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where projects live and the file server's limits.

    Attributes:
        projects: the root of a project, with ``[project_id]`` for its uuid
            (``/data/projects/[project_id]``).
        snapshots: where a project's snapshots go (``[project_id]`` likewise); default
            ``<parent of projects>/.snapshots/[project_id]``, outside every project's tree.
        backend: ``plain`` or ``btrfs`` (see :mod:`host._fs_backend`).
        quota: bytes per project (``None``: no quota).
        rescan: seconds between usage rescans of the plain backend's quota count.
        max_read: largest file ``read_file`` returns over RPC (larger ones are streamed).
        max_patch: largest ``write_file_delta`` patch (characters).
        rate: requests per second per project (a leaky bucket; beyond it, 429 at once).
        time_cap: seconds a ``find``, ``du`` or recursive ``readdir`` may run.
        max_entries: most entries a listing, ``find`` or ``readdir`` returns.
        background: most concurrent long calls (search, find, du, recursive readdir) per project.
        transfers: most concurrent streamed reads and writes per project.
        chunk: bytes per message of a streamed transfer.
        watch_idle: seconds a shared watcher with no subscriber and no heartbeat lives on.
        watch_queue: events buffered per watch subscriber before it gets ``overflow``.
        watch_dirs: most directories one recursive watcher watches.
        allow_hardlinks: read and change files with several hard links (off: ``EHARDLINK``).
        threads: worker threads doing the blocking file work.
        ripgrep: use ripgrep for ``search`` when it is installed.
        audit: an SQLite file recording every mutating call (``None``: no audit log).
        audit_rows: rows the audit log keeps (older ones are deleted).
    """

    projects: str
    snapshots: str | None = None
    backend: Literal["plain", "btrfs"] = "plain"
    quota: int | None = None
    rescan: float = 300.0
    max_read: int = 32 << 20
    max_patch: int = 1 << 20
    rate: float = 500.0
    time_cap: float = 10.0
    max_entries: int = 100_000
    background: int = 8
    transfers: int = 8
    chunk: int = 256 << 10
    watch_idle: float = 60.0
    watch_queue: int = 1000
    watch_dirs: int = 10_000
    allow_hardlinks: bool = False
    threads: int = 8
    ripgrep: bool = True
    audit: str | None = None
    audit_rows: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("projects", "snapshots"):
            value = getattr(self, name)
            if value is None:
                continue
            if PROJECT_ID not in value or not os.path.isabs(value.replace(PROJECT_ID, "x")):
                raise ValueError(f"{name} must be an absolute path containing {PROJECT_ID}: {value!r}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.quota is not None and self.quota < 0:
            raise ValueError(f"quota must be >= 0 or None, not {self.quota!r}")
        if self.chunk > 1 << 20:
            raise ValueError("chunk must be at most 1 MiB (one socket frame)")

    def project_root(self, project_id: str) -> Path:
        return Path(self.projects.replace(PROJECT_ID, project_id))

    def snapshot_root(self, project_id: str) -> Path:
        if self.snapshots is not None:
            return Path(self.snapshots.replace(PROJECT_ID, project_id))
        base = Path(self.projects.split(PROJECT_ID, 1)[0].rstrip("/") or "/")
        return base / ".snapshots" / project_id
