"""Every file-server method over a real bus, with its errors (codes and relative paths)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import diff_match_patch as dmp_module
import pytest

import conat
from host import CopyResult, FileServer, FsClient, FsError, Stat, WriteResult

pytestmark = pytest.mark.anyio


async def code_of(awaitable: object) -> str | int:
    with pytest.raises(conat.RemoteError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code


async def test_errors_come_back_typed_with_their_fields(f: FsClient) -> None:
    with pytest.raises(FsError) as info:
        await f.read_file("no/such/file")
    assert isinstance(info.value, conat.RemoteError)  # callers catching RemoteError still do
    assert (info.value.code, info.value.path) == ("ENOENT", "no/such/file")
    assert info.value.remote_message == str(info.value)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_write_read_stat_exists(f: FsClient, root: Path) -> None:
    result = await f.write_file("a.txt", "hello")
    assert result == WriteResult(5, sha(b"hello"))
    assert (root / "a.txt").read_bytes() == b"hello"
    assert await f.read_file("a.txt") == b"hello"
    assert await f.read_file("a.txt", "utf-8") == "hello"
    st = await f.stat("a.txt")
    assert isinstance(st, Stat) and (st.type, st.size, st.nlink) == ("file", 5, 1)
    assert st.ino == (root / "a.txt").stat().st_ino
    assert await f.exists("a.txt") and not await f.exists("b.txt") and not await f.exists("a.txt/x")
    assert await code_of(f.read_file("missing")) == "ENOENT"
    assert await code_of(f.read_file("")) == "EISDIR"
    assert await code_of(f.read_file("a.txt", "latin-1")) == "EINVAL"
    (root / "bin").write_bytes(b"\xff\xfe")
    assert await code_of(f.read_file("bin", "utf-8")) == "EINVAL"


async def test_write_replaces_atomically_and_keeps_mode(f: FsClient, root: Path) -> None:
    (root / "x").write_text("old")
    os.chmod(root / "x", 0o640)
    inode = (root / "x").stat().st_ino
    await f.write_file("x", b"new contents")
    assert (root / "x").read_bytes() == b"new contents"
    assert stat.S_IMODE((root / "x").stat().st_mode) == 0o640
    assert (root / "x").stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(os.listdir(root)) == ["x"]  # no temporary file left behind
    assert await code_of(f.write_file("nodir/x", "a")) == "ENOENT"
    (root / "d").mkdir()
    assert await code_of(f.write_file("d", "a")) == "EISDIR"


async def test_write_through_a_symlink_writes_its_target(f: FsClient, root: Path) -> None:
    (root / "real").mkdir()
    (root / "real" / "t.txt").write_text("old")
    (root / "link.txt").symlink_to("real/t.txt")
    await f.write_file("link.txt", "new")
    assert (root / "link.txt").is_symlink()
    assert (root / "real" / "t.txt").read_text() == "new"


async def test_append_and_truncate(f: FsClient, root: Path) -> None:
    await f.append_file("log", "a")
    await f.append_file("log", b"bc")
    assert (root / "log").read_bytes() == b"abc"
    await f.truncate("log", 1)
    assert (root / "log").read_bytes() == b"a"
    await f.truncate("log")
    assert (root / "log").read_bytes() == b""
    assert await code_of(f.truncate("log", -1)) == "EINVAL"
    assert await code_of(f.truncate("nope")) == "ENOENT"
    assert await code_of(f.append_file("log", 5)) == "EINVAL"


async def test_write_file_delta(f: FsClient, root: Path) -> None:
    base = "line one\nline two\n" * 1000
    (root / "doc").write_text(base)
    dmp = dmp_module.diff_match_patch()
    edited = base.replace("line two", "line 2", 1)
    patch = dmp.patch_toText(dmp.patch_make(base, edited))
    result = await f.write_file_delta("doc", patch, sha(base.encode()))
    assert result.sha256 == sha(edited.encode()) and (root / "doc").read_text() == edited
    # the same patch again: the base changed
    assert await code_of(f.write_file_delta("doc", patch, sha(base.encode()))) == "ETAG_MISMATCH"
    assert (root / "doc").read_text() == edited
    bad = dmp.patch_toText(dmp.patch_make("something else entirely", "another text"))
    assert await code_of(f.write_file_delta("doc", bad, sha(edited.encode()))) == "PATCH_FAILED"
    assert await code_of(f.write_file_delta("doc", "@@ garbage", sha(edited.encode()))) == "PATCH_FAILED"
    huge = "x" * ((1 << 20) + 1)
    assert await code_of(f.write_file_delta("doc", huge, sha(edited.encode()))) == "PATCH_TOO_LARGE"
    assert (root / "doc").read_text() == edited


async def test_read_locks_have_one_winner(f: FsClient, root: Path) -> None:
    (root / "init").write_text("x")
    results = await asyncio.gather(
        *(f.read_file("init", None, 30.0) for _ in range(10)), return_exceptions=True
    )
    winners = [r for r in results if r == b"x"]
    losers = [r for r in results if isinstance(r, conat.RemoteError)]
    assert len(winners) == 1 and len(losers) == 9
    assert {e.code for e in losers} == {"LOCK"}
    assert await f.read_file("init") == b"x"  # a read without a lock is never refused


async def test_dirs_listing_and_names(f: FsClient, root: Path) -> None:
    await f.mkdir("a")
    await f.mkdir("b/c/d", parents=True)
    await f.mkdir("b/c/d", parents=True)  # exists: fine with parents
    assert await code_of(f.mkdir("a")) == "EEXIST"
    assert await code_of(f.mkdir("x/y")) == "ENOENT"
    (root / "a" / "f").write_text("12345")
    listing = await f.readdir("")
    assert sorted((e.name, e.type) for e in listing.entries) == [("a", "dir"), ("b", "dir")]
    deep = await f.readdir("", recursive=True)
    assert sorted(e.name for e in deep.entries) == ["a", "a/f", "b", "b/c", "b/c/d"]
    assert (await f.readdir("", recursive=True, limit=2)).truncated
    entries = {e.name: e for e in (await f.listing("a")).entries}
    assert entries["f"].size == 5 and entries["f"].type == "file"
    assert await code_of(f.readdir("a/f")) == "ENOTDIR"
    assert await code_of(f.rmdir("b")) == "ENOTEMPTY"
    await f.rmdir("b/c/d")
    assert await code_of(f.unlink("a")) == "EISDIR"
    await f.unlink("a/f")
    assert await code_of(f.unlink("a/f")) == "ENOENT"
    assert await code_of(f.rm("b")) == "EISDIR"
    await f.rm(["a", "b"], recursive=True)
    await f.rm("gone", force=True)
    assert await code_of(f.rm("gone")) == "ENOENT"
    assert sorted(os.listdir(root)) == []


async def test_rename_move_copy(f: FsClient, root: Path) -> None:
    (root / "a").write_text("A")
    (root / "b").write_text("B")
    assert await code_of(f.move("a", "b")) == "EEXIST"
    await f.move("a", "new/dir/a")  # parents made
    assert (root / "new" / "dir" / "a").read_text() == "A"
    await f.move("new/dir/a", "b", overwrite=True)
    assert (root / "b").read_text() == "A"
    await f.rename("b", "c")
    assert not (root / "b").exists() and (root / "c").read_text() == "A"
    await f.copy_file("c", "d")
    assert (root / "d").read_text() == "A" and (root / "c").read_text() == "A"
    (root / "tree" / "sub").mkdir(parents=True)
    (root / "tree" / "sub" / "x").write_text("xx")
    (root / "tree" / "l").symlink_to("sub/x")
    os.mkfifo(root / "tree" / "fifo")
    assert await code_of(f.copy_file("tree", "t2")) == "EISDIR"
    assert await code_of(f.cp("tree", "t2")) == "EISDIR"
    result = await f.cp("tree", "t2", recursive=True)
    assert isinstance(result, CopyResult) and (result.files, result.bytes) == (1, 2)
    assert result.skipped == ["tree/fifo"]
    assert (root / "t2" / "sub" / "x").read_text() == "xx"
    assert os.readlink(root / "t2" / "l") == "sub/x"
    assert await code_of(f.cp("tree/fifo", "f2")) == "ESPECIAL"
    assert await code_of(f.cp("c", "c2", reflink="sometimes")) == 400  # type: ignore[arg-type]


async def test_symlink_readlink_realpath_chmod_utimes(f: FsClient, root: Path) -> None:
    (root / "dir").mkdir()
    (root / "dir" / "file").write_text("x")
    await f.symlink("dir/file", "link")
    assert await f.readlink("link") == "dir/file"
    assert (await f.lstat("link")).type == "symlink"
    assert (await f.stat("link")).type == "file"
    assert await f.realpath("link") == "dir/file"
    assert await f.realpath("dir/../dir") == "dir"
    assert await f.realpath("") == ""
    assert await code_of(f.readlink("dir")) == "EINVAL"
    assert await code_of(f.symlink("x", "link")) == "EEXIST"
    await f.chmod("dir/file", 0o4755)  # setuid is never set
    assert stat.S_IMODE((root / "dir" / "file").stat().st_mode) == 0o755
    await f.utimes("dir/file", 1_000_000, 2_000_000)
    st = (root / "dir" / "file").stat()
    assert (st.st_atime, st.st_mtime) == (1_000_000, 2_000_000)


async def test_find_search_du(f: FsClient, root: Path, server: FileServer) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("import os\nprint('needle')\n")
    (root / "src" / "b.py").write_text("needle = 1\n")
    (root / "src" / "c.txt").write_text("no match\n")
    (root / "src" / "bin").write_bytes(b"needle\0\0binary")
    found = await f.find("src", ["*.py"])
    assert sorted(found.paths) == ["src/b.py", "src/pkg/a.py"]
    assert (await f.find("", type="d")).paths == ["src", "src/pkg"] or sorted(
        (await f.find("", type="d")).paths
    ) == ["src", "src/pkg"]
    assert (await f.find("", max_depth=1)).paths == ["src"]
    assert (await f.find("", limit=1)).truncated
    for engine in ("ripgrep", "python"):
        shared = server.shared
        assert shared is not None
        saved = shared.rg
        if engine == "python":
            shared.rg = None
        elif saved is None:
            continue
        try:
            result = await f.search("needle", "src")
            assert result.engine == engine
            assert sorted((m.path, m.line) for m in result.matches if "bin" not in m.path) == [
                ("src/b.py", 1),
                ("src/pkg/a.py", 2),
            ]
            assert (await f.search("needle", "src", glob=["*.py"], limit=1)).truncated
            assert (await f.search("NEEDLE", "src", ignore_case=True, glob=["b.py"])).matches[0].line == 1
            assert await code_of(f.search("(unclosed", "src")) == "EINVAL"
        finally:
            shared.rg = saved
    usage = await f.du("src")
    assert (usage.files, usage.dirs) == (4, 2) and usage.size == sum(
        p.stat().st_size for p in (root / "src").rglob("*") if p.is_file()
    )


async def test_search_never_reads_hardlinked_files(f: FsClient, root: Path, outside: Path) -> None:
    os.link(outside / "secret", root / "hard")
    result = await f.search("secret", "")
    assert result.matches == []
    assert await code_of(f.read_file("hard")) == "EHARDLINK"
    assert await code_of(f.append_file("hard", "x")) == "EHARDLINK"
    assert await code_of(f.truncate("hard")) == "EHARDLINK"
    assert await code_of(f.chmod("hard", 0o777)) == "EHARDLINK"
    assert await code_of(f.utimes("hard", 1, 1)) == "EHARDLINK"
    assert await code_of(f.copy_file("hard", "copy")) == "EHARDLINK"
    await f.write_file("hard", "replaced")  # replaces the link, never writes through it
    assert (root / "hard").read_text() == "replaced"


async def test_names_that_are_not_utf8_are_left_out_and_counted(f: FsClient, root: Path) -> None:
    """Paths travel as text: a name that is not UTF-8 cannot be sent, so listings skip it and say
    how many they skipped, instead of failing as a whole (a 500 before)."""
    with open(os.path.join(os.fsencode(root), b"bad\xff.txt"), "wb") as fh:
        fh.write(b"needle\n")
    os.mkdir(os.path.join(os.fsencode(root), b"dir\xfe"))
    (root / "good.txt").write_text("needle\n")
    listed = await f.readdir("")
    assert [e.name for e in listed.entries] == ["good.txt"] and listed.undecodable == 2
    assert [e.name for e in (await f.listing("")).entries] == ["good.txt"]
    assert (await f.listing("")).undecodable == 2
    found = await f.find("")
    assert found.paths == ["good.txt"] and found.undecodable == 2
    searched = await f.search("needle", "")
    assert [m.path for m in searched.matches] == ["good.txt"] and searched.undecodable == 2
    assert (await f.du("")).files == 2  # usage still counts every file
