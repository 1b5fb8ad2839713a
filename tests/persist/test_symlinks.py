"""No symlink beneath a stream's root is followed: real files, real symlinks, both directory walks.

Every test that plants a symlink checks that nothing was created (or changed) where it points.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from conat.beneath import openat2_available, set_openat2
from persist import (
    BadPath,
    Corrupt,
    NotFound,
    OutsideScope,
    Placement,
    PlacementConfig,
    StreamFile,
    StreamStore,
)
from persist._archive import reset_stream
from persist._beneath import Anchor

pytestmark = pytest.mark.anyio

P = "12345678-1234-1234-1234-123456789abc"
Q = "aaaaaaaa-1234-1234-1234-123456789abc"


@pytest.fixture(params=["openat2", "nofollow"])
def walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with ``openat2``, then with the ``O_NOFOLLOW`` walk used where it is missing."""
    previous = set_openat2(None if request.param == "openat2" else False)
    try:
        yield request.param
        assert openat2_available() == (request.param == "openat2")
    finally:
        set_openat2(previous)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory outside every root: it must still be empty when the test ends."""
    path = tmp_path / "outside"
    path.mkdir()
    yield path
    assert sorted(path.iterdir()) == []


def fds_into(root: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root.resolve())):
            found.append(target)
    return found


def assert_refused_symlink(error: BadPath, file: Path, where: Path) -> None:
    assert error.code == "bad-path"
    assert str(file) in str(error) and str(where) in str(error)
    assert "a symlink was found" in str(error)


# ---- opening normally -------------------------------------------------------------------------------


async def test_create_and_reopen_beneath_root(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, walk: str
) -> None:
    root = tmp_path / "root"
    file = root / "projects" / "p" / "a" / "s.db"
    async with await StreamFile.open(file, root=root, executor=executor) as s:
        await s.set(b"x", key="k")
        got = await s.get(key="k")  # a reader connection, through the same directory fd
        assert got is not None and got.payload == b"x"
        assert {p.name for p in file.parent.iterdir()} == {"s.db", "s.db-wal", "s.db-shm"}
    assert fds_into(root) == []  # the directory fd closed with the stream
    async with await StreamFile.open(file, root=root, executor=executor, create=False) as s:
        assert (await s.inventory()).count == 1
    assert fds_into(root) == []


async def test_missing_without_create_creates_nothing(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, walk: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(NotFound):
        await StreamFile.open(root / "a" / "b" / "s.db", root=root, executor=executor, create=False)
    assert list(root.iterdir()) == []


async def test_root_may_be_a_symlink(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, walk: str
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    async with await StreamFile.open(link / "hub" / "s.db", root=link, executor=executor) as s:
        await s.set(b"x")
    assert (real / "hub" / "s.db").is_file()
    async with StreamStore(lambda p: (link, f"{p}.db")) as store, store.stream("hub/s") as s:
        assert (await s.inventory()).count == 1


async def test_outside_root_is_refused(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, walk: str
) -> None:
    root = tmp_path / "root"
    for file in (tmp_path / "other" / "s.db", root / ".." / "x.db", root):
        with pytest.raises(OutsideScope):
            await StreamFile.open(file, root=root, executor=executor)
    assert not root.exists() and not (tmp_path / "other").exists() and not (tmp_path / "x.db").exists()


async def test_corrupt_file_beneath_root_is_moved_aside(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, walk: str
) -> None:
    root = tmp_path / "root"
    file = root / "a" / "b" / "bad.db"
    file.parent.mkdir(parents=True)
    file.write_bytes(b"not a database " * 300)
    with pytest.raises(Corrupt) as e:
        await StreamFile.open(file, root=root, executor=executor)
    moved = [p for p in file.parent.iterdir() if p.name.startswith("bad.db.corrupt-")]
    assert len(moved) == 1 and str(moved[0]) in str(e.value)
    assert not file.exists()
    with pytest.raises(Corrupt, match="conat stream reset"):  # refused until an operator resets it
        await StreamFile.open(file, root=root, executor=executor)
    assert reset_stream(root, file, None) == []
    async with await StreamFile.open(file, root=root, executor=executor) as s:
        assert (await s.set(b"ok")).seq == 1


# ---- refusing symlinks ---------------------------------------------------------------------------------


async def test_symlinked_parent_directory_is_refused(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, outside: Path, walk: str
) -> None:
    root = tmp_path / "root"
    (root / "projects").mkdir(parents=True)
    link = root / "projects" / "p"
    link.symlink_to(outside)
    file = link / ".local" / "s.db"
    for create in (True, False):
        with pytest.raises(BadPath) as e:
            await StreamFile.open(file, root=root, executor=executor, create=create)
        assert_refused_symlink(e.value, file, link)


async def test_symlinked_file_is_refused(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, outside: Path, walk: str
) -> None:
    root = tmp_path / "root"
    (root / "hub").mkdir(parents=True)
    dangling = root / "hub" / "new.db"
    dangling.symlink_to(outside / "created.db")  # would create outside/created.db
    with pytest.raises(BadPath) as e:
        await StreamFile.open(dangling, root=root, executor=executor)
    assert_refused_symlink(e.value, dangling, dangling)

    victim = tmp_path / "victim.db"  # an existing database outside the root must not be opened
    with sqlite3.connect(victim) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    before = victim.read_bytes()
    link = root / "hub" / "s.db"
    link.symlink_to(victim)
    with pytest.raises(BadPath) as e:
        await StreamFile.open(link, root=root, executor=executor)
    assert_refused_symlink(e.value, link, link)
    assert victim.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root", "victim.db"]


async def test_symlinked_wal_is_refused(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, outside: Path, walk: str
) -> None:
    root = tmp_path / "root"
    file = root / "hub" / "s.db"
    async with await StreamFile.open(file, root=root, executor=executor) as s:
        await s.set(b"x")
    for side in ("-wal", "-shm"):
        planted = Path(f"{file}{side}")
        planted.symlink_to(outside / f"evil{side}")
        with pytest.raises(BadPath) as e:
            await StreamFile.open(file, root=root, executor=executor)
        assert_refused_symlink(e.value, file, planted)
        planted.unlink()


async def test_symlink_created_between_two_opens(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, outside: Path, walk: str
) -> None:
    root = tmp_path / "root"
    file = root / "hub" / "a" / "s.db"
    async with await StreamFile.open(file, root=root, executor=executor) as s:
        await s.set(b"x")
    directory = root / "hub" / "a"
    directory.rename(root / "hub" / "a.old")
    directory.symlink_to(outside)
    for create in (True, False):
        with pytest.raises(BadPath) as e:
            await StreamFile.open(file, root=root, executor=executor, create=create)
        assert_refused_symlink(e.value, file, directory)
    assert (root / "hub" / "a.old" / "s.db").is_file()


async def test_directory_swapped_while_open_cannot_redirect(
    tmp_path: Path, executor: concurrent.futures.ThreadPoolExecutor, outside: Path, walk: str
) -> None:
    """The directory fd pins where the file is: a reader opened after the swap still finds it."""
    root = tmp_path / "root"
    file = root / "hub" / "a" / "s.db"
    async with await StreamFile.open(file, root=root, executor=executor, max_readers=1) as s:
        await s.set(b"before", key="k")
        directory = root / "hub" / "a"
        directory.rename(root / "hub" / "moved")
        directory.symlink_to(outside)
        got = await s.get(key="k")  # the first read: its connection is opened now, after the swap
        assert got is not None and got.payload == b"before"
        await s.set(b"after", key="k")
        assert (await s.inventory()).count == 1
    moved = root / "hub" / "moved" / "s.db"
    async with await StreamFile.open(moved, root=root, executor=executor) as s:
        got = await s.get(key="k")
        assert got is not None and got.payload == b"after"


def test_verify_refuses_a_connection_to_another_file(tmp_path: Path, walk: str) -> None:
    """The check after opening compares what SQLite opened with the file in the pinned directory."""
    root = tmp_path / "root"
    anchor = Anchor.open(root, root / "a" / "s.db", create=True)
    try:
        db = anchor.connect()
        anchor.verify(db)
        db.close()
        elsewhere = sqlite3.connect(tmp_path / "s.db")
        try:
            with pytest.raises(BadPath) as e:
                anchor.verify(elsewhere)
            assert "SQLite opened" in str(e.value)
        finally:
            elsewhere.close()
    finally:
        anchor.close()


# ---- through the store and placement ---------------------------------------------------------------------


async def test_store_refuses_symlink_in_project_home(tmp_path: Path, outside: Path, walk: str) -> None:
    """The layout of the threat: a project's home (under a template root) with ``.local -> elsewhere``."""
    template = f"{tmp_path}/projects/[project_id]/.local/share/conat/persist"
    placement = Placement(PlacementConfig(projects=template), default_root=tmp_path / "sync")
    home = tmp_path / "projects" / P
    home.mkdir(parents=True)
    (home / ".local").symlink_to(outside)
    async with StreamStore(placement.locate) as store:
        for create in (True, False):
            with pytest.raises(BadPath) as e:
                async with store.stream(f"projects/{P}/x", create=create):
                    pass
            assert_refused_symlink(e.value, placement.path(f"projects/{P}/x"), home / ".local")
        async with store.stream(f"projects/{Q}/x") as s:  # a project without one is fine
            await s.set(b"ok")
        assert store.statistics().open == 1
    assert (tmp_path / "projects" / Q / ".local/share/conat/persist/x.db").is_file()


@pytest.mark.parametrize(
    ("config", "path", "root", "relative"),
    [
        (PlacementConfig(), "hub/a/b", "/r", "hub/a/b.db"),
        (PlacementConfig(), f"projects/{P}/x", "/r", f"projects/{P}/x.db"),
        (PlacementConfig(projects="/d/[project_id]/.local/p"), f"projects/{P}/x", "/d", f"{P}/.local/p/x.db"),
        (PlacementConfig(hosts="/h/x-[host_id]/p"), f"hosts/{P}/y/z", "/h", f"x-{P}/p/y/z.db"),
        (PlacementConfig(accounts="/acc"), f"accounts/{P}/x", "/acc", f"{P}/x.db"),
        (PlacementConfig(hub="/hubdata"), "hub/x", "/hubdata", "x.db"),
        (PlacementConfig(projects="/[project_id]"), f"projects/{P}/x", "/", f"{P}/x.db"),
    ],
)
def test_locate_starts_checking_above_the_id(
    config: PlacementConfig, path: str, root: str, relative: str
) -> None:
    placement = Placement(config, default_root="/r")
    located = placement.locate(path)
    assert located == (Path(root), PurePosixPath(relative))
    assert located[0] / located[1] == placement.path(path)
    assert ".." not in located[1].parts and "." not in located[1].parts
