"""The append-only audit log of auth decisions: one SQLite row per grant or refusal.

What a row holds: time, principal (when the credential named one), client address, bus, result
(``grant``/``refuse``/``revoke``/``kick``), a stable reason code, and the server and client ids
that let an operator find the connection. Never token bytes or any other secret: the log is for
people and may be shipped elsewhere.

The file and its ``-wal``/``-shm`` are private (0600) from the first byte, and every callout
responder of a bus (in any process) appends to the same file.

Writes are queued and committed in batches by one writer task, so a connect storm costs one
commit per batch rather than per connect (the callout answers before its row is on disk; an
acknowledged *grant* is not an acknowledged write to this log). ``aclose()`` commits what is
queued. Append-only is enforced by the database itself: triggers abort any UPDATE or DELETE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Self, final

import aiosqlite

from ._db import connect_private

__all__ = ["AuditEntry", "AuditLog", "Result"]

log = logging.getLogger("conat.auth.audit")

Result = Literal["grant", "refuse", "revoke", "kick"]
_BATCH: Final = 512

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    principal TEXT NOT NULL,
    address TEXT NOT NULL,
    bus TEXT NOT NULL,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    server TEXT NOT NULL,
    cid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_principal ON audit (principal, time);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@final
@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decision. ``principal`` is "" when the credential did not get far enough to name one."""

    time: float
    principal: str
    address: str
    bus: str
    result: Result
    reason: str
    server: str = ""
    cid: int = 0


@final
class AuditLog:
    """Open with ``await AuditLog.open(path)``; :meth:`record` never blocks the caller."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._queue: asyncio.Queue[AuditEntry | asyncio.Future[None] | None] = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> Self:
        """Open (create) the log at ``path``: it and its ``-wal``/``-shm`` files are 0600 from the
        first byte. Several processes (the responders of one bus) may share it."""
        db = await connect_private(path)
        try:
            await db.executescript(_SCHEMA)
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    def record(
        self,
        *,
        principal: str,
        address: str,
        bus: str,
        result: Result,
        reason: str,
        server: str = "",
        cid: int = 0,
        now: float | None = None,
    ) -> None:
        """Queue one decision for the log (dropped with a warning after :meth:`aclose`)."""
        if self._closed:
            log.warning("audit log closed: dropped %s %s for %r", result, reason, principal)
            return
        entry = AuditEntry(
            time.time() if now is None else now, principal, address, bus, result, reason, server, cid
        )
        self._queue.put_nowait(entry)

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            entries = [e for e in batch if isinstance(e, AuditEntry)]
            if entries:
                try:
                    await self._db.executemany(
                        "INSERT INTO audit (time, principal, address, bus, result, reason, server, cid)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (e.time, e.principal, e.address, e.bus, e.result, e.reason, e.server, e.cid)
                            for e in entries
                        ],
                    )
                    await self._db.commit()
                except aiosqlite.Error:
                    log.exception("could not write %d audit entries", len(entries))
            for item in batch:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.set_result(None)
            if None in batch:
                return

    async def flush(self) -> None:
        """Return when everything recorded so far is committed."""
        if self._closed:
            return
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(marker)
        await marker

    async def entries(self, principal: str | None = None) -> list[AuditEntry]:
        """Every entry (of ``principal``), oldest first (for operators and tests)."""
        await self.flush()
        sql = "SELECT time, principal, address, bus, result, reason, server, cid FROM audit"
        args: tuple[str, ...] = ()
        if principal is not None:
            sql += " WHERE principal = ?"
            args = (principal,)
        async with self._db.execute(sql + " ORDER BY id", args) as cursor:
            rows = await cursor.fetchall()
        return [AuditEntry(*row) for row in rows]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        await self._db.close()
