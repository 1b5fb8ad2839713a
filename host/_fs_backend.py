"""Where projects' trees live and how their quotas and snapshots work: the ``plain`` and ``btrfs``
storage backends of the file server.

``plain`` (default, works on any filesystem): one directory per project. The quota is enforced by
the file server from a usage count it keeps (a scan when the project is activated, then every write
it does, and a rescan every ``rescan`` seconds to notice what project processes wrote); project
processes themselves are bounded per file by ``RLIMIT_FSIZE``, set by the runner. Snapshots are
copies (reflinked where the filesystem can) in a snapshots directory *outside* the project's tree,
made under a hidden name and renamed into place when complete.

``btrfs`` (what production runs): each project is a subvolume, the quota a qgroup limit enforced by
the kernel (``EDQUOT`` from the write itself), snapshots read-only subvolume snapshots (so
``btrfs send`` / ``btrfs receive`` can move them). It needs a btrfs filesystem and ``btrfs-progs``.

Snapshot names are ``[A-Za-z0-9][A-Za-z0-9._-]{0,99}`` (default: the UTC time).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final, Literal, Protocol

from conat.beneath import open_root

from ._fs_errors import FsError
from ._fs_ops import Sandbox
from ._fs_types import Snapshot
from ._fs_walk import copy_tree

__all__ = ["Backend", "BtrfsBackend", "PlainBackend", "btrfs_available", "check_snapshot_name"]

BackendName = Literal["plain", "btrfs"]
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PARTIAL: Final = ".partial-"


def check_snapshot_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise FsError("EBADNAME", "", f"bad snapshot name {name!r}: use [A-Za-z0-9][A-Za-z0-9._-]{{0,99}}")
    return name


def default_snapshot_name() -> str:
    return time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())


class Backend(Protocol):
    """What the file server needs from a storage backend (all methods block)."""

    name: BackendName
    kernel_quota: bool
    """Whether the kernel enforces the quota (else the file server counts usage)."""

    def create(self, project_root: Path, quota: int | None) -> None: ...

    def set_quota(self, project_root: Path, quota: int | None) -> None: ...

    def usage(self, project_root: Path) -> int | None:
        """Bytes used as the kernel counts them (``None``: the file server counts)."""
        ...

    def create_snapshot(self, sandbox: Sandbox, snapshots: Path, name: str) -> Snapshot: ...

    def delete_snapshot(self, snapshots: Path, name: str) -> None: ...


def list_snapshots(snapshots: Path) -> list[Snapshot]:
    try:
        entries = list(os.scandir(snapshots))
    except FileNotFoundError:
        return []
    found = [
        Snapshot(e.name, e.stat(follow_symlinks=False).st_mtime)
        for e in entries
        if _NAME_RE.match(e.name) and e.is_dir(follow_symlinks=False)
    ]
    return sorted(found, key=lambda s: (s.created, s.name))


class PlainBackend:
    """A directory per project; quota counted by the file server; snapshots are copies."""

    name: BackendName = "plain"
    kernel_quota = False

    def create(self, project_root: Path, quota: int | None) -> None:
        project_root.mkdir(parents=True, exist_ok=True)

    def set_quota(self, project_root: Path, quota: int | None) -> None:
        """Nothing to do: the file server enforces the quota it is configured with."""

    def usage(self, project_root: Path) -> int | None:
        return None

    def create_snapshot(self, sandbox: Sandbox, snapshots: Path, name: str) -> Snapshot:
        check_snapshot_name(name)
        snapshots.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (snapshots / name).exists():
            raise FsError("EEXIST", "", f"snapshot {name!r} exists")
        partial = snapshots / f"{_PARTIAL}{name}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700)
        fd = open_root(partial)
        try:
            copy_tree(sandbox, sandbox.fd, "", fd, "", reflink="auto", charge=_free)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        finally:
            os.close(fd)
        now = time.time()
        os.utime(partial, (now, now))
        partial.rename(snapshots / name)
        return Snapshot(name, now)

    def delete_snapshot(self, snapshots: Path, name: str) -> None:
        check_snapshot_name(name)
        path = snapshots / name
        if not path.is_dir():
            raise FsError("ENOENT", "", f"no snapshot {name!r}")
        doomed = snapshots / f"{_PARTIAL}{name}-deleting"
        path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _free(_: int) -> None:
    """Snapshots are not charged to the project's quota (they live outside its tree)."""


def btrfs_available(path: Path) -> str | None:
    """Why the btrfs backend cannot run at ``path`` (``None``: it can)."""
    if shutil.which("btrfs") is None:
        return "btrfs-progs is not installed (no 'btrfs' command)"
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        out = subprocess.run(
            ["stat", "-f", "-c", "%T", str(probe)], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot tell the filesystem type of {probe}: {e}"
    return None if out == "btrfs" else f"{probe} is on {out}, not btrfs"


class BtrfsBackend:
    """A subvolume per project, qgroup quotas, read-only snapshots (``btrfs`` commands)."""

    name: BackendName = "btrfs"
    kernel_quota = True

    def __init__(self, btrfs: str = "btrfs") -> None:
        self._btrfs = btrfs

    def _run(self, *args: str) -> str:
        try:
            return subprocess.run(
                [self._btrfs, *args], capture_output=True, text=True, check=True, timeout=120
            ).stdout
        except subprocess.CalledProcessError as e:
            raise FsError(
                "EIO", "", f"btrfs {args[0]} {args[1] if len(args) > 1 else ''} failed: {e.stderr.strip()}"
            ) from None

    def create(self, project_root: Path, quota: int | None) -> None:
        if not project_root.exists():
            project_root.parent.mkdir(parents=True, exist_ok=True)
            self._run("subvolume", "create", str(project_root))
        self.set_quota(project_root, quota)

    def set_quota(self, project_root: Path, quota: int | None) -> None:
        self._run("quota", "enable", str(project_root))
        self._run("qgroup", "limit", "none" if quota is None else str(quota), str(project_root))

    def usage(self, project_root: Path) -> int | None:
        subvol = self._run("subvolume", "show", str(project_root))
        match = re.search(r"Subvolume ID:\s*(\d+)", subvol)
        if match is None:
            return None
        out = self._run("qgroup", "show", "-r", "--raw", str(project_root))
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0] == f"0/{match.group(1)}":
                return int(fields[1])
        return None

    def create_snapshot(self, sandbox: Sandbox, snapshots: Path, name: str) -> Snapshot:
        check_snapshot_name(name)
        snapshots.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (snapshots / name).exists():
            raise FsError("EEXIST", "", f"snapshot {name!r} exists")
        root = os.readlink(f"/proc/self/fd/{sandbox.fd}")
        self._run("subvolume", "snapshot", "-r", root, str(snapshots / name))
        return Snapshot(name, (snapshots / name).stat().st_mtime)

    def delete_snapshot(self, snapshots: Path, name: str) -> None:
        check_snapshot_name(name)
        if not (snapshots / name).is_dir():
            raise FsError("ENOENT", "", f"no snapshot {name!r}")
        with contextlib.suppress(FsError):
            self._run("property", "set", "-ts", str(snapshots / name), "ro", "false")
        self._run("subvolume", "delete", str(snapshots / name))
