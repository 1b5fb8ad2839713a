"""master's database schema, as numbered migrations (SQLite ``PRAGMA user_version``).

Theory of operation
-------------------
:data:`MIGRATIONS` is the whole history: migration ``n`` (1-based) takes a database at version
``n - 1`` to version ``n``. :func:`migrate` applies the missing ones in order, each in its own
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash mid-way leaves the
database at the last complete version and the next start resumes there. A database at a version
this code does not know (made by a newer master) is refused (:class:`~master.SchemaTooNew`) rather
than used: nothing is ever downgraded. Migrations are append-only: never edit a released one, add
the next.

Tables (v2):

- ``accounts``: id, name, admin flag, revision (the principal's token revision, bumped to revoke),
  created, deleted (soft: a deleted account's id is never reused and its keys stop working).
- ``api_keys``: key id, the owner (an account or a host), the scrypt record (never the key).
- ``hosts`` and ``host_collaborators``: owner, shared flag, region, capacity, status
  (``new``/``online``/``offline``/``deleted``), last seen, bus URL, public key, provider, revision.
- ``projects`` and ``project_collaborators``: title, owner, host, desired and actual state, created,
  last activity, revision.
- ``audit``: append-only (triggers refuse UPDATE and DELETE): who did what to what, and why.
- ``actions``: the work queue (see :mod:`master._queue`).
- ``moves``: one row per move or clone, its phase, outcome and figures.
- ``revocations``: every revocation, in order (``seq``), so hosts that were away catch up.
- ``snapshots`` (v2): snapshots made through master.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

import aiosqlite

from ._errors import SchemaTooNew

__all__ = ["MIGRATIONS", "migrate", "open_database", "schema_version"]

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the initial schema
    """
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        revision INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        deleted REAL
    );
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        account_id TEXT REFERENCES accounts(id),
        host_id TEXT REFERENCES hosts(id),
        name TEXT NOT NULL DEFAULT '',
        record BLOB NOT NULL,
        created REAL NOT NULL,
        CHECK ((account_id IS NULL) != (host_id IS NULL))
    );
    CREATE INDEX api_keys_account ON api_keys(account_id);
    CREATE INDEX api_keys_host ON api_keys(host_id);
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL REFERENCES accounts(id),
        shared INTEGER NOT NULL DEFAULT 0,
        region TEXT NOT NULL DEFAULT '',
        capacity INTEGER NOT NULL DEFAULT 100,
        status TEXT NOT NULL DEFAULT 'new',
        last_seen REAL,
        bus_url TEXT NOT NULL DEFAULT '',
        public_key TEXT NOT NULL DEFAULT '',
        provider TEXT NOT NULL DEFAULT '',
        revision INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE TABLE host_collaborators (
        host_id TEXT NOT NULL REFERENCES hosts(id),
        account_id TEXT NOT NULL REFERENCES accounts(id),
        PRIMARY KEY (host_id, account_id)
    );
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        owner TEXT NOT NULL REFERENCES accounts(id),
        host_id TEXT REFERENCES hosts(id),
        desired TEXT NOT NULL DEFAULT 'stopped',
        state TEXT NOT NULL DEFAULT 'opened',
        reason TEXT NOT NULL DEFAULT '',
        limits BLOB,
        revision INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        last_activity REAL,
        deleted REAL
    );
    CREATE INDEX projects_host ON projects(host_id) WHERE deleted IS NULL;
    CREATE INDEX projects_owner ON projects(owner) WHERE deleted IS NULL;
    CREATE TABLE project_collaborators (
        project_id TEXT NOT NULL REFERENCES projects(id),
        account_id TEXT NOT NULL REFERENCES accounts(id),
        PRIMARY KEY (project_id, account_id)
    );
    CREATE INDEX project_collaborators_account ON project_collaborators(account_id);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        args BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 10,
        not_before REAL NOT NULL,
        owner TEXT,
        lease_until REAL,
        created REAL NOT NULL,
        finished REAL,
        error TEXT NOT NULL DEFAULT '',
        result BLOB,
        dedup TEXT UNIQUE
    );
    CREATE INDEX actions_ready ON actions(state, not_before);
    CREATE TABLE moves (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        project_id TEXT NOT NULL,
        new_project_id TEXT,
        source TEXT NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        phase TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        was_running INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER,
        sha256 TEXT,
        started REAL NOT NULL,
        finished REAL,
        downtime REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX moves_project ON moves(project_id, state);
    CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        principal TEXT NOT NULL,
        below INTEGER NOT NULL,
        time REAL NOT NULL
    );
    """,
    # 2: snapshots made through master
    """
    CREATE TABLE snapshots (
        project_id TEXT NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        host_id TEXT NOT NULL,
        created REAL NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (project_id, name)
    );
    """,
)


def _create_private(path: Path) -> None:
    """The database and its -wal/-shm are 0600 (SQLite gives them the main file's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


async def open_database(path: Path) -> aiosqlite.Connection:
    """Open (creating, 0600) master's database: WAL, ``synchronous=FULL`` (an acknowledged write
    survives a power loss), foreign keys on. Migrate with :func:`migrate` before use."""
    _create_private(path)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        await db.close()
        raise
    return db


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(db: aiosqlite.Connection, *, target: int | None = None) -> int:
    """Bring ``db`` to ``target`` (default: the newest version); returns the version reached.

    Raises:
        SchemaTooNew: the database is at a version beyond :data:`MIGRATIONS`.
    """
    known = len(MIGRATIONS)
    goal = known if target is None else target
    if not 0 <= goal <= known:
        raise ValueError(f"target: must be 0..{known}, got {target}")
    version = await schema_version(db)
    if version > known:
        raise SchemaTooNew(version, known)
    while version < goal:
        try:  # one transaction: the migration and its version bump
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
            )
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        version += 1
    return version
