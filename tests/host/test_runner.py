"""The runner against a real host: lifecycle and bootlog, exec, crash, bad input, export/import, idle stop."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conat
from host import (
    ExecOutput,
    Limits,
    ProjectExists,
    UnknownProject,
    WrongState,
    activity_subject,
    exec_command,
    exec_stream,
    fs,
    report_activity,
)
from persist import bootlog
from subjects import Scope

from .conftest import Host

pytestmark = pytest.mark.anyio


async def phases(host: Host, project: str) -> list[str]:
    return [
        event.phase if event.error is None else f"{event.phase}!"
        async for event in bootlog.events(host.client, project_id=project, follow=False)
    ]


async def test_lifecycle_with_every_phase_on_the_bootlog(host: Host) -> None:
    project = str(uuid.uuid4())
    created = await host.runner.create(project, Limits(memory_mb=256))
    assert created.state == "opened" and created.limits.memory_mb == 256
    started = await host.runner.start(project)  # returns at once
    assert started.state == "starting"
    status = await _wait_state(host, project, "running")
    assert status.pid is not None and status.usage is not None and status.usage.pids >= 1
    assert set(status.isolation.applied) >= {"env", "rlimits"}
    listed = {s.project_id: s.state for s in await host.runner.list()}
    assert listed[project] == "running"
    stopped = await host.runner.stop(project, wait=30)
    assert stopped.state == "opened" and stopped.pid is None
    assert not _alive(status.pid)
    network = ["network"] if "netns" in status.isolation.applied else []
    assert await phases(host, project) == [
        "create", "start", "prepare", "limits", *network, "launch", "connect", "ready", "stop", "stopped",
    ]  # fmt: skip
    again = await host.runner.restart(project, wait=60)
    assert again.state == "running" and again.pid != status.pid
    await host.runner.stop(project, wait=30)
    await host.runner.delete(project)
    with pytest.raises(conat.RemoteError) as e:
        await host.runner.status(project)
    assert e.value.code == "unknown-project"


async def _wait_state(host: Host, project: str, state: str, timeout: float = 60.0) -> object:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await host.runner.status(project)
        if status.state == state or loop.time() > deadline:
            assert status.state == state, status
            return status
        await asyncio.sleep(0.05)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_bad_input_gets_a_code_and_changes_nothing(host: Host) -> None:
    unknown = str(uuid.uuid4())
    for call in (host.runner.status(unknown), host.runner.start(unknown), host.runner.delete(unknown)):
        with pytest.raises(UnknownProject) as unknown_project:  # typed, and still a RemoteError
            await call
        assert isinstance(unknown_project.value, conat.RemoteError)
        assert (unknown_project.value.code, unknown_project.value.project_id) == ("unknown-project", unknown)
    with pytest.raises(conat.RemoteError) as e:
        await host.runner.create("not-a-uuid")
    assert e.value.code == 400 and "project_id" in str(e.value)
    project = await host.new_project(start=False)
    with pytest.raises(conat.RemoteError) as e:  # a limit out of range, as master might send it
        await host.client.request(
            f"runner.host-{host.host_id}",
            {"name": "create", "args": [str(uuid.uuid4()), {"memory_mb": 1}], "kwargs": {}},
        )
    assert e.value.code == 400 and "memory_mb" in str(e.value)
    with pytest.raises(WrongState) as wrong_state:  # raised by the project's actor, passed on by the runner
        await host.runner.stop(project)
    assert (wrong_state.value.code, wrong_state.value.state, wrong_state.value.event) == (
        "wrong-state",
        "opened",
        "stop",
    )
    with pytest.raises(ProjectExists) as exists:
        await host.runner.create(project)
    assert (exists.value.code, exists.value.project_id) == ("project-exists", project)
    with pytest.raises(conat.RemoteError) as e:
        await host.runner.start(project, token="conat1.not.a-token")
    assert e.value.code == 400
    with pytest.raises(conat.RemoteError) as e:  # a valid token, but for another project
        await host.runner.start(project, token=host.token(f"project-{uuid.uuid4()}"))
    assert e.value.code == 400 and "token" in str(e.value)
    assert (await host.runner.status(project)).state == "opened"  # nothing changed
    await host.runner.start(project, wait=60)
    for wrong in (
        host.runner.start(project),
        host.runner.delete(project),
        host.runner.export_project(project),
    ):
        with pytest.raises(conat.RemoteError) as e:
            await wrong
        assert e.value.code == "wrong-state"
    assert (await host.runner.status(project)).state == "running"
    await host.runner.stop(project, wait=30)


@pytest.fixture(scope="module")
async def running(host: Host) -> AsyncIterator[str]:
    """A running project shared by the tests that only run commands in it."""
    project = await host.new_project()
    yield project
    await host.runner.stop(project, wait=30)


async def test_exec_streams_output_exit_code_stdin_and_timeout(host: Host, running: str) -> None:
    project = running
    result = await exec_command(host.client, project, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.stdout, result.stderr, result.code) == (b"out\n", b"err\n", 7)
    result = await exec_command(host.client, project, ["cat"], stdin=b"x" * 300_000)
    assert result.stdout == b"x" * 300_000 and result.code == 0
    result = await exec_command(host.client, project, ["pwd"])
    assert result.stdout.decode().strip().endswith(project)
    result = await exec_command(host.client, project, ["sleep", "30"], timeout=0.5)
    assert result.exit.timed_out and result.exit.signal == signal.SIGKILL
    result = await exec_command(host.client, project, ["/no/such/program"])
    assert result.code is None and "no/such/program" in result.exit.error
    result = await exec_command(host.client, project, ["true"], cwd="../..")
    assert result.code is None and "leaves the project's home" in result.exit.error
    # streamed: the first line arrives while the command still runs; leaving kills it
    marker = f"/tmp/conat-exec-{uuid.uuid4().hex}"
    async for event in exec_stream(
        host.client, project, ["sh", "-c", f"echo started; sleep 30; touch {marker}"], timeout=60
    ):
        assert isinstance(event, ExecOutput) and event.data == b"started\n"
        break
    await asyncio.sleep(0.5)
    ps = await exec_command(host.client, project, ["sh", "-c", "ps -eo args 2>/dev/null || ls /proc"])
    assert b"sleep 30" not in ps.stdout


async def test_project_environment_is_scrubbed(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONAT_TEST_HOST_SECRET", "s3cr3t-of-the-host")  # in the host's environment
    project = await host.new_project()
    pid = (await host.runner.status(project)).pid
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"s3cr3t-of-the-host" not in environ and b"CONAT_TEST_HOST_SECRET" not in environ
    assert f"CONAT_PROJECT_ID={project}".encode() in environ
    inside = await exec_command(host.client, project, ["env"])
    assert b"s3cr3t" not in inside.stdout and b"CONAT_PROJECT_ID" in inside.stdout
    names = {line.split(b"=", 1)[0] for line in environ.split(b"\0") if line}
    assert names <= {
        b"PATH", b"LANG", b"LC_ALL", b"LC_CTYPE", b"TZ", b"TERM", b"HOME", b"USER", b"CONAT_PROJECT_ID",
        b"CONAT_URL", b"CONAT_CREDENTIALS", b"CONAT_ISOLATION", b"PYTHONUNBUFFERED", b"PYTHONPATH",
    }  # fmt: skip
    await host.runner.stop(project, wait=30)


async def test_a_crash_moves_the_project_to_error_with_the_reason_on_the_bootlog(host: Host) -> None:
    project = await host.new_project()
    pid = (await host.runner.status(project)).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status = await _wait_state(host, project, "error")
    assert "killed by SIGKILL" in status.reason  # type: ignore[attr-defined]
    events = [e async for e in bootlog.events(host.client, project_id=project, follow=False)]
    assert events[-1].phase == "crash" and "SIGKILL" in (events[-1].error or "")
    again = await host.runner.start(project, wait=60)  # error -> start is a retry
    assert again.state == "running"
    await host.runner.stop(project, wait=30)


async def test_a_project_that_cannot_start_reports_why(host: Host) -> None:
    project = str(uuid.uuid4())
    await host.runner.create(project)
    block_token_file(host, project)
    status = await host.runner.start(project, wait=60)
    assert status.state == "error" and "credentials" in status.reason
    events = [e async for e in bootlog.events(host.client, project_id=project, follow=False)]
    assert events[-1].error is not None and events[-1].error == status.reason


def block_token_file(host: Host, project: str) -> None:
    """Break the project's start: its token file is made unreadable by replacing its directory."""
    state = host.server.config.data / "runner" / project
    state.mkdir(parents=True, exist_ok=True)
    (state / "credentials").mkdir()  # the host cannot write its token file: a directory is in the way


async def test_export_then_import_elsewhere(host: Host) -> None:
    project = await host.new_project()
    await exec_command(
        host.client, project, ["sh", "-c", "mkdir -p a/b && echo kept > a/b/file && ln -s /etc/passwd link"]
    )
    await host.runner.stop(project, wait=30)
    data = await host.runner.export_project(project)
    copy = str(uuid.uuid4())
    imported = await host.runner.import_project(copy, data)
    assert imported.state == "opened"
    await host.runner.start(copy, wait=60)
    result = await exec_command(host.client, copy, ["sh", "-c", "cat a/b/file; readlink link"])
    assert result.stdout == b"kept\n/etc/passwd\n"
    with pytest.raises(conat.RemoteError) as e:
        await host.runner.import_project(str(uuid.uuid4()), b"not a tarball")
    assert e.value.code == 400
    await host.runner.stop(copy, wait=30)


async def test_idle_projects_stop_and_activity_keeps_them(host: Host) -> None:
    idle = await host.new_project(Limits(idle_timeout=1.5))
    busy = await host.new_project(Limits(idle_timeout=1.5))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (await host.runner.status(idle)).state != "opened" and loop.time() < deadline:
        await report_activity(host.client, busy)  # every 0.4 s, well inside busy's 1.5 s
        await asyncio.sleep(0.4)
    status = await host.runner.status(idle)
    assert status.state == "opened" and status.reason == "idle"
    assert (await host.runner.status(busy)).state == "running"
    await host.runner.stop(busy, wait=30)


async def test_the_host_serves_each_projects_files_and_file_work_is_activity(host: Host) -> None:
    """`conat host serve` runs the file server: a collaborator reads and writes the project's files
    over the host bus, and each call reports the project as in use (the idle-stop signal)."""
    project = await host.new_project(start=False)
    seen = await host.client.subscribe(activity_subject(project))
    async with await host.connect(f"account-{uuid.uuid4()}", Scope(projects=(project,))) as user:
        files = fs(user, project)
        await files.write_file("notes.txt", "hello from the bus")
        assert await files.read_file("notes.txt", "utf-8") == "hello from the bus"
        home = host.server.config.projects / project
        assert (home / "notes.txt").read_text() == "hello from the bus"
    assert (await seen.next(timeout=10)).subject == activity_subject(project)
    await seen.unsubscribe()
