"""Shared checks of the persist tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from pathlib import Path


def assert_backup_holds(dest: Path, seqs: Collection[int]) -> None:
    """``dest`` is a sound SQLite database holding every seq in ``seqs``."""
    db = sqlite3.connect(dest)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {r[0] for r in db.execute("SELECT seq FROM messages")}
    finally:
        db.close()
    assert set(seqs) <= stored
