"""Quotas (plain: counted by the server; btrfs: qgroups) and snapshots (create, list, restore, delete)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import conat
from host import FileServer, FileServerConfig, FsClient, QuotaInfo, btrfs_available, fs

from ..conftest import btrfs_loop

pytestmark = pytest.mark.anyio

KB = 1024


@pytest.fixture
async def quota_fs(client: conat.Client, tmp_path: Path) -> AsyncIterator[tuple[FsClient, Path, FileServer]]:
    config = FileServerConfig(projects=str(tmp_path / "p" / "[project_id]"), quota=10 * KB)
    async with FileServer(client, config) as server:
        project = str(uuid.uuid4())
        root = await server.create_project(project)
        (root / "existing").write_bytes(b"e" * 4 * KB)  # counted by the first scan
        yield fs(client, project), root, server


async def edquot(call: object) -> None:
    with pytest.raises(conat.RemoteError) as info:
        await call  # type: ignore[misc]
    assert info.value.code == "EDQUOT"


async def test_plain_quota_refuses_growth_past_the_limit(quota_fs: tuple[FsClient, Path, FileServer]) -> None:
    f, root, server = quota_fs
    assert await f.quota() == QuotaInfo(used=4 * KB, limit=10 * KB)
    await f.write_file("a", b"a" * 5 * KB)
    await edquot(f.write_file("b", b"b" * 2 * KB))
    assert not (root / "b").exists()
    await edquot(f.append_file("a", b"x" * 2 * KB))
    assert (root / "a").stat().st_size == 5 * KB
    await edquot(f.write_stream("s", [b"s" * 1024] * 3))
    assert not (root / "s").exists()
    await edquot(f.copy_file("a", "a2"))
    await edquot(f.truncate("a", 8 * KB))
    await f.write_file("a", b"a" * 6 * KB)  # replacing counts only the growth (1 KB)
    await f.write_file("a", b"small")  # shrinking is always allowed
    await f.write_file("b", b"b" * 4 * KB)
    await f.unlink("existing")
    assert (await f.quota()).used == 4 * KB + 5
    await server.set_quota(f.project_id, None)
    await f.write_file("big", b"z" * 50 * KB)
    assert (await f.quota()).limit is None


async def test_rm_gives_space_back(quota_fs: tuple[FsClient, Path, FileServer]) -> None:
    f, _, _ = quota_fs
    await f.mkdir("d")
    await f.write_file("d/x", b"x" * 5 * KB)
    await edquot(f.write_file("y", b"y" * 2 * KB))
    await f.rm("d", recursive=True)
    for _ in range(100):  # the count is redone in the background after a recursive rm
        if (await f.quota()).used == 4 * KB:
            break
        await asyncio.sleep(0.05)
    await f.write_file("y", b"y" * 2 * KB)


async def test_snapshots(f: FsClient, root: Path, server: FileServer, project: str) -> None:
    (root / "doc").write_text("v1")
    (root / "dir").mkdir()
    (root / "dir" / "x").write_text("x1")
    (root / "link").symlink_to("doc")
    snap = await f.create_snapshot("first")
    assert snap.name == "first"
    where = server.config.snapshot_root(project)
    assert (where / "first" / "dir" / "x").read_text() == "x1"
    assert not str(where).startswith(str(root))  # outside the project's tree
    assert [e.name for e in (await f.readdir("")).entries if e.name.startswith(".")] == []
    with pytest.raises(conat.RemoteError) as info:
        await f.create_snapshot("first")
    assert info.value.code == "EEXIST"
    for bad in ("../x", ".hidden", "a/b", "", "x" * 101):
        with pytest.raises(conat.RemoteError) as info:
            await f.create_snapshot(bad)
        assert info.value.code == "EBADNAME", bad
    auto = await f.create_snapshot()
    assert [s.name for s in await f.list_snapshots()] == ["first", auto.name]
    (root / "doc").write_text("v2")
    (root / "dir" / "x").unlink()
    (root / "new").write_text("new")
    await f.restore_snapshot("first", "dir/x")
    assert (root / "dir" / "x").read_text() == "x1" and (root / "doc").read_text() == "v2"
    await f.restore_snapshot("first")
    assert (root / "doc").read_text() == "v1" and not (root / "new").exists()
    assert os.readlink(root / "link") == "doc"
    with pytest.raises(conat.RemoteError) as info:
        await f.restore_snapshot("missing")
    assert info.value.code == "ENOENT"
    await f.delete_snapshot("first")
    assert [s.name for s in await f.list_snapshots()] == [auto.name]
    with pytest.raises(conat.RemoteError) as info:
        await f.delete_snapshot("first")
    assert info.value.code == "ENOENT"


# ---- btrfs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def btrfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 512 MiB btrfs filesystem on a loop device, mounted for this module."""
    with btrfs_loop(tmp_path_factory.mktemp("btrfs")) as mount:
        yield mount


async def test_btrfs_backend(client: conat.Client, btrfs_mount: Path) -> None:
    assert btrfs_available(btrfs_mount) is None
    config = FileServerConfig(
        projects=str(btrfs_mount / "projects" / "[project_id]"), backend="btrfs", quota=1 << 20
    )
    async with FileServer(client, config) as server:
        project = str(uuid.uuid4())
        root = await server.create_project(project)
        info = subprocess.run(
            ["btrfs", "subvolume", "show", str(root)], check=False, capture_output=True, text=True
        )
        assert info.returncode == 0  # a subvolume
        f = fs(client, project)
        await f.write_file("doc", "v1")
        with pytest.raises(conat.RemoteError) as err:  # the kernel's qgroup limit
            await f.write_stream("big", [b"x" * (256 << 10)] * 12)
        assert err.value.code == "EDQUOT"
        assert not (root / "big").exists()
        snap = await f.create_snapshot("s1")
        where = config.snapshot_root(project) / snap.name
        with pytest.raises(OSError):
            (where / "doc").write_text("changed")  # read-only snapshot
        await f.write_file("doc", "v2")
        await f.restore_snapshot("s1", "doc")
        assert (root / "doc").read_text() == "v1"
        assert (await f.quota()).limit == 1 << 20
        await f.delete_snapshot("s1")
        assert await f.list_snapshots() == []


def test_btrfs_unavailable_is_explained(tmp_path: Path) -> None:
    why = btrfs_available(tmp_path)
    assert why is None or "btrfs" in why
