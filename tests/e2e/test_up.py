"""``conat up`` as the platform, with real processes: its ``--demo`` walk (a project started with
its bootlog shown live, a file through the file server, a command, a stop), ``conat status``
shows master and its hosts, a project runs through the admin's key file, and ``kill -9`` of
``conat up`` leaves nothing running (no nats-server, no host, no project process): every child
dies with its parent, and the hosts stop their projects on the way out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from master import ApiKeyFile, connect

from ..conat.cli_support import Proc, invoke
from ..host.conftest import searchable_tmp
from .conftest import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
async def test_kill_9_of_conat_up_leaves_no_process_behind() -> None:
    with searchable_tmp("up") as data:
        env = {"CONAT_DATA_DIR": str(data)}
        up = Proc(["--json", "up", "--hosts", "1", "--demo"], env)
        try:
            hint = json.loads(up.expect("stdout", '"event":"up"', timeout=180))
            demo = [json.loads(line) for line in up.seen["stdout"] if line.startswith("{")]
            phases = [e["phase"] for e in demo if e["event"] == "bootlog"]  # the bootlog, shown live
            assert phases[-1] == "ready" and {"start", "launch", "connect"} <= set(phases), phases
            exec_ = next(e for e in demo if e["event"] == "exec")  # a command through projects.exec
            assert exec_["code"] == 0 and "hello.txt" in exec_["stdout"]  # the file written through fs.*
            assert [e["state"] for e in demo if e["event"] == "stopped" and "state" in e] == ["opened"]
            assert any("conat projects list" in c for c in hint["try_commands"])
            status = invoke(["status"], env=env)  # type: ignore[arg-type]
            assert status.exit_code == 0, status.output
            assert "  master:    nats://127.0.0.1:" in status.stdout and "1 local host(s)" in status.stdout
            assert (data / "admin.key").stat().st_mode & 0o777 == 0o600

            project_id = await asyncio.to_thread(_cli_walk, env)
            async with await connect(ApiKeyFile.load(data / "admin.key")) as admin:
                project = await admin.projects.get(project_id)
                assert (project.state, project.desired) == ("running", "running")  # left running
            family = psutil.Process(up.popen.pid).children(recursive=True)
            names = {p.name() for p in family}
            assert "nats-server" in names and len(family) >= 5  # buses, master's host, the project
            projects = [p for p in family if "host.project" in " ".join(p.cmdline())]
            assert projects, [p.cmdline() for p in family]
        finally:
            up.popen.send_signal(signal.SIGKILL)
            up.finish()

        def all_gone() -> bool:
            return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)

        await until(all_gone, timeout=60, step=0.2)


def _conat(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conat.cli", *args], env={**os.environ, **env}, capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip


def _cli_walk(env: dict[str, str]) -> str:
    """The API commands, as the admin of conat up's key file (the default): returns a running project."""
    made = _conat(env, "--json", "projects", "create", "from the cli")
    assert made.returncode == 0, made.stderr
    project_id = json.loads(made.stdout)["project_id"]
    started = _conat(env, "projects", "start", project_id, "--wait")
    assert started.returncode == 0 and " running " in started.stdout, started
    again = _conat(env, "projects", "start", project_id)
    assert again.returncode == 2 and "(code already-running)" in again.stderr, again
    ran = _conat(env, "projects", "exec", project_id, "--", "sh", "-c", "echo out; exit 3")
    assert (ran.returncode, ran.stdout) == (3, "out\n"), ran
    listed = _conat(env, "--json", "projects", "list")
    assert project_id in {json.loads(line)["project_id"] for line in listed.stdout.splitlines()}
    status = _conat(env, "projects", "status", project_id)
    assert status.returncode == 0 and project_id in status.stdout and " running " in status.stdout
    boot = _conat(env, "bootlog", "follow", project_id, "--until-ready")
    assert boot.returncode == 0 and "ready" in boot.stdout and "launch" in boot.stdout, boot
    hosts = _conat(env, "--json", "hosts", "list")
    assert [json.loads(line)["status"] for line in hosts.stdout.splitlines()] == ["online"]
    unknown = _conat(env, "projects", "status", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 2 and "(code unknown-project)" in unknown.stderr
    return project_id
