"""What the file server keeps per project while it serves it: the open root (:class:`Sandbox`), the
quota count, read locks, recent writes (for echo suppression) and the request rate limiter.

:class:`Usage` and :class:`ReadLocks` and :class:`EchoTable` are pure (time is passed in), so they are
tested without a bus or a disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, final

from ._fs_errors import EDQUOT, LOCK, FsError
from ._fs_ops import Sandbox

__all__ = ["EchoTable", "ProjectFs", "ReadLocks", "Usage"]

MAX_LOCKS: Final = 10_000
MAX_LOCK_SECONDS: Final = 300.0
MAX_ECHOES: Final = 10_000


@final
class Usage:
    """A project's bytes against its quota (the plain backend's count). Thread-safe.

    ``used`` is ``None`` until the first scan; until then nothing is refused (the kernel's
    ``ENOSPC`` still is). :meth:`charge` refuses growth past ``limit`` with ``EDQUOT``; shrinking is
    always allowed.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used: int | None = None
        self._lock = threading.Lock()

    def charge(self, delta: int, path: str) -> None:
        with self._lock:
            if self.used is None:
                return
            if delta > 0 and self.limit is not None and self.used + delta > self.limit:
                raise FsError(EDQUOT, path, f"{self.used} of {self.limit} bytes used, {delta} more refused")
            self.used = max(0, self.used + delta)

    def credit(self, delta: int) -> None:
        self.charge(-delta, "")

    def set(self, used: int) -> None:
        with self._lock:
            self.used = used


@final
class ReadLocks:
    """``read_file(path, lock=s)``: the first reader in a window wins; others get ``LOCK`` until it ends."""

    def __init__(self) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()

    def take(self, path: str, seconds: float, now: float) -> None:
        until = self._until.get(path)
        if until is not None and until > now:
            raise FsError(LOCK, path)
        self._until[path] = now + min(max(seconds, 0.0), MAX_LOCK_SECONDS)
        self._until.move_to_end(path)
        while len(self._until) > MAX_LOCKS:
            self._until.popitem(last=False)


@final
class EchoTable:
    """Who wrote each path last, for ``window`` seconds: a watcher with that writer's token skips the
    events of its own writes (echo suppression)."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._last: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def wrote(self, path: str, token: str | None, now: float) -> None:
        if not token:
            return
        self._last[path] = (token, now + self.window)
        self._last.move_to_end(path)
        while len(self._last) > MAX_ECHOES:
            self._last.popitem(last=False)

    def is_echo(self, path: str, token: str | None, now: float) -> bool:
        if not token:
            return False
        entry = self._last.get(path)
        return entry is not None and entry[0] == token and entry[1] >= now


@dataclass
class ProjectFs:
    """One project's state while any activation, transfer or watcher uses it (refcounted)."""

    project_id: str
    sandbox: Sandbox | None
    usage: Usage
    locks: ReadLocks = field(default_factory=ReadLocks)
    echoes: EchoTable = field(default_factory=EchoTable)
    refs: int = 0
    background: int = 0
    reads: int = 0
    scanned_at: float | None = None
