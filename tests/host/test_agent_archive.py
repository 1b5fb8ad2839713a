"""The archive a move sends between hosts that are not both on btrfs: files, symlinks as links, and
each SQLite store as one consistent file even while its rows sit in an uncheckpointed WAL."""

from __future__ import annotations

import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from host._agent_move import _extract, build_archive


def test_an_archive_round_trip_keeps_files_links_and_open_stores(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "hello.txt").write_text("hello")
    (home / "py").symlink_to("/usr/bin/python3")
    (home / "up").symlink_to("../outside")  # kept as a link: nothing is written through it
    store = sqlite3.connect(home / "store.db")
    store.execute("PRAGMA journal_mode=WAL")
    store.execute("CREATE TABLE t (n INTEGER)")
    store.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(500)])
    store.commit()
    assert (home / "store.db-wal").stat().st_size > 0  # the rows are in the WAL only
    try:
        built = build_archive(home, tmp_path / "out.tar")
    finally:
        store.close()
    assert built.files == 5 and built.bytes == (tmp_path / "out.tar").stat().st_size
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert not any(n.endswith(("-wal", "-shm")) for n in tar.getnames())
    arrived = tmp_path / "arrived"
    _extract(tmp_path / "out.tar", arrived)
    assert (arrived / "notes" / "hello.txt").read_text() == "hello"
    assert os.readlink(arrived / "py") == "/usr/bin/python3" and os.readlink(arrived / "up") == "../outside"
    copy = sqlite3.connect(arrived / "store.db")
    try:
        assert copy.execute("SELECT count(*), sum(n) FROM t").fetchone() == (500, sum(range(500)))
    finally:
        copy.close()


def test_an_archive_writing_through_a_link_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "victim")
        tar.addfile(link)
        data = tarfile.TarInfo("escape/owned")
        data.size = 0
        tar.addfile(data)
    (tmp_path / "victim").mkdir()
    with pytest.raises(tarfile.TarError):
        _extract(bad, tmp_path / "arrived")
    assert list((tmp_path / "victim").iterdir()) == []
