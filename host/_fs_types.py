"""The file server's wire types and its RPC protocol, :class:`FileSystem` (docs/file-server.md).

Calls go to ``fs.project-<p>`` in the typed-service shape (``{"name": "read_file", "args": [...],
"kwargs": {...}}``); results are these msgspec Structs (or plain values). Paths are text relative to
the project root (``""`` is the root); see :mod:`conat.beneath` for what a path may be.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Protocol

import msgspec

__all__ = [
    "CopyResult",
    "DirEntry",
    "DirListing",
    "DuResult",
    "FileSystem",
    "FileType",
    "FindResult",
    "Listing",
    "ListingEntry",
    "QuotaInfo",
    "SearchMatch",
    "SearchResult",
    "Snapshot",
    "Stat",
    "WatchEvent",
    "WatchEventType",
    "WriteResult",
]

FileType = Literal["file", "dir", "symlink", "fifo", "socket", "char", "block", "unknown"]
WatchEventType = Literal["add", "change", "unlink", "addDir", "unlinkDir", "overflow", "ready"]
Reflink = Literal["auto", "always", "never"]
FindType = Literal["f", "d", "l"]

DEFAULT_LIMIT: Final = 10_000


class Stat(msgspec.Struct, frozen=True):
    """What ``stat``/``lstat`` report. ``mtime`` in seconds since the epoch."""

    type: FileType
    size: int
    mode: int
    mtime: float
    ino: int
    nlink: int


class DirEntry(msgspec.Struct, frozen=True):
    """A name in a directory (``name`` is relative to the listed directory) and its type."""

    name: str
    type: FileType


class DirListing(msgspec.Struct, frozen=True):
    """``readdir``: ``truncated`` when the limit or the time cap cut the listing short."""

    entries: list[DirEntry]
    truncated: bool = False
    undecodable: int = 0
    """How many names were left out because they are not UTF-8 (paths travel as text)."""


class ListingEntry(msgspec.Struct, frozen=True):
    name: str
    type: FileType
    size: int
    mtime: float


class Listing(msgspec.Struct, frozen=True):
    """``listing``: every name of a directory with size, mtime and type, in one call."""

    entries: list[ListingEntry]
    truncated: bool = False
    undecodable: int = 0
    """How many names were left out because they are not UTF-8 (paths travel as text)."""


class WriteResult(msgspec.Struct, frozen=True):
    """A completed write: the file's size and the SHA-256 (hex) of its contents now.

    ``sha256`` is empty for ``append_file`` (the server does not read the file back)."""

    size: int
    sha256: str = ""


class CopyResult(msgspec.Struct, frozen=True):
    """``cp``: files and bytes copied, whether any file was reflinked, and the names not copied
    (FIFOs, sockets, devices, hard-linked files), relative to the root."""

    files: int
    bytes: int
    reflinked: bool = False
    skipped: list[str] = msgspec.field(default_factory=list)


class FindResult(msgspec.Struct, frozen=True):
    """``find``: matching paths relative to the project root."""

    paths: list[str]
    truncated: bool = False
    undecodable: int = 0
    """How many names were left out because they are not UTF-8 (paths travel as text)."""


class SearchMatch(msgspec.Struct, frozen=True):
    path: str
    line: int
    text: str


class SearchResult(msgspec.Struct, frozen=True):
    """``search``: ``engine`` is ``ripgrep`` or ``python``; ``truncated`` when a limit or the time cap
    ended the search early."""

    matches: list[SearchMatch]
    truncated: bool = False
    engine: str = "python"
    undecodable: int = 0
    """How many names were left out because they are not UTF-8 (paths travel as text)."""


class DuResult(msgspec.Struct, frozen=True):
    """``du``: disk usage (``bytes``, allocated blocks), apparent ``size``, and counts."""

    bytes: int
    size: int
    files: int
    dirs: int
    truncated: bool = False


class Snapshot(msgspec.Struct, frozen=True):
    name: str
    created: float


class QuotaInfo(msgspec.Struct, frozen=True):
    """Bytes used (as the backend counts them) and the limit (``None``: no quota)."""

    used: int
    limit: int | None


class WatchEvent(msgspec.Struct, frozen=True):
    """One event on a watch socket. ``path`` is relative to the project root.

    ``ready``: the watcher is set up (events after it are complete). ``overflow``: events were lost
    (this watcher's queue, or the kernel's, was full): re-read what you follow.
    """

    type: WatchEventType
    path: str = ""


class FileSystem(Protocol):
    """The RPCs of ``fs.project-<p>``. Every path is relative to the project root.

    Errors come back as :class:`~host.FsError` (also a :class:`conat.RemoteError`) with the
    errno-style codes of :mod:`host._fs_errors` (``ENOENT``, ``OUTSIDE_ROOT``, ``ETAG_MISMATCH``...).
    """

    async def read_file(self, path: str, encoding: str | None = None, lock: float | None = None) -> Any:
        """The file's contents: ``bytes``, or ``str`` when ``encoding`` is ``"utf-8"``.

        ``lock`` (seconds): the first such read wins the lock window; other reads *with* a lock
        during it get ``LOCK``. Files over the RPC cap get ``EFBIG``: stream them instead.
        """
        ...

    async def write_file(self, path: str, data: bytes | str, echo: str | None = None) -> WriteResult:
        """Replace the file atomically (temp file, fsync, rename, fsync the directory). ``echo``:
        the writer's token, so its own watch can skip the event (echo suppression)."""
        ...

    async def write_file_delta(
        self, path: str, patch: str, base_sha256: str, echo: str | None = None
    ) -> WriteResult:
        """Apply a diff-match-patch ``patch`` to the file if its SHA-256 is ``base_sha256``."""
        ...

    async def append_file(self, path: str, data: bytes | str, echo: str | None = None) -> WriteResult: ...

    async def exists(self, path: str) -> bool: ...

    async def stat(self, path: str) -> Stat: ...

    async def lstat(self, path: str) -> Stat: ...

    async def readdir(
        self, path: str = "", recursive: bool = False, limit: int = DEFAULT_LIMIT
    ) -> DirListing:
        """Names and types; ``recursive`` lists the whole tree (names relative to ``path``)."""
        ...

    async def listing(self, path: str = "", limit: int = DEFAULT_LIMIT) -> Listing: ...

    async def mkdir(self, path: str, parents: bool = False) -> None: ...

    async def rm(self, paths: str | list[str], recursive: bool = False, force: bool = False) -> None: ...

    async def rmdir(self, path: str) -> None: ...

    async def unlink(self, path: str) -> None: ...

    async def rename(self, src: str, dst: str) -> None: ...

    async def move(self, src: str, dst: str, overwrite: bool = False) -> None: ...

    async def copy_file(self, src: str, dst: str) -> None: ...

    async def cp(
        self, src: str, dst: str, recursive: bool = False, reflink: Reflink = "auto"
    ) -> CopyResult: ...

    async def symlink(self, target: str, path: str) -> None: ...

    async def readlink(self, path: str) -> str: ...

    async def realpath(self, path: str) -> str: ...

    async def chmod(self, path: str, mode: int) -> None: ...

    async def utimes(self, path: str, atime: float, mtime: float) -> None: ...

    async def truncate(self, path: str, size: int = 0) -> None: ...

    async def find(
        self,
        path: str = "",
        name: list[str] | None = None,
        type: FindType | None = None,
        max_depth: int | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> FindResult: ...

    async def search(
        self,
        pattern: str,
        path: str = "",
        glob: list[str] | None = None,
        ignore_case: bool = False,
        limit: int = 1000,
        timeout: float = 10.0,
    ) -> SearchResult: ...

    async def du(self, path: str = "") -> DuResult: ...

    async def sync_fs_watch(self, path: str, active: bool = True) -> None:
        """Keep the shared watcher of ``path`` alive (heartbeat) or release it (``active=False``)."""
        ...

    async def quota(self) -> QuotaInfo: ...

    async def create_snapshot(self, name: str | None = None) -> Snapshot: ...

    async def list_snapshots(self) -> list[Snapshot]: ...

    async def restore_snapshot(self, name: str, path: str | None = None) -> None:
        """Restore ``path`` (or the whole project) from the snapshot ``name``."""
        ...

    async def delete_snapshot(self, name: str) -> None: ...
