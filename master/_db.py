"""master's database: one aiosqlite connection, transactions, and the rows of every table.

Theory of operation
-------------------
One connection (one SQLite thread) serves the whole master. Every operation takes :attr:`lock`
for its whole duration, so the statements of one transaction never interleave with another
coroutine's (they share the connection) and a read never sees another's uncommitted write. A
write returns only after ``COMMIT`` (``synchronous=FULL``): whatever master acknowledged is on
disk, and a kill -9 loses nothing acknowledged.

The queries for the main tables (accounts, API keys, hosts, projects, collaborators, audit,
revocations, snapshots) live here; the work queue (:mod:`master._queue`) and moves
(:mod:`master._moves`) keep their own SQL next to their logic, through :meth:`Database.transaction`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import aiosqlite
import msgspec

from conat.auth import ApiKeyRecord
from conat.platform import Limits

from ._schema import migrate, open_database

__all__ = [
    "AccountRow",
    "AuditRow",
    "Database",
    "HostRow",
    "ProjectRow",
    "Tx",
]

_LIMITS_ENCODER = msgspec.msgpack.Encoder()
_LIMITS_DECODER = msgspec.msgpack.Decoder(Limits)


class AccountRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    admin: bool
    revision: int
    created: float
    deleted: float | None = None


class HostRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    owner: str
    shared: bool
    region: str
    capacity: int
    status: str
    last_seen: float | None
    bus_url: str
    public_key: str
    provider: str
    revision: int
    created: float
    collaborators: tuple[str, ...] = ()


class ProjectRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    title: str
    owner: str
    host_id: str | None
    desired: str
    state: str
    reason: str
    limits: Limits | None
    revision: int
    created: float
    last_activity: float | None
    collaborators: tuple[str, ...] = ()

    def members(self) -> tuple[str, ...]:
        """Owner and collaborators: who may open the project."""
        return (self.owner, *self.collaborators)


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    time: float
    actor: str
    action: str
    target: str
    detail: str


_ACCOUNT_COLUMNS = "id, name, admin, revision, created, deleted"
_HOST_COLUMNS = "id, name, owner, shared, region, capacity, status, last_seen, bus_url, public_key, provider, revision, created"
_PROJECT_COLUMNS = (
    "id, title, owner, host_id, desired, state, reason, limits, revision, created, last_activity"
)


def _account(row: Sequence[Any]) -> AccountRow:
    return AccountRow(
        id=row[0], name=row[1], admin=bool(row[2]), revision=row[3], created=row[4], deleted=row[5]
    )


def _host(row: Sequence[Any], collaborators: Iterable[str] = ()) -> HostRow:
    return HostRow(
        id=row[0], name=row[1], owner=row[2], shared=bool(row[3]), region=row[4], capacity=row[5],
        status=row[6], last_seen=row[7], bus_url=row[8], public_key=row[9], provider=row[10],
        revision=row[11], created=row[12], collaborators=tuple(sorted(collaborators)),
    )  # fmt: skip


def _project(row: Sequence[Any], collaborators: Iterable[str] = ()) -> ProjectRow:
    limits = _LIMITS_DECODER.decode(row[7]) if row[7] is not None else None
    return ProjectRow(
        id=row[0], title=row[1], owner=row[2], host_id=row[3], desired=row[4], state=row[5],
        reason=row[6], limits=limits, revision=row[8], created=row[9], last_activity=row[10],
        collaborators=tuple(sorted(collaborators)),
    )  # fmt: skip


class Tx:
    """The statements of one transaction (only valid inside :meth:`Database.transaction`)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the last inserted row id (or the rows changed, for updates)."""
        async with self._db.execute(sql, params) as cursor:
            if sql.lstrip().upper().startswith("INSERT"):
                return cursor.lastrowid or 0
            return cursor.rowcount

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any] | None:
        async with self._db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def audit(self, time: float, actor: str, action: str, target: str = "", detail: str = "") -> None:
        """Append to the audit log (in this transaction: the entry commits with what it records)."""
        await self.execute(
            "INSERT INTO audit (time, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            (time, actor, action, target, detail),
        )

    # -- accounts and keys ------------------------------------------------------------------------
    async def account(self, account_id: str) -> AccountRow | None:
        row = await self.fetch_one(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,))
        return _account(row) if row else None

    async def accounts(self) -> list[AccountRow]:
        rows = await self.fetch(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE deleted IS NULL ORDER BY created"
        )
        return [_account(r) for r in rows]

    async def insert_account(self, row: AccountRow) -> None:
        await self.execute(
            "INSERT INTO accounts (id, name, admin, revision, created) VALUES (?, ?, ?, ?, ?)",
            (row.id, row.name, int(row.admin), row.revision, row.created),
        )

    async def insert_key(
        self, record: ApiKeyRecord, created: float, *, account_id: str | None = None,
        host_id: str | None = None, name: str = "",
    ) -> None:  # fmt: skip
        await self.execute(
            "INSERT INTO api_keys (key_id, account_id, host_id, name, record, created) VALUES (?, ?, ?, ?, ?, ?)",
            (record.key_id, account_id, host_id, name, msgspec.msgpack.encode(record), created),
        )

    async def key(self, key_id: str) -> tuple[ApiKeyRecord, str | None, str | None, str, float] | None:
        """``(record, account_id, host_id, name, created)`` of a key."""
        row = await self.fetch_one(
            "SELECT record, account_id, host_id, name, created FROM api_keys WHERE key_id = ?", (key_id,)
        )
        if row is None:
            return None
        return msgspec.msgpack.decode(row[0], type=ApiKeyRecord), row[1], row[2], row[3], row[4]

    async def keys_of(
        self, *, account_id: str | None = None, host_id: str | None = None
    ) -> list[tuple[str, str, float]]:
        """``(key_id, name, created)`` of an account's (or a host's) keys."""
        column, value = ("account_id", account_id) if account_id is not None else ("host_id", host_id)
        return [
            (r[0], r[1], r[2])
            for r in await self.fetch(
                f"SELECT key_id, name, created FROM api_keys WHERE {column} = ? ORDER BY created", (value,)
            )
        ]

    async def bump_revision(self, table: str, ident: str) -> int:
        """Raise a principal's revision by one and return it (its older tokens can then be revoked)."""
        assert table in ("accounts", "hosts", "projects")
        await self.execute(f"UPDATE {table} SET revision = revision + 1 WHERE id = ?", (ident,))
        row = await self.fetch_one(f"SELECT revision FROM {table} WHERE id = ?", (ident,))
        assert row is not None
        return int(row[0])

    async def add_revocation(self, principal: str, below: int, time: float) -> int:
        return await self.execute(
            "INSERT INTO revocations (principal, below, time) VALUES (?, ?, ?)", (principal, below, time)
        )

    # -- hosts --------------------------------------------------------------------------------------
    async def host(self, host_id: str) -> HostRow | None:
        row = await self.fetch_one(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE id = ?", (host_id,))
        if row is None:
            return None
        collaborators = await self.fetch(
            "SELECT account_id FROM host_collaborators WHERE host_id = ?", (host_id,)
        )
        return _host(row, (c[0] for c in collaborators))

    async def hosts(self, *, include_deleted: bool = False) -> list[HostRow]:
        where = "" if include_deleted else "WHERE status != 'deleted'"
        rows = await self.fetch(f"SELECT {_HOST_COLUMNS} FROM hosts {where} ORDER BY created, id")
        collaborators: dict[str, list[str]] = {}
        for host_id, account_id in await self.fetch("SELECT host_id, account_id FROM host_collaborators"):
            collaborators.setdefault(host_id, []).append(account_id)
        return [_host(r, collaborators.get(r[0], ())) for r in rows]

    async def insert_host(self, row: HostRow) -> None:
        await self.execute(
            f"INSERT INTO hosts ({_HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.name, row.owner, int(row.shared), row.region, row.capacity, row.status,
             row.last_seen, row.bus_url, row.public_key, row.provider, row.revision, row.created),
        )  # fmt: skip

    async def update_host(self, host_id: str, **fields: Any) -> None:
        names = sorted(fields)
        assert set(names) <= set(_HOST_COLUMNS.replace(" ", "").split(",")) - {"id"}, names
        values = [int(v) if isinstance(v, bool) else v for v in (fields[n] for n in names)]
        await self.execute(
            f"UPDATE hosts SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?", (*values, host_id)
        )

    async def set_host_collaborator(self, host_id: str, account_id: str, present: bool) -> None:
        if present:
            await self.execute(
                "INSERT OR IGNORE INTO host_collaborators (host_id, account_id) VALUES (?, ?)",
                (host_id, account_id),
            )
        else:
            await self.execute(
                "DELETE FROM host_collaborators WHERE host_id = ? AND account_id = ?", (host_id, account_id)
            )

    async def project_counts(self) -> dict[str, int]:
        """Projects assigned to each host (what placement counts against capacity)."""
        rows = await self.fetch(
            "SELECT host_id, count(*) FROM projects WHERE deleted IS NULL AND host_id IS NOT NULL GROUP BY host_id"
        )
        return {r[0]: int(r[1]) for r in rows}

    # -- projects -----------------------------------------------------------------------------------
    async def project(self, project_id: str) -> ProjectRow | None:
        row = await self.fetch_one(
            f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = ? AND deleted IS NULL", (project_id,)
        )
        if row is None:
            return None
        collaborators = await self.fetch(
            "SELECT account_id FROM project_collaborators WHERE project_id = ?", (project_id,)
        )
        return _project(row, (c[0] for c in collaborators))

    async def projects(self, *, member: str | None = None, host_id: str | None = None) -> list[ProjectRow]:
        """Live projects, all or those ``member`` owns or collaborates on, or those on ``host_id``."""
        where, params = ["deleted IS NULL"], []
        if member is not None:
            where.append(
                "(owner = ? OR id IN (SELECT project_id FROM project_collaborators WHERE account_id = ?))"
            )
            params += [member, member]
        if host_id is not None:
            where.append("host_id = ?")
            params.append(host_id)
        rows = await self.fetch(
            f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE {' AND '.join(where)} ORDER BY created, id",
            params,
        )
        ids = [r[0] for r in rows]
        collaborators: dict[str, list[str]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for project_id, account_id in await self.fetch(
                f"SELECT project_id, account_id FROM project_collaborators WHERE project_id IN ({marks})",
                chunk,
            ):
                collaborators.setdefault(project_id, []).append(account_id)
        return [_project(r, collaborators.get(r[0], ())) for r in rows]

    async def insert_project(self, row: ProjectRow) -> None:
        limits = _LIMITS_ENCODER.encode(row.limits) if row.limits is not None else None
        await self.execute(
            f"INSERT INTO projects ({_PROJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.title, row.owner, row.host_id, row.desired, row.state, row.reason, limits,
             row.revision, row.created, row.last_activity),
        )  # fmt: skip

    async def update_project(self, project_id: str, **fields: Any) -> None:
        names = sorted(fields)
        allowed = {"title", "host_id", "desired", "state", "reason", "last_activity", "deleted"}
        assert set(names) <= allowed, names
        await self.execute(
            f"UPDATE projects SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
            (*(fields[n] for n in names), project_id),
        )

    async def set_project_collaborator(self, project_id: str, account_id: str, present: bool) -> None:
        if present:
            await self.execute(
                "INSERT OR IGNORE INTO project_collaborators (project_id, account_id) VALUES (?, ?)",
                (project_id, account_id),
            )
        else:
            await self.execute(
                "DELETE FROM project_collaborators WHERE project_id = ? AND account_id = ?",
                (project_id, account_id),
            )


class Database:
    """master's database (see the module docstring). ``await Database.open(path)``; :meth:`aclose`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self.lock = asyncio.Lock()
        self.version = 0

    @classmethod
    async def open(cls, path: Path, *, target: int | None = None) -> Self:
        """Open and migrate (to ``target``, default the newest schema).

        Raises:
            SchemaTooNew: a newer master made the database.
        """
        db = await open_database(path)
        try:
            self = cls(db, path)
            self.version = await migrate(db, target=target)
        except BaseException:
            await db.close()
            raise
        return self

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` if the block raises), under :attr:`lock`.

        Atomic with respect to cancellation: a statement handed to the SQLite thread runs even if
        its caller is cancelled meanwhile (a ``BEGIN`` included), so whatever was cancelled, a
        ``ROLLBACK`` is queued behind it (the thread runs statements in order) before the lock is
        released; "no transaction is active" from it is expected and ignored.
        """
        async with self.lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield Tx(self._db)
            except BaseException:
                await asyncio.shield(self._rollback())
                raise
            try:
                await self._db.execute("COMMIT")
            except BaseException:
                await asyncio.shield(self._rollback())
                raise

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            await self._db.execute("ROLLBACK")

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Tx]:
        """Reads under :attr:`lock` (never between another coroutine's statements)."""
        async with self.lock:
            yield Tx(self._db)

    async def audit_log(
        self, *, target: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[AuditRow]:
        where, params = "seq > ?", [after]
        if target is not None:
            where += " AND target = ?"
            params.append(target)  # type: ignore[arg-type]
        async with self.reading() as tx:
            rows = await tx.fetch(
                f"SELECT seq, time, actor, action, target, detail FROM audit WHERE {where} ORDER BY seq LIMIT ?",
                (*params, limit),
            )
        return [
            AuditRow(seq=r[0], time=r[1], actor=r[2], action=r[3], target=r[4], detail=r[5]) for r in rows
        ]

    async def aclose(self) -> None:
        await self._db.close()
