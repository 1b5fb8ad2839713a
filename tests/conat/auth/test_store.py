"""The bus's durable auth state (real SQLite files): revocation floors only grow, a one-time token
is used once across processes' connections, and every file is private from its first byte."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from conat import ConatError
from conat.auth import AuditLog, AuthStore, AuthStoreError

pytestmark = pytest.mark.anyio

A = "account-00000000-0000-0000-0000-000000000005"


@pytest.fixture
def umask() -> Iterator[None]:
    """The usual umask: files SQLite creates would be 0644 without care."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(directory: Path, name: str) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in directory.glob(f"{name}*")}


async def test_floors_only_grow(tmp_path: Path) -> None:
    store = await AuthStore.open(tmp_path / "auth.sqlite")
    try:
        assert await store.floor(A) == 0
        assert await store.raise_floor(A) == 1  # a bus alone: one above
        assert await store.raise_floor(A) == 2
        assert await store.raise_floor(A, 5) == 5  # the issuer's revision
        assert await store.raise_floor(A, 3) == 5  # a late or replayed notice lowers nothing
        assert await store.floor(A) == 5
        assert await store.floors() == {A: 5}
        for bad in (0, -1, True, 2**53 + 1, 1.5):
            with pytest.raises(ValueError, match="below"):
                await store.raise_floor(A, bad)  # type: ignore[arg-type]
    finally:
        await store.aclose()
    again = await AuthStore.open(tmp_path / "auth.sqlite")
    try:
        assert await again.floor(A) == 5  # durable
    finally:
        await again.aclose()


async def test_a_one_time_token_is_used_once_across_connections(tmp_path: Path) -> None:
    """Two stores on one file stand for two responders: of concurrent first uses, one wins."""
    first, second = (
        await AuthStore.open(tmp_path / "auth.sqlite"),
        await AuthStore.open(tmp_path / "auth.sqlite"),
    )
    try:
        for i in range(20):
            results = await asyncio.gather(
                first.first_use(f"jti-{i}", 2e9, now=1e9), second.first_use(f"jti-{i}", 2e9, now=1e9)
            )
            assert sorted(results) == [False, True], i
        assert not await first.first_use("jti-0", 2e9, now=1e9)
    finally:
        await first.aclose()
        await second.aclose()


async def test_used_tokens_are_pruned_once_expired(tmp_path: Path) -> None:
    store = await AuthStore.open(tmp_path / "auth.sqlite")
    try:
        assert await store.first_use("old", expires=100.0, now=50.0)
        for i in range(64):  # prunes every 64 inserts, with the clock of the last one
            await store.first_use(f"new-{i}", expires=1e10, now=200.0)
        assert await store.first_use("old", expires=300.0, now=200.0)  # forgotten: it expired at 100
        assert not await store.first_use("new-0", expires=1e10, now=200.0)  # not expired: kept
    finally:
        await store.aclose()


async def test_a_store_that_cannot_answer_raises_its_own_error(tmp_path: Path) -> None:
    store = await AuthStore.open(tmp_path / "auth.sqlite")
    await store.aclose()
    with pytest.raises(AuthStoreError) as e:
        await store.floor(A)
    assert e.value.code == "auth-store" and str(tmp_path) in str(e.value)
    with pytest.raises(AuthStoreError):
        await store.first_use("x", 2e9)
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(AuthStoreError):
        await AuthStore.open(tmp_path / "dir.sqlite")


async def test_bus_databases_are_private_from_the_first_byte(tmp_path: Path, umask: None) -> None:
    """The audit log's -wal/-shm used to be 0644: only the main file was chmod-ed, after SQLite
    had created them with its mode."""
    audit = await AuditLog.open(tmp_path / "audit.sqlite")
    store = await AuthStore.open(tmp_path / "auth.sqlite")
    try:
        audit.record(principal=A, address="127.0.0.1", bus="master", result="grant", reason="ok")
        await audit.flush()
        await store.raise_floor(A)
        for name in ("audit.sqlite", "auth.sqlite"):
            found = modes(tmp_path, name)
            assert {f"{name}-wal", f"{name}-shm"} <= set(found), found
            assert set(found.values()) == {0o600}, found
    finally:
        await audit.aclose()
        await store.aclose()


async def test_journal_files_left_readable_are_made_private(tmp_path: Path, umask: None) -> None:
    path = tmp_path / "audit.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()  # an old version's files, 0644, with the -wal still there
    assert modes(tmp_path, "audit.sqlite")["audit.sqlite-wal"] == 0o644
    audit = await AuditLog.open(path)
    try:
        assert set(modes(tmp_path, "audit.sqlite").values()) == {0o600}
    finally:
        await audit.aclose()
        db.close()


async def test_a_symlinked_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.sqlite").touch(mode=0o600)
    (tmp_path / "auth.sqlite").symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(AuthStoreError, match="symlink"):
        await AuthStore.open(tmp_path / "auth.sqlite")
    (tmp_path / "audit.sqlite").touch(mode=0o600)
    (tmp_path / "audit.sqlite-wal").symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(ConatError, match="symlink"):
        await AuditLog.open(tmp_path / "audit.sqlite")
