"""Token signing keys on disk, their rotation, and the public keys that hosts pin.

Layout: one file per key in the key directory (default ``<data dir>/keys/``, mode 0700)::

    keys/
        3f9c0a51d2e8b7a4.key     {"kid": ..., "alg": "ed25519", "serial": 1, "created": ..., "seed": ...}
        b81d6e0c4a7f2935.key     {"kid": ..., "serial": 2, ...}

Each file is JSON, mode 0600, written atomically (:func:`conat.auth.write_private_file`); ``seed`` is the
32-byte Ed25519 seed in unpadded base64url. The key with the highest ``serial`` is the **current** key:
it signs every new token. There is no separate "current" pointer to get out of step: rotating is
writing one new file, atomically.

Rotation, step by step:

1. :meth:`Keyring.rotate` creates a new key; it signs from now on. Older keys still verify, so tokens
   already issued stay valid until they expire.
2. Publish :meth:`Keyring.export_public` to the hosts (they pin it with :meth:`PublicKeys.load`).
3. Once every token signed by the old key has expired (:data:`~conat.auth.MAX_TOKEN_TTL` at most),
   :meth:`Keyring.retire` it: its file is removed and tokens it signed are refused (``"unknown-kid"``).

Security rules: a key file that is group/world accessible or owned by another user is refused, naming
the file (like ssh); a key directory writable by group or others is refused. Seeds never leave this
module: no repr, log line or error message contains one, and signing happens here
(:meth:`Keyring.sign`).

A keyring belongs to one process (master). Another process that rotates keys in the same directory
is seen after :meth:`Keyring.reload`.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final, Literal, final

import msgspec
from nacl.signing import SigningKey

from .._paths import data_dir, ensure_private_dir
from ._errors import KeyringError, KeyringErrorCode, SecretFileError
from ._files import read_private_file, write_private_file
from ._tokens import KID_RE, b64url_decode, b64url_encode, public_key_bytes

__all__ = ["Keyring", "PublicKeys"]

logger = logging.getLogger("conat.auth.keyring")

KEY_SUFFIX: Final = ".key"
_MAX_FILE_SIZE: Final = 64 * 1024
_INSECURE: Final = frozenset({"insecure", "foreign-owner"})


class _KeyFile(msgspec.Struct, frozen=True, kw_only=True):
    kid: str
    serial: int
    created: float
    seed: str
    alg: Literal["ed25519"] = "ed25519"


_key_file_encoder: Final = msgspec.json.Encoder()
_key_file_decoder: Final = msgspec.json.Decoder(_KeyFile)
_export_decoder: Final = msgspec.json.Decoder(dict[str, str])


@final
class _Key:
    """One signing key in memory. Its repr shows the kid only."""

    __slots__ = ("_signing", "created", "kid", "public", "serial")

    def __init__(self, kid: str, serial: int, created: float, signing: SigningKey) -> None:
        self.kid = kid
        self.serial = serial
        self.created = created
        self._signing = signing
        self.public = bytes(signing.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature

    def __repr__(self) -> str:
        return f"_Key(kid={self.kid!r}, serial={self.serial})"


def _default_path() -> Path:
    return data_dir() / "keys"


def _read_private(path: Path) -> bytes:
    """Read a key file, refusing one that is not a regular private file of ours."""
    try:
        return read_private_file(path, what="key file", max_size=_MAX_FILE_SIZE)
    except SecretFileError as exc:
        code: KeyringErrorCode = "insecure-key-file" if exc.code in _INSECURE else "bad-key-file"
        raise KeyringError(code, exc.detail.removeprefix(f"{path}: "), str(path)) from None


def _load_key(path: Path) -> _Key:
    raw = _read_private(path)
    try:
        record = _key_file_decoder.decode(raw)
    except ValueError:  # msgspec.DecodeError, or UnicodeDecodeError
        raise KeyringError("bad-key-file", "key file does not decode", str(path)) from None
    seed = b64url_decode(record.seed)
    if record.kid != path.name.removesuffix(KEY_SUFFIX) or not KID_RE.fullmatch(record.kid):
        raise KeyringError("bad-key-file", "the kid in the key file does not match its name", str(path))
    if seed is None or len(seed) != 32:
        raise KeyringError("bad-key-file", "the seed is not 32 bytes of base64url", str(path))
    return _Key(record.kid, record.serial, record.created, SigningKey(seed))


def _check_dir(path: Path) -> None:
    try:
        info = path.stat()
    except OSError as exc:
        raise KeyringError(
            "insecure-key-dir", f"cannot stat key directory: {exc.strerror}", str(path)
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise KeyringError("insecure-key-dir", "not a directory", str(path))
    if info.st_mode & 0o022:
        raise KeyringError(
            "insecure-key-dir",
            f"key directory is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})",
            str(path),
        )


@final
class Keyring:
    """Ed25519 signing keys in a directory, identified by kid. Use :meth:`open`.

    Implements :class:`~conat.auth.SigningKeys` (for :class:`~conat.auth.TokenIssuer`) and
    :class:`~conat.auth.PublicKeySource` (for :class:`~conat.auth.TokenVerifier`, which then sees
    rotations and retirements at once).
    """

    def __init__(self, path: Path, keys: Mapping[str, _Key], *, clock: Callable[[], float]) -> None:
        """Internal: use :meth:`open`."""
        self._path = path
        self._keys = dict(keys)
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> Keyring:
        """Load the keys in ``path`` (default ``<data dir>/keys``), creating the directory (0700) and
        a first key if there are none and ``create`` is true.

        Raises:
            KeyringError: ``"insecure-key-file"`` or ``"insecure-key-dir"`` for a file or directory
                others can access, ``"bad-key-file"`` for one that cannot be read or decoded,
                ``"no-keys"`` if there is no key and ``create`` is false, ``"io"`` if writing fails.
        """
        directory = _default_path() if path is None else Path(path)
        if create:
            try:
                ensure_private_dir(directory)
            except OSError as exc:
                raise KeyringError(
                    "io", f"cannot create key directory: {exc.strerror}", str(directory)
                ) from None
        keyring = cls(directory, {}, clock=clock)
        keyring.reload()
        if not keyring._keys:
            if not create:
                raise KeyringError("no-keys", "no signing key", str(directory))
            keyring.rotate()
        return keyring

    def reload(self) -> None:
        """Re-read the key directory (after another process rotated or retired keys).

        Raises:
            KeyringError: as :meth:`open`; the keyring is unchanged then.
        """
        _check_dir(self._path)
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self._path)
                if entry.name.endswith(KEY_SUFFIX) and not entry.name.startswith(".")
            )
        except OSError as exc:
            raise KeyringError(
                "bad-key-file", f"cannot list key directory: {exc.strerror}", str(self._path)
            ) from None
        keys = [_load_key(self._path / name) for name in names]
        self._keys = {key.kid: key for key in keys}

    @property
    def path(self) -> Path:
        """The key directory."""
        return self._path

    @property
    def current(self) -> str:
        """The kid that signs new tokens (the key with the highest serial)."""
        return max(self._keys.values(), key=lambda key: (key.serial, key.kid)).kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid held, oldest first (the last one is :attr:`current`)."""
        return tuple(key.kid for key in sorted(self._keys.values(), key=lambda key: (key.serial, key.kid)))

    def sign(self, kid: str, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` by key ``kid``.

        Raises:
            KeyringError: ``"unknown-kid"`` if the keyring does not hold ``kid``.
        """
        key = self._keys.get(kid)
        if key is None:
            raise KeyringError("unknown-kid", f"no key {kid!r}", str(self._path))
        return key.sign(message)

    def rotate(self) -> str:
        """Create a new key, which signs from now on. Older keys keep verifying. Returns its kid.

        Raises:
            KeyringError: ``"io"`` if the key file cannot be written (the keyring is unchanged).
        """
        kid = secrets.token_hex(8)
        while kid in self._keys:  # pragma: no cover - 64 random bits
            kid = secrets.token_hex(8)
        serial = max((key.serial for key in self._keys.values()), default=0) + 1
        signing = SigningKey.generate()
        record = _KeyFile(kid=kid, serial=serial, created=self._clock(), seed=b64url_encode(bytes(signing)))
        path = self._path / f"{kid}{KEY_SUFFIX}"
        try:
            write_private_file(path, _key_file_encoder.encode(record), what="key file")
        except SecretFileError as exc:
            why = exc.detail.removeprefix(f"{path}: ")
            raise KeyringError("io", f"cannot write key file: {why}", str(path)) from None
        except OSError as exc:
            raise KeyringError("io", f"cannot write key file: {exc.strerror}", str(path)) from None
        self._keys[kid] = _Key(kid, serial, record.created, signing)
        logger.info("new signing key %s (serial %d) in %s", kid, serial, self._path)
        return kid

    def retire(self, kid: str) -> None:
        """Stop verifying with ``kid`` and remove its file. Tokens it signed are refused from now on.

        Raises:
            KeyringError: ``"unknown-kid"``; ``"retire-current"`` for the signing key (rotate first);
                ``"io"`` if the file cannot be removed (the key is then still held).
        """
        if kid not in self._keys:
            raise KeyringError("unknown-kid", f"no key {kid!r}", str(self._path))
        if kid == self.current:
            raise KeyringError(
                "retire-current", f"key {kid!r} is the signing key: rotate first", str(self._path)
            )
        path = self._path / f"{kid}{KEY_SUFFIX}"
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise KeyringError("io", f"cannot remove key file: {exc.strerror}", str(path)) from None
        del self._keys[kid]
        logger.info("retired signing key %s in %s", kid, self._path)

    def public_keys(self) -> dict[str, bytes]:
        """``{kid: 32-byte Ed25519 public key}`` for every key held (they all verify)."""
        return {key.kid: key.public for key in self._keys.values()}

    def public(self) -> PublicKeys:
        """The public keys as a :class:`PublicKeys` snapshot."""
        return PublicKeys(self.public_keys())

    def export_public(self) -> str:
        """The public keys as JSON ``{kid: base64url}``, for hosts to pin (:meth:`PublicKeys.from_export`)."""
        return self.public().export()

    def __repr__(self) -> str:
        return f"Keyring(path={str(self._path)!r}, current={self.current!r}, kids={list(self.kids)!r})"


@final
class PublicKeys(Mapping[str, bytes]):
    """An immutable ``{kid: 32-byte Ed25519 public key}``: the keys a host pins to verify tokens.

    Args:
        keys: raw 32-byte keys or unpadded base64url strings, by kid.

    Raises:
        ValueError: a bad kid or key.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, bytes | str]) -> None:
        self._keys = {kid: public_key_bytes(kid, value) for kid, value in keys.items()}

    @classmethod
    def from_export(cls, text: str | bytes) -> PublicKeys:
        """Parse :meth:`Keyring.export_public`'s JSON.

        Raises:
            KeyringError: ``"bad-public-keys"`` if it does not parse or holds a bad key.
        """
        try:
            keys = _export_decoder.decode(text)
        except ValueError:  # msgspec.DecodeError, or UnicodeDecodeError
            raise KeyringError("bad-public-keys", "not a JSON object of kid to base64url") from None
        try:
            return cls(keys)
        except ValueError as exc:  # the message names the kid, never key bytes
            raise KeyringError("bad-public-keys", str(exc)) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKeys:
        """Load pinned public keys from a file written by :meth:`save` (or holding an export).

        The file is opened without following a symlink and checked on the open descriptor
        (:func:`conat.auth.read_private_file`): a regular file of this user (or root), that group
        and others may read but not write.

        Raises:
            KeyringError: ``"insecure-key-file"`` if others can write the file (they could pin their
                own key) or another user owns it; ``"bad-key-file"`` if it cannot be read, is a
                symlink or not a regular file; ``"bad-public-keys"`` if it does not parse.
        """
        file = Path(path)
        try:
            # public data: others may read it, but whoever can write it could pin their own key
            text = read_private_file(file, what="pinned keys", allowed_mode=0o644, max_size=_MAX_FILE_SIZE)
        except SecretFileError as exc:
            code: KeyringErrorCode = "insecure-key-file" if exc.code in _INSECURE else "bad-key-file"
            raise KeyringError(code, exc.detail.removeprefix(f"{file}: "), str(file)) from None
        try:
            return cls.from_export(text)
        except KeyringError as exc:
            raise KeyringError("bad-public-keys", exc.detail, str(file)) from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`export` to ``path`` atomically, mode 0600. The parent directory must exist.

        Raises:
            KeyringError: ``"io"`` if the file cannot be written.
        """
        file = Path(path)
        try:
            write_private_file(file, self.export().encode(), what="pinned keys")
        except SecretFileError as exc:
            why = exc.detail.removeprefix(f"{file}: ")
            raise KeyringError("io", f"cannot write pinned keys: {why}", str(file)) from None
        except OSError as exc:
            raise KeyringError("io", f"cannot write pinned keys: {exc.strerror}", str(file)) from None

    def export(self) -> str:
        """JSON ``{kid: base64url}``, sorted by kid."""
        return msgspec.json.encode({kid: b64url_encode(raw) for kid, raw in sorted(self._keys.items())}).decode()

    def public_keys(self) -> dict[str, bytes]:
        """``{kid: public key}`` (a copy)."""
        return dict(self._keys)

    def __getitem__(self, kid: str) -> bytes:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"PublicKeys(kids={sorted(self._keys)!r})"
