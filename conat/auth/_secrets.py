"""The bus's own secrets: the callout issuer seed, the xkey seed, the two static users' passwords.

They live in one directory (``<bus dir>/secrets``, mode 0700), one 0600 file each, generated on
the bus's first start and never put in environment variables, argv or logs. Every file is read with
:func:`conat.auth.read_private_file`: a symlink, a file of another user or one that group or others
may access is refused, naming the file, never its content. The directory itself must be a real
directory of this user (or root), not writable by group or others.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self, final

from conat import ConatError

from ._errors import SecretFileError
from ._files import read_private_file, write_private_file
from ._nkeys import KeyPair
from ._xkey import CurveKeyPair

__all__ = ["BusSecrets"]

_MAX_SECRET_SIZE: Final = 4096


def _check_directory(directory: Path) -> None:
    try:
        info = os.lstat(directory)
    except OSError as exc:
        raise ConatError(f"secrets directory {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConatError(f"secrets directory {directory} is not a directory (a symlink is refused)")
    if hasattr(os, "geteuid") and info.st_uid not in (os.geteuid(), 0):
        raise ConatError(f"secrets directory {directory} is owned by another user (uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise ConatError(f"secrets directory {directory} is writable by group or others")


def _secret(directory: Path, name: str, make: Callable[[], str] | None) -> str:
    """The secret in ``directory/name``; created with ``make()`` if missing and ``make`` is given."""
    path = directory / name
    try:
        return read_private_file(path, what="bus secret", max_size=_MAX_SECRET_SIZE).decode().strip()
    except SecretFileError as exc:
        if exc.code != "missing" or make is None:
            raise
    value = make()
    write_private_file(path, value.encode(), what="bus secret")
    return value


@final
@dataclass(frozen=True, slots=True)
class BusSecrets:
    """The bus's own secrets. ``repr`` shows public keys only."""

    issuer: KeyPair
    xkey: CurveKeyPair
    auth_password: str
    sys_password: str

    def __repr__(self) -> str:
        return f"BusSecrets(issuer={self.issuer.public_key}, xkey={self.xkey.public_key})"

    @classmethod
    def load_or_create(cls, directory: Path) -> Self:
        """Load the secrets from ``directory`` (0700), creating it and missing secrets (0600 files).

        Raises:
            SecretFileError: a secret file is a symlink, another user's, accessible by others,
                or unreadable.
            ConatError: the directory is a symlink, another user's, or writable by others.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_directory(directory)
        os.chmod(directory, 0o700)
        return cls._load(directory, create=True)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Load existing secrets (a second responder of a running bus); nothing is created.

        Raises:
            SecretFileError: as :meth:`load_or_create`, or ``"missing"``.
            ConatError: as :meth:`load_or_create`.
        """
        _check_directory(directory)
        return cls._load(directory, create=False)

    @classmethod
    def _load(cls, directory: Path, *, create: bool) -> Self:
        def maker(make: Callable[[], str]) -> Callable[[], str] | None:
            return make if create else None

        issuer = _secret(directory, "issuer.seed", maker(lambda: KeyPair.create("account").seed))
        xkey = _secret(directory, "xkey.seed", maker(lambda: CurveKeyPair.create().seed))
        return cls(
            issuer=KeyPair.from_seed(issuer),
            xkey=CurveKeyPair.from_seed(xkey),
            auth_password=_secret(directory, "auth.password", maker(lambda: secrets.token_urlsafe(32))),
            sys_password=_secret(directory, "sys.password", maker(lambda: secrets.token_urlsafe(32))),
        )
