"""Archive copies of stream files: write one, and restore one into place when it is newer.

Blocking functions, run in :class:`persist.StreamStore`'s executor; the store decides when
(its docstring states the rule). Each runs inside :func:`persist._engine_io.storage_errors`, so only
persist errors leave.

**Copies.** An archive copy is written with SQLite's online backup API (never a file copy: committed
data can still sit in the ``-wal`` file, so a copy of the main file alone can lack it, even every
table) into a temporary
file beside the archive, switched to ``journal_mode=DELETE`` so it is one self-contained file (no
``-wal``/``-shm`` ever appears beside it, and it can be read with ``mode=ro``), flushed, then renamed
over the archive, and the directory flushed (:func:`persist._durable.write_copy`; new directories on
the way are made durable too). A reader never sees half a copy.

**Newer.** Which of the live file and the archive is newer is decided by ``meta.last_seq``, the last
seq ever assigned (:mod:`persist._sql`): it only grows, and every message write bumps it. The live
file's is read through its WAL (a connection, not the main file alone), so frames not yet
checkpointed count. The archive is restored when the live file is missing or its ``last_seq`` is
lower; a tie keeps the live file. mtime is not used: a copy, a restore or a clock step changes it
without changing the data. A delete, a config change or a sweep does not bump ``last_seq``, so an
archive that differs only by those is never newer; and two copies that each took writes the other
lacks are not merged (the higher ``last_seq`` wins whole).

**Restore.** The archive is copied (backup API again) into a temporary file created beside the live
file through its checked directory (:class:`persist._beneath.Anchor`), checked with ``quick_check``,
given a new stream id (writes after the archive's last seq were lost, and their seqs will be given
again: changefeed consumers must reload, not resume), flushed, and renamed over the live name.
A quarantined stream (:mod:`persist._quarantine`) is never restored automatically: that is for
an operator to decide (:func:`reset_stream`). Any ``-wal``/``-shm`` of the file it replaces are removed
first: SQLite would otherwise replay the old file's WAL frames into the restored one. The old file's
WAL was already read (and, by the connection's close, checkpointed) when its ``last_seq`` was.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import sqlite3
import urllib.parse
from pathlib import Path
from typing import NamedTuple

from . import _sql
from ._beneath import Anchor
from ._durable import levels_beneath, sync_parents, write_copy
from ._engine_io import storage_errors, unclean
from ._errors import Corrupt, NotFound
from ._quarantine import read_marker, reset

__all__ = ["Restore", "archive_stream", "reset_stream", "restore_if_newer"]


def last_seq(db: sqlite3.Connection) -> int | None:
    """``meta.last_seq`` of a stream database; ``None`` if it has no ``meta`` table (not a stream yet)."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if has_meta is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE name = 'last_seq'").fetchone()
    return 0 if row is None else int(row[0])


def archive_stream(root: Path, file: Path, dest: Path) -> None:
    """Write a consistent copy of the stream file ``file`` (reached from ``root``) to ``dest``.

    Safe while the stream is open and being written: the copy holds every write committed before
    it started.

    Raises:
        NotFound: ``file`` does not exist.
        BadPath: a symlink beneath ``root`` (nothing is read through it).
        StorageError: the copy could not be written.
    """
    what = str(file)
    with storage_errors(what, "archive"):
        anchor = Anchor.open(root, file, create=False)
        try:
            src = anchor.connect(reader=True)
            try:
                write_copy(src, dest)
            finally:
                src.close()
        finally:
            anchor.close()


class Restore(NamedTuple):
    """What :func:`restore_if_newer` did, and what it saw first."""

    restored: bool
    """The archive was copied over (or into the place of) the live file."""
    unclean: bool
    """The live file had been closed uncleanly (before reading it, which cleans it up): open it with
    a full check."""


def restore_if_newer(root: Path, file: Path, archive: Path) -> Restore:
    """Restore ``archive`` over ``file`` (reached from ``root``) if it is newer (module docstring).

    Call only while nothing has ``file`` open. A live file that cannot be read because it is corrupt
    is left alone: opening it moves it aside (:class:`Corrupt`), and the next open restores.

    Returns:
        whether the archive was restored, and whether the live file was closed uncleanly (reading
        its ``last_seq`` recovers and removes its ``-wal``, so the opener cannot see that any more).

    Raises:
        Corrupt: the archive cannot be read, or its copy fails ``quick_check`` (nothing was replaced).
        BadPath: a symlink beneath ``root``.
        StorageError: reading or writing failed.
    """
    with storage_errors(str(archive), "restore"):
        if not archive.exists():
            return Restore(restored=False, unclean=False)
        newest = _archive_seq(archive)
    what = str(file)
    with storage_errors(what, "restore"):
        new_dirs = not file.parent.is_dir()
        anchor = Anchor.open(root, file, create=False, create_dirs=True, missing_ok=True)
        try:
            if read_marker(anchor) is not None:  # quarantined: restoring it is an operator's act
                return Restore(restored=False, unclean=False)
            was_unclean = anchor.existed and unclean(anchor)
            if anchor.existed:
                try:
                    live = _live_seq(anchor)
                except Corrupt:
                    return Restore(restored=False, unclean=True)
                if live >= newest:
                    return Restore(restored=False, unclean=was_unclean)
            _restore(anchor, archive, levels_beneath(root, file) if new_dirs else 0)
            return Restore(restored=True, unclean=False)
        finally:
            anchor.close()


def reset_stream(root: Path, file: Path, archive: Path | None) -> list[str]:
    """Reset the quarantined stream ``file`` (reached from ``root``): what is at its name is moved
    aside, then ``archive`` (if given) is restored into place, then the marker goes
    (:func:`persist._quarantine.reset`). Call only while nothing has ``file`` open.

    Returns:
        the paths moved aside now.

    Raises:
        BadRequest: the stream is not quarantined.
        NotFound: ``archive`` is given and does not exist (nothing was changed).
        Corrupt: the archive cannot be read, or its copy fails ``quick_check`` (the stream stays
            quarantined).
        StorageError: reading or writing failed.
    """
    if archive is not None:
        with storage_errors(str(archive), "reset"):
            if not archive.exists():
                raise NotFound(f"archive {archive} of stream file {file}")
            _archive_seq(archive)  # readable, and a stream
    with storage_errors(str(file), "reset"):
        anchor = Anchor.open(root, file, create=False, create_dirs=False, missing_ok=True)
        try:
            put_back = None if archive is None else functools.partial(_restore, anchor, archive, 0)
            return reset(anchor, put_back)
        finally:
            anchor.close()


# ---- internals ---------------------------------------------------------------------------------------


def _archive_seq(archive: Path) -> int:
    with storage_errors(str(archive), "restore"):
        db = _open_read_only(archive)
        try:
            seq = last_seq(db)
        finally:
            db.close()
    if seq is None:
        raise Corrupt(str(archive), "it is not a stream file (no meta table)")
    return seq


def _open_read_only(file: Path) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(file))}?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    _sql.harden(db)  # an archive holds a copy of a file its project's owner could write
    return db


def _live_seq(anchor: Anchor) -> int:
    with storage_errors(str(anchor.file), "restore"):
        db = anchor.connect()
        try:
            return last_seq(db) or 0  # an empty database (created, never initialized) has nothing
        finally:
            db.close()


def _restore(anchor: Anchor, archive: Path, levels: int) -> None:
    tmp = f"{anchor.name}.restore-{secrets.token_hex(4)}"
    anchor.create_temp(tmp)
    try:
        out = anchor.connect(tmp)
        try:
            src = _open_read_only(archive)
            try:
                src.backup(out)
            finally:
                src.close()
            problems = _sql.problems(out)
            if problems:
                raise Corrupt(str(archive), "its copy failed quick_check: " + "; ".join(problems[:5]))
            # A new stream id: the seqs after the archive's last one were lost and will be given
            # again, so every changefeed consumer must reload rather than go on from its cursor.
            out.execute("UPDATE meta SET value = ? WHERE name = 'stream_id'", (secrets.token_hex(8),))
        finally:
            out.close()
        anchor.fsync(tmp)
        for side in ("-wal", "-shm"):
            anchor.unlink(anchor.name + side)
        anchor.rename(tmp, anchor.name)
        anchor.fsync()
        sync_parents(anchor.dirfd, levels)  # the directories on the way, if they were new
    except BaseException:
        with contextlib.suppress(OSError):
            anchor.unlink(tmp)
        raise
