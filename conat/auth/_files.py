"""Private files: secrets (seeds, passwords, tokens) and anything else only this user may read.

The one home for files that must stay private: every such file conat writes (bus secrets, signing
keys, token files, the local server's state and config, a host's state) goes through
:func:`write_private_file`, and every secret it reads through :func:`read_private_file`. Both work on
the descriptor they opened, never on a path checked earlier.

Reading (:func:`read_private_file`) checks the file it actually opened, not the path it was given:

1. ``open(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)``: a symlink in the last component is
   refused (``ELOOP``) instead of followed, and a FIFO cannot block the open;
2. ``fstat`` on that descriptor: it must be a regular file, owned by this user (or root), with no
   permission bits for group or others beyond ``allowed_mode`` (secrets: none at all; public keys:
   readable, never writable), and no larger than ``max_size``;
3. read it through the same descriptor.

There is no window between the check and the read (stat-then-open would have one), and nothing
someone else can write is ever trusted. Parent directories are not checked here: they are the
caller's (conat creates its own 0700).

Writing (:func:`write_private_file`) replaces the file atomically, private from its first byte:

1. a temporary file beside the target, unique per call, created with ``O_CREAT | O_EXCL |
   O_NOFOLLOW`` (never an existing file, never through a symlink), mode 0600 (``fchmod`` too: the
   umask may narrow a mode, never widen it);
2. ``fstat`` on that descriptor: a regular file of this user, mode 0600 (a file system that cannot
   keep it so is refused before any byte is written);
3. the data written and ``fsync``-ed, then ``os.replace`` onto the target (a symlink there is
   replaced, never followed) and the directory ``fsync``-ed: a reader sees the old file or the whole
   new one, also after a crash.

Concurrent writers of one path each write a whole file; the last replace wins. A failed write
removes its temporary file and leaves the target as it was.

A file that something else writes in place (a SQLite database and its ``-wal``/``-shm``, which
SQLite creates with the database file's mode) is made private first with
:func:`make_private_file`: opened (or created) ``O_NOFOLLOW``, checked on that descriptor (a
regular file of this user) and ``fchmod``-ed 0600, before the program that writes it opens it.

Errors (:class:`~conat.auth.SecretFileError`, codes in :mod:`conat.auth._errors`):

=====================  ===========================================================
``"missing"``          no such file
``"not-a-file"``       a symlink, directory, FIFO, device or socket
``"insecure"``         group or others have more access than ``allowed_mode``
``"foreign-owner"``    owned by another user (not this one, not root)
``"too-large"``        larger than ``max_size`` bytes
``"unreadable"``       any other I/O error (its ``strerror`` is in the message)
=====================  ===========================================================

Messages name the path and the problem, never the content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import Final

from ._errors import SecretFileError

__all__ = ["make_private_file", "read_private_file", "write_private_file"]

DEFAULT_MAX_SIZE: Final = 64 * 1024
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_FLAGS: Final = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _foreign(uid: int) -> bool:
    """Whether ``uid`` is neither this user nor root."""
    return hasattr(os, "geteuid") and uid not in (os.geteuid(), 0)


def _open(name: str, flags: int, what: str) -> int:
    """``os.open`` without following a symlink. A missing file raises :class:`FileNotFoundError`
    (the callers' cases differ); every other failure is a :class:`SecretFileError`."""
    try:
        return os.open(name, flags | _NOFOLLOW, 0o600)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW on a symlink (EMLINK on BSD)
            raise SecretFileError("not-a-file", what, name, "is a symlink; refusing to follow it") from None
        raise SecretFileError("unreadable", what, name, f"cannot open: {exc.strerror}") from None


def _owned_file(fd: int, name: str, what: str) -> os.stat_result:
    """``fstat`` of an open file that must be a regular file of this user (or root)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError("not-a-file", what, name, "is not a regular file")
    if _foreign(info.st_uid):
        raise SecretFileError("foreign-owner", what, name, f"is owned by another user (uid {info.st_uid})")
    return info


def read_private_file(
    path: str | os.PathLike[str],
    *,
    what: str = "secret file",
    allowed_mode: int = 0o600,
    max_size: int = DEFAULT_MAX_SIZE,
) -> bytes:
    """The content of ``path``, checked on the descriptor that reads it (module docstring).

    Args:
        path: the file; a symlink there is refused, never followed.
        what: names the file's role in error messages (``"token file"``, ``"pinned keys"``).
        allowed_mode: permission bits the file may have at most. ``0o600`` (the default) for
            secrets; ``0o644`` for public data that others may read but never write.
        max_size: the largest file accepted, in bytes (checked before reading).

    Raises:
        SecretFileError: see the module docstring for the codes.
    """
    name = os.fspath(path)
    try:
        fd = _open(name, _FLAGS, what)
    except FileNotFoundError:
        raise SecretFileError("missing", what, name, "no such file") from None
    try:
        info = _owned_file(fd, name, what)
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~allowed_mode & 0o077:  # the owner's own bits never matter
            raise SecretFileError(
                "insecure",
                what,
                name,
                f"is accessible by group or others (mode {mode:04o}, at most {allowed_mode:04o} allowed); "
                "fix its mode, and replace the secret if others could read it",
            )
        if info.st_size > max_size:
            raise SecretFileError(
                "too-large", what, name, f"is {info.st_size} bytes, at most {max_size} accepted"
            )
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, max_size + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_size:  # it grew after the fstat
                raise SecretFileError("too-large", what, name, f"is over {max_size} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise SecretFileError("unreadable", what, name, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def make_private_file(path: str | os.PathLike[str], *, create: bool, what: str = "private file") -> None:
    """Make ``path`` a private file (mode 0600) before something else opens it to write in place;
    with ``create``, create it (empty) if missing; without, a missing file is left missing.

    Raises:
        SecretFileError: ``"not-a-file"`` (a symlink, never followed, or not a regular file),
            ``"foreign-owner"``, ``"missing"`` (``create`` and the directory is missing),
            ``"unreadable"`` (any other I/O error).
    """
    name = os.fspath(path)
    try:
        fd = _open(name, os.O_RDWR | (os.O_CREAT if create else 0), what)
    except FileNotFoundError:
        if create:
            raise SecretFileError("missing", what, name, "its directory does not exist") from None
        return
    try:
        info = _owned_file(fd, name, what)
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        raise SecretFileError("unreadable", what, name, f"cannot make it private: {exc.strerror}") from None
    finally:
        os.close(fd)


def write_private_file(path: str | os.PathLike[str], data: bytes, *, what: str = "private file") -> None:
    """Atomically replace ``path`` with ``data``: a regular file of this user, mode 0600 from its
    first byte (module docstring). The parent directory must exist.

    Args:
        path: the file; a symlink there is replaced, never followed.
        data: the whole content.
        what: names the file's role in error messages.

    Raises:
        SecretFileError: ``"insecure"`` or ``"foreign-owner"``: the new file would not be private
            (a file system that ignores modes or owners); nothing was replaced.
        OSError: the file cannot be written (the target is unchanged).
    """
    name = os.fspath(path)
    directory, base = os.path.split(name)
    # unique per call: two writers of one path (threads, processes) never share a temporary file
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, _WRITE_FLAGS | _NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            info = _owned_file(fd, name, what)
            if stat.S_IMODE(info.st_mode) != 0o600:
                raise SecretFileError(
                    "insecure", what, name, f"the file system keeps it mode {stat.S_IMODE(info.st_mode):04o}"
                )
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(directory or ".")


def _sync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
