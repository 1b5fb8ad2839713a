"""One project process as the host sees it: launch, watch, stop, adopt after a host restart, logs.

- **Launch**: ``python -m host._launch <spec>`` with the scrubbed environment; it puts itself in
  the sandbox and execs the project program (:mod:`host._launch`). stdout/stderr go straight to
  the project's log files (opened for append here), so the project keeps logging whether or not the
  host is alive.
- **Watch**: a pidfd per process (``os.pidfd_open``) on the event loop: readable when the process
  ends, for a child of this host and for an adopted one alike (an adopted process's exit status is
  not ours to read: it is reported as unknown).
- **Identity**: a pid alone is reused by the kernel; a process is the project's if its pid *and*
  start time (``psutil.Process.create_time``) match the record.
- **Stop**: SIGTERM to the process group, then after the grace period SIGKILL to the group and to
  every process left in the project's cgroups (which also catches anything that left the group).
- **Logs**: rotated by copy-and-truncate when over ``max_bytes`` (the files are open in append mode
  in the project, so it keeps writing at the new end); ``keep`` old files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil

from ._cgroups import Cgroups
from ._wire import ProjectUsage

__all__ = ["LogFiles", "ProjectProcess", "describe_status", "process_alive"]

log = logging.getLogger("conat.host.process")

LOG_NAMES: Final = ("stdout.log", "stderr.log")


def describe_status(status: int | None) -> str:
    """``exited with code 3`` / ``killed by SIGKILL`` / ``exit status unknown``."""
    if status is None:
        return "exit status unknown (the process was adopted after a host restart)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exited with code {status}"


def process_alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is running and is the process that started at ``started``."""
    if pid is None or started is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True, slots=True)
class LogFiles:
    """The project's rotated log files in ``directory``."""

    directory: Path
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 3

    def open(self) -> tuple[int, int]:
        """File descriptors for the process's stdout and stderr (append mode; caller closes)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fds = [
            os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            for name in LOG_NAMES
        ]
        return fds[0], fds[1]

    def rotate(self) -> None:
        """Copy-and-truncate each log over ``max_bytes`` to ``.1`` (older ones shift up to ``keep``)."""
        for name in LOG_NAMES:
            path = self.directory / name
            try:
                if path.stat().st_size <= self.max_bytes:
                    continue
            except FileNotFoundError:
                continue
            for n in range(self.keep - 1, 0, -1):
                older = path.with_name(f"{name}.{n}")
                if older.exists():
                    older.replace(path.with_name(f"{name}.{n + 1}"))
            shutil.copyfile(path, path.with_name(f"{name}.1"))
            with open(path, "r+b") as f:
                f.truncate(0)

    def tail(self, name: str = "stderr.log", max_bytes: int = 2000) -> str:
        """The end of a log (for error reports on the bootlog)."""
        try:
            with open(self.directory / name, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""


class ProjectProcess:
    """A running project process (spawned here or adopted), watched through a pidfd."""

    def __init__(
        self, pid: int, started: float, cgroups: Cgroups, popen: subprocess.Popen[bytes] | None
    ) -> None:
        self.pid = pid
        self.started = started
        self.cgroups = cgroups
        self._popen = popen
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pidfd: int | None = None
        self._watch()

    @classmethod
    def spawn(
        cls,
        *,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str,
        uid: int | None,
        netns: str | None,
        cgroups: Cgroups,
        rlimits: Mapping[str, int],
        logs: LogFiles,
    ) -> ProjectProcess:
        """Start the project process in its sandbox (blocking fork/exec, a few ms).

        Raises:
            OSError: the launcher could not be started.
        """
        spec = {
            "netns": netns,
            "cgroup_procs": cgroups.procs_files(),
            "rlimits": dict(rlimits),
            "cwd": cwd,
            "uid": uid,
            "gid": uid,
            "argv": argv,
        }
        out, err = logs.open()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "host._launch", json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env),
                cwd="/",
                close_fds=True,
            )
        finally:
            os.close(out)
            os.close(err)
        started = psutil.Process(popen.pid).create_time()
        return cls(popen.pid, started, cgroups, popen)

    @classmethod
    def adopt(cls, pid: int, started: float, cgroups: Cgroups) -> ProjectProcess | None:
        """Watch a process started by a previous run of the host, if it is still that process."""
        if not process_alive(pid, started):
            return None
        return cls(pid, started, cgroups, None)

    def _watch(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._finish()
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._finish)

    def _finish(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        status: int | None = None
        if self._popen is not None:
            status = self._popen.poll()
            if status is None:  # the pidfd said it ended: reap it
                status = self._popen.wait()
        if not self.exited.done():
            self.exited.set_result(status)

    def on_exit(self, callback: Callable[[int | None], object]) -> None:
        self.exited.add_done_callback(lambda f: callback(f.result()) if not f.cancelled() else None)

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the group, SIGKILL everything of the project after ``grace`` s; the exit status."""
        if self.running:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
        self.signal_group(signal.SIGKILL)
        await asyncio.to_thread(self.cgroups.kill_all)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exited), 10.0)
        return self.exited.result() if self.exited.done() else None

    def detach(self) -> None:
        """Stop watching (host shutdown leaving the project running)."""
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self.exited.done():
            self.exited.cancel()

    def usage(self) -> ProjectUsage:
        """Resource use: the cgroups' figures when there are any, else the process tree's."""
        uptime = max(0.0, time.time() - self.started) if self.running else 0.0
        from_cgroups = self.cgroups.usage()
        if from_cgroups is not None:
            return ProjectUsage(
                cpu_seconds=from_cgroups.cpu_seconds,
                memory_bytes=from_cgroups.memory_bytes,
                pids=from_cgroups.pids,
                uptime=uptime,
            )
        cpu, memory, count = 0.0, 0, 0
        try:
            procs = [psutil.Process(self.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            procs = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                memory += proc.memory_info().rss
                count += 1
        return ProjectUsage(cpu_seconds=cpu, memory_bytes=memory, pids=count, uptime=uptime)
