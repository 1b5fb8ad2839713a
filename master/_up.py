"""master's part in ``conat up``: the platform (master and ``--hosts N`` local hosts) and its demo.

``conat up`` finds this through the ``conat.up`` entry point group, so conat never imports
master. On start: master runs on its own bus with its data under ``<data dir>/master``; its
admin's API key is written to ``<data dir>/admin.key`` (0600; kept across restarts); the local
provider runs ``--hosts N`` hosts (``<data dir>/master/hosts/<id>``, shared, so every account may
place projects there), made on the first run and started again on later ones. Every process
dies with ``conat up`` (and the hosts stop their projects), so nothing is left running.

The demo step runs a project (create, start, a command, stop, delete). With ``--demo`` it is a
walk through the platform instead: create a project, start it while its bootlog is shown live
(a progress bar on a terminal, one line per event when piped), write and read a file through the
file server (``fs.project-<p>``), run a command with ``projects.exec``, and stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import conat
from conat.cli.plugin import DemoFailed, Printer, UpExtension, UpOptions, line
from conat.platform import HostInfo, Project
from persist import bootlog
from subjects import fs_project

from ._client import ApiKeyFile, MasterApi, connect
from ._config import MasterConfig
from ._server import MasterServer, read_master_state

__all__ = ["MasterUp", "up_extension"]

ADMIN_KEY_NAME: Final = "admin.key"
_READY_TIMEOUT: Final = 120.0
_DEMO_TIMEOUT: Final = 120.0


class _Files:
    """The two file server calls the demo makes (``fs.project-<p>``, the file server's protocol)."""

    async def write_file(self, path: str, data: bytes) -> Any:
        raise NotImplementedError

    async def read_file(self, path: str) -> bytes:
        raise NotImplementedError


def data_dirs() -> tuple[Path, Path]:
    """(master's data dir, the admin key file) under conat's data dir."""
    root = conat.data_dir()
    return root / "master", root / ADMIN_KEY_NAME


class MasterUp(UpExtension):
    """The platform in ``conat up`` (see the module docstring)."""

    name = "master"

    def __init__(self) -> None:
        self.options = UpOptions()
        self.server: MasterServer | None = None
        self.key: ApiKeyFile | None = None
        self.hosts: list[HostInfo] = []

    def configure(self, options: UpOptions) -> None:
        self.options = options

    def status(self) -> list[str]:
        data, key = data_dirs()
        state = read_master_state(data)
        if not state or not state.get("pid"):
            return []
        hosts = sorted((data / "hosts").glob("*/host.toml")) if (data / "hosts").is_dir() else []
        return [f"  master:    {state.get('url')} (pid {state['pid']}), {len(hosts)} local host(s)",
                f"  admin key: {key}"]  # fmt: skip

    @contextlib.asynccontextmanager
    async def serve(self, url: str, out: Printer) -> AsyncIterator[None]:
        data, key_path = data_dirs()
        config = MasterConfig(data_dir=str(data.absolute()), keepalive_interval=1.0, reconcile_interval=5.0)
        async with MasterServer(config) as server:
            self.server = server
            self.key = await server.ensure_admin(key_path)
            out.event(
                line("service", f"master at {server.url}: accounts, projects, hosts, placement, moves"),
                event="service", name="master", url=server.url, admin_key=str(key_path),
            )  # fmt: skip
            async with await connect(self.key) as api:
                self.hosts = await self._hosts(api, out)
            out.event(
                line("admin", f"admin API key in {key_path} (0600): conat projects list --api-key-file {key_path}"),
                event="admin", key_file=str(key_path), account_id=self.key.account_id,
            )  # fmt: skip
            try:
                yield
            finally:
                self.server = None

    async def _hosts(self, api: MasterApi, out: Printer) -> list[HostInfo]:
        """Make (or find) ``--hosts N`` local hosts and wait until they are online."""
        wanted = self.options.hosts
        mine = [h for h in await api.hosts.list() if h.provider == "local"]
        for i in range(len(mine), wanted):
            made = await api.hosts.create(f"local-{i + 1}", region="local", shared=True, provider="local")
            mine.append(made.host)
        chosen = mine[:wanted]
        started = time.monotonic()
        ready: list[HostInfo] = []
        for host in chosen:
            while True:
                info = await api.hosts.get(host.host_id)
                if info.status == "online" and info.bus_url:
                    break
                if time.monotonic() - started > _READY_TIMEOUT:
                    raise conat.ConatError(
                        f"host {host.host_id} did not come online within {_READY_TIMEOUT:g} s"
                    )
                await asyncio.sleep(0.3)
            ready.append(info)
            out.event(
                line("host", f"{info.name} {info.host_id} online, its bus at {info.bus_url}"),
                event="host", host_id=info.host_id, url=info.bus_url, name=info.name,
            )  # fmt: skip
        return ready

    async def demo(self, url: str, out: Printer) -> None:
        if self.key is None or not self.hosts:
            return
        async with await connect(self.key) as api:
            if self.options.demo:
                await _walkthrough(api, out)
            else:
                await _quick(api, out)

    def hints(self) -> list[str]:
        key = data_dirs()[1]
        return [f"conat projects list --api-key-file {key}", f"conat hosts list --api-key-file {key}"]


async def _quick(api: MasterApi, out: Printer) -> None:
    started = time.perf_counter()
    project = await api.projects.create("conat up")
    project = await api.projects.start(project.project_id, wait=True)
    if project.state != "running":
        raise DemoFailed(f"project {project.project_id} did not start: {project.state} {project.reason}")
    result = await api.projects.exec(project.project_id, ["echo", "hello from a project"])
    ms = (time.perf_counter() - started) * 1000
    await api.projects.stop(project.project_id, wait=True)
    await api.projects.delete(project.project_id)
    if result.stdout != b"hello from a project\n":
        raise DemoFailed(f"exec in project {project.project_id} printed {result.stdout!r}")
    out.event(
        line("project", f"{project.project_id}: created on host {project.host_id}, started, ran `echo` -> "
             f"{result.stdout.decode().strip()!r}, stopped, deleted ({ms:.0f} ms to the output)"),
        event="project", project_id=project.project_id, host_id=project.host_id,
        stdout=result.stdout.decode(), ms=round(ms, 1),
    )  # fmt: skip


async def _walkthrough(api: MasterApi, out: Printer) -> None:
    project = await api.projects.create("demo")
    pid = project.project_id
    out.event(
        line("demo", f"created project {pid} on host {project.host_id}"), event="created", project_id=pid
    )
    async with await api.open_project(pid) as host:
        await api.projects.start(pid)
        await _follow(host, pid, out)
        status = await api.projects.status(pid)
        if status.state != "running":
            raise DemoFailed(f"project {pid} did not start: {status.state} {status.reason}")
        await _files(api, host, status, out)
    result = await api.projects.exec(pid, ["sh", "-c", "echo $HOME; uname -sr; ls"])
    out.event(
        line("exec", f"projects.exec sh -c 'echo $HOME; uname -sr; ls' -> exit {result.code}:\n"
             + "\n".join(f"           {x}" for x in result.stdout.decode().splitlines())),
        event="exec", code=result.code, stdout=result.stdout.decode(),
    )  # fmt: skip
    stopped = await api.projects.stop(pid, wait=True)
    out.event(line("demo", f"stopped project {pid}: {stopped.state}"), event="stopped", state=stopped.state)


async def _follow(host: conat.Client, project_id: str, out: Printer) -> None:
    """Show the project's bootlog live until it is running (or failed)."""
    live = sys.stdout.isatty() and not out.json
    events = bootlog.events(host, project_id=project_id)
    async with asyncio.timeout(_DEMO_TIMEOUT):
        if live:
            from rich.progress import Progress

            with Progress(transient=False) as bar:
                task = bar.add_task("starting", total=100)
                async for event in events:
                    bar.update(
                        task,
                        completed=event.progress or 0,
                        description=f"{event.phase}: {event.message}"[:60],
                    )
                    if event.phase in ("ready", "error", "crash"):
                        break
        else:
            async for event in events:
                shown = f"{event.progress:3.0f}%" if event.progress is not None else "    "
                out.event(line("bootlog", f"{shown} {event.phase:<8} {event.message}"), event="bootlog",
                          phase=event.phase, message=event.message, progress=event.progress, error=event.error)  # fmt: skip
                if event.phase in ("ready", "error", "crash"):
                    break


async def _files(api: MasterApi, host: conat.Client, project: Project, out: Printer) -> None:
    files = host.service(_Files, fs_project(project.project_id), timeout=30.0)
    text = b"written through the file server at " + time.strftime("%H:%M:%S").encode()
    try:
        await files.write_file("hello.txt", text)
        back = await files.read_file("hello.txt")
        how = "fs.write_file / fs.read_file"
    except conat.NoResponders:  # a host without a file server: the same through a command
        await api.projects.exec(project.project_id, ["sh", "-c", 'printf %s "$0" > hello.txt', text.decode()])
        back = (await api.projects.exec(project.project_id, ["cat", "hello.txt"])).stdout
        how = "exec (this host serves no fs.*)"
    if back != text:
        raise DemoFailed(f"hello.txt read back {back!r}, not {text!r}")
    out.event(line("files", f"hello.txt written and read back through {how}: {back.decode()!r}"),
              event="files", path="hello.txt", via=how)  # fmt: skip


up_extension: Final = MasterUp()
