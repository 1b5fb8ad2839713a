"""Opening the bus's own SQLite files (audit log, revocations) so that no byte is ever readable by others.

SQLite creates a database's ``-wal`` and ``-shm`` files with the permissions of the database file
itself. So the database file is created 0600 (:func:`~conat.auth._files.make_private_file`:
``O_CREAT | O_NOFOLLOW``, then ``fchmod``) before SQLite opens it, and any ``-wal``/``-shm`` left by
an older version is brought to 0600 too; a symlink or a file of another user at any of the three
paths is refused. Chmod-ing the main file after SQLite opened it (what the first audit log did)
left the journal files 0644.

Several processes may share a file (every callout responder of a bus): WAL mode, and a busy
timeout so that a writer waits for another instead of failing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import aiosqlite

from ._files import make_private_file

__all__ = ["connect_private"]

BUSY_TIMEOUT: Final = 5.0
_SIDECARS: Final = ("-wal", "-shm", "-journal")


def _prepare(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    make_private_file(path, create=True, what="database")
    for suffix in _SIDECARS:
        make_private_file(path.with_name(path.name + suffix), create=False, what="database")


async def connect_private(path: Path, *, synchronous: str = "NORMAL") -> aiosqlite.Connection:
    """An aiosqlite connection to ``path`` in WAL mode, every file of it 0600 (module docstring).

    Raises:
        SecretFileError: a path is a symlink, not a regular file, or another user's.
        OSError: the directory cannot be created.
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous: NORMAL or FULL, got {synchronous!r}")
    await asyncio.to_thread(_prepare, path)
    db = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        await db.close()
        raise
    return db
