"""Escape attempts against the sandbox: every one refused with a stable code, the sentinel files
outside the project unchanged (by hash), with openat2 and with the O_NOFOLLOW walk; and a symlink
swap race run for seconds with zero escapes."""

from __future__ import annotations

import asyncio
import ctypes
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import conat
from host import FsClient, FsError

pytestmark = pytest.mark.anyio


@pytest.fixture
def traps(root: Path, outside: Path) -> Path:
    """Links of every kind planted in the project, pointing out of it."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "mine").write_text("mine")
    (root / "out").symlink_to(outside)  # absolute, to a directory outside
    (root / "rel").symlink_to("../../outside")  # relative, climbing out
    (root / "a" / "b" / "deep").symlink_to("../../../../outside")
    (root / "chain1").symlink_to("chain2")
    (root / "chain2").symlink_to("rel")
    (root / "secretlink").symlink_to(outside / "secret")  # to a file outside
    (root / "dangling").symlink_to("../../outside/created")  # would create a file outside
    (root / "proc").symlink_to("/proc/self/root")  # magic links
    (root / "cwd").symlink_to("/proc/self/cwd")
    (root / "fd").symlink_to("/proc/self/fd/0")
    (root / "procrel").symlink_to("../" * 30 + "proc/self/root")
    os.mkfifo(root / "fifo")
    if os.geteuid() == 0:  # making a device node needs CAP_MKNOD
        os.mknod(root / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    os.link(outside / "secret", root / "hardlink")
    return root


ESCAPING_PATHS = [
    "../outside/secret",
    "../../outside/secret",
    "./../outside/secret",
    "a/../../outside/secret",
    "a/b/../../../outside/secret",
    "..",
    "out/secret",
    "rel/secret",
    "a/b/deep/secret",
    "chain1/secret",
    "secretlink",
    "proc/etc/passwd",
    "cwd/secret",
    "procrel/etc/passwd",
]

READS: dict[str, Callable[[FsClient, str], Awaitable[object]]] = {
    "read_file": lambda f, p: f.read_file(p),
    "stat": lambda f, p: f.stat(p),
    "exists": lambda f, p: f.exists(p),
    "readdir": lambda f, p: f.readdir(p),
    "readdir_recursive": lambda f, p: f.readdir(p, recursive=True),
    "listing": lambda f, p: f.listing(p),
    "realpath": lambda f, p: f.realpath(p),
    "find": lambda f, p: f.find(p),
    "search": lambda f, p: f.search("secret", p),
    "du": lambda f, p: f.du(p),
    "copy_from": lambda f, p: f.copy_file(p, "stolen"),
    "cp_from": lambda f, p: f.cp(p, "stolen", recursive=True),
    "rename_from": lambda f, p: f.rename(p + "/x", "stolen"),
    "stream_from": lambda f, p: anext(f.read_stream(p)),
    "watch": lambda f, p: _watch(f, p),
    "sync_fs_watch": lambda f, p: f.sync_fs_watch(p),
}


async def _watch(f: FsClient, path: str) -> object:
    async with await f.watch(path) as watch:
        return await watch.next(timeout=10)


async def refused(call: Awaitable[object]) -> conat.RemoteError:
    """The refusal, which comes back as the file server's typed error (RPC, transfer or watch)."""
    with pytest.raises(FsError) as info:
        await call
    assert isinstance(info.value, conat.RemoteError)
    return info.value


async def test_reading_through_an_escape_is_refused(
    resolution: str, f: FsClient, traps: Path, outside: Path
) -> None:
    for method, call in sorted(READS.items()):
        for path in ESCAPING_PATHS:
            error = await refused(call(f, path))
            expected = ("OUTSIDE_ROOT", "EINVAL") if path == ".." else ("OUTSIDE_ROOT",)
            assert error.code in expected, (method, path, error)
            for host_path in (str(outside), str(traps)):
                assert host_path not in error.remote_message  # messages name relative paths only
    assert not (traps / "stolen").exists()


# (method, path): writes naming a path whose parent directory is outside the project
THROUGH_DIRS = ["../outside/x", "out/x", "rel/x", "a/b/deep/x", "chain1/dir/x", "proc/tmp/x", "out/secret"]
WRITES: dict[str, Callable[[FsClient, str], Awaitable[object]]] = {
    "write_file": lambda f, p: f.write_file(p, "pwned"),
    "append_file": lambda f, p: f.append_file(p, "pwned"),
    "truncate": lambda f, p: f.truncate(p),
    "write_file_delta": lambda f, p: f.write_file_delta(p, "@@ -1 +1 @@\n", "0" * 64),
    "stream": lambda f, p: f.write_stream(p, [b"pwned"]),
    "chmod": lambda f, p: f.chmod(p, 0o777),
    "utimes": lambda f, p: f.utimes(p, 1, 1),
    "mkdir": lambda f, p: f.mkdir(p),
    "mkdir_parents": lambda f, p: f.mkdir(p + "/y", parents=True),
    "rm": lambda f, p: f.rm(p, recursive=True),
    "unlink": lambda f, p: f.unlink(p),
    "rmdir": lambda f, p: f.rmdir(p),
    "symlink": lambda f, p: f.symlink("x", p),
    "rename_into": lambda f, p: f.rename("mine", p),
    "move_into": lambda f, p: f.move("mine", p, overwrite=True),
    "copy_into": lambda f, p: f.copy_file("mine", p),
    "cp_into": lambda f, p: f.cp("mine", p),
}
# writes to a symlink itself that leads out: the contents must not be reached through it
THROUGH_LINKS = ["secretlink", "dangling"]
LINK_WRITES = (
    "write_file",
    "append_file",
    "truncate",
    "write_file_delta",
    "stream",
    "chmod",
    "utimes",
    "copy_into",
)


async def test_writing_through_an_escape_is_refused(
    resolution: str, f: FsClient, traps: Path, outside: Path
) -> None:
    for method, call in sorted(WRITES.items()):
        for path in THROUGH_DIRS:
            error = await refused(call(f, path))
            assert error.code == "OUTSIDE_ROOT", (method, path, error)
        if method in LINK_WRITES:
            for path in THROUGH_LINKS:
                error = await refused(call(f, path))
                assert error.code == "OUTSIDE_ROOT", (method, path, error)
    assert (traps / "mine").read_text() == "mine"
    assert not (outside / "created").exists()  # the outside fixture checks the rest by hash
    assert os.readlink(traps / "secretlink") == str(outside / "secret")


_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """``renameat2(RENAME_EXCHANGE)``: swap two names atomically (no moment without either)."""
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@pytest.mark.parametrize("path", ["fifo", "zero"])
async def test_special_files_are_refused_without_blocking(f: FsClient, traps: Path, path: str) -> None:
    if not os.path.lexists(traps / path):
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    for call in (
        f.read_file(path),
        f.append_file(path, "x"),
        f.truncate(path),
        f.copy_file(path, "copy"),
        f.write_file_delta(path, "", "0" * 64),
    ):
        with pytest.raises(conat.RemoteError) as info:
            await asyncio.wait_for(call, 10)
        assert info.value.code == "ESPECIAL"
    stream = f.read_stream(path)
    with pytest.raises(conat.RemoteError) as info:
        await asyncio.wait_for(anext(stream), 10)
    assert info.value.code == "ESPECIAL"
    assert (await f.lstat(path)).type in ("fifo", "char")


async def test_hard_links_to_outside_are_never_read_or_changed(
    f: FsClient, traps: Path, outside: Path
) -> None:
    for call in (f.read_file("hardlink"), f.append_file("hardlink", "x"), f.chmod("hardlink", 0o777)):
        with pytest.raises(conat.RemoteError) as info:
            await call
        assert info.value.code == "EHARDLINK"
    with pytest.raises(conat.RemoteError):
        await anext(f.read_stream("hardlink"))
    assert "secret" not in str((await f.search("top secret", "")).matches)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("x" * 256, "ENAMETOOLONG"),
        ("a/" * 2100, "ENAMETOOLONG"),
        ("/".join(["d"] * 300), "ENAMETOOLONG"),
        ("a\0b", "EINVAL"),
        ("/etc/passwd", "OUTSIDE_ROOT"),
    ],
)
async def test_bad_paths(f: FsClient, traps: Path, path: str, code: str) -> None:
    for call in (f.read_file(path), f.write_file(path, "x"), f.mkdir(path, parents=True), f.stat(path)):
        with pytest.raises(conat.RemoteError) as info:
            await call
        assert info.value.code == code


@pytest.mark.parametrize(
    "name", ["%2e%2e", "..\\outside\\secret", "~", "\uff0e\uff0e", "...", "caf\u00e9", "cafe\u0301"]
)
async def test_names_are_literal(resolution: str, f: FsClient, traps: Path, name: str) -> None:
    with pytest.raises(conat.RemoteError) as info:
        await f.read_file(name + "/secret")
    assert info.value.code == "ENOENT"
    await f.write_file(name, "literal")
    assert (traps / name).read_text() == "literal"


async def test_rename_into_and_out_of_symlinked_directories(
    resolution: str, f: FsClient, traps: Path, outside: Path
) -> None:
    for src, dst in [
        ("mine", "out/mine"),
        ("out/secret", "stolen"),
        ("rel/dir", "stolen"),
        ("mine", "rel/mine"),
    ]:
        for call in (f.rename(src, dst), f.move(src, dst, overwrite=True)):
            with pytest.raises(conat.RemoteError) as info:
                await call
            assert info.value.code == "OUTSIDE_ROOT"
    # a rename *of* the symlink itself is fine: it stays a link in the project
    await f.rename("out", "out2")
    assert os.readlink(traps / "out2") == str(outside)


async def test_symlink_swap_race_never_escapes(
    resolution: str, f: FsClient, root: Path, outside: Path
) -> None:
    """A directory is swapped for a symlink to outside, thousands of times, while calls run."""
    (root / "d").mkdir()
    (root / "d" / "secret").write_text("inside\n")
    (root / "d" / "dir").mkdir()
    os.symlink(outside, root / "evil")
    stop = time.monotonic() + (2.5 if resolution == "openat2" else 1.5)
    swaps = 0

    def swapper() -> None:
        """Exchange "d" (the directory) and "evil" (a symlink out) atomically, over and over."""
        nonlocal swaps
        while time.monotonic() < stop:
            exchange(root / "d", root / "evil")
            exchange(root / "d", root / "evil")
            swaps += 1

    escapes: list[str] = []

    async def caller() -> None:
        while time.monotonic() < stop:
            for call in (
                f.read_file("d/secret"),
                f.write_file("d/written", "x"),
                f.readdir("d", recursive=True),
                f.search("secret", "d"),
                f.append_file("d/secret", "more\n"),
                f.mkdir("d/new", parents=True),
            ):
                try:
                    result = await call
                except conat.RemoteError as e:
                    assert e.code in ("OUTSIDE_ROOT", "ENOENT", "ENOTDIR", "EEXIST", "ELOOP"), e
                    continue
                if b"top secret" in str(result).encode() or "top secret" in str(result):
                    escapes.append(str(result))

    thread = asyncio.to_thread(swapper)
    await asyncio.gather(thread, caller(), caller())
    assert swaps > 100
    assert escapes == []
    assert not (outside / "written").exists() and not (outside / "new").exists()
