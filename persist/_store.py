"""Many streams, few resources: open :class:`StreamFile` s on demand, close them when idle.

Theory of operation
-------------------

A :class:`StreamStore` maps storage paths (``projects/<id>/<name>``) to files with ``root_resolver``
(usually :meth:`persist.Placement.path`) and opens each file the first time it is used. Callers use a
stream through a *lease*::

    async with store.stream("hub/config") as s:
        await s.set(b"...")

A leased stream is never closed under its user. Resources are bounded three ways:

- **threads**: one ``ThreadPoolExecutor`` of ``executor_threads`` runs the SQLite work of *every* file
  (aiosqlite's one thread per connection would not survive thousands of streams);
- **open files**: at most ``max_open`` streams are open. Opening one more first closes the least
  recently used idle one (no lease, no queued write); if every open stream is leased, the opener
  waits until one is released (backpressure, not an error);
- **time**: a stream idle for ``idle_close`` seconds (on the injectable ``clock``) is closed.

Ephemeral streams (``config.ephemeral``) live in memory and would lose their data if closed, so they
count against neither cap and stay open until :meth:`StreamStore.drop` or :meth:`StreamStore.aclose`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, final

import msgspec

from conat._clock import Clock, SystemClock
from conat._errors import ClosedError

from ._config import StreamConfig
from ._engine import StreamFile
from ._errors import BadRequest

__all__ = ["StreamStore", "StreamStoreStatistics"]

logger = logging.getLogger("conat.persist.store")

DEFAULT_MAX_OPEN: Final = 256
DEFAULT_IDLE_CLOSE: Final = 300.0
DEFAULT_EXECUTOR_THREADS: Final = 4


@final
class StreamStoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a :class:`StreamStore`.

    Attributes:
        open: streams open now (file-backed and ephemeral, including those being closed).
        leased: streams with at least one lease now.
        opened: streams opened since the store was created.
        closed: streams closed since (by LRU, idle time or ``drop``).
        threads: the executor's thread bound.
    """

    open: int
    leased: int
    opened: int
    closed: int
    threads: int


class _Entry:
    __slots__ = ("ephemeral", "last_used", "leases", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop, now: float, ephemeral: bool) -> None:
        self.ready: asyncio.Future[StreamFile] = loop.create_future()
        self.leases = 0
        self.last_used = now
        self.ephemeral = ephemeral

    @property
    def file(self) -> StreamFile | None:
        if self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None:
            return self.ready.result()
        return None

    def idle(self) -> bool:
        file = self.file
        return self.leases == 0 and file is not None and not file.busy


@final
class StreamStore:
    """Opens streams by storage path on demand, within bounds on threads, open files and idle time.

    Args:
        root_resolver: maps a storage path to its database file (e.g. ``Placement(...).path``).
        max_open: most file-backed streams open at once.
        idle_close: seconds after its last lease ends that a stream is closed.
        executor_threads: threads running SQLite work, shared by every stream.
        clock: time source for ``idle_close`` (monotonic) and for message times (wall).
        max_readers: reader connections per stream.
    """

    def __init__(
        self,
        root_resolver: Callable[[str], str | os.PathLike[str]],
        *,
        max_open: int = DEFAULT_MAX_OPEN,
        idle_close: float = DEFAULT_IDLE_CLOSE,
        executor_threads: int = DEFAULT_EXECUTOR_THREADS,
        clock: Clock | None = None,
        max_readers: int = 2,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, not {max_open!r}")
        if not idle_close > 0:
            raise ValueError(f"idle_close must be positive, not {idle_close!r}")
        if executor_threads < 1:
            raise ValueError(f"executor_threads must be at least 1, not {executor_threads!r}")
        self._resolve = root_resolver
        self._max_open = max_open
        self._idle_close = float(idle_close)
        self._threads = executor_threads
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_readers = max_readers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=executor_threads, thread_name_prefix="conat-persist"
        )
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._changed: asyncio.Event | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._opened = 0
        self._closed_count = 0
        self._closed = False
        self._started = False

    # ---- leases ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, *, config: StreamConfig | None = None, create: bool = True
    ) -> AsyncIterator[StreamFile]:
        """Lease the stream at ``path``, opening it if needed; it stays open while leased.

        Args:
            path: the storage path (``root_resolver`` maps it to a file).
            config: the config of a new stream (an existing one keeps its own); an ephemeral config
                makes an in-memory stream.
            create: create a missing stream; if false, a missing one raises :class:`NotFound`.

        Raises:
            ClosedError: the store is closed.
            NotFound, Corrupt, PersistError: from :meth:`StreamFile.open`.
        """
        self._check_open()
        if not isinstance(path, str) or not path:
            raise BadRequest("open", f"path must be a non-empty string, not {path!r}")
        loop = asyncio.get_running_loop()
        self._start(loop)
        entry = self._entries.get(path)
        if entry is None:
            entry = await self._open(loop, path, config, create)
        else:
            entry.leases += 1
            try:
                await asyncio.shield(entry.ready)
            except BaseException:
                entry.leases -= 1
                raise
        if path in self._entries:
            self._entries.move_to_end(path)
        try:
            yield entry.ready.result()
        finally:
            entry.leases -= 1
            entry.last_used = self._clock.now()
            self._notify()

    async def _open(
        self, loop: asyncio.AbstractEventLoop, path: str, config: StreamConfig | None, create: bool
    ) -> _Entry:
        ephemeral = config is not None and config.ephemeral
        closing = self._closing.get(path)
        if closing is not None:
            await asyncio.shield(closing)
        if not ephemeral:
            await self._make_room()
        existing = self._entries.get(path)  # another task may have opened it while we waited
        if existing is not None:
            existing.leases += 1
            try:
                await asyncio.shield(existing.ready)
            except BaseException:
                existing.leases -= 1
                raise
            return existing
        entry = _Entry(loop, self._clock.now(), ephemeral)
        entry.leases += 1
        self._entries[path] = entry
        try:
            file = None if ephemeral else self._resolve(path)
            opened = await asyncio.shield(
                StreamFile.open(
                    file,
                    executor=self._executor,
                    config=config,
                    clock=self._clock,
                    create=create,
                    max_readers=self._max_readers,
                )
            )
        except BaseException as e:
            entry.leases -= 1
            if self._entries.get(path) is entry:
                del self._entries[path]
            if not entry.ready.done():
                entry.ready.set_exception(e if isinstance(e, Exception) else ClosedError("persist store"))
                entry.ready.exception()  # mark retrieved: the waiters, if any, re-raise it
            self._notify()
            raise
        self._opened += 1
        entry.ready.set_result(opened)
        return entry

    async def _make_room(self) -> None:
        assert self._changed is not None
        while True:
            self._check_open()
            files = [e for e in self._entries.values() if not e.ephemeral]
            if len(files) < self._max_open:
                return
            victim = next((p for p, e in self._entries.items() if not e.ephemeral and e.idle()), None)
            if victim is not None:
                await self._close(victim)
                continue
            await self._changed.wait()

    # ---- closing ---------------------------------------------------------------------------------

    async def _close(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is None:
            return
        file = entry.file
        if file is None:
            return
        task = asyncio.get_running_loop().create_task(file.aclose(), name=f"persist-close {path}")
        self._closing[path] = task
        try:
            await asyncio.shield(task)
        finally:
            if self._closing.get(path) is task:
                del self._closing[path]
            self._closed_count += 1
            self._notify()

    async def drop(self, path: str) -> None:
        """Close the stream at ``path`` now (an ephemeral stream's data is gone). Waits for its leases."""
        while (entry := self._entries.get(path)) is not None and entry.leases > 0:
            assert self._changed is not None
            await self._changed.wait()
        await self._close(path)

    async def _reap(self) -> None:
        interval = self._idle_close / 4
        while True:
            await self._clock.sleep_until(self._clock.now() + interval)
            now = self._clock.now()
            stale = [
                p
                for p, e in self._entries.items()
                if not e.ephemeral and e.idle() and now - e.last_used >= self._idle_close
            ]
            for p in stale:
                try:
                    await self._close(p)
                except Exception:
                    logger.exception("closing idle stream %s failed", p)

    async def backup(self, path: str, dest: str | os.PathLike[str]) -> None:
        """Write a consistent online copy of the stream at ``path`` to ``dest`` (SQLite backup API).

        Raises:
            NotFound: no such stream.
        """
        async with self.stream(path, create=False) as s:
            await s.backup(dest)

    async def aclose(self) -> None:
        """Close every stream (finishing queued writes), stop the idle timer, join the threads."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for path in list(self._entries):
            await self._close(path)
        if self._closing:
            await asyncio.gather(*self._closing.values(), return_exceptions=True)
        self._notify()
        # Every submitted job has finished, so the workers are idle and this returns at once.
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> StreamStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_started", False):
            _warn("unclosed persist StreamStore", ResourceWarning, source=self, stacklevel=2)

    def statistics(self) -> StreamStoreStatistics:
        return StreamStoreStatistics(
            open=sum(1 for e in self._entries.values() if e.file is not None) + len(self._closing),
            leased=sum(1 for e in self._entries.values() if e.leases > 0),
            opened=self._opened,
            closed=self._closed_count,
            threads=self._threads,
        )

    # ---- internals -------------------------------------------------------------------------------

    @property
    def idle_close(self) -> float:
        """Seconds after its last lease ends that a stream is closed."""
        return self._idle_close

    def is_open(self, path: str) -> bool:
        """Whether the stream at ``path`` is open now (leasing it would not open a file)."""
        entry = self._entries.get(path)
        return entry is not None and entry.ready.done() and not entry.ready.cancelled()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("persist store")

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._started:
            return
        self._started = True
        self._changed = asyncio.Event()
        self._reaper = loop.create_task(self._reap(), name="persist-store idle reaper")

    def _notify(self) -> None:
        """Wake every task waiting for a lease to end or a stream to close (they re-check)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
