"""The file server of one host: :class:`FileServer` runs the ``fs.*`` actor, the transfer sockets
(``fs.project-<p>.io``) and the watch sockets (``watch.project-<p>.fs``) on one connection.

How many may run: **one per host bus**. The actor is keyed (one activation per project), and two
file servers on one bus would each activate the same project, so two processes could write one
project's files with separate quota counts, read locks and watchers; the actor runtime refuses a
second process of a keyed type where it can tell. Requests are never served twice by one server
(one activation per key per process). To spread load, run one host per set of projects (the
placement map), not several file servers on one bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final, Self

import msgspec

from actors import ActorSystem
from conat import Client, Clock, ConatError, Socket, SocketServer, SystemClock, error_reply
from subjects import watch_project

from ._fs_actor import FileServerActor
from ._fs_audit import AuditLog
from ._fs_backend import Backend, BtrfsBackend, PlainBackend, btrfs_available
from ._fs_config import FileServerConfig
from ._fs_errors import FsError
from ._fs_project import ProjectFs
from ._fs_shared import FsShared, project_of
from ._fs_transfer import IO_PATTERN, WINDOW, serve_transfer

__all__ = ["WATCH_PATTERN", "FileServer", "WatchRequest", "watch_subject"]

log = logging.getLogger("conat.host.fs")

WATCH_PATTERN: Final = "watch.*.fs"
_FIRST_TIMEOUT: Final = 30.0


def watch_subject(project_id: str) -> str:
    """``watch.project-<p>.fs``: where a project's watch sockets connect."""
    return watch_project(project_id, "fs")


class WatchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The first message on a watch socket: what to watch, and the writer token whose own writes
    should not be reported (echo suppression)."""

    path: str = ""
    echo: str | None = None


class FileServer:
    """Serves every project under ``config.projects`` on ``client``'s bus. ``async with`` it.

    Args:
        client: the host bus connection (not closed here).
        config: where projects live and the limits.
        clock: time for watcher inactivity and read-lock windows (tests pass ``conat.testing.FakeClock``).
        system: an actor system to run in (default: one of its own, stopped at :meth:`aclose`).
        on_activity: called (at most every few seconds per project) when a project's files are used:
            the host passes :func:`~host.report_activity`, so file work keeps a project from idle stop.
    """

    def __init__(
        self,
        client: Client,
        config: FileServerConfig,
        *,
        clock: Clock | None = None,
        system: ActorSystem | None = None,
        on_activity: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.client = client
        self._on_activity = on_activity
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._own_system = system is None
        self.system = system or ActorSystem(client, clock=self.clock)
        self.backend: Backend = BtrfsBackend() if config.backend == "btrfs" else PlainBackend()
        self.shared: FsShared | None = None
        self._servers: list[SocketServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> Self:
        if self.config.backend == "btrfs":
            why = btrfs_available(Path(self.config.project_root("x")).parent)
            if why is not None:
                raise ValueError(f"backend='btrfs' cannot run: {why}")
        audit = None
        if self.config.audit is not None:
            audit = await AuditLog.open(Path(self.config.audit), self.config.audit_rows)
        shared = FsShared(self.config, self.backend, self.clock, audit, self._on_activity)
        self.shared = shared
        shared.hub.start()
        await self.system.start(FileServerActor, factory=lambda: FileServerActor(shared))
        io = await self.client.socket_listen(IO_PATTERN, window=WINDOW)
        self._servers.append(io)
        watch = await self.client.socket_listen(WATCH_PATTERN)
        self._servers.append(watch)
        self._spawn(self._accept(io, lambda sock: serve_transfer(shared, sock)))
        self._spawn(self._accept(watch, lambda sock: self._serve_watch(shared, sock)))
        return self

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, server: SocketServer, handle: Any) -> None:
        with contextlib.suppress(ConatError):
            async for sock in server:
                self._spawn(handle(sock))

    async def _serve_watch(self, shared: FsShared, sock: Socket) -> None:
        project: ProjectFs | None = None
        try:
            try:
                request = (await sock.recv(timeout=_FIRST_TIMEOUT)).decode(WatchRequest)
            except ConatError as e:
                raise FsError("EINVAL", "", f"bad watch request: {e}") from None
            project = await shared.acquire(project_of(sock.subject.split(".")[1]))
            shared.touch(project.project_id)
            await shared.sandbox(project)
            await shared.hub.serve(project, request.path, sock, request.echo)
        except FsError as e:
            with contextlib.suppress(ConatError):
                code, message, data = error_reply(e)
                await sock.send(
                    {"type": "error", "code": code, "message": message, "data": data}, headers={"fs": "error"}
                )
        except ConatError as e:
            log.debug("watch on %s ended: %s", sock.subject, e)
        finally:
            if project is not None:
                shared.release(project)
            try:
                await sock.aclose(timeout=1.0)
            except ConatError:
                sock.abort()

    # ---- what the host calls -------------------------------------------------------------------------

    async def create_project(self, project_id: str) -> Path:
        """Make the project's tree (a directory, or a btrfs subvolume with its quota)."""
        project_of(f"project-{project_id}")
        root = self.config.project_root(project_id)
        shared = self._shared()
        await shared.run(self.backend.create, root, shared.quota_of(project_id))
        return root

    async def set_quota(self, project_id: str, quota: int | None) -> None:
        """Change one project's quota (bytes; ``None``: none)."""
        shared = self._shared()
        shared.quotas[project_id] = quota
        project = shared.projects.get(project_id)
        if project is not None:
            project.usage.limit = quota
            shared.rescan(project)
        root = self.config.project_root(project_id)
        if root.exists():
            await shared.run(self.backend.set_quota, root, quota)

    def _shared(self) -> FsShared:
        if self.shared is None:
            raise RuntimeError("the file server is not started")
        return self.shared

    def statistics(self) -> dict[str, Any]:
        shared = self._shared()
        return {
            "projects": len(shared.projects),
            "watch": shared.hub.statistics(),
            "connections": sum(s.statistics().connections for s in self._servers),
        }

    async def aclose(self) -> None:
        for server in self._servers:
            with contextlib.suppress(ConatError):
                await server.aclose(timeout=1.0)
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_system:
            await self.system.stop()
        if self.shared is not None:
            await self.shared.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
