"""Watch sockets: events, shared watchers, overflow, inactivity drop, echo suppression, and no event
from outside the root."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

import conat
from conat.testing import FakeClock
from host import FileServer, FileServerConfig, FsClient, FsWatch, WatchEvent, fs

pytestmark = pytest.mark.anyio


async def events_until(watch: FsWatch, want: set[tuple[str, str]], timeout: float = 10.0) -> list[WatchEvent]:
    """Read events until every (type, path) of ``want`` was seen; returns all read."""
    seen: list[WatchEvent] = []
    missing = set(want)
    async with asyncio.timeout(timeout):
        while missing:
            event = await watch.next()
            seen.append(event)
            missing.discard((event.type, event.path))
    return seen


async def quiet(watch: FsWatch, seconds: float = 0.5) -> list[WatchEvent]:
    """Events that arrive within ``seconds``."""
    got: list[WatchEvent] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                got.append(await watch.next())
    except TimeoutError:
        return got


async def test_events_of_every_kind(f: FsClient, root: Path) -> None:
    async with await f.watch("") as watch:
        assert await watch.next(timeout=10) == WatchEvent("ready", "")
        (root / "a.txt").write_text("1")
        await events_until(watch, {("add", "a.txt")})
        with open(root / "a.txt", "a") as out:
            out.write("2")
        await events_until(watch, {("change", "a.txt")})
        (root / "d" / "e").mkdir(parents=True)
        await events_until(watch, {("addDir", "d")})
        (root / "d" / "e" / "deep.txt").write_text("x")  # below a directory made after the watch began
        await events_until(watch, {("add", "d/e/deep.txt")})
        await f.write_file("a.txt", "replaced")  # an atomic save of a known file is a change
        seen = await events_until(watch, {("change", "a.txt")})
        assert not any(".~fs-" in e.path for e in seen)  # the server's temp files are never reported
        os.unlink(root / "a.txt")
        await events_until(watch, {("unlink", "a.txt")})
        (root / "d" / "e" / "deep.txt").unlink()
        (root / "d" / "e").rmdir()
        await events_until(watch, {("unlink", "d/e/deep.txt"), ("unlinkDir", "d/e")})


async def test_watch_a_file_and_a_subdirectory(f: FsClient, root: Path) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "x").write_text("x")
    (root / "sub" / "y").write_text("y")
    async with await f.watch("sub/x") as one, await f.watch("sub") as tree:
        await one.next(timeout=10)
        await tree.next(timeout=10)
        (root / "sub" / "y").write_text("yy")
        (root / "sub" / "x").write_text("xx")
        assert [e for e in await events_until(one, {("change", "sub/x")}) if e.path != "sub/x"] == []
        await events_until(tree, {("change", "sub/y"), ("change", "sub/x")})
        assert all(e.path == "sub/x" for e in await quiet(one, 0.3))


async def test_watchers_of_one_path_share_one_backend(f: FsClient, root: Path, server: FileServer) -> None:
    assert server.shared is not None
    watches = [await f.watch("") for _ in range(3)]
    try:
        for w in watches:
            await w.next(timeout=10)
        stats = server.shared.hub.statistics()
        assert (stats["watchers"], stats["subscribers"]) == (1, 3)
        (root / "shared").write_text("x")
        for w in watches:
            await events_until(w, {("add", "shared")})
    finally:
        for w in watches:
            await w.aclose()


async def test_echo_suppression(f: FsClient, root: Path, client: conat.Client, project: str) -> None:
    other = fs(client, project)
    async with await f.watch("", echo=False) as mine, await f.watch("") as everything:
        await mine.next(timeout=10)
        await everything.next(timeout=10)
        await f.write_file("own.txt", "by me")
        await other.write_file("theirs.txt", "by another client")
        await events_until(everything, {("add", "own.txt"), ("add", "theirs.txt")})
        seen = await events_until(mine, {("add", "theirs.txt")})
        assert "own.txt" not in [e.path for e in seen + await quiet(mine, 0.3)]


async def test_no_event_from_outside_the_root(f: FsClient, root: Path, outside: Path) -> None:
    (root / "inside").mkdir()
    (root / "link").symlink_to(outside)  # never entered by a watcher
    async with await f.watch("") as watch:
        await watch.next(timeout=10)
        os.rename(root / "inside", root.parent / "moved-out")  # a watched directory leaves the tree
        await events_until(watch, {("unlinkDir", "inside")})
        (root.parent / "moved-out" / "leak").write_text("x")
        (outside / "dir" / "inner").touch()
        assert await quiet(watch, 0.5) == []
    with pytest.raises(conat.RemoteError) as info:
        async with await f.watch("link") as watch:
            await watch.next(timeout=10)
    assert info.value.code == "OUTSIDE_ROOT"


async def test_a_slow_subscriber_gets_overflow_and_others_are_not_slowed(
    client: conat.Client, tmp_path: Path
) -> None:
    config = FileServerConfig(projects=str(tmp_path / "p" / "[project_id]"), watch_queue=800)
    async with FileServer(client, config) as server:
        project = str(uuid.uuid4())
        root = await server.create_project(project)
        f = fs(client, project)
        async with await f.watch("", window=2048) as slow, await f.watch("") as fast:
            await slow.next(timeout=10)
            await fast.next(timeout=10)
            for burst in range(2):  # each burst: 600 events, within the queue; two are not
                names = [f"b{burst}-{i}" for i in range(300)]
                for name in names:
                    (root / name).write_text("x")
                seen = await events_until(fast, {("add", n) for n in names}, 20)
                assert "overflow" not in [e.type for e in seen]
            types = [e.type for e in await quiet(slow, 1.0)]  # it never read: its window is full
            assert "overflow" in types
            assert types.count("add") < 600


async def test_inactive_watchers_are_dropped_and_heartbeats_keep_them(
    client: conat.Client, tmp_path: Path
) -> None:
    clock = FakeClock()
    config = FileServerConfig(projects=str(tmp_path / "p" / "[project_id]"), watch_idle=60.0)
    async with FileServer(client, config, clock=clock) as server:
        assert server.shared is not None
        hub = server.shared.hub
        project = str(uuid.uuid4())
        await server.create_project(project)
        f = fs(client, project)
        await f.sync_fs_watch("", True)
        assert hub.statistics()["watchers"] == 1
        await clock.advance(50)
        await f.sync_fs_watch("", True)  # a heartbeat
        await clock.advance(50)
        assert hub.statistics()["watchers"] == 1  # 100 s after the first: kept alive by the second
        await clock.advance(30)
        assert hub.statistics()["watchers"] == 0  # 80 s after the last heartbeat: dropped
        await f.sync_fs_watch("", True)
        await f.sync_fs_watch("", False)  # released at once
        await clock.advance(20)
        assert hub.statistics()["watchers"] == 0
        async with await f.watch("") as watch:  # a subscriber holds it regardless of heartbeats
            await watch.next(timeout=10)
            await clock.advance(300)
            assert hub.statistics()["watchers"] == 1
        await asyncio.sleep(0.2)
        await clock.advance(61)
        assert hub.statistics()["watchers"] == 0


async def test_a_name_that_is_not_utf8_is_not_reported_and_the_watch_lives(f: FsClient, root: Path) -> None:
    """Paths travel as text: such a name cannot be sent, so it makes no event (it broke the socket's
    encoding before), and the events after it still arrive."""
    os.mkdir(os.path.join(os.fsencode(root), b"old\xfe"))  # present when the watch starts
    async with await f.watch("") as watch:
        assert await watch.next(timeout=10) == WatchEvent("ready", "")
        with open(os.path.join(os.fsencode(root), b"bad\xff.txt"), "wb") as fh:
            fh.write(b"x")
        (root / "good.txt").write_text("y")
        seen = await events_until(watch, {("add", "good.txt")})
        assert all(e.path.isascii() for e in seen), seen
