"""Listing a scope's streams, bounded in what it walks into memory and in what it opens.

Why: the listing used to read every name under the scope into a list and sort it, then open each
stream as a stream (a writer connection, a whole-file check, and an eviction from the store's LRU
of some stream in use) just to count its messages; and one corrupt stream failed the whole listing.

- :func:`names_page` walks the scope's directory with ``os.scandir`` (never following a symlink)
  and keeps only the first ``limit`` names after a cursor, in order: memory is bounded by the page,
  whatever the scope holds. A quarantined stream (:mod:`persist._quarantine`) is listed too, by its
  marker, since its file was moved aside.
- :func:`peek` reads one stream's counts and config through a read-only connection, reached like
  any stream file (:class:`persist._beneath.Anchor`), without opening it as a stream. A stream that
  was not closed cleanly is not peeked at (reading it would recover its ``-wal``, and with it the
  sign that it needs a whole-file check): :meth:`persist.StreamStore.inventory` opens that one
  properly.

Blocking functions for the executor; they raise persist errors (``OSError`` and ``sqlite3`` errors
are translated at :func:`persist._engine_io.storage_errors`).
"""

from __future__ import annotations

import bisect
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from . import _sql
from ._beneath import Anchor
from ._config import StreamConfig
from ._engine_io import storage_errors, unclean
from ._errors import Corrupt, NotFound, PersistError
from ._model import Inventory
from ._placement import FILE_SUFFIX
from ._quarantine import MARKER_SUFFIX, WAY_OUT, refuse_if_quarantined

__all__ = ["names_page", "peek"]

_MARKER: Final = FILE_SUFFIX + MARKER_SUFFIX


def names_page(root: Path, prefix: str, after: str | None, limit: int) -> list[str]:
    """The first ``limit`` stream names under the scope directory ``root`` that start with
    ``prefix`` and sort after ``after``, in order (``[]`` if ``root`` does not exist).

    Memory holds at most ``limit`` names; time is one pass over the directory tree.
    """
    kept: list[str] = []
    for name in _names(root, ""):
        if not name.startswith(prefix) or (after is not None and name <= after):
            continue
        if len(kept) == limit and name >= kept[-1]:
            continue
        at = bisect.bisect_left(kept, name)
        if at < len(kept) and kept[at] == name:
            continue  # a quarantined stream with a file at its name again: one entry
        kept.insert(at, name)
        if len(kept) > limit:
            kept.pop()
    return kept


def _names(directory: Path, base: str) -> Iterator[str]:
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    with entries:
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # gone meanwhile
            if stat.S_ISDIR(mode):
                yield from _names(Path(entry.path), f"{base}{entry.name}/")
            elif stat.S_ISREG(mode):
                for suffix in (FILE_SUFFIX, _MARKER):
                    if entry.name.endswith(suffix) and len(entry.name) > len(suffix):
                        yield base + entry.name[: -len(suffix)]


def peek(root: Path, file: Path, now: float) -> tuple[Inventory, StreamConfig] | None:
    """The counts (at ``now``) and config of the stream in ``file``, read without opening it as a
    stream; ``None`` if it was not closed cleanly (open it as a stream instead).

    Raises:
        NotFound: there is no such stream.
        Corrupt: it is quarantined, or it is not a sound stream file (nothing is moved: a listing
            only reports; the next real open quarantines it, and the error says what to do).
        BadPath: a symlink beneath ``root``.
        StorageError: it cannot be read.
    """
    what = str(file)
    with storage_errors(what, "read"):
        anchor = Anchor.open(root, file, create=False, create_dirs=False, missing_ok=True)
        try:
            refuse_if_quarantined(anchor)
            if not anchor.existed:
                raise NotFound(f"stream file {file}")
            if unclean(anchor):
                return None
            try:
                with storage_errors(what, "read"):
                    db = anchor.connect(reader=True)
                    try:
                        return _read(db, what, now)
                    finally:
                        db.close()
            except Corrupt as e:  # found by this listing: say what happens next and what to do
                raise Corrupt(e.what, f"{e.detail}; its next use moves it aside, and {WAY_OUT}") from None
        finally:
            anchor.close()


def _read(db: sqlite3.Connection, what: str, now: float) -> tuple[Inventory, StreamConfig]:
    foreign = _sql.foreign_objects(db)
    if foreign:
        raise Corrupt(what, "objects persist did not make: " + ", ".join(foreign[:5]))
    row = db.execute("SELECT value FROM meta WHERE name = 'config'").fetchone()
    try:
        config = StreamConfig.from_dict(msgspec.json.decode(str(row[0]) if row else "null"))
    except (PersistError, msgspec.DecodeError, TypeError) as e:
        raise Corrupt(what, f"bad stored config: {e}") from None
    return _sql.select_inventory(db, config, now), config
