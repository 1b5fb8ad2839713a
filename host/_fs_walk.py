"""Walking a project's tree by directory fds: ``readdir`` (recursive), ``listing``, ``find``, ``du`` and
tree copies (``cp -r``, snapshots). Blocking; run in an executor.

Every directory below the starting one is opened relative to its parent's fd with ``O_NOFOLLOW |
O_DIRECTORY``, so a walk never follows a symlink and never leaves the tree, even if directories are
swapped for symlinks while it runs. Each walk has a :class:`Budget`: a cap on entries and a
deadline; when either is reached the walk stops and its result says ``truncated``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, final

from conat.beneath import (
    MAX_DEPTH,
    Follow,
    SpecialFile,
    open_beneath,
    open_dir_beneath,
    open_parent,
    open_regular,
)

from ._fs_errors import EHARDLINK, FsError
from ._fs_ops import AtomicFile, Sandbox, file_type, is_temp_name, is_text, translate
from ._fs_types import (
    CopyResult,
    DirEntry,
    DirListing,
    DuResult,
    FileType,
    FindResult,
    FindType,
    Listing,
    ListingEntry,
    Reflink,
)

__all__ = ["Budget", "copy_file_fd", "copy_tree", "du", "find", "listing", "readdir", "walk"]

FICLONE: Final = 0x40049409
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK: Final = 1 << 30


@final
@dataclass
class Budget:
    """How much a walk may do: ``limit`` entries before ``deadline`` (``time.monotonic()``).

    ``undecodable`` counts the names a walk for a reply left out: names that are not UTF-8 cannot be
    sent (the wire carries paths as text) nor named by a caller, so they are skipped, and counted
    so that the reply can say so instead of failing as a whole."""

    limit: int
    deadline: float
    used: int = 0
    truncated: bool = False
    undecodable: int = 0

    @classmethod
    def of(cls, limit: int, seconds: float) -> Budget:
        return cls(limit=max(0, limit), deadline=time.monotonic() + seconds)

    def take(self) -> bool:
        """Count one entry; ``False`` (and ``truncated``) once the cap or the deadline is reached."""
        if self.used >= self.limit or (self.used & 63 == 0 and time.monotonic() > self.deadline):
            self.truncated = True
            return False
        self.used += 1
        return True


@dataclass
class _Level:
    fd: int
    rel: str
    depth: int
    entries: Iterator[os.DirEntry[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.entries = iter(list(os.scandir(self.fd)))


def _entry_type(entry: os.DirEntry[str]) -> FileType:
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return file_type(entry.stat(follow_symlinks=False).st_mode)


def walk(
    fd: int,
    budget: Budget,
    *,
    max_depth: int = MAX_DEPTH,
    skip_temp: bool = True,
    text_names: bool = False,
) -> Iterator[tuple[str, os.DirEntry[str], FileType, int]]:
    """Every entry below the directory ``fd`` (not closed here), depth first.

    Yields ``(relative path, entry, type, parent fd)``; directories are entered after they are
    yielded, up to ``max_depth`` levels (1: only ``fd``'s own entries). Stops when ``budget`` says so.
    With ``text_names`` (a walk whose paths go into a reply), an entry whose name is not UTF-8 is
    neither yielded nor entered, only counted in ``budget.undecodable``.
    """
    stack = [_Level(os.dup(fd), "", 1)]
    try:
        while stack:
            level = stack[-1]
            entry = next(level.entries, None)
            if entry is None:
                os.close(stack.pop().fd)
                continue
            if skip_temp and is_temp_name(entry.name):
                continue
            if text_names and not is_text(entry.name):
                budget.undecodable += 1
                continue
            if not budget.take():
                return
            rel = f"{level.rel}/{entry.name}" if level.rel else entry.name
            kind = _entry_type(entry)
            yield rel, entry, kind, level.fd
            if kind == "dir" and level.depth < max_depth:
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=level.fd)
                except OSError:
                    continue  # vanished, swapped for a symlink, or unreadable: not ours to enter
                try:
                    stack.append(_Level(sub, rel, level.depth + 1))
                except OSError:
                    os.close(sub)
    finally:
        for level in stack:
            os.close(level.fd)


def _open_start(sandbox: Sandbox, path: str) -> int:
    with translate(path):
        return open_dir_beneath(sandbox.fd, path)


def readdir(sandbox: Sandbox, path: str, recursive: bool, budget: Budget) -> DirListing:
    fd = _open_start(sandbox, path)
    try:
        with translate(path):
            depth = MAX_DEPTH if recursive else 1
            entries = [
                DirEntry(rel, kind) for rel, _, kind, _ in walk(fd, budget, max_depth=depth, text_names=True)
            ]
    finally:
        os.close(fd)
    return DirListing(entries, budget.truncated, budget.undecodable)


def listing(sandbox: Sandbox, path: str, budget: Budget) -> Listing:
    fd = _open_start(sandbox, path)
    out: list[ListingEntry] = []
    try:
        with translate(path):
            for rel, entry, kind, _ in walk(fd, budget, max_depth=1, text_names=True):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append(ListingEntry(rel, kind, st.st_size, st.st_mtime))
    finally:
        os.close(fd)
    return Listing(out, budget.truncated, budget.undecodable)


def _join(base: str, rel: str) -> str:
    base = base.strip("/")
    return f"{base}/{rel}" if base and base != "." else rel


_FIND_TYPES: Final = {"f": "file", "d": "dir", "l": "symlink"}


def find(
    sandbox: Sandbox,
    path: str,
    names: list[str] | None,
    kind: FindType | None,
    max_depth: int | None,
    budget: Budget,
    limit: int,
) -> FindResult:
    """Paths (relative to the root) below ``path`` whose name matches a glob of ``names`` (literal
    ``fnmatch``: ``*``, ``?``, ``[...]``, case-sensitive) and whose type is ``kind``."""
    fd = _open_start(sandbox, path)
    want = _FIND_TYPES[kind] if kind is not None else None
    found: list[str] = []
    truncated = False
    try:
        with translate(path):
            depth = MAX_DEPTH if max_depth is None else max(0, min(max_depth, MAX_DEPTH))
            if depth > 0:
                for rel, entry, etype, _ in walk(fd, budget, max_depth=depth, text_names=True):
                    if want is not None and etype != want:
                        continue
                    if names and not any(fnmatch.fnmatchcase(entry.name, g) for g in names):
                        continue
                    if len(found) >= limit:
                        truncated = True
                        break
                    found.append(_join(path, rel))
    finally:
        os.close(fd)
    return FindResult(found, truncated or budget.truncated, budget.undecodable)


def du(sandbox: Sandbox, path: str, budget: Budget) -> DuResult:
    """Disk usage below ``path`` (``path`` itself included); a hard-linked inode counts once."""
    with translate(path):
        fd = open_dir_beneath(sandbox.fd, path)
    try:
        with translate(path):
            top = os.fstat(fd)
            used, size, files, dirs = top.st_blocks * 512, 0, 0, 1
            seen: set[tuple[int, int]] = set()
            for _, entry, kind, _ in walk(fd, budget, skip_temp=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1 and kind != "dir":
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                used += st.st_blocks * 512
                if kind == "dir":
                    dirs += 1
                else:
                    files += 1
                    size += st.st_size if kind == "file" else 0
    finally:
        os.close(fd)
    return DuResult(bytes=used, size=size, files=files, dirs=dirs, truncated=budget.truncated)


def usage(fd: int, budget: Budget) -> int:
    """Apparent bytes of the regular files below the directory ``fd`` (what a plain quota counts)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for _, entry, kind, _ in walk(fd, budget, skip_temp=False):
        if kind != "file":
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        total += st.st_size
    return total


# ---- copies ----------------------------------------------------------------------------------------


def copy_file_fd(src: int, dst: int, size: int, reflink: Reflink) -> bool:
    """Copy ``size`` bytes from ``src`` to ``dst`` (both at offset 0); ``True`` if reflinked.

    ``reflink="always"`` raises where the filesystem cannot share the blocks; ``"auto"`` falls back
    to ``copy_file_range`` (in-kernel; also shares blocks on btrfs/xfs), then to read/write.
    """
    if reflink != "never":
        try:
            fcntl.ioctl(dst, FICLONE, src)
            return True
        except OSError as e:
            if reflink == "always":
                raise OSError(e.errno, "the filesystem cannot reflink this file") from None
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src, dst, min(_COPY_CHUNK, size - copied), copied, copied)
            if n == 0:
                break
            copied += n
        return False
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(src, copied, os.SEEK_SET)
    os.lseek(dst, copied, os.SEEK_SET)
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
    return False


@final
@dataclass
class _Copy:
    sandbox: Sandbox
    reflink: Reflink
    charge: Callable[[int], None]
    files: int = 0
    bytes: int = 0
    reflinked: bool = False
    skipped: list[str] = field(default_factory=list)

    def file(self, sdir: int, name: str, ddir: int, dname: str, rel: str, strict: bool = False) -> None:
        """Copy one regular file; skip (or, ``strict``, refuse) anything else or a hard-linked one."""
        try:
            src, st = open_regular(sdir, [name], os.O_RDONLY, follow=Follow.NEVER, follow_last=strict)
        except SpecialFile:
            if strict:
                raise
            self.skipped.append(rel)
            return
        try:
            if not self.sandbox.allow_hardlinks and st.st_nlink > 1:
                if strict:
                    raise FsError(EHARDLINK, rel)
                self.skipped.append(rel)
                return
            self.charge(st.st_size)
            owner = self.sandbox.owner_for(ddir)
            with AtomicFile(ddir, dname, stat.S_IMODE(st.st_mode) & 0o1777, owner) as out:
                self.reflinked |= copy_file_fd(src, out.fd, st.st_size, self.reflink)
                out.size = st.st_size
                out.commit(sync=False)
            self.files += 1
            self.bytes += st.st_size
        finally:
            os.close(src)

    def tree(self, sdir: int, ddir: int, rel: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise OSError(errno.ENAMETOOLONG, "the tree is too deep")
        for entry in list(os.scandir(sdir)):
            if is_temp_name(entry.name):
                continue
            sub = f"{rel}/{entry.name}" if rel else entry.name
            kind = _entry_type(entry)
            if kind == "file":
                self.file(sdir, entry.name, ddir, entry.name, sub)
            elif kind == "symlink":
                link = os.readlink(entry.name, dir_fd=sdir)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=ddir)
                os.symlink(link, entry.name, dir_fd=ddir)
            elif kind == "dir":
                with contextlib.suppress(FileExistsError):
                    os.mkdir(entry.name, 0o755, dir_fd=ddir)
                s = os.open(entry.name, _DIR_FLAGS, dir_fd=sdir)
                try:
                    d = os.open(entry.name, _DIR_FLAGS, dir_fd=ddir)
                    try:
                        os.fchmod(d, stat.S_IMODE(os.fstat(s).st_mode) & 0o1777)
                        self.tree(s, d, sub, depth + 1)
                    finally:
                        os.close(d)
                finally:
                    os.close(s)
            else:
                self.skipped.append(sub)


def copy_tree(
    sandbox: Sandbox,
    src_fd: int,
    src: str,
    dst_fd: int,
    dst: str,
    *,
    reflink: Reflink,
    charge: Callable[[int], None],
) -> CopyResult:
    """Copy the file or directory ``src`` (beneath ``src_fd``) to ``dst`` (beneath ``dst_fd``).

    A directory is merged into ``dst`` (created if missing; files there are replaced). Symlinks are
    copied as symlinks (their text), FIFOs, sockets, devices and hard-linked files are skipped and
    listed. ``charge(bytes)`` is called before each file is copied (it raises to stop: quota). The
    copy is flushed to disk once at the end (``syncfs``), not file by file.
    """
    copy = _Copy(sandbox, reflink, charge)
    with translate(src):
        sfd = open_dir_beneath(src_fd, src) if _is_dir(src_fd, src) else None
    try:
        if sfd is None:
            with translate(src):
                sparent, sname = open_parent(src_fd, src)
            try:
                with translate(dst):
                    dparent, dname, _ = Sandbox(dst_fd, allow_hardlinks=sandbox.allow_hardlinks).target(dst)
                try:
                    with translate(dst):
                        copy.file(sparent, sname, dparent, dname, src, strict=True)
                        _syncfs(dparent)
                finally:
                    os.close(dparent)
            finally:
                os.close(sparent)
        else:
            with translate(dst):
                dfd = open_dir_beneath(dst_fd, dst, create=True)
            try:
                with translate(dst):
                    copy.tree(sfd, dfd, src.strip("/"), 1)
                    _syncfs(dfd)
            finally:
                os.close(dfd)
    finally:
        if sfd is not None:
            os.close(sfd)
    return CopyResult(copy.files, copy.bytes, copy.reflinked, copy.skipped)


def _is_dir(fd: int, path: str) -> bool:
    try:
        p = open_beneath(fd, path, os.O_PATH)
    except NotADirectoryError:
        return False
    try:
        return stat.S_ISDIR(os.fstat(p).st_mode)
    finally:
        os.close(p)


_libc: ctypes.CDLL | None = None


def _syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd`` (one call for a whole tree copy)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_libc, "syncfs", None)
    if fn is None or fn(fd) != 0:
        os.sync()
