"""The file server's operations on one project's tree, sandboxed by the kernel (blocking; run them in
an executor). This is the file server's one error boundary: every ``OSError`` becomes an
:class:`~host._fs_errors.FsError` naming the path relative to the root.

Every path is resolved beneath the project's root directory fd with :mod:`conat.beneath`
(``Follow.BENEATH``): symlinks inside the project work, anything leading out is ``OUTSIDE_ROOT``.
Operations work on the descriptors resolution gave them (``*at`` calls, ``fstat``), never on a path
string resolved again, so a directory swapped for a symlink mid-operation changes nothing: the call
still acts on the directory that was checked.

- Operations on a *name* (``lstat``, ``unlink``, ``rmdir``, ``rename``, ``symlink``, ``readlink``,
  ``mkdir``) resolve the parent directory and act on the last name with ``AT_SYMLINK_NOFOLLOW``
  semantics: a symlink there is the object itself.
- Operations on *contents* (``read_file``, ``append_file``, ``truncate``, copies) open a regular file
  only (:func:`conat.beneath.open_regular`: ``O_PATH`` then ``fstat``), so FIFOs, sockets and
  devices are refused without blocking; they follow a final symlink (beneath the root).
- **Hard links.** A regular file with more than one link may be a link to a file outside the tree,
  so unless the sandbox allows it, its contents are never read or changed in place, nor its mode or
  times (``EHARDLINK``). Replacing it (``write_file``: temp file and rename) only replaces the link.
- **Writes are atomic**: the new contents go to an unnamed temporary file (``O_TMPFILE``; a hidden
  named one where the filesystem lacks it) in the target's directory, are fsynced, linked and renamed
  over the target, and the directory is fsynced. A reader sees the old file or the new one.
- **Owners.** When the server runs as root, what it creates belongs to the owner of the directory
  it is created in (the project's user), and a replaced file keeps its owner and mode; setuid and
  setgid bits are never set.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from typing import Final, final

from conat.beneath import (
    MAX_SYMLINKS,
    OutsideRoot,
    fd_path,
    open_beneath,
    open_dir_beneath,
    open_parent,
    open_regular,
    split_path,
)

from ._fs_errors import EHARDLINK, FsError, from_os_error
from ._fs_types import FileType, Stat, WriteResult

__all__ = ["TEMP_PREFIX", "AtomicFile", "Sandbox", "file_type", "is_temp_name", "to_stat"]

TEMP_PREFIX: Final = ".~fs-"
"""Names of the server's temporary files start with this (watchers never report them)."""
_TEMP_SUFFIX: Final = ".tmp"
MODE_MASK: Final = 0o1777
"""Permission bits a caller may set: never setuid or setgid."""
_RENAME_NOREPLACE: Final = 1
_READ_CHUNK: Final = 1 << 20


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)


def is_text(name: str) -> bool:
    """Whether ``name`` (from the OS, undecodable bytes as surrogate escapes) is UTF-8 text."""
    if name.isascii():
        return True
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def file_type(mode: int) -> FileType:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char"
    if stat.S_ISBLK(mode):
        return "block"
    return "unknown"


def to_stat(st: os.stat_result) -> Stat:
    return Stat(
        type=file_type(st.st_mode),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime=st.st_mtime,
        ino=st.st_ino,
        nlink=st.st_nlink,
    )


@contextlib.contextmanager
def translate(path: str) -> Iterator[None]:
    """The error boundary: ``OSError`` → :class:`FsError` for ``path`` (relative)."""
    try:
        yield
    except OSError as e:
        raise from_os_error(e, path) from None


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


@final
class AtomicFile:
    """New contents for ``name`` in the directory ``parent`` (an fd), visible only after :meth:`commit`.

    Use as a context manager: leaving it without :meth:`commit` discards the data. Not thread-safe.
    """

    def __init__(self, parent: int, name: str, mode: int, owner: tuple[int, int] | None) -> None:
        self._parent = parent
        self.name = name
        self.size = 0
        self._sha = hashlib.sha256()
        self._temp: str | None = None
        try:
            self.fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._temp = _temp_name()
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(self._temp, flags, mode, dir_fd=parent)
        try:
            os.fchmod(self.fd, mode)
            if owner is not None:
                os.fchown(self.fd, *owner)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._sha.update(view)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def commit(self, *, sync: bool = True) -> None:
        """fsync the data, put the file in place of ``name`` (atomically), fsync the directory.

        ``sync=False`` skips both fsyncs (a tree copy flushes the whole filesystem once at the end).
        """
        if sync:
            os.fsync(self.fd)
        if self._temp is None:
            for _ in range(8):
                temp = _temp_name()
                try:
                    os.link(fd_path(self.fd), temp, dst_dir_fd=self._parent, follow_symlinks=True)
                except FileExistsError:
                    continue
                self._temp = temp
                break
            else:
                raise OSError(errno.EEXIST, "no free temporary name")
        os.rename(self._temp, self.name, src_dir_fd=self._parent, dst_dir_fd=self._parent)
        self._temp = None
        if sync:
            os.fsync(self._parent)
        self.abort()

    def abort(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _close(fd)
        temp, self._temp = self._temp, None
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self._parent)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{_TEMP_SUFFIX}"


_libc: ctypes.CDLL | None = None


def _renameat2_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """``renameat2(RENAME_NOREPLACE)``: rename unless ``dst`` exists (atomically); EEXIST if it does."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:  # old libc: check, then rename (a race another writer could win)
        with contextlib.suppress(FileNotFoundError):
            os.stat(dst, dir_fd=dst_dir, follow_symlinks=False)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        return
    if fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@final
class Sandbox:
    """One project's tree: the root directory fd and the policy. Methods block (use an executor).

    Args:
        fd: the project root, opened with :func:`conat.beneath.open_root` (owned by the caller).
        allow_hardlinks: read and change files with several links (off: ``EHARDLINK``).
        max_read: largest file ``read_file`` returns (bigger ones are streamed), bytes.
    """

    def __init__(self, fd: int, *, allow_hardlinks: bool = False, max_read: int = 32 << 20) -> None:
        self.fd = fd
        self.allow_hardlinks = allow_hardlinks
        self.max_read = max_read
        self._as_root = os.geteuid() == 0

    # ---- helpers ---------------------------------------------------------------------------------

    def check_links(self, st: os.stat_result, path: str) -> None:
        if not self.allow_hardlinks and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise FsError(EHARDLINK, path)

    def owner_for(self, parent: int) -> tuple[int, int] | None:
        """Who owns what the server creates in ``parent`` (``None`` unless running as root)."""
        if not self._as_root:
            return None
        st = os.fstat(parent)
        return st.st_uid, st.st_gid

    def relative(self, fd: int) -> str:
        """``fd``'s path relative to the root, as the kernel names it now (``""``: the root)."""
        root = os.readlink(fd_path(self.fd))
        here = os.readlink(fd_path(fd))
        if here == root:
            return ""
        if here.startswith(root.rstrip("/") + "/"):
            return here[len(root.rstrip("/")) + 1 :]
        raise OutsideRoot("")

    def target(self, path: str) -> tuple[int, str, os.stat_result | None]:
        """The directory and name ``path`` stands for, a final symlink followed (beneath the root):
        where a write to ``path`` goes. Returns the parent fd (caller closes), the name and its
        ``lstat`` (``None`` if missing)."""
        current = path
        for _ in range(MAX_SYMLINKS):
            parent, name = open_parent(self.fd, current)
            try:
                st = _lstat(parent, name)
                if st is None or not stat.S_ISLNK(st.st_mode):
                    return parent, name, st
                link = os.readlink(name, dir_fd=parent)
                if link.startswith("/"):
                    raise OutsideRoot(path, "a symlink on it is absolute")
                base = self.relative(parent)
            except BaseException:
                _close(parent)
                raise
            _close(parent)
            current = f"{base}/{link}" if base else link
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)

    def new_file_mode(self, st: os.stat_result | None) -> int:
        return stat.S_IMODE(st.st_mode) & MODE_MASK if st is not None else 0o644

    # ---- metadata --------------------------------------------------------------------------------

    def stat(self, path: str) -> Stat:
        with translate(path):
            fd = open_beneath(self.fd, path, os.O_PATH)
            try:
                return to_stat(os.fstat(fd))
            finally:
                _close(fd)

    def lstat(self, path: str) -> Stat:
        with translate(path):
            if not split_path(path):
                return to_stat(os.fstat(self.fd))
            parent, name = open_parent(self.fd, path)
            try:
                return to_stat(os.stat(name, dir_fd=parent, follow_symlinks=False))
            finally:
                _close(parent)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FsError as e:
            if e.code in ("ENOENT", "ENOTDIR"):
                return False
            raise
        return True

    def readlink(self, path: str) -> str:
        with translate(path):
            parent, name = open_parent(self.fd, path)
            try:
                return os.readlink(name, dir_fd=parent)
            finally:
                _close(parent)

    def realpath(self, path: str) -> str:
        with translate(path):
            fd = open_beneath(self.fd, path, os.O_PATH)
            try:
                return self.relative(fd)
            finally:
                _close(fd)

    def chmod(self, path: str, mode: int) -> None:
        with translate(path):
            fd = open_beneath(self.fd, path, os.O_PATH)
            try:
                self.check_links(os.fstat(fd), path)
                os.chmod(fd_path(fd), mode & MODE_MASK)
            finally:
                _close(fd)

    def utimes(self, path: str, atime: float, mtime: float) -> None:
        with translate(path):
            fd = open_beneath(self.fd, path, os.O_PATH)
            try:
                self.check_links(os.fstat(fd), path)
                os.utime(fd_path(fd), (atime, mtime))
            finally:
                _close(fd)

    # ---- contents --------------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        with translate(path):
            fd, st = open_regular(self.fd, path, os.O_RDONLY)
            try:
                self.check_links(st, path)
                if st.st_size > self.max_read:
                    raise FsError("EFBIG", path, f"over {self.max_read} bytes: stream it instead")
                parts: list[bytes] = []
                total = 0
                while chunk := os.read(fd, _READ_CHUNK):
                    total += len(chunk)
                    if total > self.max_read:
                        raise FsError("EFBIG", path, f"over {self.max_read} bytes: stream it instead")
                    parts.append(chunk)
                return b"".join(parts)
            finally:
                _close(fd)

    def open_read(self, path: str) -> tuple[int, os.stat_result]:
        """A regular file opened for reading (the caller closes the fd), links checked."""
        with translate(path):
            fd, st = open_regular(self.fd, path, os.O_RDONLY)
            try:
                self.check_links(st, path)
            except BaseException:
                _close(fd)
                raise
            return fd, st

    def begin_write(self, path: str) -> tuple[AtomicFile, int, os.stat_result | None]:
        """An :class:`AtomicFile` that will replace ``path``; also the parent fd (caller closes it
        after commit or abort) and the current ``lstat`` of the target (``None``: new file)."""
        with translate(path):
            parent, name, st = self.target(path)
            try:
                if st is not None and stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                owner = (st.st_uid, st.st_gid) if st is not None and self._as_root else self.owner_for(parent)
                return AtomicFile(parent, name, self.new_file_mode(st), owner), parent, st
            except BaseException:
                _close(parent)
                raise

    def write_file(self, path: str, data: bytes) -> WriteResult:
        file, parent, _ = self.begin_write(path)
        try:
            with translate(path), file:
                file.write(data)
                file.commit()
                return WriteResult(size=file.size, sha256=file.sha256)
        finally:
            _close(parent)

    def append_file(self, path: str, data: bytes) -> WriteResult:
        with translate(path):
            parent, name, st = self.target(path)
            try:
                if st is None:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(name, flags, 0o644, dir_fd=parent)
                    owner = self.owner_for(parent)
                    if owner is not None:
                        os.fchown(fd, *owner)
                else:
                    fd, st = open_regular(parent, name, os.O_WRONLY | os.O_APPEND, follow_last=False)
                    self.check_links(st, path)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                    return WriteResult(size=os.fstat(fd).st_size)
                finally:
                    _close(fd)
            finally:
                _close(parent)

    def truncate(self, path: str, size: int) -> int:
        """Truncate (or extend) to ``size``; returns the size before."""
        if size < 0:
            raise FsError("EINVAL", path, "a size may not be negative")
        with translate(path):
            fd, st = open_regular(self.fd, path, os.O_WRONLY)
            try:
                self.check_links(st, path)
                os.ftruncate(fd, size)
                return st.st_size
            finally:
                _close(fd)

    def file_size(self, path: str) -> int:
        """Size of the regular file a write to ``path`` replaces (0 if none)."""
        with translate(path):
            parent, _, st = self.target(path)
            _close(parent)
            return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0

    # ---- names -----------------------------------------------------------------------------------

    def mkdir(self, path: str, parents: bool) -> None:
        with translate(path):
            if parents:
                _close(open_dir_beneath(self.fd, path, create=True))
                return
            parent, name = open_parent(self.fd, path)
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
                owner = self.owner_for(parent)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
            finally:
                _close(parent)

    def unlink(self, path: str) -> int:
        """Remove a non-directory; returns the bytes it freed (its size if it was the last link)."""
        with translate(path):
            parent, name = open_parent(self.fd, path)
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                os.unlink(name, dir_fd=parent)
                return st.st_size if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else 0
            finally:
                _close(parent)

    def rmdir(self, path: str) -> None:
        with translate(path):
            parent, name = open_parent(self.fd, path)
            try:
                os.rmdir(name, dir_fd=parent)
            finally:
                _close(parent)

    def rm(self, path: str, recursive: bool, force: bool) -> None:
        with translate(path):
            parent, name = open_parent(self.fd, path)
            try:
                st = _lstat(parent, name)
                if st is None:
                    if force:
                        return
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                if stat.S_ISDIR(st.st_mode):
                    if not recursive:
                        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                    shutil.rmtree(name, dir_fd=parent)  # the fd-based walk: never follows a symlink
                else:
                    os.unlink(name, dir_fd=parent)
            finally:
                _close(parent)

    def rename(self, src: str, dst: str, *, overwrite: bool = True, make_parents: bool = False) -> None:
        with translate(src):
            sparent, sname = open_parent(self.fd, src)
        try:
            with translate(dst):
                if make_parents:
                    names = split_path(dst)
                    if len(names) > 1:
                        _close(open_dir_beneath(self.fd, names[:-1], create=True))
                dparent, dname = open_parent(self.fd, dst)
            try:
                with translate(src):
                    if _lstat(sparent, sname) is None:
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                with translate(dst):
                    if overwrite:
                        os.rename(sname, dname, src_dir_fd=sparent, dst_dir_fd=dparent)
                    else:
                        _renameat2_noreplace(sparent, sname, dparent, dname)
            finally:
                _close(dparent)
        finally:
            _close(sparent)

    def symlink(self, target: str, path: str) -> None:
        if "\0" in target or len(os.fsencode(target)) > 4095:
            raise FsError("EINVAL", path, "a symlink target may not contain NUL or exceed 4095 bytes")
        with translate(path):
            parent, name = open_parent(self.fd, path)
            try:
                os.symlink(target, name, dir_fd=parent)
                owner = self.owner_for(parent)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
            finally:
                _close(parent)


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
