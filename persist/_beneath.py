"""Open a stream's file beneath its root by what the kernel resolves, never through a symlink.

The walk itself is :mod:`conat.beneath` (``Follow.NEVER``), shared with the file server; this module
adds what is SQLite's: the file and its ``-wal``/``-shm``, the name SQLite is given, and the check of
what SQLite opened.

Why: a stream's file is ``<root>/<relative>.db`` (:mod:`persist._placement`), and directories
beneath the root may belong to someone else (a project's home). A check on the *text* of a path
(``realpath``, then ``open``) is a race, and a symlink planted beneath the root would let the engine
create or write a file anywhere. So the kernel does the checking:

1. The root is opened as given, symlinks followed: the root is the operator's, and operators do
   symlink it. Only what is beneath it is checked.
2. Each directory beneath it is opened (created first if missing and allowed) one component at a
   time, relative to the previous directory's fd, with ``openat2(RESOLVE_BENEATH |
   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)``; where ``openat2`` is missing (``ENOSYS``), with
   ``O_NOFOLLOW | O_DIRECTORY`` and ``dir_fd``. Either way a symlink raises :class:`BadPath`
   (``bad-path``), naming the path and where the symlink is.
3. In that directory the file, its ``-wal`` and its ``-shm`` must each be absent or a regular file
   (``fstatat(AT_SYMLINK_NOFOLLOW)`` on the directory fd). A missing file is created there with
   ``O_CREAT | O_EXCL | O_NOFOLLOW``, so the file is never created through a symlink.
4. SQLite is given ``/proc/self/fd/<dirfd>/<name>``, and the directory fd stays open as long as any
   connection to the file is (:class:`Anchor`; the writer's connection owns it).

What SQLite does with that name (measured on SQLite 3.40): its unix VFS resolves symlinks itself, so
it reads the magic link, which the kernel answers with the *current* path of the pinned directory,
and opens ``<that path>/<name>`` (and ``-wal``/``-shm`` beside it). A directory renamed or swapped
for a symlink at any time before a connection is opened therefore cannot redirect it: the kernel
names where the checked directory is now. :meth:`Anchor.verify` then checks, after each connection
is opened, that the file SQLite reports (``PRAGMA database_list``) is that path, is the same inode
as the name in the pinned directory, and that the file, ``-wal`` and ``-shm`` are regular files.
What remains is a rename race *inside* ``sqlite3_open`` (between its readlink and its ``open``)
that is undone again before the check; closing that needs a VFS that opens by fd, which Python's
``sqlite3`` cannot load.

Linux only for the checks that need ``/proc``; elsewhere the walk (2, 3) still runs and SQLite is
given the path text.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import sqlite3
import stat
import sys
from pathlib import Path
from typing import Final, final

from conat.beneath import Follow, SymlinkRefused, open_dir_beneath, open_root, openat2_available

from . import _sql
from ._errors import BadPath, NotFound, OutsideScope

__all__ = ["Anchor", "openat2_available"]

_PROC_FD: Final = "/proc/self/fd"
_SIDES: Final = ("-wal", "-shm")


def _split(root: Path, file: Path) -> tuple[list[str], str]:
    """The directories beneath ``root`` and the file name of ``file``, by normalized text."""
    base, target = os.path.normpath(root), os.path.normpath(file)
    if "\0" in base or "\0" in target:
        raise BadPath(str(file), "it contains a NUL character")
    relative = os.path.relpath(target, base)
    parts = relative.split(os.sep)
    if relative == os.curdir or parts[0] == os.pardir or os.path.isabs(relative):
        raise OutsideScope(str(file), base)
    return parts[:-1], parts[-1]


@final
class Anchor:
    """The open directory holding a stream's file, reached from the root without a symlink.

    Open with :meth:`open` (in the executor); connect with :meth:`connect`; :meth:`close` only after
    every connection made through it is closed (SQLite names ``-wal``/``-shm`` through it).

    Attributes:
        dirfd: the directory's fd.
        name: the file's name in it.
        file: the file's path as given (for messages).
        existed: whether the file was there before :meth:`open` (which may create it).
    """

    __slots__ = ("dirfd", "existed", "file", "name")

    def __init__(self, dirfd: int, name: str, file: Path, existed: bool) -> None:
        self.dirfd = dirfd
        self.name = name
        self.file = file
        self.existed = existed

    @classmethod
    def open(
        cls,
        root: Path,
        file: Path,
        *,
        create: bool,
        create_dirs: bool | None = None,
        missing_ok: bool = False,
    ) -> Anchor:
        """Reach ``file``'s directory from ``root``; create the file if missing and ``create``.

        Args:
            root: where checking starts (may itself be a symlink).
            file: the file, strictly inside ``root`` by its normalized text.
            create: create the file (and missing directories) if missing.
            create_dirs: create missing directories (and the root); default ``create``.
            missing_ok: a missing file that is not created is no error (``existed`` is false).

        Raises:
            BadPath: a symlink beneath ``root``, at the file, or at its ``-wal``/``-shm``.
            OutsideScope: ``file`` is not inside ``root``.
            NotFound: the file (or a directory) is missing and may not be created.
            OSError: anything else (the caller's error boundary translates it).
        """
        dirs, name = _split(root, file)
        mkdirs = create if create_dirs is None else create_dirs
        fd = _open_dirs(root, file, dirs, mkdirs)
        try:
            self = cls(fd, name, file, existed=True)
            self.check_files()
            if self.lstat(name) is None:
                if create:
                    self.existed = not self._create(name, exclusive=False)
                elif missing_ok:
                    self.existed = False
                else:
                    raise NotFound(f"stream file {file}")
            return self
        except BaseException:
            os.close(fd)
            raise

    # ---- the directory --------------------------------------------------------------------------

    def path(self, name: str | None = None) -> str:
        """The name SQLite is given for ``name`` (default: the file) in this directory."""
        if sys.platform != "linux":
            return str(self.file.with_name(name or self.name))
        return f"{_PROC_FD}/{self.dirfd}/{name or self.name}"

    def lstat(self, name: str) -> os.stat_result | None:
        """``name`` in this directory, not following a symlink; ``None`` if it does not exist."""
        try:
            return os.stat(name, dir_fd=self.dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def check_files(self, name: str | None = None) -> None:
        """``name`` (default: the file), its ``-wal`` and ``-shm`` are each absent or a regular file.

        Raises:
            BadPath: one is a symlink.
            OSError: one is something else (a directory...).
        """
        base = name or self.name
        for each in (base, *(base + s for s in _SIDES)):
            st = self.lstat(each)
            if st is None or stat.S_ISREG(st.st_mode):
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self._symlink(str(self.file.with_name(each)))
            raise OSError(errno.EINVAL, "not a regular file", str(self.file.with_name(each)))

    def create_temp(self, name: str) -> None:
        """Create the empty regular file ``name`` here (``O_EXCL``: it must not exist)."""
        self._create(name, exclusive=True)

    def rename(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new``, both in this directory."""
        os.rename(old, new, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)

    def unlink(self, name: str) -> None:
        """Remove ``name`` from this directory if it is there."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.dirfd)

    def fsync(self, name: str | None = None) -> None:
        """Flush ``name`` (default: the directory itself, e.g. after a rename) to disk."""
        if name is None:
            os.fsync(self.dirfd)
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dirfd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the directory fd (after every connection through it). Idempotent."""
        fd, self.dirfd = self.dirfd, -1
        if fd >= 0:
            os.close(fd)

    # ---- connections ------------------------------------------------------------------------------

    def connect(self, name: str | None = None, *, reader: bool = False) -> sqlite3.Connection:
        """A connection (:func:`persist._sql.connect`) to ``name`` (default: the file), verified.

        Raises:
            BadPath: SQLite opened something other than the file in this directory.
        """
        db = _sql.connect(self.path(name), reader=reader)
        try:
            self.verify(db, name)
        except BaseException:
            db.close()
            raise
        return db

    def verify(self, db: sqlite3.Connection, name: str | None = None) -> None:
        """Check that ``db`` is on ``name`` (default: the file) in this directory (module docstring, 4).

        Call again once SQLite has made ``-wal``/``-shm``, to check those too.

        Raises:
            BadPath: ``db`` is on another file, or one of the three files is a symlink.
        """
        base = name or self.name
        self.check_files(base)
        if sys.platform != "linux":
            return
        opened = str(db.execute("PRAGMA database_list").fetchone()[2])
        expected = posixpath.join(os.readlink(f"{_PROC_FD}/{self.dirfd}"), base)
        here, there = self.lstat(base), _stat(opened)
        same = (
            here is not None
            and there is not None
            and (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        )
        if opened != expected or not same:
            raise BadPath(
                str(self.file.with_name(base)),
                f"SQLite opened {opened!r}, not {expected!r}: a directory beneath the root was renamed"
                " or replaced (by a symlink?) while the file was being opened",
            )

    # ---- internals --------------------------------------------------------------------------------

    def _create(self, name: str, *, exclusive: bool) -> bool:
        """Create the empty file ``name`` here; ``False`` if a regular file got there first."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o644, dir_fd=self.dirfd)
        except FileExistsError:
            self.check_files(name)  # a symlink appeared since the check: say so
            if exclusive:
                raise
            return False
        os.close(fd)
        return True

    def _symlink(self, where: str) -> BadPath:
        return BadPath(
            str(self.file),
            f"a symlink was found at {where!r}; persist never follows a symlink beneath its root",
        )


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _open_dirs(root: Path, file: Path, dirs: list[str], create: bool) -> int:
    """The fd of ``file``'s directory: the root opened as given (symlinks followed: it is the
    operator's), then each directory beneath it without following a symlink (:mod:`conat.beneath`),
    created first if missing and ``create``."""
    try:
        rootfd = open_root(root, create=create)
    except FileNotFoundError:
        raise NotFound(f"stream file {file}") from None
    try:
        return open_dir_beneath(rootfd, dirs, follow=Follow.NEVER, create=create)
    except SymlinkRefused as e:
        where = posixpath.join(os.path.normpath(root), e.where)
        raise BadPath(
            str(file),
            f"a symlink was found at {where!r} beneath the root {str(root)!r};"
            " persist never follows a symlink beneath its root",
        ) from None
    except FileNotFoundError:
        raise NotFound(f"stream file {file}") from None
    finally:
        os.close(rootfd)
