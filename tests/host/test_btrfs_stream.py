"""The send-stream check (pure): what a hostile host's ``btrfs send`` stream may not hold, and that
the verdict does not depend on how the stream is cut into messages."""

from __future__ import annotations

import itertools
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conat.platform import BadArgument
from host._btrfs_stream import MAGIC, MAX_COMMAND, SendStreamCheck

SUBVOL, SNAPSHOT, MKFILE, MKNOD, MKFIFO, MKSOCK, SET_XATTR, WRITE, CLONE, END = (
    1,
    2,
    3,
    5,
    6,
    7,
    13,
    15,
    16,
    21,
)
UUID, XATTR_NAME, PATH, DATA, CLONE_UUID = 1, 13, 15, 19, 20
OWN = uuid.UUID(int=1).bytes
OTHER = uuid.UUID(int=2).bytes


def attr(kind: int, value: bytes) -> bytes:
    return struct.pack("<HH", kind, len(value)) + value


def command(kind: int, *attrs: bytes) -> bytes:
    body = b"".join(attrs)
    return struct.pack("<IHI", len(body), kind, 0) + body


def stream(*commands: bytes, version: int = 1, end: bool = True) -> bytes:
    head = MAGIC + struct.pack("<I", version) + command(SUBVOL, attr(PATH, b"snap"), attr(UUID, OWN))
    return head + b"".join(commands) + (command(END) if end else b"")


GOOD = stream(
    command(MKFILE, attr(PATH, b"a")),
    command(WRITE, attr(PATH, b"a"), attr(DATA, b"x" * 1000)),
    command(CLONE, attr(PATH, b"b"), attr(CLONE_UUID, OWN)),  # a reflink within the subvolume
    command(SET_XATTR, attr(PATH, b"a"), attr(XATTR_NAME, b"user.colour")),
)


def check(data: bytes, pieces: int = 1) -> SendStreamCheck:
    checker = SendStreamCheck()
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        checker.feed(data[i : i + step])
    checker.finish()
    return checker


def test_a_plain_stream_passes() -> None:
    assert check(GOOD).commands == 6


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not a stream at all", "not a btrfs send stream"),
        (stream(version=2), "version 2"),
        (MAGIC + struct.pack("<I", 1) + command(MKFILE, attr(PATH, b"a")), "must start"),
        (stream(command(SNAPSHOT, attr(UUID, OTHER))), "incremental"),
        (stream(command(CLONE, attr(PATH, b"b"), attr(CLONE_UUID, OTHER))), "another subvolume"),
        (stream(command(MKNOD, attr(PATH, b"sda"))), "device node"),
        (stream(command(MKFIFO, attr(PATH, b"p"))), "FIFO"),
        (stream(command(MKSOCK, attr(PATH, b"s"))), "socket"),
        (stream(command(SET_XATTR, attr(XATTR_NAME, b"security.capability"))), "security.capability"),
        (stream(command(SET_XATTR, attr(XATTR_NAME, b"trusted.x"))), "trusted.x"),
        (stream(command(99)), "unknown command 99"),
        (stream(command(SUBVOL, attr(UUID, OTHER))), "more than one subvolume"),
        (stream(command(SET_XATTR, struct.pack("<HH", XATTR_NAME, 10) + b"abc")), "longer than its command"),
        (stream(end=False), "truncated"),
        (stream() + command(MKFILE), "after the end"),
    ],
)
def test_refused(data: bytes, why: str) -> None:
    with pytest.raises(BadArgument, match=why):
        check(data)


def test_a_huge_command_is_refused_from_its_header_alone() -> None:
    checker = SendStreamCheck()
    checker.feed(MAGIC + struct.pack("<I", 1) + command(SUBVOL, attr(UUID, OWN)))
    with pytest.raises(BadArgument, match="at most"):
        checker.feed(struct.pack("<IHI", MAX_COMMAND + 1, WRITE, 0))  # nothing of it buffered


@given(st.lists(st.integers(min_value=1, max_value=len(GOOD)), max_size=30))
def test_the_verdict_does_not_depend_on_how_the_stream_is_cut(cuts: list[int]) -> None:
    bad = GOOD[: -len(command(END))] + command(MKNOD, attr(PATH, b"x")) + command(END)
    for data, ok in ((GOOD, True), (bad, False)):
        checker = SendStreamCheck()
        bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
        try:
            for start, stop in itertools.pairwise(bounds):
                checker.feed(data[start:stop])
            checker.finish()
        except BadArgument:
            assert not ok
        else:
            assert ok
