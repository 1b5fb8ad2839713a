"""The file server's pure parts: read locks, echo table, usage counting, config, error translation."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conat.beneath import BadName, OutsideRoot, SpecialFile
from host import FileServerConfig, FsError
from host._fs_audit import claimed_principal
from host._fs_errors import from_os_error
from host._fs_project import EchoTable, ReadLocks, Usage


def test_read_locks_one_winner_per_window() -> None:
    locks = ReadLocks()
    locks.take("a", 5.0, now=100.0)
    with pytest.raises(FsError) as info:
        locks.take("a", 5.0, now=104.9)
    assert info.value.code == "LOCK"
    locks.take("b", 5.0, now=104.9)  # another path is independent
    locks.take("a", 5.0, now=105.1)  # the window ended


def test_echo_table() -> None:
    echoes = EchoTable(window=2.0)
    echoes.wrote("a", "me", now=10.0)
    assert echoes.is_echo("a", "me", now=11.0)
    assert not echoes.is_echo("a", "you", now=11.0)
    assert not echoes.is_echo("a", None, now=11.0)
    assert not echoes.is_echo("a", "me", now=12.5)
    echoes.wrote("b", None, now=10.0)
    assert not echoes.is_echo("b", "me", now=10.0)


@given(st.integers(0, 10_000), st.lists(st.integers(-5_000, 5_000), max_size=50))
def test_usage_never_exceeds_the_limit(limit: int, deltas: list[int]) -> None:
    usage = Usage(limit)
    usage.set(0)
    for delta in deltas:
        before = usage.used
        assert before is not None
        try:
            usage.charge(delta, "p")
        except FsError as e:
            assert e.code == "EDQUOT" and delta > 0 and before + delta > limit
            assert usage.used == before
        assert usage.used is not None and 0 <= usage.used <= max(limit, before)


def test_usage_unknown_until_scanned_admits_everything() -> None:
    usage = Usage(10)
    usage.charge(1_000, "p")
    assert usage.used is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"projects": "relative/[project_id]"},
        {"projects": "/data/projects"},
        {"projects": "/d/[project_id]", "snapshots": "/s"},
        {"projects": "/d/[project_id]", "rate": 0},
        {"projects": "/d/[project_id]", "chunk": 2 << 20},
        {"projects": "/d/[project_id]", "quota": -1},
    ],
)
def test_config_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FileServerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_places_projects_and_snapshots() -> None:
    config = FileServerConfig(projects="/data/projects/[project_id]")
    assert str(config.project_root("p1")) == "/data/projects/p1"
    assert str(config.snapshot_root("p1")) == "/data/projects/.snapshots/p1"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OutsideRoot("x"), "OUTSIDE_ROOT"),
        (SpecialFile("x", "FIFO"), "ESPECIAL"),
        (BadName("x", errno.ENAMETOOLONG, "long"), "ENAMETOOLONG"),
        (FileNotFoundError(errno.ENOENT, "no", "/host/secret/path"), "ENOENT"),
        (OSError(errno.EDQUOT, "quota", "/host/path"), "EDQUOT"),
        (OSError(errno.ENOSPC, "full"), "ENOSPC"),
        (OSError(errno.EOPNOTSUPP, "nope"), "EINVAL"),
        (OSError(errno.ECONNRESET, "odd"), "EIO"),
    ],
)
def test_os_errors_translate_without_host_paths(error: OSError, code: str) -> None:
    translated = from_os_error(error, "rel/path")
    assert translated.code == code
    assert "/host" not in str(translated) and "rel/path" in str(translated)


def test_claimed_principal() -> None:
    assert claimed_principal("_INBOX.account-1234.abc.def") == "account-1234"
    assert claimed_principal("_INBOX.hub.x") == "hub"
    assert claimed_principal("_INBOX.abcDEF123.x") == ""
    assert claimed_principal("elsewhere") == ""
