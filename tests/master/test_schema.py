"""master's database: versioned migrations, a refused newer schema, an append-only audit log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from master import MIGRATIONS, SchemaTooNew
from master._db import AccountRow, Database

pytestmark = pytest.mark.anyio


async def test_a_new_database_gets_every_migration_and_is_private(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "m.sqlite")
    try:
        assert db.version == len(MIGRATIONS) >= 2
        async with db.reading() as tx:
            tables = {r[0] for r in await tx.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"accounts", "api_keys", "hosts", "projects", "audit", "actions", "moves", "revocations",
                "snapshots"} <= tables  # fmt: skip
    finally:
        await db.aclose()
    assert (tmp_path / "m.sqlite").stat().st_mode & 0o777 == 0o600


async def test_an_older_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "m.sqlite", target=1)
    assert db.version == 1
    async with db.transaction() as tx:
        await tx.insert_account(AccountRow(id="a", name="ada", admin=True, revision=3, created=1.0))
        assert await tx.fetch("SELECT name FROM sqlite_master WHERE name = 'snapshots'") == []
    await db.aclose()
    db = await Database.open(tmp_path / "m.sqlite")
    try:
        assert db.version == len(MIGRATIONS)
        async with db.reading() as tx:
            account = await tx.account("a")
        assert account is not None and (account.name, account.admin, account.revision) == ("ada", True, 3)
    finally:
        await db.aclose()


async def test_a_database_from_a_newer_master_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    await (await Database.open(path)).aclose()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(SchemaTooNew) as refused:
        await Database.open(path)
    assert (refused.value.code, refused.value.found) == ("schema-too-new", len(MIGRATIONS) + 1)


async def test_the_audit_log_is_append_only(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "m.sqlite")
    try:
        async with db.transaction() as tx:
            await tx.audit(1.0, "hub", "test", "x", "kept")
        for statement in ("UPDATE audit SET detail = 'changed'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                async with db.transaction() as tx:
                    await tx.execute(statement)
        assert [(e.action, e.detail) for e in await db.audit_log()] == [("test", "kept")]
    finally:
        await db.aclose()


async def test_a_transaction_cancelled_at_any_await_leaves_none_open(tmp_path: Path) -> None:
    """Regression: cancelled while ``BEGIN`` was queued to the SQLite thread, a transaction stayed
    open on the shared connection and every later one failed ("within a transaction")."""
    db = await Database.open(tmp_path / "m.sqlite")
    try:
        for delay in (0, 0, 0.0005, 0.001, 0.002, 0.005):

            async def write(n: int) -> None:
                async with db.transaction() as tx:
                    await tx.audit(float(n), "hub", "write", str(n))
                    await tx.audit(float(n), "hub", "write-2", str(n))

            task = asyncio.ensure_future(write(0))
            await asyncio.sleep(delay)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with db.transaction() as tx:  # must not raise "cannot start a transaction within ..."
                await tx.audit(1.0, "hub", "after", str(delay))
        actions = [e.action for e in await db.audit_log()]
        assert actions.count("after") == 6 and actions.count("write") == actions.count("write-2")
    finally:
        await db.aclose()
