"""The data directory and the server state file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conat._paths import (
    ServerState,
    clear_state,
    data_dir,
    ensure_data_dir,
    pid_alive,
    read_state,
    state_path,
    write_state,
)
from conat._server import NatsServer


@pytest.fixture
def private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("CONAT_DATA_DIR", str(path))
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _state(pid: int) -> ServerState:
    return ServerState(
        url="nats://127.0.0.1:4222",
        pid=pid,
        started_at=1700000000.5,
        config_path="/x/nats-server.conf",
        log_path="/x/nats-server.log",
        websocket_url="ws://127.0.0.1:8080",
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- data dir ---------------------------------------------------------------------------------------


def test_session_never_uses_the_real_home(conat_data_dir: Path) -> None:
    assert data_dir() == conat_data_dir


def test_conat_data_dir_wins_and_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CONAT_DATA_DIR", "~/mine")
    assert data_dir() == tmp_path / "mine"


def test_xdg_data_home_then_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONAT_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "conat"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert data_dir() == tmp_path / ".local" / "share" / "conat"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert data_dir() == tmp_path / ".local" / "share" / "conat"


def test_ensure_data_dir_creates_it_private(private_data_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        assert ensure_data_dir() == private_data_dir
    finally:
        os.umask(old)
    assert private_data_dir.is_dir()
    assert _mode(private_data_dir) == 0o700


def test_missing_parents_are_created_private_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONAT_DATA_DIR", str(tmp_path / "a" / "b"))
    old = os.umask(0o022)
    try:
        ensure_data_dir()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_ensure_data_dir_leaves_an_existing_dir_alone(private_data_dir: Path) -> None:
    private_data_dir.mkdir(mode=0o755)
    os.chmod(private_data_dir, 0o755)
    ensure_data_dir()
    assert _mode(private_data_dir) == 0o755


# -- state file -------------------------------------------------------------------------------------


def test_state_round_trip_with_a_live_server(private_data_dir: Path, nats_server: NatsServer) -> None:
    assert nats_server.pid is not None
    state = _state(nats_server.pid)
    path = write_state(state)
    assert path == state_path() == private_data_dir / "server.json"
    assert read_state() == state
    assert _mode(path) == 0o600
    assert _mode(private_data_dir) == 0o700


def test_no_state_file_reads_as_none(private_data_dir: Path) -> None:
    assert read_state() is None


def test_stale_pid_reads_as_none(private_data_dir: Path) -> None:
    write_state(_state(_dead_pid()))
    assert state_path().exists()
    assert read_state() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="program name check needs /proc")
def test_reused_pid_of_another_program_reads_as_none(private_data_dir: Path) -> None:
    write_state(_state(os.getpid()))  # alive, but python, not nats-server
    assert read_state() is None


def test_corrupt_state_reads_as_none(private_data_dir: Path) -> None:
    ensure_data_dir()
    state_path().write_text("{not json")
    assert read_state() is None


def test_clear_state_only_for_the_matching_pid(private_data_dir: Path) -> None:
    write_state(_state(12345))
    assert clear_state(pid=999) is False
    assert state_path().exists()
    assert clear_state(pid=12345) is True
    assert not state_path().exists()
    assert clear_state() is False


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(_dead_pid())
    assert not pid_alive(0)
    assert not pid_alive(-1)
