"""Project homes as btrfs subvolumes, and a home moved with ``btrfs send`` / ``btrfs receive``.

When a host's projects directory is on btrfs and the host runs as root, every home is a subvolume
(:func:`make_home`; the runner and the agent make them so). A move between two such hosts sends the
home as one send stream of a read-only snapshot instead of a tar archive. ``host._agent_move``
agrees on the format with the destination and carries either the same way (size and SHA-256 in the
offer, both checked before anything is applied; 1 MiB messages on a conat socket). What the stream
brings over the archive:

- the snapshot is atomic: every file as of one instant, and a SQLite store with its WAL exactly as
  a power cut would leave it, which SQLite recovers on its next open (the tar path copies each store
  consistently on its own instead);
- nothing is walked file by file on the source, and reflinked extents stay shared.

On the destination the stream is hostile input: it is checked as it arrives
(:class:`~host._btrfs_stream.SendStreamCheck`: nothing that reaches another subvolume, no device
nodes, no non-``user.`` extended attributes), received confined to a staging directory
(``btrfs receive --chroot``), snapshotted writable into place, and cleaned as a tar import is (no
setuid, setgid or sticky bits, no group/other write bits; the caller then gives every file to the
project's uid). Every function here blocks (``btrfs`` commands, file walks): call them in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Final

from conat.platform import TransferResult

from ._errors import BadArgument, HostError
from ._fs_backend import btrfs_available

__all__ = [
    "OUTGOING",
    "build_stream",
    "btrfs_homes",
    "delete_subvolume",
    "install_stream",
    "is_subvolume",
    "make_home",
    "remove_tree",
]

_SUBVOLUME_ROOT: Final = 256
"""The inode number of every subvolume's root directory (``BTRFS_FIRST_FREE_OBJECTID``)."""
_COMMAND_TIMEOUT: Final = 6 * 3600.0
_CHUNK: Final = 1024 * 1024
_CLEARED: Final = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
OUTGOING: Final = ".outgoing-"
"""The read-only snapshot a send is made from sits beside the home under this prefix (a snapshot
must be on the home's filesystem)."""


def _btrfs(*args: str) -> None:
    try:
        subprocess.run(["btrfs", "-q", *args], capture_output=True, text=True, check=True,
                       timeout=_COMMAND_TIMEOUT)  # fmt: skip
    except subprocess.CalledProcessError as e:
        raise HostError(f"btrfs {' '.join(args[:2])} failed: {(e.stderr or '').strip()[:500]}") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError(f"btrfs {' '.join(args[:2])} failed: {e}") from None


def btrfs_homes(projects: Path) -> bool:
    """Whether homes under ``projects`` are made as subvolumes: it is on btrfs, ``btrfs`` is
    installed, and this process is root (``btrfs receive`` and snapshots need it)."""
    return os.geteuid() == 0 and btrfs_available(projects) is None


def is_subvolume(path: Path) -> bool:
    """Whether ``path`` is the root of a btrfs subvolume (not a symlink to one)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_ino == _SUBVOLUME_ROOT and btrfs_available(path) is None


def make_home(path: Path) -> None:
    """Make ``path`` as an empty subvolume (mode 0700; its parent must exist)."""
    _btrfs("subvolume", "create", str(path))
    path.chmod(0o700)


def delete_subvolume(path: Path) -> None:
    """Delete the subvolume at ``path``, read-only or not; nothing if there is none."""
    if is_subvolume(path):
        _btrfs("subvolume", "delete", str(path))


def remove_tree(path: Path) -> None:
    """Remove ``path`` and what is under it, read-only subvolumes included (they refuse ``unlink``)."""
    if not path.exists():
        return
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            if is_subvolume(child):
                with contextlib.suppress(HostError):
                    delete_subvolume(child)
    shutil.rmtree(path, ignore_errors=True)


def build_stream(home: Path, out: Path) -> TransferResult:
    """Write a full send stream of the subvolume ``home`` to ``out`` (through a read-only snapshot
    beside the home, ``.outgoing-<out's name>``, deleted after); returns its size and SHA-256."""
    began = time.monotonic()
    snapshot = home.with_name(f"{OUTGOING}{out.name}")
    if not is_subvolume(home):
        raise BadArgument("home", f"{home} is not a btrfs subvolume")
    _btrfs("subvolume", "snapshot", "-r", str(home), str(snapshot))
    try:
        _btrfs("send", "-f", str(out), str(snapshot))
    finally:
        delete_subvolume(snapshot)
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return TransferResult(
        bytes=out.stat().st_size, sha256=digest.hexdigest(), seconds=time.monotonic() - began
    )


def install_stream(stream: Path, home: Path) -> None:
    """Receive the (checked) send ``stream`` as the new subvolume ``home``, writable and cleaned
    (see the module docstring); on failure nothing is left at ``home``.

    Raises:
        BadArgument: the stream did not make exactly one subvolume, or made a special file.
        HostError: a ``btrfs`` command failed.
    """
    receiving = home.with_name(f"{home.name}.receive")
    receiving.mkdir(mode=0o700)
    try:
        _btrfs("receive", "--chroot", "-e", "-E", "1", "-f", str(stream), str(receiving))
        made = list(receiving.iterdir())
        if len(made) != 1 or not is_subvolume(made[0]):
            raise BadArgument("stream", "the send stream did not make exactly one subvolume")
        _btrfs("subvolume", "snapshot", str(made[0]), str(home))
        try:
            _clean(home)
        except BaseException:
            remove_tree(home)
            raise
    finally:
        remove_tree(receiving)


def _clean(home: Path) -> None:
    """What a tar import does to modes: no setuid/setgid/sticky, no group/other write; no special
    files at all (the stream check refused them already: this is the second line)."""
    home.chmod(0o700)
    for _directory, dirnames, filenames, dirfd in os.fwalk(home, follow_symlinks=False):
        for name in dirnames + filenames:
            info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                continue
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise BadArgument("stream", f"{name!r} is a special file")
            if info.st_mode & _CLEARED:
                os.chmod(name, stat.S_IMODE(info.st_mode) & ~_CLEARED, dir_fd=dirfd)
