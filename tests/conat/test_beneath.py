"""conat.beneath: resolution beneath a root, with ``openat2`` and with the ``O_NOFOLLOW`` walk.

Real directories, real symlinks, FIFOs and sockets; every case runs both ways (``walk`` fixture) and
checks that nothing outside the root was opened, created or changed.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conat import beneath
from conat.beneath import (
    BadName,
    Follow,
    OutsideRoot,
    SpecialFile,
    SymlinkRefused,
    fd_path,
    open_beneath,
    open_dir_beneath,
    open_parent,
    open_regular,
    open_root,
    split_path,
)


@pytest.fixture(params=["openat2", "walk"])
def walk(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = beneath.set_openat2(None if request.param == "openat2" else False)
    try:
        yield request.param
        assert beneath.openat2_available() == (request.param == "openat2")
    finally:
        beneath.set_openat2(previous)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """``root`` with files, dirs and symlinks of every kind; ``outside`` holds a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "a" / "f").write_text("inside")
    (root / "a" / "b" / "up").symlink_to("../../a")  # stays beneath
    (root / "abs").symlink_to("/etc")
    (root / "a" / "esc").symlink_to("../../outside")
    (root / "magic").symlink_to("/proc/self/root")
    (root / "magic_rel").symlink_to("../" * 40 + "proc/self/root")
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("a/newfile")
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
    fd = open_root(root)
    yield fd, root, outside
    os.close(fd)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "secret"


def where(fd: int) -> str:
    return os.readlink(fd_path(fd))


INSIDE = ["a/f", "a/b/up/f", "a/b/../f", "a/b/up/b/up/f", "./a//f", "a/b/../../a/f"]
ESCAPES = [
    "../outside/secret",
    "/etc/passwd",
    "a/esc/secret",
    "abs/passwd",
    "magic/etc/passwd",
    "magic_rel/etc/passwd",
    "a/../../outside/secret",
    "a/b/up/../../outside/secret",
]


@pytest.mark.parametrize("path", INSIDE)
def test_paths_that_stay_beneath_open(walk: str, tree: tuple[int, Path, Path], path: str) -> None:
    fd, root, _ = tree
    got, st_ = open_regular(fd, path, os.O_RDONLY)
    try:
        assert os.read(got, 100) == b"inside"
        assert where(got) == str(root / "a" / "f")
        assert stat.S_ISREG(st_.st_mode)
    finally:
        os.close(got)


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_are_refused(walk: str, tree: tuple[int, Path, Path], path: str) -> None:
    fd, _, _ = tree
    with pytest.raises(OutsideRoot) as info:
        open_beneath(fd, path, os.O_RDONLY)
    assert info.value.errno == errno.EXDEV
    assert info.value.filename == path  # the relative path, never the host path


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_cannot_create(walk: str, tree: tuple[int, Path, Path], path: str) -> None:
    fd, _, _ = tree
    with pytest.raises(OutsideRoot):
        open_beneath(fd, path + "-new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with pytest.raises(OutsideRoot):
        open_dir_beneath(fd, path + "-dir/x", create=True)


@pytest.mark.parametrize(("path", "kind"), [("fifo", "FIFO"), ("sock", "socket"), ("devnull", "character")])
def test_special_files_are_refused_without_blocking(
    walk: str, tree: tuple[int, Path, Path], path: str, kind: str
) -> None:
    fd, root, _ = tree
    if path == "devnull":
        os.symlink("/dev/null", root / "devnull")  # absolute: refused before it is reached
        with pytest.raises(OutsideRoot):
            open_regular(fd, path, os.O_RDONLY)
        os.unlink(root / "devnull")
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root (CAP_MKNOD)")
        os.mknod(root / "devnull", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        with pytest.raises(SpecialFile) as info:
            open_regular(fd, path, flags)  # a FIFO would block a plain open for ever
        assert info.value.kind.startswith(kind)


def test_symlink_loops_and_dangling(walk: str, tree: tuple[int, Path, Path]) -> None:
    fd, root, _ = tree
    with pytest.raises(OSError) as info:
        open_beneath(fd, "loop", os.O_RDONLY)
    assert info.value.errno == errno.ELOOP
    created = open_beneath(fd, "dangling", os.O_WRONLY | os.O_CREAT, 0o600)  # created where it points
    os.close(created)
    assert (root / "a" / "newfile").is_file() and (root / "dangling").is_symlink()


def test_last_name_unfollowed(walk: str, tree: tuple[int, Path, Path]) -> None:
    fd, _, _ = tree
    link = open_beneath(fd, "abs", os.O_PATH, follow_last=False)  # the symlink itself, not /etc
    try:
        assert stat.S_ISLNK(os.fstat(link).st_mode)
        assert os.readlink("", dir_fd=link) == "/etc"
    finally:
        os.close(link)
    with pytest.raises(OSError) as info:
        open_beneath(fd, "a/b/up", os.O_RDONLY, follow_last=False)
    assert info.value.errno == errno.ELOOP


def test_parent_and_mkdir(walk: str, tree: tuple[int, Path, Path]) -> None:
    fd, root, _ = tree
    parent, name = open_parent(fd, "a/b/up/b/new")
    try:
        assert (where(parent), name) == (str(root / "a" / "b"), "new")
    finally:
        os.close(parent)
    made = open_dir_beneath(fd, "a/b/up/x/y", create=True)
    try:
        assert where(made) == str(root / "a" / "x" / "y")
    finally:
        os.close(made)
    with pytest.raises(BadName):
        open_parent(fd, "")
    with pytest.raises(BadName):
        open_parent(fd, "a/..")


def test_never_mode_refuses_every_symlink(walk: str, tree: tuple[int, Path, Path]) -> None:
    fd, root, _ = tree
    with pytest.raises(SymlinkRefused) as info:
        open_beneath(fd, "a/b/up/f", os.O_RDONLY, follow=Follow.NEVER)
    assert info.value.where == "a/b/up"
    with pytest.raises(SymlinkRefused):
        open_dir_beneath(fd, "a/b/up/new", follow=Follow.NEVER, create=True)
    assert not (root / "a" / "new").exists()
    with pytest.raises(OutsideRoot):
        open_beneath(fd, "a/../a/f", os.O_RDONLY, follow=Follow.NEVER)


def test_a_directory_swapped_for_a_symlink_after_opening_changes_nothing(
    walk: str, tree: tuple[int, Path, Path]
) -> None:
    fd, root, outside = tree
    parent, name = open_parent(fd, "a/f")
    try:
        os.rename(root / "a", root / "moved")
        os.symlink(str(outside), root / "a")
        os.unlink(name, dir_fd=parent)  # acts on the directory that was checked
    finally:
        os.close(parent)
    assert not (root / "moved" / "f").exists()


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("a\0b", errno.EINVAL),
        ("x" * 256, errno.ENAMETOOLONG),
        ("a/" * 300, errno.ENAMETOOLONG),
        ("/".join(["a"] * 257), errno.ENAMETOOLONG),
        ("y" * 5000, errno.ENAMETOOLONG),
    ],
)
def test_bad_names(path: str, code: int) -> None:
    with pytest.raises(BadName) as info:
        split_path(path)
    assert info.value.errno == code


def test_names_are_literal(walk: str, tree: tuple[int, Path, Path]) -> None:
    fd, root, _ = tree
    for name in ("%2e%2e", "~", "a\\..\\b", "caf\u00e9", "cafe\u0301", "..."):
        made = open_beneath(fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(made)
        assert (root / name).is_file()
    assert not (root / "caf\u00e9").samefile(root / "cafe\u0301")


@given(st.lists(st.sampled_from(["a", ".", "", "..", "b\\c", "%2e", "~"]), max_size=12))
def test_split_path_keeps_every_name_literally(names: list[str]) -> None:
    text = "/".join(names)
    if text.startswith("/"):
        with pytest.raises(OutsideRoot):
            split_path(text)
        return
    assert split_path(text) == [n for n in names if n not in ("", ".")]
