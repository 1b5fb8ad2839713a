"""The file server's errors: one class, :class:`FsError`, with errno-style codes, translated from
``OSError`` at one boundary (its place in the error tree is drawn in conat._errors).

Every refusal reaches a caller as an :class:`FsError` (registered with :func:`conat.register_error`
for every code below, so it is also a :class:`conat.RemoteError` with that ``code``), whose message
names the path *relative to the project root*, never a host path. The codes are the wire contract::

    (the kernel's)     ENOENT EEXIST EISDIR ENOTDIR ENOTEMPTY EACCES EPERM ENOSPC EDQUOT ELOOP
                       ENAMETOOLONG EXDEV EINVAL EBUSY EIO EFBIG EMFILE EROFS ETXTBSY
    OUTSIDE_ROOT       the path, a symlink or a magic link on it, or ``..`` leads out
    ESPECIAL           a FIFO, socket or device: never opened (nothing blocks on it)
    EHARDLINK          a file with more than one hard link: its contents and metadata may belong
                       outside the project, so they are neither read nor changed
    ETAG_MISMATCH      ``write_file_delta``: the file is not the base the patch was made on
    PATCH_FAILED       the patch does not parse, or does not apply cleanly
    PATCH_TOO_LARGE    the patch is over the server's cap
    LOCK               ``read_file`` with a lock window: another reader holds it
    ENOPROJECT         the project has no directory on this host
    EBADNAME           a snapshot name (or another name the server chooses) is malformed

What to do: ``ENOENT``/``EEXIST``/``ENOTEMPTY``... as for the system call; ``OUTSIDE_ROOT``,
``ESPECIAL``, ``EHARDLINK``, ``EINVAL``, ``ENAMETOOLONG`` — fix the path (retrying cannot help);
``ETAG_MISMATCH`` — read the file again and make the patch against what is there; ``PATCH_FAILED`` —
send the whole file; ``LOCK`` — someone else is initializing: wait and read without a lock;
``EDQUOT``/``ENOSPC`` — free space.
"""

from __future__ import annotations

import errno as _errno
from typing import Final, final

from conat import ConatError, register_error
from conat.beneath import BadName, OutsideRoot, SpecialFile, SymlinkRefused

__all__ = [
    "EDQUOT",
    "EHARDLINK",
    "ENOPROJECT",
    "ESPECIAL",
    "ETAG_MISMATCH",
    "LOCK",
    "OUTSIDE_ROOT",
    "PATCH_FAILED",
    "PATCH_TOO_LARGE",
    "FsError",
    "from_os_error",
]

OUTSIDE_ROOT: Final = "OUTSIDE_ROOT"
ESPECIAL: Final = "ESPECIAL"
EHARDLINK: Final = "EHARDLINK"
ETAG_MISMATCH: Final = "ETAG_MISMATCH"
PATCH_FAILED: Final = "PATCH_FAILED"
PATCH_TOO_LARGE: Final = "PATCH_TOO_LARGE"
LOCK: Final = "LOCK"
ENOPROJECT: Final = "ENOPROJECT"
EDQUOT: Final = "EDQUOT"

_KERNEL: Final = frozenset(
    {
        "ENOENT",
        "EEXIST",
        "EISDIR",
        "ENOTDIR",
        "ENOTEMPTY",
        "EACCES",
        "EPERM",
        "ENOSPC",
        "EDQUOT",
        "ELOOP",
        "ENAMETOOLONG",
        "EXDEV",
        "EINVAL",
        "EBUSY",
        "EIO",
        "EFBIG",
        "EMFILE",
        "EROFS",
        "ETXTBSY",
    }
)
CODES: Final = _KERNEL | {
    OUTSIDE_ROOT,
    ESPECIAL,
    EHARDLINK,
    ETAG_MISMATCH,
    PATCH_FAILED,
    PATCH_TOO_LARGE,
    LOCK,
    ENOPROJECT,
    "EBADNAME",
}


@final
class FsError(ConatError):
    """A file-server operation failed. ``code`` is from the table above; ``path`` is relative."""

    def __init__(self, code: str, path: str, detail: str = "") -> None:
        self.code = code
        self.path = path
        self.detail = detail or _DEFAULT_DETAIL.get(code, code)
        super().__init__(f"{code}: {self.detail}: {path!r}" if path else f"{code}: {self.detail}")


register_error(FsError, codes=sorted(CODES))

_DEFAULT_DETAIL: Final = {
    OUTSIDE_ROOT: "the path leads outside the project",
    ESPECIAL: "not a regular file",
    EHARDLINK: "the file has more than one hard link; the file server neither reads nor changes it",
    ETAG_MISMATCH: "the file is not the base of the patch",
    PATCH_FAILED: "the patch does not apply cleanly",
    PATCH_TOO_LARGE: "the patch is too large",
    LOCK: "the file is locked by another reader",
    ENOPROJECT: "the project has no directory on this host",
    EDQUOT: "the project's disk quota is exceeded",
}


def from_os_error(error: OSError, path: str) -> FsError:
    """The :class:`FsError` for ``error`` raised while working on ``path`` (relative).

    The message is built from the errno and the relative path alone: an ``OSError`` may name a host
    path, which never reaches a caller.
    """
    if isinstance(error, OutsideRoot):
        return FsError(OUTSIDE_ROOT, path)
    if isinstance(error, SpecialFile):
        return FsError(ESPECIAL, path, f"it is a {error.kind}, not a regular file")
    if isinstance(error, SymlinkRefused):
        return FsError(OUTSIDE_ROOT, path, "a symlink on the path may not be followed here")
    if isinstance(error, BadName):
        code = _errno.errorcode.get(error.errno or 0, "EINVAL")
        return FsError(code, path, str(error.strerror))
    code = _errno.errorcode.get(error.errno or 0, "EIO")
    if code in ("EOPNOTSUPP", "ENOTSUP"):
        code = "EINVAL"
    if code not in _KERNEL:
        code = "EIO"
    return FsError(code, path, _errno_text(error.errno))


def _errno_text(number: int | None) -> str:
    import os

    return os.strerror(number) if number else "I/O error"
