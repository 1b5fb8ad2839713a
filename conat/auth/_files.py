"""Reading secret files (seeds, passwords, tokens, pinned public keys) without trusting the path.

Every secret conat reads from disk goes through :func:`read_private_file`, which checks the file it
actually opened, not the path it was given:

1. ``open(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)``: a symlink in the last component is
   refused (``ELOOP``) instead of followed, and a FIFO cannot block the open;
2. ``fstat`` on that descriptor: it must be a regular file, owned by this user (or root), with no
   permission bits for group or others beyond ``allowed_mode`` (secrets: none at all; public keys:
   readable, never writable), and no larger than ``max_size``;
3. read it through the same descriptor.

There is no window between the check and the read (stat-then-open would have one), and nothing
someone else can write is ever trusted. Parent directories are not checked here: they are the
caller's (conat creates its own 0700).

Errors (:class:`SecretFileError`, a :class:`~conat.auth.CredentialError`), by ``code``:

=====================  ===========================================================
``"missing"``          no such file
``"not-a-file"``       a symlink, directory, FIFO, device or socket
``"insecure"``         group or others have more access than ``allowed_mode``
``"foreign-owner"``    owned by another user (not this one, not root)
``"too-large"``        larger than ``max_size`` bytes
``"unreadable"``       any other I/O error (its ``strerror`` is in the message)
=====================  ===========================================================

Messages name the path and the problem, never the content. :func:`write_private_file` is the
matching writer (atomic replace, 0600 before the first byte is written).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final, Literal, final

from .._paths import write_private
from ._nkeys import CredentialError

__all__ = ["SecretFileError", "SecretFileErrorCode", "read_private_file", "write_private_file"]

SecretFileErrorCode = Literal["missing", "not-a-file", "insecure", "foreign-owner", "too-large", "unreadable"]
"""Why a secret file was refused (see the module docstring)."""

DEFAULT_MAX_SIZE: Final = 64 * 1024
_FLAGS: Final = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)


@final
class SecretFileError(CredentialError):
    """A secret file cannot be trusted or read. ``path`` names it; the content is never shown."""

    code: SecretFileErrorCode

    def __init__(self, code: SecretFileErrorCode, what: str, path: str, detail: str) -> None:
        self.path = path
        super().__init__(code, what, f"{path}: {detail}")


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
        fd = os.open(name, _FLAGS)
    except FileNotFoundError:
        raise SecretFileError("missing", what, name, "no such file") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW on a symlink (EMLINK on BSD)
            raise SecretFileError("not-a-file", what, name, "is a symlink; refusing to follow it") from None
        raise SecretFileError("unreadable", what, name, f"cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError("not-a-file", what, name, "is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~allowed_mode & 0o077:  # the owner's own bits never matter
            raise SecretFileError(
                "insecure",
                what,
                name,
                f"is accessible by group or others (mode {mode:04o}, at most {allowed_mode:04o} allowed); "
                "fix its mode, and replace the secret if others could read it",
            )
        if hasattr(os, "geteuid") and info.st_uid not in (os.geteuid(), 0):
            raise SecretFileError(
                "foreign-owner", what, name, f"is owned by another user (uid {info.st_uid})"
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


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 from the first byte (a symlink at
    ``path`` is replaced, never followed). The parent directory must exist.

    Raises:
        OSError: the file cannot be written.
    """
    write_private(Path(path), data)
