"""The local bus's lifecycle with real processes: ``kill -9``, SIGHUP, ``conat status``, ``conat down``.

``conat up`` / ``conat server`` run as subprocesses (``python -m conat.cli``) with their own data dir;
``status`` and ``down`` run in-process (``CliRunner``) against them, as from another terminal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conat._paths import ServerState, pid_alive
from conat._process import parent_pid, wait_gone

from .cli_support import Proc, invoke, json_lines, procs

__all__ = ["procs"]  # a fixture: imported to be found, used by name

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="parent-death signals are Linux's"
)

UP_READY = 60.0  # `conat up` runs its demo conversation before it says it is up


def _env(data: Path) -> dict[str, str]:
    return {"CONAT_DATA_DIR": str(data)}


def _state(data: Path) -> dict[str, Any]:
    return msgspec.json.decode((data / "server.json").read_bytes())  # type: ignore[no-any-return]


def _start(kind: str, data: Path, procs: list[Proc]) -> tuple[Proc, dict[str, Any]]:
    """``conat --json <kind>``, once ready: the process and its state file."""
    proc = Proc(["--json", kind], _env(data))
    procs.append(proc)
    if kind == "server":
        proc.expect("stdout", '"event":"ready"')
    else:
        proc.expect("stdout", '"event":"up"', timeout=UP_READY)
    state = _state(data)
    assert state["manager_pid"] == proc.popen.pid
    assert pid_alive(state["pid"], expect="nats-server")
    return proc, state


@linux_only
@pytest.mark.parametrize("kind", ["server", "up"])
def test_kill_9_takes_the_nats_server_along_and_a_new_start_works(
    kind: str, tmp_path: Path, procs: list[Proc]
) -> None:
    first, state = _start(kind, tmp_path, procs)
    assert parent_pid(state["pid"]) == first.popen.pid

    first.popen.kill()  # SIGKILL: no handler runs, the state file stays behind
    first.finish()
    assert wait_gone(state["pid"], 10, expect="nats-server"), "the nats-server outlived its conat process"

    stale = invoke(["status"], env=_env(tmp_path))
    assert stale.exit_code == 8
    assert (
        f"a stale state file at {tmp_path / 'server.json'}: nats-server pid {state['pid']} is gone"
        in stale.stdout
    )

    if kind == "up":
        again = Proc(["up", "--once"], _env(tmp_path))
        procs.append(again)
        code, out, err = again.finish(timeout=UP_READY)
        assert code == 0, err
        assert out.splitlines()[-2:] == ["demo     ok", "bus      stopped"]
    else:
        again, new_state = _start("server", tmp_path, procs)
        assert new_state["pid"] != state["pid"]
        again.popen.send_signal(signal.SIGINT)
        assert again.finish()[0] == 0


@pytest.mark.parametrize("kind", ["server", "up"])
def test_sighup_stops_cleanly(kind: str, tmp_path: Path, procs: list[Proc]) -> None:
    proc, state = _start(kind, tmp_path, procs)
    proc.popen.send_signal(signal.SIGHUP)  # the terminal was closed
    code, out, err = proc.finish()
    assert code == 0, err
    assert json_lines(out)[-1] == {"event": "stopped"}
    assert not (tmp_path / "server.json").exists()
    assert wait_gone(state["pid"], 5, expect="nats-server")


def test_status_and_down_manage_a_running_bus(tmp_path: Path, procs: list[Proc]) -> None:
    env = _env(tmp_path)
    server, state = _start("server", tmp_path, procs)
    url, pid, manager = state["url"], state["pid"], server.popen.pid

    human = invoke(["status"], env=env)
    assert human.exit_code == 0, human.output
    assert human.stdout.splitlines()[:2] == [
        f"conat bus running at {url}",
        f"  nats-server pid {pid}, managed by pid {manager}",
    ]
    [info] = json_lines(invoke(["status", "--json"], env=env).stdout)
    assert {k: info[k] for k in ("running", "url", "pid", "manager_pid", "orphaned")} == {
        "running": True, "url": url, "pid": pid, "manager_pid": manager, "orphaned": False,
    }  # fmt: skip
    assert info["uptime_s"] >= 0 and info["state_path"] == str(tmp_path / "server.json")

    second = invoke(["up", "--once"], env=env)  # one bus per data dir
    assert second.exit_code == 6
    assert f"a conat bus is already running at {url}" in second.stderr and "`conat down`" in second.stderr

    down = invoke(["down"], env=env)
    assert down.exit_code == 0, down.output
    assert down.stdout == f"stopped the conat bus at {url} (nats-server pid {pid}, conat pid {manager})\n"
    code, out, err = server.finish()
    assert code == 0, err  # it stopped as on Ctrl-C, and said so
    assert json_lines(out)[-1] == {"event": "stopped"}
    assert not pid_alive(pid, expect="nats-server")
    assert not (tmp_path / "server.json").exists()

    nothing = f"no conat bus is running (no state file at {tmp_path / 'server.json'})\n"
    for command in ("status", "down"):
        result = invoke([command], env=env)
        assert (result.exit_code, result.stdout) == (8, nothing), command
    [event] = json_lines(invoke(["--json", "down"], env=env).stdout)
    assert event == {
        "event": "not-running", "running": False, "stale": False, "state_path": str(tmp_path / "server.json"),
    }  # fmt: skip


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_down_removes_a_stale_state_file(tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    pid = _dead_pid()
    stale = ServerState(url="nats://127.0.0.1:4222", pid=pid, started_at=time.time(), config_path="c",
                        log_path="l", manager_pid=_dead_pid())  # fmt: skip
    path.write_bytes(msgspec.json.encode(stale))
    status = invoke(["status"], env=_env(tmp_path))
    assert status.exit_code == 8
    assert (
        status.stdout
        == f"no conat bus is running (left a stale state file at {path}: nats-server pid {pid} is gone)\n"
    )
    assert path.exists()  # status only looks
    down = invoke(["down"], env=_env(tmp_path))
    assert down.exit_code == 8
    assert (
        down.stdout
        == f"no conat bus is running (removed a stale state file at {path}: nats-server pid {pid} is gone)\n"
    )
    assert not path.exists()


ORPHAN = """
import asyncio, os, sys, time
from conat._paths import ServerState, write_state
from conat._server import NatsServer

async def main():
    server = NatsServer(directory=sys.argv[1], die_with_parent=False)
    await server.start()
    write_state(ServerState(url=server.url, pid=server.pid, started_at=time.time(), manager_pid=os.getpid(),
                            config_path=str(server.config_path), log_path=str(server.log_path)))
    print(server.pid, flush=True)
    os._exit(0)  # no cleanup: the server is left behind, as by a manager killed without a parent-death signal

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["down", "server"])
def test_an_orphaned_nats_server_is_reported_and_stopped(how: str, tmp_path: Path, procs: list[Proc]) -> None:
    env = _env(tmp_path)
    made = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(tmp_path / "orphan")],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    pid = int(made.stdout)
    try:
        assert pid_alive(pid, expect="nats-server")
        [info] = json_lines(invoke(["--json", "status"], env=env).stdout)
        assert (info["running"], info["orphaned"], info["pid"], info["manager_pid"]) == (
            True,
            True,
            pid,
            None,
        )
        if how == "down":
            down = invoke(["down"], env=env)
            assert down.exit_code == 0, down.output
            assert down.stdout == f"stopped the conat bus at {info['url']} (nats-server pid {pid})\n"
        else:  # a new server stops the orphan instead of calling it "already running"
            server = Proc(["server"], env)
            procs.append(server)
            note = server.expect("stderr", "stopping the orphaned nats-server")
            assert f"pid {pid} at {info['url']}" in note
            server.expect("stdout", "conat server ready at")
            server.popen.send_signal(signal.SIGINT)
            assert server.finish()[0] == 0
        assert not pid_alive(pid, expect="nats-server")
    finally:
        if pid_alive(pid, expect="nats-server"):
            os.kill(pid, signal.SIGKILL)
