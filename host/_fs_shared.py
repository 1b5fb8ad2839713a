"""What every part of a file server shares: the configuration, the storage backend, the worker threads,
the projects being served (refcounted :class:`~host._fs_project.ProjectFs`), the watch hub and the
audit log.

A project is *acquired* by its actor activation, by each transfer and each watch socket, and
released by each; its root directory fd stays open while anyone holds it. A project whose
directory does not exist is still acquired (so a request for it gets ``ENOPROJECT`` instead of
failing the actor's activation), and its root is looked for again at the next request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from conat import Clock
from conat.beneath import open_root
from subjects import parse_scope

from ._fs_audit import AuditLog
from ._fs_backend import Backend
from ._fs_config import FileServerConfig
from ._fs_errors import ENOPROJECT, FsError
from ._fs_ops import Sandbox
from ._fs_project import ProjectFs, Usage
from ._fs_search import ripgrep_path
from ._fs_walk import Budget, usage
from ._fs_watch import WatchHub

__all__ = ["FsShared", "project_of"]

log = logging.getLogger("conat.host.fs")

T = TypeVar("T")
_SCAN_ENTRIES: Final = 5_000_000
_SCAN_SECONDS: Final = 120.0


def project_of(key: str) -> str:
    """The project uuid of an ``fs.*`` key (``project-<uuid>``).

    Raises:
        FsError: ``EINVAL`` for any other scope or a malformed token.
    """
    try:
        kind, ident = parse_scope(key)
    except ValueError:
        raise FsError("EINVAL", "", f"{key!r} is not a project scope") from None
    if kind != "project" or ident is None:
        raise FsError("EINVAL", "", f"{key!r} is not a project scope")
    return ident


ACTIVITY_INTERVAL: Final = 5.0
"""Seconds between two activity reports of one project."""
_MAX_ACTIVITY_KEYS: Final = 10_000


class FsShared:
    """The state a file server's actor, transfers and watchers share (one per :class:`FileServer`)."""

    def __init__(
        self,
        config: FileServerConfig,
        backend: Backend,
        clock: Clock,
        audit: AuditLog | None,
        on_activity: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.config = config
        self._on_activity = on_activity
        self._last_activity: dict[str, float] = {}
        self.backend = backend
        self.clock = clock
        self.audit = audit
        self.pool = concurrent.futures.ThreadPoolExecutor(config.threads, thread_name_prefix="fs")
        self.projects: dict[str, ProjectFs] = {}
        self.quotas: dict[str, int | None] = {}
        self.hub = WatchHub(clock, config.watch_idle, config.watch_queue, config.watch_dirs)
        self.rg = ripgrep_path() if config.ripgrep else None
        self._opening: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking file work on the server's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def quota_of(self, project_id: str) -> int | None:
        return self.quotas.get(project_id, self.config.quota)

    # ---- projects --------------------------------------------------------------------------------

    async def acquire(self, project_id: str) -> ProjectFs:
        project = self.projects.get(project_id)
        if project is None:
            project = ProjectFs(project_id, None, Usage(self.quota_of(project_id)))
            self.projects[project_id] = project
        project.refs += 1
        try:
            await self.open(project)
        except BaseException:
            self.release(project)
            raise
        return project

    def release(self, project: ProjectFs) -> None:
        project.refs -= 1
        if project.refs <= 0 and project.background <= 0:
            self.projects.pop(project.project_id, None)
            self._opening.pop(project.project_id, None)
            sandbox, project.sandbox = project.sandbox, None
            if sandbox is not None:
                with contextlib.suppress(OSError):
                    os.close(sandbox.fd)

    async def open(self, project: ProjectFs) -> None:
        """Open the project's root if it is not open and exists (no error if it does not)."""
        if project.sandbox is not None:
            return
        lock = self._opening.setdefault(project.project_id, asyncio.Lock())
        async with lock:
            if project.sandbox is not None:
                return
            root = self.config.project_root(project.project_id)
            try:
                fd = await self.run(open_root, root)
            except (FileNotFoundError, NotADirectoryError):
                return
            project.sandbox = Sandbox(
                fd, allow_hardlinks=self.config.allow_hardlinks, max_read=self.config.max_read
            )
            if self._counts_usage(project):
                project.scanned_at = self.clock.now()
                await self._scan(project)  # the first count: no write is admitted before it

    async def sandbox(self, project: ProjectFs) -> Sandbox:
        """The project's open root, or ``ENOPROJECT``."""
        if project.sandbox is None:
            await self.open(project)
        if project.sandbox is None:
            raise FsError(ENOPROJECT, "", f"project {project.project_id} has no directory on this host")
        if (
            project.scanned_at is not None
            and self.clock.now() - project.scanned_at > self.config.rescan
            and not self.backend.kernel_quota
            and project.usage.limit is not None
        ):
            self.rescan(project)
        return project.sandbox

    def _counts_usage(self, project: ProjectFs) -> bool:
        return not self.backend.kernel_quota and project.usage.limit is not None

    def rescan(self, project: ProjectFs) -> None:
        """Count the project's usage again in the background (plain backend with a quota only)."""
        if not self._counts_usage(project) or project.sandbox is None:
            return
        project.scanned_at = self.clock.now()
        self.spawn(self._scan(project))

    async def _scan(self, project: ProjectFs) -> None:
        sandbox = project.sandbox
        if sandbox is None:
            return
        project.background += 1
        try:
            started = time.monotonic()
            used = await self.run(usage, sandbox.fd, Budget(_SCAN_ENTRIES, started + _SCAN_SECONDS))
            project.usage.set(used)
        except OSError as e:
            log.warning("usage scan of project %s failed: %s", project.project_id, e)
        finally:
            project.background -= 1
            if project.refs <= 0:
                project.refs += 1
                self.release(project)

    def touch(self, project_id: str) -> None:
        """The project is in use: tell ``on_activity`` (the host's idle-stop signal), at most every
        :data:`ACTIVITY_INTERVAL` seconds per project so a busy project costs no extra traffic."""
        if self._on_activity is None:
            return
        now = self.clock.now()
        if now - self._last_activity.get(project_id, -ACTIVITY_INTERVAL) < ACTIVITY_INTERVAL:
            return
        self._last_activity[project_id] = now
        if len(self._last_activity) > _MAX_ACTIVITY_KEYS:  # forget the oldest half: bounded memory
            for key in sorted(self._last_activity, key=self._last_activity.__getitem__)[: _MAX_ACTIVITY_KEYS // 2]:
                del self._last_activity[key]
        self.spawn(self._on_activity(project_id))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hub.aclose()
        for project in list(self.projects.values()):
            sandbox, project.sandbox = project.sandbox, None
            if sandbox is not None:
                with contextlib.suppress(OSError):
                    os.close(sandbox.fd)
        self.projects.clear()
        self.pool.shutdown(wait=True)
        if self.audit is not None:
            await self.audit.aclose()
