"""Many streams, few resources: open :class:`StreamFile` s on demand, close them when idle.

Theory of operation
-------------------

A :class:`StreamStore` maps storage paths (``projects/<id>/<name>``) to files with ``root_resolver``
and opens each file the first time it is used. Callers use a stream through a *lease*::

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

Files and symlinks
------------------

``root_resolver`` returns either a ``(root, relative)`` pair, as :meth:`persist.Placement.locate`
does, or a plain file path (as :meth:`persist.Placement.path` does), whose root is then its own
directory. The engine reaches the file from the root without following a symlink and refuses one
(:class:`persist.BadPath`) anywhere beneath it: the root may be a symlink, nothing below it may
(:mod:`persist._beneath`). So pass ``placement.locate``: with a plain path only the file itself is
checked.

Archive
-------

With an ``archive`` resolver (usually :meth:`persist.Placement.archive_path`), each file-backed
stream has an archive copy, ``<archive>/<storage path>.db``:

- **Written** when the stream is closed (idle close, LRU eviction, :meth:`StreamStore.aclose`) if it
  took writes since it was opened or last archived, and on demand by :meth:`StreamStore.archive`.
  :meth:`StreamStore.drop` does not archive. A copy is made with SQLite's backup API (never a file
  copy), after the stream is closed, so it holds every write the stream acknowledged; it goes to a
  temporary name and is renamed into place. A failed archive at close is logged and counted
  (``archive_failures``); the live file is intact.
- **Restored** when a stream is opened, before the file is, if the archive is newer: the live file is
  missing, or its ``meta.last_seq`` (the last seq ever assigned, read through its WAL) is lower than
  the archive's. A tie keeps the live file; so does a live file that is corrupt (opening it moves it
  aside and raises :class:`persist.Corrupt`; the next open restores). Deletes, config changes and
  sweeps do not change ``last_seq``, so they alone never make a copy newer, and two copies that each
  took writes the other lacks are not merged. The restore is a backup-API copy written beside the
  live file and renamed over it (:mod:`persist._archive`). So a stream whose file was deleted to
  save space, or lost with its disk, comes back from the archive on its next use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar, final

import msgspec

from conat import Clock, ClosedError, SystemClock

from ._archive import archive_stream, reset_stream, restore_if_newer
from ._config import StreamConfig
from ._engine import StreamFile
from ._errors import BadRequest, NotFound
from ._inventory import peek
from ._model import Inventory

__all__ = ["Lease", "Resolved", "StreamStore", "StreamStoreStatistics"]

_T = TypeVar("_T")

Resolved: TypeAlias = str | os.PathLike[str] | tuple[str | os.PathLike[str], str | os.PathLike[str]]
"""What a ``root_resolver`` returns: a ``(root, relative)`` pair, or a file (its directory is its root)."""

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
        archived: archive copies written (at close or by :meth:`StreamStore.archive`).
        restored: streams restored from their archive when opened.
        archive_failures: archive copies at close that failed (logged; the live file is intact).
    """

    open: int
    leased: int
    opened: int
    closed: int
    threads: int
    archived: int
    restored: int
    archive_failures: int


class _Entry:
    __slots__ = ("archive", "archived_writes", "ephemeral", "last_used", "leases", "ready", "where")

    def __init__(self, loop: asyncio.AbstractEventLoop, now: float, ephemeral: bool) -> None:
        self.ready: asyncio.Future[StreamFile] = loop.create_future()
        self.leases = 0
        self.last_used = now
        self.ephemeral = ephemeral
        self.where: tuple[Path, Path] | None = None
        """The file's (root, path), once resolved; ``None`` for an ephemeral stream."""
        self.archive: Path | None = None
        """Its archive copy, if it has one."""
        self.archived_writes = 0
        """``statistics().writes`` when the last archive copy began (writes after it need another)."""

    @property
    def file(self) -> StreamFile | None:
        if self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None:
            return self.ready.result()
        return None

    def idle(self) -> bool:
        file = self.file
        return self.leases == 0 and file is not None and not file.busy


@final
class _Signal:
    """The change signal of one path while someone waits on it (:meth:`StreamStore.watching`)."""

    __slots__ = ("future", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.waiters = 0


@final
class Lease:
    """A hold on an open stream (:meth:`StreamStore.lease`): it stays open until :meth:`release`."""

    __slots__ = ("_entry", "_store", "file")

    def __init__(self, store: StreamStore, entry: _Entry) -> None:
        self._store = store
        self._entry: _Entry | None = entry
        self.file: StreamFile = entry.ready.result()

    def release(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._store._release(entry)


@final
class StreamStore:
    """Opens streams by storage path on demand, within bounds on threads, open files and idle time.

    Args:
        root_resolver: maps a storage path to ``(root, relative)`` (``Placement(...).locate``) or to its
            database file (``Placement(...).path``; the file's directory is then its root).
        archive: maps a storage path to its archive copy, or ``None`` if it has none
            (``Placement(...).archive_path``); module docstring, "Archive".
        max_open: most file-backed streams open at once.
        idle_close: seconds after its last lease ends that a stream is closed.
        executor_threads: threads running SQLite work, shared by every stream.
        clock: time source for ``idle_close`` (monotonic) and for message times (wall).
        max_readers: reader connections per stream.
    """

    def __init__(
        self,
        root_resolver: Callable[[str], Resolved],
        *,
        archive: Callable[[str], str | os.PathLike[str] | None] | None = None,
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
        self._archive_of = archive
        self._max_open = max_open
        self._idle_close = float(idle_close)
        self._threads = executor_threads
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_readers = max_readers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=executor_threads, thread_name_prefix="conat-persist"
        )
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._signals: dict[str, _Signal] = {}
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._loading: set[asyncio.Task[StreamFile]] = set()
        self._changed: asyncio.Event | None = None
        self._watchers = 0
        self._reaper: asyncio.Task[None] | None = None
        self._opened = 0
        self._closed_count = 0
        self._archived = 0
        self._restored = 0
        self._archive_failures = 0
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
            create: create a missing stream; if false, a missing one raises :class:`NotFound` (unless
                its archive restores it).

        Raises:
            ClosedError: the store is closed.
            BadPath: a symlink beneath the stream's root (nothing was created through it).
            NotFound, Corrupt, PersistError: from :meth:`StreamFile.open` or the restore.
        """
        lease = await self.lease(path, config=config, create=create)
        try:
            yield lease.file
        finally:
            lease.release()

    async def lease(self, path: str, *, config: StreamConfig | None = None, create: bool = True) -> Lease:
        """Lease the stream at ``path`` like :meth:`stream`, for holders whose hold does not fit a
        ``with`` block (the persist service takes it in one task and gives it back in another).
        Call :meth:`Lease.release` exactly when done; it is idempotent."""
        return Lease(self, await self._acquire(path, config, create))

    def lease_nowait(self, path: str) -> Lease | None:
        """A lease on the stream at ``path`` if it is open and ready now, else ``None`` (then use
        :meth:`lease`, which opens it). Never waits: for a caller on a fast path."""
        if self._closed:
            return None
        entry = self._entries.get(path)
        if entry is None or entry.file is None:
            return None
        entry.leases += 1
        self._entries.move_to_end(path)
        return Lease(self, entry)

    async def _acquire(self, path: str, config: StreamConfig | None, create: bool) -> _Entry:
        """Take a lease on ``path``'s entry, opening the stream if needed."""
        self._check_open()
        if not isinstance(path, str) or not path:
            raise BadRequest("open", f"path must be a non-empty string, not {path!r}")
        loop = asyncio.get_running_loop()
        self._start(loop)
        entry = self._entries.get(path)
        if entry is None:
            entry = await self._open(loop, path, config, create)
        else:
            await self._lease(entry)
        if path in self._entries:
            self._entries.move_to_end(path)
        return entry

    async def _lease(self, entry: _Entry) -> None:
        entry.leases += 1
        try:
            await asyncio.shield(entry.ready)
        except BaseException:
            entry.leases -= 1
            self._notify()
            raise

    def _release(self, entry: _Entry) -> None:
        entry.leases -= 1
        entry.last_used = self._clock.now()
        self._notify()

    async def _open(
        self, loop: asyncio.AbstractEventLoop, path: str, config: StreamConfig | None, create: bool
    ) -> _Entry:
        """Open ``path`` in a task of its own, and lease it.

        The task (restore, then open) is not cancelled with its caller: it settles the entry either
        way, so a restore never runs under a stream opened meanwhile, and an open that completes after
        its caller left is an idle stream like any other (closed in time), not a leaked one.
        """
        ephemeral = config is not None and config.ephemeral
        closing = self._closing.get(path)
        if closing is not None:
            await asyncio.shield(closing)
        if not ephemeral:
            await self._make_room()
        existing = self._entries.get(path)  # another task may have opened it while we waited
        if existing is not None:
            await self._lease(existing)
            return existing
        self._check_open()  # aclose may have run while we waited: it would not close this one
        entry = _Entry(loop, self._clock.now(), ephemeral)
        self._entries[path] = entry
        task = loop.create_task(self._load(path, entry, config, create), name=f"persist-open {path}")
        self._loading.add(task)
        task.add_done_callback(functools.partial(self._loaded, path, entry))
        await self._lease(entry)
        return entry

    async def _load(self, path: str, entry: _Entry, config: StreamConfig | None, create: bool) -> StreamFile:
        root = file = None
        check: bool | None = None
        if not entry.ephemeral:
            root, file = self._locate(path)
            entry.where = (root, file)
            archive = self._archive_of(path) if self._archive_of is not None else None
            entry.archive = None if archive is None else Path(archive)
            if entry.archive is not None:
                restore = await self._run(functools.partial(restore_if_newer, root, file, entry.archive))
                if restore.restored:
                    self._restored += 1
                    logger.info("restored %s from its newer archive %s", file, entry.archive)
                if restore.unclean:  # seen before the restore's read cleaned up the -wal
                    check = True
        opened = await StreamFile.open(
            file,
            root=root,
            executor=self._executor,
            config=config,
            clock=self._clock,
            create=create,
            max_readers=self._max_readers,
            check=check,
        )
        opened.on_change = functools.partial(self._signal_change, path)
        return opened

    # ---- change signals --------------------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, path: str) -> Iterator[asyncio.Future[None]]:
        """A future resolved by the next committed change of the stream at ``path``.

        It outlives the file (it is fed by :attr:`StreamFile.on_change`): a reader can wait without
        holding a lease, so many idle changefeeds pin no open file (and a file closed by the LRU
        cap wakes nobody). Take it *before* reading, then wait on it: a change committed after the
        read resolves it.
        """
        signal = self._signals.get(path)
        if signal is None or signal.future.done():
            signal = self._signals[path] = _Signal(asyncio.get_running_loop())
        signal.waiters += 1
        try:
            yield signal.future
        finally:
            signal.waiters -= 1
            if signal.waiters == 0 and self._signals.get(path) is signal:
                del self._signals[path]

    def _signal_change(self, path: str) -> None:
        signal = self._signals.pop(path, None)
        if signal is not None and not signal.future.done():
            signal.future.set_result(None)

    def _loaded(self, path: str, entry: _Entry, task: asyncio.Task[StreamFile]) -> None:
        self._loading.discard(task)
        error = ClosedError("persist store") if task.cancelled() else task.exception()
        if error is None:
            self._opened += 1
            entry.ready.set_result(task.result())
        else:
            if self._entries.get(path) is entry:
                del self._entries[path]
            entry.ready.set_exception(error if isinstance(error, Exception) else ClosedError("persist store"))
            entry.ready.exception()  # mark retrieved: the leaseholders, if any, re-raise it
        self._notify()

    def _locate(self, path: str) -> tuple[Path, Path]:
        """``(root, file)`` of ``path``, from either form ``root_resolver`` may return."""
        resolved = self._resolve(path)
        if isinstance(resolved, tuple):
            root, relative = resolved
            return Path(root), Path(root, relative)
        file = Path(resolved)
        return file.parent, file

    def _run(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        return asyncio.wrap_future(self._executor.submit(fn))

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
            await self._wait_changed()

    # ---- closing ---------------------------------------------------------------------------------

    async def _close(self, path: str, *, archive: bool = True) -> None:
        entry = self._entries.pop(path, None)
        if entry is None:
            return
        file = entry.file
        if file is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._shut(path, entry, file, archive), name=f"persist-close {path}"
        )
        self._closing[path] = task
        try:
            await asyncio.shield(task)
        finally:
            if self._closing.get(path) is task:
                del self._closing[path]
            self._closed_count += 1
            self._notify()

    async def _shut(self, path: str, entry: _Entry, file: StreamFile, archive: bool) -> None:
        """Close ``file``; then, if ``archive`` and it took writes since its last copy, archive it."""
        await file.aclose()
        dest, where = entry.archive, entry.where
        if not archive or dest is None or where is None:
            return
        if file.statistics().writes <= entry.archived_writes:
            return
        try:
            await self._run(functools.partial(archive_stream, where[0], where[1], dest))
        except Exception:
            self._archive_failures += 1
            logger.exception("archiving %s to %s failed (the live file is intact)", path, dest)
        else:
            self._archived += 1

    async def drop(self, path: str) -> None:
        """Close the stream at ``path`` now (an ephemeral stream's data is gone). Waits for its leases.

        Does not archive it (call :meth:`archive` first for that).
        """
        while (entry := self._entries.get(path)) is not None and entry.leases > 0:
            await self._wait_changed()
        await self._close(path, archive=False)

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
                # each close awaits: a stream leased (or used) since the round began is no longer idle
                entry = self._entries.get(p)
                if (
                    entry is None
                    or not entry.idle()
                    or self._clock.now() - entry.last_used < self._idle_close
                ):
                    continue
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

    async def archive(self, path: str) -> Path | None:
        """Write the archive copy of the stream at ``path`` now (online: it may be in use meanwhile).

        The copy holds every write committed before it began; later ones are archived when the
        stream is closed.

        Returns:
            the archive file, or ``None`` if the stream has no archive (no ``archive`` resolver, the
            resolver said ``None``, or the stream is ephemeral).

        Raises:
            NotFound: no such stream (and no archive to restore it from).
            PersistError: opening the stream or writing the copy failed.
        """
        entry = await self._acquire(path, None, False)
        try:
            dest, where = entry.archive, entry.where
            if dest is None or where is None:
                return None
            written = entry.ready.result().statistics().writes
            await self._run(functools.partial(archive_stream, where[0], where[1], dest))
            entry.archived_writes = max(entry.archived_writes, written)
            self._archived += 1
            return dest
        finally:
            self._release(entry)

    async def inventory(self, path: str) -> tuple[Inventory, StreamConfig]:
        """The counts and config of the stream at ``path``, without opening it if it is not open.

        An open stream answers itself; another is read through a read-only connection
        (:func:`persist._inventory.peek`): no writer, no whole-file check, and no stream in use is
        closed to make room. Only one that was not closed cleanly is opened (and so checked).

        Raises:
            NotFound: no such stream. Corrupt: it is quarantined, or not a sound stream file.
            BadPath, StorageError: as for opening it.
        """
        self._check_open()
        if not self.is_open(path):
            root, file = self._locate(path)
            peeked = await self._run(functools.partial(peek, root, file, self._clock.wall()))
            if peeked is not None:
                return peeked
        async with self.stream(path, create=False) as stream:
            return await stream.inventory(), stream.config()

    async def reset(self, path: str, *, restore: bool = False) -> list[str]:
        """Reset the quarantined (corrupt) stream at ``path``: an operator's decision
        (:mod:`persist._quarantine`).

        What is at the stream's name is moved aside (never deleted); then, with ``restore``, its
        archive copy is restored into place, else the stream starts again empty on its next use.
        Either way it gets a new stream id, so changefeed consumers reload. Opens of ``path`` wait
        until the reset is done.

        Returns:
            the paths moved aside now (the corrupt file itself was moved aside when it was found).

        Raises:
            BadRequest: the stream is not quarantined (a sound stream cannot be reset), or it is open.
            NotFound: ``restore`` and the stream has no archive (nothing was changed).
            Corrupt: the archive cannot be read (the stream stays quarantined).
            BadPath, StorageError: as for opening it.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        self._start(loop)
        if path in self._entries or path in self._closing:
            raise BadRequest("reset", f"stream {path} is in use, so it is not quarantined")
        root, file = self._locate(path)
        archive: Path | None = None
        if restore:
            found = self._archive_of(path) if self._archive_of is not None else None
            if found is None:
                raise NotFound(f"archive of stream {path} (no archive is configured)")
            archive = Path(found)
        work = asyncio.ensure_future(self._run(functools.partial(reset_stream, root, file, archive)))
        settled = loop.create_task(_settle(work), name=f"persist-reset {path}")
        self._closing[path] = settled  # an open of this path waits for the reset
        try:
            return await asyncio.shield(work)
        finally:
            await asyncio.shield(settled)
            if self._closing.get(path) is settled:
                del self._closing[path]
            self._notify()

    async def aclose(self) -> None:
        """Close every stream (finishing queued writes, then archiving), stop the idle timer, join the threads."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._loading:  # opens under way finish first, so that they are closed below
            await asyncio.gather(*self._loading, return_exceptions=True)
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
            archived=self._archived,
            restored=self._restored,
            archive_failures=self._archive_failures,
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
        """Wake every task waiting for a lease to end or a stream to close (they re-check).

        Only when one waits: a lease is released for every request the service answers.
        """
        if self._changed is not None and self._watchers:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait_changed(self) -> None:
        """Wait for the next :meth:`_notify` (the caller re-checks what it waits for)."""
        assert self._changed is not None
        self._watchers += 1
        try:
            await self._changed.wait()
        finally:
            self._watchers -= 1


async def _settle(work: asyncio.Future[Any]) -> None:
    """Wait for ``work`` whatever its outcome (its own awaiter sees the outcome)."""
    with contextlib.suppress(BaseException):
        await asyncio.shield(work)
