"""A host killed with kill -9 and started again, as real processes (``conat host serve``):
projects that kept running are adopted (same process, none started twice), one that died while
the host was down is marked ``error``, and ``conat host status`` shows it all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

import conat
from conat.auth import Keyring, TokenIssuer
from host import exec_command, runner_proxy
from persist import bootlog
from subjects import HUB, Scope, host_scope

from .conftest import searchable_tmp

pytestmark = pytest.mark.anyio


def _serve(config: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    with open(config.parent / "host.log", "a") as log:  # the host's own log, for a failure's story
        proc = subprocess.Popen(
            [sys.executable, "-m", "conat.cli", "--json", "host", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the host exited with {proc.wait()}"
    ready: dict[str, object] = json.loads(line)
    assert ready["event"] == "ready"
    return proc, ready


def _project_processes(project: str) -> list[psutil.Process]:
    """Running project programs of ``project`` (not their bubblewrap wrappers)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "host.project" in cmdline and not cmdline[0].endswith("bwrap"):
            try:
                if proc.environ().get("CONAT_PROJECT_ID") == project:
                    found.append(proc)
            except psutil.Error:
                continue
    return found


def _cli_status(config: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "conat.cli", "--json", "host", "status", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status: dict[str, object] = json.loads(done.stdout)
    return status


async def test_kill_9_and_restart_adopts_running_projects_and_reports_lost_ones() -> None:
    with searchable_tmp("restart") as tmp:
        keys = tmp / "keys"
        issuer = TokenIssuer(Keyring.open(keys))
        config = tmp / "host.toml"
        config.write_text(f'[host]\ndata_dir = "{tmp / "data"}"\nsigning_keys = "{keys}"\nstop_grace = 2.0\n')
        host, ready = _serve(config)
        host_id = str(ready["host_id"])
        url = str(ready["url"])
        try:
            async with await conat.connect(
                url, credentials=issuer.issue(HUB, host_scope(host_id), Scope(), 600)
            ) as client:
                runner = runner_proxy(client, host_id)
                projects = [str(uuid.uuid4()) for _ in range(2)]
                pids = {}
                for project in projects:
                    await runner.create(project)
                    status = await runner.start(project, wait=60)
                    assert status.state == "running"
                    pids[project] = status.pid
            table = _cli_status(config)
            assert {p["project_id"]: p["state"] for p in table["projects"]} == dict.fromkeys(
                projects, "running"
            )  # type: ignore[index, union-attr]

            host.send_signal(signal.SIGKILL)
            host.wait(10)
            _close(host)
            lost = projects[1]
            for proc in _project_processes(lost):
                proc.kill()
            os.kill(pids[lost], signal.SIGKILL)  # its launcher/bubblewrap too

            host, ready = _serve(config)
            assert ready["host_id"] == host_id
            reconciled = ready["reconciled"]
            assert reconciled == {projects[0]: "adopted", lost: "lost"}
            url = str(ready["url"])
            async with await conat.connect(
                url, credentials=issuer.issue(HUB, host_scope(host_id), Scope(), 600)
            ) as client:
                runner = runner_proxy(client, host_id)
                for project in projects[:1]:
                    status = await runner.status(project)
                    assert status.state == "running" and status.pid == pids[project]
                    assert len(_project_processes(project)) == 1  # adopted, never started twice
                    survivors = [p.pid for p in _project_processes(project)]
                    result = await exec_command(client, project, ["echo", "still here"])
                    assert result.stdout == b"still here\n"
                status = await runner.status(lost)
                assert status.state == "error" and "while the host was down" in status.reason
                assert _project_processes(lost) == []
                events = [e async for e in bootlog.events(client, host_id=host_id, follow=False)]
                assert any(e.phase == "reconcile" and "1 adopted, 1 lost" in e.message for e in events)
            # a clean stop (SIGTERM) leaves projects running by default; the next start adopts them
            host.send_signal(signal.SIGTERM)
            assert host.wait(30) == 0
            _close(host)
            assert [p.pid for p in _project_processes(projects[0])] == survivors
            host, ready = _serve(config)
            assert ready["reconciled"] == {projects[0]: "adopted", lost: "unchanged"}
            async with await conat.connect(
                str(ready["url"]), credentials=issuer.issue(HUB, host_scope(host_id), Scope(), 600)
            ) as client:
                runner = runner_proxy(client, host_id)
                assert (await runner.stop(projects[0], wait=30)).state == "opened"
                assert (await runner.status(lost)).state == "error"
            host.send_signal(signal.SIGTERM)
            assert host.wait(30) == 0
        finally:
            if host.poll() is None:
                host.kill()
                host.wait(10)
            _close(host)
            await asyncio.sleep(0)


def _close(proc: subprocess.Popen[str]) -> None:
    if proc.stdout is not None:
        proc.stdout.close()
