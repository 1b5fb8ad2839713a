"""Where a stream's SQLite file lives: storage paths, and the roots they resolve under.

**Storage paths** name a stream inside its scope::

    projects/<project uuid>/<name>
    accounts/<account uuid>/<name>
    hosts/<host uuid>/<name>
    hub/<name>

Ids are canonical UUIDs (lower-case, hyphenated). A name may have ``/``-separated parts. It is
normalized — ``.`` parts vanish and ``a/../b`` becomes ``b`` — and then must be non-empty, with no empty
part (``a//b``, a trailing ``/``), no NUL or other control character, no part over
:data:`MAX_PART_BYTES` and no more than :data:`MAX_NAME_BYTES` in all, and no part ending in ``.db``
(the file suffix, so that the file of ``x`` can never be the directory of ``x.db/y``). Breaking these
raises :class:`~persist.BadPath` (``bad-path``); a ``..`` that climbs out of the name, into or past its
scope, raises :class:`~persist.OutsideScope` (``outside-scope``).

**Files.** A stream's file is ``<root>/<relative path>.db``. The root and relative path come from
:class:`PlacementConfig`, read from the environment or the ``[sync]`` table of a TOML file:

- ``CONAT_SYNC`` (``root``): the default root; else ``<conat data dir>/sync``. Files at
  ``<root>/<storage path>.db``.
- ``CONAT_SYNC_PROJECTS`` (``projects``): root of project streams; ``[project_id]`` becomes the id.
- ``CONAT_SYNC_ACCOUNTS`` (``accounts``): root of account streams; ``[account_id]`` likewise.
- ``CONAT_SYNC_HOSTS`` (``hosts``): root of host streams; ``[host_id]`` likewise.
- ``CONAT_SYNC_HUB`` (``hub``): root of hub streams.
- ``CONAT_SYNC_ARCHIVE`` (``archive``), ``CONAT_SYNC_BACKUP`` (``backup``): optional roots whose
  files mirror the default layout, ``<archive>/<storage path>.db``, whatever the overrides.

With an override whose template has its placeholder, the file is ``<template with id>/<name>.db``
(e.g. ``/data/projects/[project_id]/.local/share/conat/persist``); without the placeholder it is
``<template>/<id>/<name>.db``, so two projects never share a file. Every configured root must be an
absolute path (no ``~``: expanding it would read the environment behind the caller's back), and a
template may contain only its own placeholder. The environment wins over TOML, key by key; an empty
variable counts as unset.

Resolution is a pure function of its inputs: nothing is created or read. The check that the file stays
inside its root is on the normalized *text*; symlinks inside the root are the engine's to refuse when
it opens the file (``openat2(RESOLVE_BENEATH)``: the kernel resolves the path, so no symlink swapped
in between a check and the open can redirect it; :mod:`persist._beneath`).

**Where checking starts.** :meth:`Placement.locate` splits a file into the trusted root the engine
walks from and the path beneath it, for :class:`persist.StreamStore`. The root is the configured
directory, except for a template with its placeholder: there it is the directory *above* the id
(``/data/projects`` for ``/data/projects/[project_id]/.local/share/conat/persist``), because the id's
directory and all below it may belong to the scope's owner (a project's home, where ``.local`` could
be a symlink to ``/etc``). The root itself may be a symlink; nothing beneath it may be.
"""

from __future__ import annotations

import os
import posixpath
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Final, final
from uuid import UUID

import msgspec

from conat import data_dir
from subjects import ScopeKind

from ._config import convert_config
from ._errors import BadConfig, BadPath, OutsideScope

__all__ = [
    "ENV_VARS",
    "FILE_SUFFIX",
    "MAX_NAME_BYTES",
    "MAX_PART_BYTES",
    "Placement",
    "PlacementConfig",
    "StoragePath",
]

FILE_SUFFIX: Final = ".db"
"""Suffix of a stream's SQLite file (SQLite adds ``-wal`` and ``-shm`` beside it)."""

MAX_NAME_BYTES: Final = 1024
"""Most UTF-8 bytes in a stream name (all its parts and slashes)."""

MAX_PART_BYTES: Final = 200
"""Most UTF-8 bytes in one part of a name (filesystems allow 255, minus the suffix and margin)."""

_KIND_DIRS: Final[dict[ScopeKind, str]] = {
    "project": "projects",
    "account": "accounts",
    "host": "hosts",
    "hub": "hub",
}
_DIR_KINDS: Final[dict[str, ScopeKind]] = {v: k for k, v in _KIND_DIRS.items()}

_PLACEHOLDERS: Final[dict[ScopeKind, str]] = {
    "project": "[project_id]",
    "account": "[account_id]",
    "host": "[host_id]",
}

ENV_VARS: Final[dict[str, str]] = {
    "root": "CONAT_SYNC",
    "projects": "CONAT_SYNC_PROJECTS",
    "accounts": "CONAT_SYNC_ACCOUNTS",
    "hosts": "CONAT_SYNC_HOSTS",
    "hub": "CONAT_SYNC_HUB",
    "archive": "CONAT_SYNC_ARCHIVE",
    "backup": "CONAT_SYNC_BACKUP",
}
"""The environment variable of each :class:`PlacementConfig` field."""


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _canonical_uuid(value: object) -> str | None:
    if isinstance(value, str) and len(value) == 36:
        try:
            canonical = str(UUID(value))
        except ValueError:
            return None
        if canonical == value:
            return value
    return None


def _check_text(shown: str, text: str) -> None:
    """NUL/control characters and text that cannot be UTF-8 (lone surrogates) are refused."""
    if _CONTROL.search(text):
        raise BadPath(shown, "it contains a NUL or control character")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise BadPath(shown, "it is not valid UTF-8 text") from None


def _normalize_name(shown: str, parts: list[str], scope: str) -> str:
    """Collapse ``.`` and ``..`` in a name's parts; a ``..`` that climbs out is outside the scope."""
    out: list[str] = []
    for part in parts:
        if part == "":
            raise BadPath(shown, "it has an empty part ('//' or a trailing '/')")
        if part == ".":
            continue
        if part == "..":
            if not out:
                raise OutsideScope(shown, scope)
            out.pop()
            continue
        out.append(part)
    if not out:
        raise BadPath(shown, "the stream name is empty")
    for part in out:
        if len(part.encode()) > MAX_PART_BYTES:
            raise BadPath(shown, f"a part is longer than {MAX_PART_BYTES} bytes")
        if part.lower().endswith(FILE_SUFFIX):
            raise BadPath(shown, f"a part ends in {FILE_SUFFIX!r}, the file suffix")
    name = "/".join(out)
    if len(name.encode()) > MAX_NAME_BYTES:
        raise BadPath(shown, f"the name is longer than {MAX_NAME_BYTES} bytes")
    return name


class StoragePath(msgspec.Struct, frozen=True, kw_only=True):
    """A validated storage path: a scope (``kind`` and ``id``) and a normalized stream ``name``.

    Build one with :meth:`parse` (from text) or :meth:`of` (from parts); both normalize the name.
    Direct construction requires an already normal name. ``str(path)`` is the canonical text, and
    ``StoragePath.parse(str(path)) == path``.

    Attributes:
        kind: ``"project"``, ``"account"``, ``"host"`` or ``"hub"``.
        id: the scope's canonical UUID, ``None`` for the hub.
        name: the stream's normalized name within the scope.

    Raises:
        BadPath: malformed (module docstring).
        OutsideScope: the name climbs out of its scope.
    """

    kind: ScopeKind
    id: str | None
    name: str

    def __post_init__(self) -> None:
        shown = f"{self.kind}/{self.id}/{self.name}"
        if self.kind not in _KIND_DIRS:
            raise BadPath(shown, f"unknown scope kind {self.kind!r}")
        if self.kind == "hub":
            if self.id is not None:
                raise BadPath(shown, "the hub scope has no id")
        elif _canonical_uuid(self.id) is None:
            raise BadPath(shown, f"the {self.kind} id must be a canonical (lower-case, hyphenated) UUID")
        if not isinstance(self.name, str):
            raise BadPath(repr(self.name), "the name must be a string")
        _check_text(self.name, self.name)
        if self.name.startswith("/"):
            raise BadPath(self.name, "the name is absolute")
        if _normalize_name(self.name, self.name.split("/"), self.scope_path) != self.name:
            raise BadPath(self.name, "the name is not normalized (use StoragePath.parse or .of)")

    @classmethod
    def parse(cls, text: str) -> StoragePath:
        """Parse ``projects/<id>/<name>``, ``accounts/...``, ``hosts/...`` or ``hub/<name>``.

        Raises:
            BadPath: malformed.
            OutsideScope: a ``..`` climbs out of the name.
        """
        if not isinstance(text, str):
            raise BadPath(repr(text), "a storage path must be a string")
        _check_text(text, text)
        if text.startswith("/"):
            raise BadPath(text, "it is absolute; storage paths are relative to their root")
        parts = text.split("/")
        if parts[0] == "..":
            raise OutsideScope(text, "the storage root")
        kind = _DIR_KINDS.get(parts[0])
        if kind is None:
            raise BadPath(text, "it must start with projects/, accounts/, hosts/ or hub/")
        if kind == "hub":
            return cls(kind=kind, id=None, name=_normalize_name(text, parts[1:], "hub"))
        if len(parts) < 2 or parts[1] == "":
            raise BadPath(text, f"the {kind} id is missing")
        if parts[1] == "..":
            raise OutsideScope(text, parts[0])
        ident = _canonical_uuid(parts[1])
        if ident is None:
            raise BadPath(text, f"the {kind} id must be a canonical (lower-case, hyphenated) UUID")
        return cls(kind=kind, id=ident, name=_normalize_name(text, parts[2:], f"{parts[0]}/{ident}"))

    @classmethod
    def of(cls, kind: ScopeKind, id: UUID | str | None, name: str) -> StoragePath:
        """Build a path from its parts, normalizing ``name``. ``id`` is ``None`` for the hub."""
        ident = str(id) if isinstance(id, UUID) else id
        prefix = "hub" if kind == "hub" else f"{_KIND_DIRS.get(kind, kind)}/{ident}"
        if not isinstance(name, str):
            raise BadPath(repr(name), "the name must be a string")
        if kind == "hub" and id is not None:
            raise BadPath(f"hub/{name}", "the hub scope has no id")
        return cls.parse(f"{prefix}/{name}")

    @property
    def scope_path(self) -> str:
        """``projects/<id>``, ``accounts/<id>``, ``hosts/<id>`` or ``hub``."""
        if self.id is None:
            return _KIND_DIRS[self.kind]
        return f"{_KIND_DIRS[self.kind]}/{self.id}"

    @property
    def scope(self) -> str:
        """The bus scope token of the stream's scope: ``project-<id>``, ..., or ``hub``."""
        return "hub" if self.id is None else f"{self.kind}-{self.id}"

    def __str__(self) -> str:
        return f"{self.scope_path}/{self.name}"


class PlacementConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Roots and per-kind templates (module docstring). ``None`` means not configured.

    Raises:
        BadConfig: a root is not absolute, or holds a placeholder it may not hold.
    """

    root: str | None = None
    projects: str | None = None
    accounts: str | None = None
    hosts: str | None = None
    hub: str | None = None
    archive: str | None = None
    backup: str | None = None

    def __post_init__(self) -> None:
        for field in ENV_VARS:
            value = getattr(self, field)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise BadConfig(field, f"must be a non-empty path, not {value!r}")
            if "\0" in value:
                raise BadConfig(field, "contains a NUL character")
            if not value.startswith("/"):
                raise BadConfig(field, f"must be an absolute path, not {value!r}")
            own = _PLACEHOLDERS.get(_DIR_KINDS.get(field, "hub"))
            for placeholder in _PLACEHOLDERS.values():
                if placeholder in value and placeholder != own:
                    raise BadConfig(field, f"may not contain {placeholder}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PlacementConfig:
        """Read ``CONAT_SYNC*`` from ``env`` (default :data:`os.environ`). Empty means unset.

        Raises:
            BadConfig: naming the environment variable.
        """
        source = os.environ if env is None else env
        values = {field: source.get(var) or None for field, var in ENV_VARS.items()}
        try:
            return cls(**values)
        except BadConfig as exc:
            raise BadConfig(ENV_VARS.get(exc.field, exc.field), exc.reason) from None

    @classmethod
    def from_toml(cls, text: str | bytes, *, table: str = "sync") -> PlacementConfig:
        """Read the ``[table]`` of a TOML document (other top-level tables belong to others).

        Unknown keys in the table are refused, with their path (``sync.projcts``).

        Raises:
            BadConfig: invalid TOML, or a bad or unknown key.
        """
        try:
            doc = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BadConfig("toml", f"cannot parse: {exc}") from None
        section = doc.get(table, {})
        if not isinstance(section, dict):
            raise BadConfig(table, "must be a table")
        return convert_config(section, cls, prefix=table)

    def overlay(self, other: PlacementConfig) -> PlacementConfig:
        """This config with every field that ``other`` sets taken from ``other``."""
        changes = {f: getattr(other, f) for f in ENV_VARS if getattr(other, f) is not None}
        return msgspec.structs.replace(self, **changes)


def _inside(shown: str, root: str, relative: str) -> Path:
    """``root/relative`` normalized, refused if it does not stay strictly inside ``root``."""
    base = posixpath.normpath(root)
    target = posixpath.normpath(posixpath.join(base, relative))
    prefix = base if base.endswith("/") else base + "/"
    if not target.startswith(prefix) or target == base:
        raise OutsideScope(shown, base)
    return Path(target)


@final
class Placement:
    """Resolves storage paths to files. Pure: creates and reads nothing.

    Args:
        config: the configured roots (default: none, so everything under the default root).
        default_root: the root when ``config.root`` is unset; default ``<conat data dir>/sync``,
            read once here.
    """

    def __init__(
        self, config: PlacementConfig | None = None, *, default_root: str | Path | None = None
    ) -> None:
        self.config = config if config is not None else PlacementConfig()
        root = self.config.root
        if root is None:
            root = str(default_root) if default_root is not None else str(data_dir() / "sync")
        if not root.startswith("/"):
            raise BadConfig("root", f"must be an absolute path, not {root!r}")
        self.root = posixpath.normpath(root)

    @classmethod
    def from_sources(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        toml: str | bytes | None = None,
        default_root: str | Path | None = None,
    ) -> Placement:
        """Combine a TOML document's ``[sync]`` table with the environment (which wins, key by key)."""
        config = PlacementConfig.from_toml(toml) if toml is not None else PlacementConfig()
        return cls(config.overlay(PlacementConfig.from_env(env)), default_root=default_root)

    def root_of(self, path: StoragePath) -> str:
        """The directory ``path``'s file must stay inside (placeholders replaced)."""
        return self._split(path)[0]

    def path(self, path: StoragePath | str) -> Path:
        """The SQLite file of ``path``.

        Raises:
            BadPath, OutsideScope: ``path`` is text and invalid, or resolves outside its root.
        """
        sp = _coerce(path)
        root, relative = self._split(sp)
        return _inside(str(sp), root, relative + FILE_SUFFIX)

    def locate(self, path: StoragePath | str) -> tuple[Path, PurePosixPath]:
        """The trusted root of ``path``'s file and the file relative to it (module docstring).

        ``root / relative == self.path(path)``, and ``relative`` has no ``.`` or ``..`` part. This is
        the resolver :class:`persist.StreamStore` wants: the engine refuses a symlink anywhere below
        ``root``.

        Raises:
            BadPath, OutsideScope: as :meth:`path`.
        """
        sp = _coerce(path)
        file = self.path(sp)
        root = posixpath.normpath(self._split(sp)[0])
        template: str | None = getattr(self.config, _KIND_DIRS[sp.kind])
        placeholder = _PLACEHOLDERS.get(sp.kind)
        if template is not None and placeholder is not None and placeholder in template:
            above = _above_id(template, placeholder)
            if str(file).startswith(above.rstrip("/") + "/"):
                root = above
        return Path(root), PurePosixPath(posixpath.relpath(str(file), root))

    def lock_roots(self) -> list[Path]:
        """The directories a persist service owns on this placement, for its lock (:mod:`persist._rootlock`).

        Every directory a stream file is reached from (the default root, each override's root, or,
        for a template with its placeholder, the directory above the id where checking starts) and
        the archive root (copies mirror the live files, so two services archiving to one tree would
        restore each other's). Sorted, without duplicates. The backup root is not included: a backup
        is written on demand, to a new name each time.
        """
        roots = {self.root}
        for kind, field in _KIND_DIRS.items():
            template: str | None = getattr(self.config, field)
            if template is None:
                continue
            placeholder = _PLACEHOLDERS.get(kind)
            if placeholder is not None and placeholder in template:
                roots.add(_above_id(template, placeholder))
            else:
                roots.add(posixpath.normpath(template))
        if self.config.archive is not None:
            roots.add(posixpath.normpath(self.config.archive))
        return sorted(Path(r) for r in roots)

    def archive_path(self, path: StoragePath | str) -> Path | None:
        """The archive copy of ``path``: ``<archive>/<storage path>.db``, or ``None`` if no archive."""
        return self._mirror(self.config.archive, path)

    def backup_path(self, path: StoragePath | str) -> Path | None:
        """The backup copy of ``path``: ``<backup>/<storage path>.db``, or ``None`` if no backup."""
        return self._mirror(self.config.backup, path)

    def _mirror(self, root: str | None, path: StoragePath | str) -> Path | None:
        sp = _coerce(path)
        if root is None:
            return None
        return _inside(str(sp), root, str(sp) + FILE_SUFFIX)

    def _split(self, sp: StoragePath) -> tuple[str, str]:
        """(root, path relative to it, without suffix)."""
        template: str | None = getattr(self.config, _KIND_DIRS[sp.kind])
        if template is None:
            return self.root, str(sp)
        if sp.id is None:
            return posixpath.normpath(template), sp.name
        placeholder = _PLACEHOLDERS[sp.kind]
        if placeholder in template:
            return posixpath.normpath(template.replace(placeholder, sp.id)), sp.name
        return posixpath.normpath(template), f"{sp.id}/{sp.name}"


def _above_id(template: str, placeholder: str) -> str:
    """The directory above the id in a template with its placeholder: where checking starts."""
    return posixpath.normpath(posixpath.dirname(template.split(placeholder, 1)[0]))


def _coerce(path: StoragePath | str) -> StoragePath:
    return path if isinstance(path, StoragePath) else StoragePath.parse(path)
