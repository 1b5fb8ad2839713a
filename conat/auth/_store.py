"""The durable auth state of one bus: revocation floors and used one-time tokens (SQLite).

One file per bus (``<bus dir>/auth.sqlite``), shared by every callout responder of the bus, in any
process: each decision reads it, each revocation writes it before anything is kicked, so a
responder that starts (or restarts) knows every revocation at once, and two responders can never
both accept the same one-time token.

**Revocation floors.** ``revocations(principal, below)``: the bus refuses the principal's tokens
whose revision (the token's ``rev`` claim, decided by the issuer alone) is below ``below``. Floors
only grow. Nothing here compares times of the issuer's clock with the bus's clock.

**One-time tokens.** ``used_tokens(jti, expires)``: the first use inserts the token's ``jti``; a
second insert finds it and is refused. Rows are kept until ``expires`` (the token's ``exp`` plus
the leeway, in the bus's own clock, the same clock that refuses the token as expired from then on)
and pruned as new ones come.

**Identity.** Each store has a random ``id``, made with the file: the bus's responders show it in
``$SRV`` discovery, so a responder that would decide for the same bus from another store (another
directory: its revocations and one-time tokens would not be the bus's) is refused at start.

Writes are ``synchronous=FULL``: a revocation or a used one-time token that was acknowledged
survives a power loss. Both are rare (a revoke, a host join), so their fsync costs nothing that
matters; reads are the common path (one indexed lookup per connect).

Errors: every SQLite or I/O failure is raised as :class:`~conat.auth.AuthStoreError` (code
``"auth-store"``);
the callout then refuses the connection (fail closed) and says so in the audit log.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Final, Self, final

import aiosqlite

from conat import ConatError

from ._db import connect_private
from ._errors import AuthStoreError
from ._tokens import MAX_REVISION

__all__ = ["AuthStore"]

log = logging.getLogger("conat.auth.store")

_PRUNE_EVERY: Final = 64

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS revocations (
    principal TEXT PRIMARY KEY,
    below INTEGER NOT NULL,
    time REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS used_tokens (
    jti TEXT PRIMARY KEY,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_tokens_expires ON used_tokens (expires);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('id', lower(hex(randomblob(8)))) ON CONFLICT (key) DO NOTHING;
"""


@final
class AuthStore:
    """Open with ``await AuthStore.open(path)``; close with :meth:`aclose`."""

    def __init__(self, db: aiosqlite.Connection, path: Path, id: str = "") -> None:
        self._db = db
        self.path = path
        self.id = id
        """This store's identity (module docstring): the same for every process that opens the file."""
        self._inserts = 0

    @classmethod
    async def open(cls, path: Path) -> Self:
        """Open (create) the store; the file and its ``-wal``/``-shm`` are 0600.

        Raises:
            AuthStoreError: it cannot be opened or created.
        """
        try:
            db = await connect_private(path, synchronous="FULL")
        except (OSError, sqlite3.Error, ValueError, ConatError) as exc:
            raise AuthStoreError(path, "open", str(exc)) from None
        try:
            await db.executescript(_SCHEMA)
            await db.commit()
            rows = await db.execute_fetchall("SELECT value FROM meta WHERE key = 'id'")
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
            await db.close()
            raise AuthStoreError(path, "open", str(exc)) from None
        return cls(db, path, next(str(value) for (value,) in rows))

    async def floor(self, principal: str) -> int:
        """The revision below which ``principal``'s tokens are refused (0: none are)."""
        try:  # one round trip to the SQLite thread: this is on every connect's path
            rows = await self._db.execute_fetchall(
                "SELECT below FROM revocations WHERE principal = ?", (principal,)
            )
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
            raise AuthStoreError(self.path, "read a revocation", str(exc)) from None
        for (below,) in rows:
            return int(below)
        return 0

    async def floors(self) -> dict[str, int]:
        """Every revocation floor, by principal (for operators and tests)."""
        try:
            async with self._db.execute("SELECT principal, below FROM revocations ORDER BY principal") as cur:
                rows = await cur.fetchall()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
            raise AuthStoreError(self.path, "read revocations", str(exc)) from None
        return {str(p): int(b) for p, b in rows}

    async def raise_floor(self, principal: str, below: int | None = None, *, now: float | None = None) -> int:
        """Raise ``principal``'s floor and return it, committed (durable) when this returns.

        Args:
            below: the issuer's new revision: the floor becomes at least this (a lower value changes
                nothing: floors only grow, so replays and reordered notices are harmless). ``None``:
                one above the current floor (a revoke decided by the bus alone).
            now: recorded with the row, for operators (never compared with anything).

        Raises:
            ValueError: ``below`` is not an int from 1 to :data:`conat.auth.MAX_REVISION`.
            AuthStoreError: the write failed (nothing was changed).
        """
        if below is not None and (
            not isinstance(below, int) or isinstance(below, bool) or not 1 <= below <= MAX_REVISION
        ):
            raise ValueError(f"below: must be an int from 1 to 2**53, got {below!r}")
        stamp = time.time() if now is None else now
        if below is None:
            sql = (
                "INSERT INTO revocations (principal, below, time) VALUES (?, 1, ?)"
                " ON CONFLICT (principal) DO UPDATE SET below = min(below + 1, ?), time = excluded.time"
                " RETURNING below"
            )
            args: tuple[object, ...] = (principal, stamp, MAX_REVISION)
        else:
            sql = (
                "INSERT INTO revocations (principal, below, time) VALUES (?, ?, ?)"
                " ON CONFLICT (principal) DO UPDATE SET below = max(below, excluded.below), time = excluded.time"
                " RETURNING below"
            )
            args = (principal, below, stamp)
        try:
            async with self._db.execute(sql, args) as cur:
                row = await cur.fetchone()
            await self._db.commit()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
            await self._rollback()
            raise AuthStoreError(self.path, "record a revocation", str(exc)) from None
        assert row is not None  # RETURNING always yields the row
        return int(row[0])

    async def first_use(self, jti: str, expires: float, now: float | None = None) -> bool:
        """Record one-time token ``jti`` as used until ``expires``; whether this was its first use.

        Atomic across processes: of two responders using the same token at once, one wins.

        Raises:
            AuthStoreError: the write failed (the caller refuses the token: fail closed).
        """
        stamp = time.time() if now is None else now
        try:
            async with self._db.execute(
                "INSERT INTO used_tokens (jti, expires) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING RETURNING jti",
                (jti, expires),
            ) as cur:
                first = await cur.fetchone() is not None
            self._inserts += 1
            if self._inserts % _PRUNE_EVERY == 0:
                await self._db.execute("DELETE FROM used_tokens WHERE expires <= ?", (stamp,))
            await self._db.commit()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
            await self._rollback()
            raise AuthStoreError(self.path, "record a one-time token", str(exc)) from None
        return first

    async def _rollback(self) -> None:
        try:
            await self._db.rollback()
        except (sqlite3.Error, ValueError):
            log.exception("rollback failed on %s", self.path)

    async def aclose(self) -> None:
        await self._db.close()

    def __repr__(self) -> str:
        return f"AuthStore({str(self.path)!r})"
