"""One persist service per storage root: an advisory lock on each root it writes under.

Why: two writers must never share a stream file. Two services on one root (say one started by hand
beside ``conat up``) would both take requests for the same streams, each with its own idea of the
last seq, and answer ``UNIQUE constraint failed`` for values that were in fact stored. SQLite's own
locking keeps the file sound but not the service's in-memory state, so the second service must not
start at all.

How: :class:`RootLock` takes ``flock(LOCK_EX | LOCK_NB)`` on ``<root>/.conat-persist.lock`` for every
root (:meth:`persist.Placement.lock_roots`), writing who holds it (pid, host, since when) into the
file for the message of the one refused. The kernel releases a ``flock`` when its holder exits,
however it exits (``kill -9`` too), so a crash never leaves a stale lock and nothing needs cleaning
up. The lock is advisory: it binds persist services, not other programs.

**Partitioned workers** (``conat persist serve --workers N``: each serves the scopes of one partition,
:mod:`actors._partitions`) share a root: each takes the root's lock *shared* (so a service of the
whole key space, which takes it exclusive, is refused while they run, and refuses them), a shared lock
on ``<lock>.n<N>`` (so no worker of another split, whose partitions would overlap, may join: one
with ``M != N`` finds ``<lock>.n<N>`` held when it checks) and an exclusive one on
``<lock>.<N>.<i>`` (one worker per partition). The checks run under ``<lock>.guard`` so two
workers starting at once check one after the other. It is per open file, so a
second service in the *same* process is refused too. (On network filesystems ``flock`` may be local
to one machine: put roots on local disks, or give each host its own root.)
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Final, final

from ._durable import makedirs
from ._errors import RootInUse, StorageError

__all__ = ["LOCK_NAME", "RootLock"]

LOCK_NAME: Final = ".conat-persist.lock"
"""The lock file in each root (hidden: it is no stream, and inventories skip it)."""

_MAX_HOLDER: Final = 512
"""Most bytes of holder text read back from a lock file (it is ours, but may have been edited)."""


@final
class RootLock:
    """Exclusive advisory locks on storage roots, held until :meth:`release` (or the process ends).

    Take it with :meth:`acquire` (blocking file I/O: run it in a thread from async code).
    """

    __slots__ = ("_fds", "roots")

    def __init__(self, roots: list[Path], fds: list[int]) -> None:
        self.roots = roots
        self._fds = fds

    @classmethod
    def acquire(
        cls, roots: Iterable[str | os.PathLike[str]], partition: tuple[int, int] | None = None
    ) -> RootLock:
        """Lock every root (creating it if missing), or none; ``partition`` ``(index, count)`` for a
        partitioned worker (module docstring).

        Raises:
            RootInUse: another persist service holds one of them (it names that root and the holder).
            StorageError: a root or its lock file cannot be created or opened.
        """
        taken = cls([], [])
        try:
            for root in sorted({Path(r) for r in roots}):
                if partition is None:
                    taken._fds.append(_lock(root))
                else:
                    taken._fds.extend(_lock_partition(root, *partition))
                taken.roots.append(root)
        except BaseException:
            taken.release()
            raise
        return taken

    def release(self) -> None:
        """Give every lock back. Idempotent."""
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor of the open file releases its flock

    def __enter__(self) -> RootLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _open(root: Path, name: str) -> int:
    path = root / name
    try:
        makedirs(root)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StorageError("lock", str(path), e.strerror or str(e)) from None


def _try(fd: int, how: int, root: Path, name: str) -> bool:
    """``flock(fd, how | LOCK_NB)``: whether it was taken (``False``: someone holds it)."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StorageError("lock", str(root / name), e.strerror or str(e)) from None
        return False
    return True


def _lock_partition(root: Path, index: int, count: int) -> list[int]:
    """The locks of worker ``index`` of ``count`` on ``root`` (module docstring), or RootInUse."""
    guard = _open(root, f"{LOCK_NAME}.guard")
    held: list[int] = []
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # the checks below, one worker at a time
        main = _open(root, LOCK_NAME)
        held.append(main)
        if not _try(main, fcntl.LOCK_SH, root, LOCK_NAME):
            raise RootInUse(str(root), _holder(main))
        for other in root.glob(f"{LOCK_NAME}.n*"):
            if other.name == f"{LOCK_NAME}.n{count}":
                continue
            fd = _open(root, other.name)
            try:
                if not _try(fd, fcntl.LOCK_EX, root, other.name):
                    theirs = other.name.rsplit(".n", 1)[-1]
                    raise RootInUse(str(root), f"persist workers of another split ({theirs} partitions)")
            finally:
                os.close(fd)
        split = _open(root, f"{LOCK_NAME}.n{count}")
        held.append(split)
        fcntl.flock(split, fcntl.LOCK_SH)
        name = f"{LOCK_NAME}.{count}.{index}"
        mine = _open(root, name)
        held.append(mine)
        if not _try(mine, fcntl.LOCK_EX, root, name):
            raise RootInUse(str(root), _holder(mine))
        _write_holder(mine)
        return held
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    finally:
        os.close(guard)


def _write_holder(fd: int) -> None:
    since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {since}"
    with contextlib.suppress(OSError):  # only for the message of whoever is refused next
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)


def _lock(root: Path) -> int:
    fd = _open(root, LOCK_NAME)
    try:
        if not _try(fd, fcntl.LOCK_EX, root, LOCK_NAME):
            raise RootInUse(str(root), _holder(fd))
        _write_holder(fd)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, _MAX_HOLDER, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another persist service"
