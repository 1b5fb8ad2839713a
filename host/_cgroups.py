"""cgroup v1 groups for projects: memory, CPU and process caps, usage figures, and kill-all.

Each project gets one group per controller, ``<controller mount>/<the host's own group>/conat-<h8>/<p>``:
nested under the group the host process itself runs in (so a limit placed on the host also bounds
its projects, and the host only ever writes inside its own subtree). The paths are stored in the
project's record, so a restarted host finds and cleans up exactly these.

All blocking file I/O here is tiny (a few sysfs writes) and runs inline; callers on the event loop
call it from ``asyncio.to_thread`` when it may loop (``kill_all``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ._wire import Limits, ProjectUsage

__all__ = ["CGROUP_ROOT", "CONTROLLERS", "Cgroups", "available_controllers", "host_parent"]

log = logging.getLogger("conat.host.cgroups")

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
CONTROLLERS: Final = ("memory", "cpu", "pids")
ACCOUNTING: Final = ("cpuacct",)
"""Controllers used only to measure (CPU time), never to limit."""
CFS_PERIOD_US: Final = 100_000


def _own_group(controller: str) -> str:
    """The host process's own group path in ``controller``'s v1 hierarchy ("/" at the top)."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return "/"
    for row in text.splitlines():
        _, controllers, path = row.split(":", 2)
        if controller in controllers.split(","):
            return path or "/"
    return "/"


def host_parent(controller: str, mount: str, host_tag: str) -> Path:
    """The directory holding this host's project groups in one controller."""
    return Path(mount, _own_group(controller).strip("/"), f"conat-{host_tag}")


def available_controllers() -> dict[str, str]:
    """Controllers the host can use: ``{controller: reason}`` for the missing ones is not here;
    this returns ``{controller: mount}`` for each usable v1 controller (mounted and writable)."""
    found: dict[str, str] = {}
    for controller in (*CONTROLLERS, *ACCOUNTING):
        mount = CGROUP_ROOT / controller
        if (mount / "cgroup.procs").exists() and os.access(mount, os.W_OK):
            found[controller] = str(mount)
    return found


@dataclass(frozen=True, slots=True)
class Cgroups:
    """The groups of one project (``paths``: one directory per controller)."""

    paths: tuple[str, ...]

    @classmethod
    def create(cls, host_tag: str, project_id: str, limits: Limits) -> Cgroups:
        """Make (or reuse) the project's groups in every usable controller and set ``limits``.

        A controller whose group cannot be made is skipped (logged): the caller reports what
        :attr:`controllers` ended up in force.
        """
        paths: list[str] = []
        for controller, mount in available_controllers().items():
            path = host_parent(controller, mount, host_tag) / project_id
            try:
                path.mkdir(parents=True, exist_ok=True)
                _apply(controller, path, limits)
            except OSError as e:
                log.warning("cannot use the %s cgroup %s: %s", controller, path, e)
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            paths.append(str(path))
        return cls(tuple(paths))

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(Path(p).relative_to(CGROUP_ROOT).parts[0] for p in self.paths)

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a new process writes its pid into to join the groups."""
        return [str(Path(p, "cgroup.procs")) for p in self.paths]

    def pids(self) -> set[int]:
        """Every process in any of the project's groups."""
        found: set[int] = set()
        for path in self.paths:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in Path(path, "cgroup.procs").read_text().split())
        return found

    def usage(self) -> ProjectUsage | None:
        """CPU seconds, memory and process count of the whole project (None if no group holds them)."""
        memory = cpu = 0.0
        pids = -1
        for path in self.paths:
            p = Path(path)
            with contextlib.suppress(OSError, ValueError):
                if (p / "memory.usage_in_bytes").exists():
                    memory = float((p / "memory.usage_in_bytes").read_text())
                if (p / "cpuacct.usage").exists():
                    cpu = int((p / "cpuacct.usage").read_text()) / 1e9
                elif (p / "cpu.stat").exists():
                    for row in (p / "cpu.stat").read_text().splitlines():
                        if row.startswith("usage_usec "):
                            cpu = int(row.split()[1]) / 1e6
                if (p / "pids.current").exists():
                    pids = int((p / "pids.current").read_text())
        if not self.paths:
            return None
        return ProjectUsage(cpu_seconds=cpu, memory_bytes=int(memory), pids=max(pids, len(self.pids())))

    def kill_all(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the groups until they are empty (a fork bomb keeps forking:
        freeze is not available everywhere, so this repeats). Returns whether they emptied."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def remove(self) -> None:
        """Remove the groups (after :meth:`kill_all`); a group still busy stays and is logged."""
        for path in self.paths:
            for _ in range(50):
                try:
                    Path(path).rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:  # EBUSY while the last processes are reaped
                    if e.errno != 16:
                        log.warning("cannot remove cgroup %s: %s", path, e)
                        break
                    time.sleep(0.02)


def _apply(controller: str, path: Path, limits: Limits) -> None:
    if controller == "memory":
        limit = str(limits.memory_mb * 1024 * 1024)
        (path / "memory.limit_in_bytes").write_text(limit)
        memsw = path / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # swap too, or a hog just moves to swap
            with contextlib.suppress(OSError):
                memsw.write_text(limit)
    elif controller == "cpu":
        (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(CFS_PERIOD_US * limits.cpu_percent // 100))
    elif controller == "pids":
        (path / "pids.max").write_text(str(limits.pids))
