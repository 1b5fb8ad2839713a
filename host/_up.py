"""The host's part in ``conat up``: one local host beside the demo, and a demo step.

The host runs on its own bus (with the auth callout), as every host does; its data and a local key
ring live under ``<conat data dir>/host``. The demo step creates a project, starts it, runs a
command in it, and stops and deletes it again, printing what happened.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Final

import conat
from conat.cli.plugin import DemoFailed, Printer, UpExtension, line
from subjects import HUB

from ._cli import local_config
from ._exec import exec_command
from ._runner import runner_proxy
from ._server import HostServer

__all__ = ["HostUp", "up_extension"]

_DEMO_TIMEOUT: Final = 60.0


class HostUp(UpExtension):
    """A local project host on its own bus."""

    name = "host"

    def __init__(self) -> None:
        self.server: HostServer | None = None

    @contextlib.asynccontextmanager
    async def serve(self, url: str, out: Printer) -> AsyncIterator[None]:
        async with HostServer(local_config()) as server:
            self.server = server
            missing = server.projects.capabilities.report().missing if server.projects else {}
            out.event(
                line("service", f"host {server.host_id}: runner, projects, persist and bootlogs on its own bus "
                     f"{server.url}" + (f" (missing isolation: {', '.join(sorted(missing))})" if missing else "")),
                event="service", name="host", host_id=server.host_id, url=server.url, missing=missing,
            )  # fmt: skip
            try:
                yield
            finally:
                self.server = None

    async def demo(self, url: str, out: Printer) -> None:
        server = self.server
        if server is None:
            return
        project = str(uuid.uuid4())
        token = server.mint(HUB, 600)
        async with await conat.connect(server.url, name="conat-up-host", credentials=token) as client:
            runner = runner_proxy(client, server.host_id, timeout=_DEMO_TIMEOUT)
            started = time.perf_counter()
            await runner.create(project)
            status = await runner.start(project, wait=_DEMO_TIMEOUT)
            if status.state != "running":
                raise DemoFailed(f"project {project} did not start: {status.state} {status.reason}")
            result = await exec_command(client, project, ["echo", "hello from a project"])
            ms = (time.perf_counter() - started) * 1000
            await runner.stop(project, wait=_DEMO_TIMEOUT)
            await runner.delete(project)
        if result.stdout != b"hello from a project\n":
            raise DemoFailed(f"exec in project {project} printed {result.stdout!r}")
        out.event(
            line("project", f"{project}: created, started, ran `echo` -> {result.stdout.decode().strip()!r}, "
                 f"stopped, deleted ({ms:.0f} ms to the output)"),
            event="project", project_id=project, stdout=result.stdout.decode(), ms=round(ms, 1),
        )  # fmt: skip

    def hints(self) -> list[str]:
        return ["conat host status"]


up_extension: Final = HostUp()
