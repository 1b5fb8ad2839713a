"""The default project process: ``python -m host.project``.

A small conat program the runner starts for each project (inside the project's sandbox, as the
project's uid). It connects to the host bus with the project's own credentials (the token file
named by ``$CONAT_CREDENTIALS``, re-read at every refresh, so the host can renew it), whose grant
allows only the project's own subjects, and serves:

- ``project.<p>.exec.*``: run commands (:mod:`host._exec`);
- ``project.<p>.status``: :class:`ProjectProcessStatus` (cpu, memory, uptime, pids of the project's
  processes as seen from inside, and the isolation the host applied).

It reports activity (each exec) on ``activity.project-<p>`` at most every few seconds, so the host
does not stop a project in use. SIGTERM or SIGINT: stop accepting, kill running commands, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Final

import msgspec
import psutil

import conat
from subjects import project_subject

from ._activity import report_activity
from ._exec import exec_pattern, serve_exec
from ._wire import Isolation

__all__ = ["ProjectProcessStatus", "main", "serve_project"]

log = logging.getLogger("conat.host.project")

ACTIVITY_EVERY: Final = 5.0


class ProjectProcessStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``project.<p>.status`` answers."""

    project_id: str
    pid: int
    uptime: float
    cpu_seconds: float
    memory_bytes: int
    pids: int
    isolation: Isolation


class _StatusService:
    __conat_namespace__ = "project"

    def __init__(self, project_id: str, isolation: Isolation) -> None:
        self.project_id = project_id
        self.isolation = isolation
        self.me = psutil.Process()

    async def status(self) -> ProjectProcessStatus:
        procs = [self.me]
        with contextlib.suppress(psutil.Error):
            procs += self.me.children(recursive=True)
        cpu = 0.0
        memory = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu += times.user + times.system
                memory += proc.memory_info().rss
        return ProjectProcessStatus(
            project_id=self.project_id,
            pid=self.me.pid,
            uptime=time.time() - self.me.create_time(),
            cpu_seconds=cpu,
            memory_bytes=memory,
            pids=len(procs),
            isolation=self.isolation,
        )


async def serve_project(
    client: conat.Client, project_id: str, home: str, isolation: Isolation, stop: asyncio.Event
) -> None:
    """Serve the project's subjects on ``client`` until ``stop`` is set."""
    last_report = 0.0
    env = {k: v for k, v in os.environ.items() if k != "CONAT_CREDENTIALS"}

    def on_exec() -> None:
        nonlocal last_report
        now = time.monotonic()
        if now - last_report >= ACTIVITY_EVERY:
            last_report = now
            task = asyncio.ensure_future(report_activity(client, project_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    tasks: set[asyncio.Future[None]] = set()
    await client.serve(project_subject(project_id, "status"), _StatusService(project_id, isolation))
    async with await client.socket_listen(exec_pattern(project_id)) as server:

        async def accept() -> None:
            async for sock in server:
                task = asyncio.ensure_future(serve_exec(sock, home, env, on_exec))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        acceptor = asyncio.ensure_future(accept())
        await stop.wait()
        acceptor.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(acceptor, *tasks, return_exceptions=True)


async def _main() -> int:
    project_id = os.environ["CONAT_PROJECT_ID"]
    url = os.environ["CONAT_URL"]
    credentials = os.environ["CONAT_CREDENTIALS"]
    isolation = msgspec.json.decode(os.environ.get("CONAT_ISOLATION", "{}"), type=Isolation)
    home = os.environ.get("HOME", os.getcwd())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await conat.connect(
        url,
        name=f"project-{project_id}",
        credentials=Path(credentials),  # a path: the token file is re-read at every refresh
        connect_attempts=30,
        reconnect_time_wait=0.25,
    )
    async with client:
        log.info("project %s serving on %s", project_id, url)
        await serve_project(client, project_id, home, isolation, stop)
    return 0


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        sys.exit(asyncio.run(_main()))
    except KeyError as e:
        sys.stderr.write(f"conat project: missing environment variable {e}\n")
        sys.exit(2)
    except conat.ConatError as e:
        sys.stderr.write(f"conat project: {e}\n")
        sys.exit(3)


if __name__ == "__main__":
    main()
