"""File change events for watch sockets: one shared inotify watcher per (project, directory), fanned out
to every subscriber through its own bounded queue.

Theory of operation
-------------------
**Backend.** A :class:`SharedWatcher` owns one inotify instance (asyncinotify). Its directories are
opened beneath the project root by the sandbox (the starting one with ``Follow.BENEATH``, every one
below with ``Follow.NEVER``: a watcher never enters a symlink), and each is watched through
``/proc/self/fd/<fd>``, i.e. by the inode that was checked. Events are named by the watcher's own
map of watch descriptors to relative paths, never by a path the kernel resolves later. A directory
moved or deleted out of the tree has its watches removed at once, so no event from outside the
root is ever reported. The server's own temporary files are never reported.

**Events** are chokidar's names: ``add``, ``change``, ``unlink``, ``addDir``, ``unlinkDir``; plus
``ready`` (set up: later events are complete) and ``overflow`` (events were lost: the kernel's queue
or this subscriber's was full; re-read what you follow). A file created or moved in is ``add`` the
first time the watcher sees its name and ``change`` after (an editor's atomic save is a change).

**Subscribers** each have a queue of ``watch_queue`` events, sent as lists (one socket message
carries everything queued); a subscriber that reads too slowly loses events
and gets one ``overflow`` when it catches up; it never slows the watcher or other subscribers. A
subscriber may pass its writer token (``echo``): events for paths it wrote through the file server
within the last two seconds are not sent to it.

**Lifetime.** A watcher lives while it has subscribers or heartbeats (``sync_fs_watch(path,
active=True)``); ``watch_idle`` seconds after the last of both it is dropped (a sweeper on the
injected clock). ``active=False`` ends the heartbeat hold at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from typing import Final, final

from asyncinotify import Event, Inotify, Mask

from conat import BoundedQueue, Clock, ConatError, Socket
from conat.beneath import Follow, fd_path, open_beneath, open_dir_beneath, split_path

from ._fs_errors import FsError
from ._fs_ops import is_temp_name, is_text, translate
from ._fs_project import ProjectFs
from ._fs_types import WatchEvent, WatchEventType

__all__ = ["SharedWatcher", "Subscriber", "WatchHub"]

log = logging.getLogger("conat.host.fs.watch")

_MASK: Final = (
    Mask.CREATE
    | Mask.DELETE
    | Mask.MODIFY
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
    | Mask.EXCL_UNLINK
)
_GONE_DIR: Final = Mask.DELETE | Mask.MOVED_FROM
_NEW: Final = Mask.CREATE | Mask.MOVED_TO
_MAX_KNOWN: Final = 200_000
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@final
class Subscriber:
    """One watch socket's queue of events (a :class:`conat.BoundedQueue`, with an explicit overflow)."""

    def __init__(self, sock: Socket, prefix: str, echo: str | None, size: int) -> None:
        self.sock = sock
        self.prefix = prefix
        self.echo = echo
        self.queue: BoundedQueue[WatchEvent] = BoundedQueue(size)
        self._last: WatchEvent | None = None  # the newest event queued, for coalescing
        self._reported = 0  # drops already told with an overflow event

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def push(self, event: WatchEvent) -> None:
        if self.queue.ready and self._last == event:
            return  # coalesce repeats (a burst of writes is one change)
        self._last = event
        self.queue.put(event)  # a full queue drops it: the pump reports an overflow

    async def pump(self) -> None:
        """Send queued events until the socket closes: everything queued goes in one message (a
        list), so a burst costs one message, not one per event; after lost ones, an ``overflow``."""
        queue = self.queue
        while True:
            await queue.wait()
            batch = queue.pop_all()
            self._last = None
            if queue.dropped > self._reported:
                self._reported = queue.dropped
                batch.append(WatchEvent("overflow", self.prefix))
            await self.sock.send(batch)


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a and b else a or b


@dataclass
class SharedWatcher:
    """The inotify watcher of one directory (or one file, through its directory) of a project."""

    project: ProjectFs
    real: str
    """The watched directory, relative to the root as the kernel names it."""
    only: str | None
    """For a watched file: its name (events of other names in the directory are dropped)."""
    max_dirs: int
    clock: Clock
    subscribers: set[Subscriber] = field(default_factory=set)
    held_until: float = 0.0
    inotify: Inotify = field(default_factory=Inotify)
    dirs: dict[int, str] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    truncated: bool = False

    def start(self, start_fd: int) -> None:
        """Watch ``start_fd``'s tree (blocking: run in an executor before :meth:`run`)."""
        self._add_tree(start_fd, self.real, recursive=self.only is None, report=False)

    def _add_tree(self, fd: int, rel: str, *, recursive: bool, report: bool) -> list[WatchEvent]:
        """Watch the directory ``fd`` (``rel``) and, if ``recursive``, every directory below it."""
        events: list[WatchEvent] = []
        stack = [(os.dup(fd), rel)]
        try:
            while stack:
                dfd, drel = stack.pop()
                try:
                    if len(self.dirs) >= self.max_dirs:
                        self.truncated = True
                        continue
                    watch = self.inotify.add_watch(fd_path(dfd), _MASK)
                    self.dirs[watch.wd] = drel
                    for entry in os.scandir(dfd):
                        if (
                            is_temp_name(entry.name)
                            or not is_text(entry.name)
                            or (self.only is not None and entry.name != self.only)
                        ):
                            continue
                        path = _join(drel, entry.name)
                        if entry.is_dir(follow_symlinks=False):
                            if report:
                                events.append(WatchEvent("addDir", path))
                            if recursive:
                                with contextlib.suppress(OSError):
                                    stack.append((os.open(entry.name, _DIR_FLAGS, dir_fd=dfd), path))
                        elif len(self.known) < _MAX_KNOWN:
                            self.known.add(path)
                            if report:
                                events.append(WatchEvent("add", path))
                finally:
                    os.close(dfd)
        finally:
            for dfd, _ in stack:
                os.close(dfd)
        return events

    def _forget_tree(self, rel: str) -> None:
        """Stop watching ``rel`` and everything below it (moved or deleted out of sight)."""
        below = rel + "/"
        for wd, path in list(self.dirs.items()):
            if path == rel or path.startswith(below):
                del self.dirs[wd]
                for watch in self.inotify.watches:
                    if watch.wd == wd:
                        with contextlib.suppress(OSError):
                            self.inotify.rm_watch(watch)
        self.known = {k for k in self.known if not k.startswith(below)}

    def translate(self, event: Event) -> list[WatchEvent]:
        """The watch events one inotify event stands for (watches added or removed as needed)."""
        mask = event.mask
        if Mask.Q_OVERFLOW in mask:
            return [WatchEvent("overflow", self.real)]
        watch = event.watch
        if watch is None or Mask.IGNORED in mask:
            if watch is not None:
                self.dirs.pop(watch.wd, None)
            return []
        base = self.dirs.get(watch.wd)
        if base is None:
            return []
        if event.name is None:  # the directory itself
            if mask & (Mask.DELETE_SELF | Mask.MOVE_SELF) and base == self.real:
                self._forget_tree(base)
                return [WatchEvent("unlinkDir", base)]
            return []
        name = str(event.name)
        if is_temp_name(name) or not is_text(name) or (self.only is not None and name != self.only):
            return []
        path = _join(base, name)
        if Mask.ISDIR in mask:
            if mask & _NEW:
                return [WatchEvent("addDir", path), *self._enter(path)]
            if mask & _GONE_DIR:
                self._forget_tree(path)
                return [WatchEvent("unlinkDir", path)]
            return []
        if mask & _NEW:
            if path in self.known:
                return [WatchEvent("change", path)]
            if len(self.known) < _MAX_KNOWN:
                self.known.add(path)
            return [WatchEvent("add", path)]
        if mask & (Mask.DELETE | Mask.MOVED_FROM):
            self.known.discard(path)
            return [WatchEvent("unlink", path)]
        if Mask.MODIFY in mask:
            return [WatchEvent("change", path)]
        return []

    def _enter(self, path: str) -> list[WatchEvent]:
        """A directory appeared: watch it (no symlink followed below the root) and report its contents."""
        if self.only is not None or self.project.sandbox is None:
            return []
        try:
            fd = open_dir_beneath(self.project.sandbox.fd, path, follow=Follow.NEVER)
        except OSError:
            return []
        try:
            return self._add_tree(fd, path, recursive=True, report=True)
        finally:
            os.close(fd)

    def fan_out(self, events: list[WatchEvent]) -> None:
        now = self.clock.now()
        echoes = self.project.echoes
        for sub in list(self.subscribers):
            for event in events:
                if sub.echo and echoes.is_echo(event.path, sub.echo, now):
                    continue
                shown = event.path
                if sub.prefix != self.real and (shown == self.real or shown.startswith(self.real + "/")):
                    shown = sub.prefix + shown[len(self.real) :] if self.real else _join(sub.prefix, shown)
                sub.push(WatchEvent(event.type, shown) if shown != event.path else event)

    async def run(self) -> None:
        try:
            async for event in self.inotify:
                events = self.translate(event)
                if events:
                    self.fan_out(events)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watcher of %s/%r failed", self.project.project_id, self.real)
            self.fan_out([WatchEvent("overflow", self.real)])

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        with contextlib.suppress(OSError):
            self.inotify.close()


async def _until_closed(sock: Socket) -> None:
    """Return when the subscriber ends its side (or the socket fails); what it sends is ignored."""
    with contextlib.suppress(ConatError):
        while True:
            await sock.recv()


@final
class WatchHub:
    """Every shared watcher of the server, by (project, directory, file name)."""

    def __init__(self, clock: Clock, idle: float, queue: int, max_dirs: int) -> None:
        self.clock = clock
        self.idle = idle
        self.queue = queue
        self.max_dirs = max_dirs
        self.watchers: dict[tuple[str, str, str | None], SharedWatcher] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.now() + max(0.05, self.idle / 4))
            self.sweep()

    def sweep(self) -> None:
        """Drop watchers with no subscriber whose heartbeats ended ``idle`` seconds ago."""
        now = self.clock.now()
        for key, watcher in list(self.watchers.items()):
            if not watcher.subscribers and watcher.held_until <= now:
                del self.watchers[key]
                watcher.close()

    def _resolve(self, project: ProjectFs, path: str) -> tuple[int, str, str | None]:
        """Open what ``path`` names (blocking): the directory fd, its real relative path, and the
        file name when ``path`` is a file."""
        sandbox = project.sandbox
        if sandbox is None:
            raise FsError("ENOPROJECT", path)
        with translate(path):
            try:
                fd = open_dir_beneath(sandbox.fd, path)
                return fd, sandbox.relative(fd), None
            except NotADirectoryError:
                pass
            target = open_beneath(sandbox.fd, path, os.O_PATH)
            try:
                real = sandbox.relative(target)
            finally:
                os.close(target)
            parent, _, name = real.rpartition("/")
            fd = open_dir_beneath(sandbox.fd, parent, follow=Follow.NEVER)
            return fd, parent, name

    async def watcher(self, project: ProjectFs, path: str) -> SharedWatcher:
        """The shared watcher of ``path`` (made, and set up in a thread, if there is none)."""
        loop = asyncio.get_running_loop()
        fd, real, only = await loop.run_in_executor(None, self._resolve, project, path)
        try:
            key = (project.project_id, real, only)
            existing = self.watchers.get(key)
            if existing is not None:
                return existing
            watcher = SharedWatcher(project, real, only, self.max_dirs, self.clock)
            try:
                await loop.run_in_executor(None, watcher.start, fd)
            except OSError as e:
                watcher.close()
                if e.errno in (errno.ENOSPC, errno.EMFILE):
                    raise FsError("ENOSPC", path, "the host's inotify watch limit is reached") from None
                raise
            existing = self.watchers.get(key)  # another caller made one meanwhile
            if existing is not None:
                watcher.close()
                return existing
            self.watchers[key] = watcher
            watcher.task = loop.create_task(watcher.run())
            return watcher
        finally:
            os.close(fd)

    async def heartbeat(self, project: ProjectFs, path: str, active: bool) -> None:
        watcher = await self.watcher(project, path)
        watcher.held_until = self.clock.now() + self.idle if active else 0.0

    async def serve(self, project: ProjectFs, path: str, sock: Socket, echo: str | None) -> None:
        """Stream ``path``'s events to ``sock`` until it closes."""
        watcher = await self.watcher(project, path)
        names = split_path(path)
        shown = "/".join(names)
        # events are named as the caller named the watched directory (it may have come through a symlink)
        prefix = "/".join(names[:-1]) if watcher.only is not None else shown
        sub = Subscriber(sock, prefix, echo, self.queue)
        watcher.subscribers.add(sub)
        try:
            sub.push(WatchEvent("ready", shown))
            if watcher.truncated:
                sub.push(WatchEvent("overflow", shown))
            pump = asyncio.ensure_future(sub.pump())
            left = asyncio.ensure_future(_until_closed(sock))  # the pump alone would not notice
            try:
                await asyncio.wait((pump, left), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, left):
                    task.cancel()
                await asyncio.gather(pump, left, return_exceptions=True)
        finally:
            watcher.subscribers.discard(sub)
            watcher.held_until = max(watcher.held_until, self.clock.now() + self.idle)

    def statistics(self) -> dict[str, int]:
        return {
            "watchers": len(self.watchers),
            "subscribers": sum(len(w.subscribers) for w in self.watchers.values()),
            "dirs": sum(len(w.dirs) for w in self.watchers.values()),
        }

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for watcher in self.watchers.values():
            watcher.close()
        tasks = [w.task for w in self.watchers.values() if w.task is not None]
        self.watchers.clear()
        await asyncio.gather(*tasks, return_exceptions=True)


EventType = WatchEventType
