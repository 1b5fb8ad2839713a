"""The host's audit log of the file server's mutating calls: one SQLite table, bounded.

Each row: when (wall clock), the project, the method, the paths it named (relative), the outcome
(``ok`` or the error code) and who asked. *Who* is the principal named by the request's reply inbox
(``_INBOX.<principal>...``, the prefix a client of an authenticated bus must use), marked as claimed:
a publisher chooses its reply subject, so it is a hint for people reading the log, not an identity
the file server relies on (the subject, which the broker binds to the caller's grant, is what
authorizes the call).

Rows are written by a single worker thread in batches (one transaction per batch), so a burst of
writes costs one commit; the table keeps its newest ``max_rows`` rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Final, final

import msgspec

__all__ = ["AuditLog", "AuditRow", "claimed_principal"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS fs_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    project TEXT NOT NULL,
    method TEXT NOT NULL,
    paths TEXT NOT NULL,
    outcome TEXT NOT NULL,
    who TEXT NOT NULL
)
"""
_INBOX: Final = "_INBOX."


class AuditRow(msgspec.Struct, frozen=True):
    time: float
    project: str
    method: str
    paths: list[str]
    outcome: str
    who: str


def claimed_principal(reply: str) -> str:
    """The principal a reply subject names (``_INBOX.<principal>.…``), or ``""``."""
    if not reply.startswith(_INBOX):
        return ""
    token = reply[len(_INBOX) :].split(".", 1)[0]
    return token if "-" in token or token == "hub" else ""


@final
class AuditLog:
    """Append-only (and trimmed) audit rows in ``path``. Use :meth:`open`, then :meth:`aclose`."""

    def __init__(self, path: Path, max_rows: int) -> None:
        self.path = path
        self.max_rows = max_rows
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fs-audit")
        self._db: sqlite3.Connection | None = None
        self._pending: list[AuditRow] = []
        self._flushing: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, max_rows: int = 1_000_000) -> AuditLog:
        self = cls(path, max_rows)
        await asyncio.get_running_loop().run_in_executor(self._pool, self._connect)
        return self

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)
        self._db = db

    def record(self, project: str, method: str, paths: list[str], outcome: str, who: str) -> None:
        """Queue one row (written within moments; never blocks the caller)."""
        self._pending.append(AuditRow(time.time(), project, method, paths, outcome, who))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        while self._pending:
            rows, self._pending = self._pending, []
            await asyncio.get_running_loop().run_in_executor(self._pool, self._write, rows)

    def _write(self, rows: list[AuditRow]) -> None:
        db = self._db
        if db is None:
            return
        encode = msgspec.json.encode
        with db:
            db.executemany(
                "INSERT INTO fs_audit (time, project, method, paths, outcome, who) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.time, r.project, r.method, encode(r.paths).decode(), r.outcome, r.who) for r in rows],
            )
            db.execute(
                "DELETE FROM fs_audit WHERE id <= (SELECT MAX(id) FROM fs_audit) - ?", (self.max_rows,)
            )

    async def rows(self, project: str | None = None, limit: int = 1000) -> list[AuditRow]:
        """The newest rows (of ``project``), oldest first."""
        await self.flush()
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, project, limit)

    def _read(self, project: str | None, limit: int) -> list[AuditRow]:
        assert self._db is not None
        query = "SELECT time, project, method, paths, outcome, who FROM fs_audit"
        args: tuple[object, ...] = ()
        if project is not None:
            query += " WHERE project = ?"
            args = (project,)
        rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [
            AuditRow(t, p, m, msgspec.json.decode(paths, type=list[str]), o, w)
            for t, p, m, paths, o, w in reversed(rows)
        ]

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, db.close)
        self._pool.shutdown(wait=True)
