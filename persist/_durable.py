"""Making names durable: directory fsyncs after creating or renaming, and copies written atomically.

Why: an fsync of a file makes its *data* durable, not its *name*. A new file, a new directory or a
rename lives in its parent directory, and survives a power loss only once that directory is fsynced
(and a new directory's own entry once *its* parent is). SQLite does this for the files it creates
itself (the ``-wal`` and ``-journal``: the directory is fsynced at their first sync, which also
covers a database file created in the same directory just before); everything else persist creates
or renames is made durable here:

- :func:`sync_parents` after a stream file is created beneath its root (the directories the walk
  may have created on the way);
- :func:`makedirs` for the directories of archive and backup copies;
- :func:`write_copy` for archive and backup copies (a new name each time, so two copies to one
  destination never share a temporary file);
- :func:`fsync_dir` after a rename (a corrupt file moved aside, a restore moved into place).

Blocking functions, for the executor. Errors are ``OSError`` s: callers translate them at their
boundary (:func:`persist._engine_io.storage_errors`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["fsync_dir", "fsync_file", "levels_beneath", "makedirs", "sync_parents", "write_copy"]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync the file (or directory) at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(dirfd: int) -> None:
    """fsync an open directory: the names created, removed or renamed in it become durable."""
    os.fsync(dirfd)


def levels_beneath(root: Path, file: Path) -> int:
    """How many directory entries lie between ``root``'s parent and ``file``'s directory: the
    directories beneath ``root`` on the way to ``file``, plus ``root`` itself (:func:`sync_parents`)."""
    return len(Path(os.path.relpath(file, root)).parts)


def sync_parents(dirfd: int, levels: int) -> None:
    """Make the entry of the directory ``dirfd`` durable, and so on ``levels`` directories up.

    Call after creating a file in ``dirfd`` when the directories on the way to it were missing
    before (``levels`` = how many directory entries may be new, the root's own included:
    :func:`levels_beneath`). Goes up by ``..`` from the open directory, so what was checked is what
    is synced, fsyncing each parent. The new file's entry in ``dirfd`` itself is left to SQLite,
    which fsyncs ``dirfd`` when it creates the file's ``-wal`` there.
    """
    fd = os.dup(dirfd)
    try:
        for _ in range(levels):
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: Path) -> None:
    """``mkdir -p path``, each directory it creates made durable (its parent fsynced)."""
    missing: list[Path] = []
    here = path
    while not here.is_dir():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        fsync_file(directory.parent)


def write_copy(src: sqlite3.Connection, dest: Path) -> None:
    """Write a consistent copy of the database ``src`` to ``dest``, atomically and durably.

    The copy is made with SQLite's online backup API (never a file copy: a WAL database's main file
    alone can lack committed data) into a new temporary file beside ``dest`` (a unique name, so
    concurrent copies to one ``dest`` never touch each other's), switched to ``journal_mode=DELETE``
    so it is one self-contained file, fsynced, renamed over ``dest``, and the directory fsynced. A
    reader of ``dest`` never sees half a copy; of two concurrent copies, the last rename wins.
    """
    makedirs(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(out)
            out.execute("PRAGMA journal_mode = DELETE")
        finally:
            out.close()
        fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_file(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
