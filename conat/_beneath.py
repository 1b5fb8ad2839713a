"""The implementation of :mod:`conat.beneath` (read that module's docstring first)."""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import os
import platform
import stat
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

__all__ = [
    "BadName",
    "Follow",
    "MAX_DEPTH",
    "MAX_SYMLINKS",
    "NAME_MAX",
    "OutsideRoot",
    "PATH_MAX",
    "SpecialFile",
    "SymlinkRefused",
    "fd_path",
    "file_kind",
    "open_beneath",
    "open_dir_beneath",
    "open_parent",
    "open_regular",
    "open_root",
    "openat2_available",
    "set_openat2",
    "split_path",
]

NAME_MAX: Final = 255
"""Longest name (bytes, UTF-8 with surrogate escapes) in a path."""
PATH_MAX: Final = 4095
"""Longest path (bytes)."""
MAX_DEPTH: Final = 256
"""Most names in one path: deeper nesting is refused (``ENAMETOOLONG``)."""
MAX_SYMLINKS: Final = 40
"""Symlinks followed in one resolution before ``ELOOP`` (the kernel's own limit)."""

RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
_NEVER: Final = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_BENEATH: Final = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2: Final = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
"""``openat2``'s syscall number (the same on both: new syscalls share one table since Linux 5.1)."""
_EAGAIN_RETRIES: Final = 32
_CREATE_ONLY: Final = os.O_CREAT | os.O_EXCL | os.O_TRUNC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PROC_FD: Final = "/proc/self/fd"


class Follow(enum.Enum):
    """How symlinks beneath the root are treated (the module docstring says how each is done)."""

    NEVER = "never"
    """No symlink beneath the root is followed (:class:`SymlinkRefused`); ``..`` is refused."""
    BENEATH = "beneath"
    """Symlinks and ``..`` are followed while resolution stays beneath the root."""


class OutsideRoot(OSError):
    """The path (or a symlink on it, or ``..``) leads out of the root. ``errno`` is ``EXDEV``."""

    def __init__(self, path: str, why: str = "it leads outside the root") -> None:
        super().__init__(errno.EXDEV, why, path)


class SymlinkRefused(OSError):
    """A symlink where none may be followed (``Follow.NEVER``). ``where`` is the path up to it."""

    def __init__(self, path: str, where: str) -> None:
        super().__init__(errno.ELOOP, f"a symlink is at {where!r}", path)
        self.where = where


class SpecialFile(OSError):
    """Not a regular file: a FIFO, socket or device (``kind``). Never opened for I/O. ``EINVAL``."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"it is a {kind}, not a regular file", path)
        self.kind = kind


class BadName(OSError):
    """The path text is refused before any system call (NUL byte: ``EINVAL``; too long or too deep:
    ``ENAMETOOLONG``)."""

    def __init__(self, path: str, code: int, why: str) -> None:
        super().__init__(code, why, path)


# ---- openat2 ---------------------------------------------------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None
_openat2_ok: bool | None = None if sys.platform == "linux" and _SYS_OPENAT2 is not None else False
"""Whether ``openat2`` works here: ``None`` until first tried."""


def openat2_available() -> bool:
    """Whether resolution uses ``openat2`` (else the ``O_NOFOLLOW`` walk)."""
    return _openat2_ok is not False


def set_openat2(enabled: bool | None) -> bool | None:
    """Force the walk (``False``), or try ``openat2`` again on next use (``None``); returns the old
    setting. For tests that run both ways, and for kernels whose ``openat2`` is known to misbehave."""
    global _openat2_ok
    previous, _openat2_ok = _openat2_ok, enabled
    return previous


def _openat2(dirfd: int, name: str, flags: int, mode: int, resolve: int) -> int:
    """The raw syscall; OSError on failure (``ENOSYS``/``EPERM`` where it is missing or filtered)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
    how = _OpenHow(flags | os.O_CLOEXEC, mode if creates else 0, resolve)
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2 or -1),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(name)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)
    return int(fd)


def _try_openat2(dirfd: int, name: str, flags: int, mode: int, resolve: int) -> int | None:
    """``openat2``, retrying ``EAGAIN`` (a ``..`` that raced a rename); ``None`` if unavailable."""
    global _openat2_ok
    if _openat2_ok is False:
        return None
    for _ in range(_EAGAIN_RETRIES):
        try:
            fd = _openat2(dirfd, name, flags, mode, resolve)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                continue
            if e.errno in (errno.ENOSYS, errno.EPERM) and _openat2_ok is None:
                _openat2_ok = False  # EPERM: old seccomp profiles refuse the syscall
                return None
            raise
        _openat2_ok = True
        return fd
    raise OSError(errno.EAGAIN, "the path kept changing while it was resolved", name)


# ---- paths -----------------------------------------------------------------------------------------


def split_path(path: str | Sequence[str]) -> list[str]:
    """The names of ``path``, relative to the root (``[]`` is the root itself).

    A sequence is taken as names already split (each checked). Nothing is decoded or normalised.

    Raises:
        BadName: a NUL byte (``EINVAL``), a name over :data:`NAME_MAX` bytes, a path over
            :data:`PATH_MAX` bytes or over :data:`MAX_DEPTH` names (``ENAMETOOLONG``).
        OutsideRoot: an absolute path.
        TypeError: not a ``str`` (or sequence of them).
    """
    if isinstance(path, str):
        text = path
        if text.startswith("/"):
            raise OutsideRoot(text, "an absolute path is not beneath the root")
        raw = text.split("/")
    else:
        raw = list(path)
        text = "/".join(raw)
    if "\0" in text:
        raise BadName(text, errno.EINVAL, "a path may not contain a NUL byte")
    if len(os.fsencode(text)) > PATH_MAX:
        raise BadName(text, errno.ENAMETOOLONG, f"the path is over {PATH_MAX} bytes")
    names: list[str] = []
    for name in raw:
        if not isinstance(name, str):
            raise TypeError(f"a path name must be a str, not {type(name).__name__}")
        if name in ("", "."):
            continue
        if "/" in name:
            raise BadName(text, errno.EINVAL, "a name may not contain '/'")
        if len(os.fsencode(name)) > NAME_MAX:
            raise BadName(text, errno.ENAMETOOLONG, f"a name is over {NAME_MAX} bytes")
        names.append(name)
    if len(names) > MAX_DEPTH:
        raise BadName(text, errno.ENAMETOOLONG, f"the path is deeper than {MAX_DEPTH} names")
    return names


def fd_path(fd: int) -> str:
    """``/proc/self/fd/<fd>``: names the inode ``fd`` holds (for ``chmod``, ``utime``, ``link``, a
    child's working directory), whatever happens to its path meanwhile."""
    return f"{_PROC_FD}/{fd}"


def open_root(path: str | os.PathLike[str], *, create: bool = False) -> int:
    """Open the root directory, following symlinks (the root is trusted); create it if allowed.

    Raises:
        FileNotFoundError: it is missing and ``create`` is false. ``NotADirectoryError``: not a dir.
    """
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        if not create:
            raise
    os.makedirs(path, exist_ok=True)
    return os.open(path, _DIR_FLAGS)


# ---- resolution ------------------------------------------------------------------------------------


def open_beneath(
    dirfd: int,
    path: str | Sequence[str],
    flags: int,
    mode: int = 0o666,
    *,
    follow: Follow = Follow.BENEATH,
    follow_last: bool = True,
) -> int:
    """Open ``path`` beneath the directory ``dirfd`` with ``flags`` (``O_CLOEXEC`` is added).

    A FIFO or device at the end is opened as asked (which may block or have side effects): to read
    or write contents use :func:`open_regular`. ``follow_last=False`` adds ``O_NOFOLLOW`` (with
    ``O_PATH`` that opens a symlink itself).

    Raises:
        OutsideRoot, SymlinkRefused, BadName: see the module docstring.
        OSError: what the kernel said (``ENOENT``, ``ENOTDIR``, ``ELOOP``, ``EEXIST``...).
    """
    text = path if isinstance(path, str) else "/".join(path)
    names = split_path(path)
    flags |= os.O_CLOEXEC
    if not follow_last:
        flags |= os.O_NOFOLLOW
    if follow is Follow.NEVER:
        return _open_never(dirfd, names, flags, mode, text)
    if not names:
        if flags & os.O_CREAT:
            raise IsADirectoryError(errno.EISDIR, "the root is a directory", text)
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=dirfd)
    joined = "/".join(names)
    try:
        fd = _try_openat2(dirfd, joined, flags, mode, _BENEATH)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise OutsideRoot(text) from None
        raise OSError(e.errno, e.strerror, text) from None
    if fd is not None:
        return fd
    return _walk(dirfd, names, flags, mode, text)


def _open_never(dirfd: int, names: list[str], flags: int, mode: int, text: str) -> int:
    """``Follow.NEVER``: one name at a time, no symlink anywhere."""
    if ".." in names:
        raise OutsideRoot(text, "'..' is not allowed here")
    if not names:
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=dirfd)
    parent = _walk_dirs_never(dirfd, names[:-1], text, create=False)
    try:
        return _open_last_never(parent, names[-1], flags, mode, text, "/".join(names))
    finally:
        if parent != dirfd:
            os.close(parent)


def _open_last_never(parent: int, name: str, flags: int, mode: int, text: str, where: str) -> int:
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=parent)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SymlinkRefused(text, where) from None
        raise OSError(e.errno, e.strerror, text) from None
    if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise SymlinkRefused(text, where)
    return fd


def _walk_dirs_never(dirfd: int, names: list[str], text: str, *, create: bool) -> int:
    """Open each directory of ``names`` from ``dirfd`` without following a symlink (creating missing
    ones if ``create``); the last one's fd, or ``dirfd`` itself for no names."""
    fd = dirfd
    try:
        for i, name in enumerate(names):
            parent = fd
            fd = -1
            try:
                fd = _step_never(parent, name, text, "/".join(names[: i + 1]), create)
            finally:
                if parent != dirfd:
                    os.close(parent)
        return fd
    except BaseException:
        if fd not in (-1, dirfd):
            os.close(fd)
        raise


def _step_never(parent: int, name: str, text: str, where: str, create: bool) -> int:
    """Open (creating it if missing and allowed) the directory ``name`` of ``parent``, no symlink."""
    try:
        try:
            return _open_dir_nofollow(parent, name)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # mkdirat never follows a symlink
                os.mkdir(name, dir_fd=parent)
            return _open_dir_nofollow(parent, name)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError:
                raise OSError(e.errno, e.strerror, text) from None
            if stat.S_ISLNK(st.st_mode):
                raise SymlinkRefused(text, where) from None
        raise OSError(e.errno, e.strerror, text) from None


def _open_dir_nofollow(parent: int, name: str) -> int:
    fd = _try_openat2(parent, name, _DIR_FLAGS, 0, _NEVER)
    if fd is not None:
        return fd
    return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)


def _walk(dirfd: int, names: list[str], flags: int, mode: int, text: str) -> int:
    """``Follow.BENEATH`` without ``openat2``: the user-space walk of the module docstring."""
    todo = deque(names)
    stack: list[int] = []  # fds of the directories walked into, owned here
    links = 0
    try:
        while todo:
            name = todo.popleft()
            cur = stack[-1] if stack else dirfd
            if name in ("", "."):
                continue
            if name == "..":
                if not stack:
                    raise OutsideRoot(text)
                os.close(stack.pop())
                continue
            last = not todo
            if last and flags & os.O_NOFOLLOW:
                return _open_checked(cur, name, flags, mode, text)
            try:
                pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            except FileNotFoundError:
                if last and flags & os.O_CREAT:
                    return _open_checked(cur, name, flags | os.O_NOFOLLOW, mode, text)
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), text) from None
            st = os.fstat(pfd)
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink("", dir_fd=pfd)
                finally:
                    os.close(pfd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), text)
                if target.startswith("/"):
                    raise OutsideRoot(text, "a symlink on it is absolute")
                todo.extendleft(reversed(target.split("/")))
                continue
            if last:
                try:
                    return _reopen_as(pfd, st, flags, text, cur, name)
                finally:
                    os.close(pfd)
            if not stat.S_ISDIR(st.st_mode):
                os.close(pfd)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), text)
            stack.append(pfd)
        # every name consumed by '..' or a symlink to a directory: the result is a directory
        if flags & os.O_CREAT:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), text)
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=stack[-1] if stack else dirfd)
    finally:
        for fd in stack:
            os.close(fd)


def _open_checked(cur: int, name: str, flags: int, mode: int, text: str) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=cur)
    except OSError as e:
        raise OSError(e.errno, e.strerror, text) from None


def _reopen_as(pfd: int, st: os.stat_result, flags: int, text: str, cur: int, name: str) -> int:
    """``flags`` on the inode ``pfd`` holds (an ``O_PATH`` fd of a non-symlink)."""
    if flags & os.O_CREAT and flags & os.O_EXCL:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), text)
    if flags & os.O_PATH:
        return os.dup(pfd)
    if stat.S_ISDIR(st.st_mode):
        return os.open(".", (flags & ~(_CREATE_ONLY | os.O_NOFOLLOW)) | os.O_DIRECTORY, dir_fd=pfd)
    return _reopen(pfd, flags, text, lambda f: os.open(name, f | os.O_NOFOLLOW, dir_fd=cur))


def _reopen(pfd: int, flags: int, text: str, again: Callable[[int], int] | None = None) -> int:
    """Open the inode ``pfd`` holds with ``flags``: through ``/proc/self/fd``; where ``/proc`` is
    missing, with ``again(flags | O_NONBLOCK | O_NOCTTY)`` (opening the same name again), checked to be
    that inode and a regular file or directory, then made blocking."""
    flags = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)) | os.O_CLOEXEC
    if _proc_available():
        return os.open(fd_path(pfd), flags)
    if again is None:
        raise OSError(errno.ENOSYS, "/proc is not mounted: cannot reopen a checked file", text)
    fd = again(flags | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        want, got = os.fstat(pfd), os.fstat(fd)
        if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino):
            raise OSError(errno.EAGAIN, "the file was replaced while it was opened", text)
        if not (stat.S_ISREG(got.st_mode) or stat.S_ISDIR(got.st_mode)):
            raise SpecialFile(text, file_kind(got.st_mode))
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


_proc_ok: bool | None = None


def _proc_available() -> bool:
    global _proc_ok
    if _proc_ok is None:
        _proc_ok = sys.platform == "linux" and os.path.isdir(_PROC_FD)
    return _proc_ok


# ---- what callers use ----------------------------------------------------------------------------


def open_parent(dirfd: int, path: str | Sequence[str], *, follow: Follow = Follow.BENEATH) -> tuple[int, str]:
    """The directory holding ``path``'s last name (an fd the caller closes) and that name.

    The last name itself is not resolved: pass it to ``*at`` calls (``unlinkat``, ``renameat``,
    ``mkdirat``, ``fstatat(AT_SYMLINK_NOFOLLOW)``, ``readlinkat``, ``symlinkat``) with the fd.

    Raises:
        BadName: the path is the root itself, or ends in ``..`` (``EINVAL``); and as :func:`open_beneath`.
    """
    text = path if isinstance(path, str) else "/".join(path)
    names = split_path(path)
    if not names:
        raise BadName(text, errno.EINVAL, "the root has no parent directory here")
    if names[-1] == "..":
        raise BadName(text, errno.EINVAL, "a path may not end in '..' here")
    if follow is Follow.NEVER:
        if ".." in names:
            raise OutsideRoot(text, "'..' is not allowed here")
        return _walk_dirs_never(dirfd, names[:-1], text, create=False), names[-1]
    fd = open_beneath(dirfd, names[:-1], _DIR_FLAGS, follow=follow) if len(names) > 1 else None
    if fd is None:
        fd = os.open(".", _DIR_FLAGS, dir_fd=dirfd)
    return fd, names[-1]


def open_dir_beneath(
    dirfd: int, path: str | Sequence[str], *, follow: Follow = Follow.BENEATH, create: bool = False
) -> int:
    """Open the directory ``path`` (``O_RDONLY``), creating missing directories on the way if
    ``create`` (``mkdirat``, which never follows a symlink, then open).

    Raises:
        SymlinkRefused: with ``Follow.NEVER``, a symlink on the way (nothing is created beyond it).
        OSError: as :func:`open_beneath` (``ENOTDIR`` where a name is a file).
    """
    text = path if isinstance(path, str) else "/".join(path)
    names = split_path(path)
    if follow is Follow.NEVER:
        if ".." in names:
            raise OutsideRoot(text, "'..' is not allowed here")
        fd = _walk_dirs_never(dirfd, names, text, create=create)
        return os.open(".", _DIR_FLAGS, dir_fd=dirfd) if fd == dirfd else fd
    try:
        return open_beneath(dirfd, names, _DIR_FLAGS, follow=follow)
    except FileNotFoundError:
        if not create:
            raise
    for i in range(1, len(names) + 1):
        try:
            os.close(open_beneath(dirfd, names[:i], _DIR_FLAGS, follow=follow))
            continue
        except FileNotFoundError:
            pass
        parent, name = open_parent(dirfd, names[:i], follow=follow)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=parent)
        except OSError as e:
            raise OSError(e.errno, e.strerror, text) from None
        finally:
            os.close(parent)
    return open_beneath(dirfd, names, _DIR_FLAGS, follow=follow)


_KINDS: Final = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISLNK, "symlink"),
)


def file_kind(mode: int) -> str:
    """What a non-regular, non-directory ``st_mode`` is, in words."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "special file"


def open_regular(
    dirfd: int,
    path: str | Sequence[str],
    flags: int,
    *,
    follow: Follow = Follow.BENEATH,
    follow_last: bool = True,
) -> tuple[int, os.stat_result]:
    """Open the *regular file* ``path`` for I/O with ``flags``, never blocking on anything else.

    The inode is first opened ``O_PATH`` and checked with ``fstat``; only a regular file is then
    opened with ``flags`` (that same inode). ``O_CREAT`` is not supported here: create files with
    ``O_CREAT | O_EXCL`` in the directory from :func:`open_parent`.

    Returns:
        the fd and the ``fstat`` taken before it was opened for I/O.

    Raises:
        IsADirectoryError: a directory. SpecialFile: a FIFO, socket, device (or, with
        ``follow_last=False``, a symlink). And as :func:`open_beneath`.
    """
    if flags & os.O_CREAT:
        raise ValueError("open_regular does not create files")
    text = path if isinstance(path, str) else "/".join(path)
    pfd = open_beneath(dirfd, path, os.O_PATH, follow=follow, follow_last=follow_last)
    try:
        st = os.fstat(pfd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), text)
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFile(text, file_kind(st.st_mode))
        if flags & os.O_PATH:
            return os.dup(pfd), st
        again = lambda f: open_beneath(dirfd, path, f, follow=follow, follow_last=follow_last)
        return _reopen(pfd, flags, text, again), st
    finally:
        os.close(pfd)
