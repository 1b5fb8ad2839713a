"""The plumbing of a stream file: threads, connections, the group-commit queue, and the error boundary.

The pieces :class:`persist.StreamFile` is built from (its docstring is the theory of operation):

- :func:`storage_errors`, the one boundary where ``sqlite3`` and ``OSError`` errors become
  :class:`persist.Corrupt` or :class:`persist.StorageError`, so callers meet persist's error tree
  only, never a driver's exception that would change with the driver. Every call into
  ``sqlite3`` or the file system made for a stream file runs inside it;
- :class:`Conn`, a connection with the lock that keeps it to one thread at a time;
- :class:`Jobs`, the caller's executor plus the jobs submitted to it and not yet finished;
- :class:`ReaderPool`, the ``query_only`` reader connections of a file (at most ``max_readers``);
- :class:`GroupCommit`, the writer's queue and the task that drains it one transaction at a time;
- :func:`open_writer`, which opens (or creates) a file, checks it (its whole content only after an
  unclean close), and quarantines a corrupt one (:mod:`persist._quarantine`).

Files are reached from their root without following a symlink (:mod:`persist._beneath`): the writer
and every reader connect through the one :class:`persist._beneath.Anchor` the writer's :class:`Conn`
owns, which is closed after every connection.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, final

from conat import ClosedError

from . import _sql
from ._beneath import Anchor
from ._config import StreamConfig
from ._durable import levels_beneath, sync_parents
from ._errors import Corrupt, NotFound, PersistError, StorageError
from ._quarantine import WAY_OUT, quarantine, refuse_if_quarantined

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_OPS",
    "Apply",
    "Conn",
    "Done",
    "GroupCommit",
    "Jobs",
    "ReaderPool",
    "close_all",
    "locked",
    "open_writer",
    "storage_errors",
    "unclean",
]

_T = TypeVar("_T")

logger = logging.getLogger("conat.persist.engine")

Apply = Callable[[sqlite3.Connection, float], object]
"""A queued mutation: ``apply(db, now)`` runs inside the writer's transaction and returns its result."""


# ---- error translation (the one boundary for sqlite3/OSError) --------------------------------------


_MISUSE: tuple[type[sqlite3.Error], ...] = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.NotSupportedError,
)
"""``sqlite3`` errors that mean persist misused SQLite (a bug), not that the storage failed."""


@contextlib.contextmanager
def storage_errors(what: str, operation: str = "write") -> Iterator[None]:
    """Translate storage errors raised inside (``what`` names the file, ``operation`` what was done).

    A corrupt or unreadable file becomes :class:`Corrupt`; any other failure of the storage (an
    ``OSError``, or a ``sqlite3`` error such as ``SQLITE_FULL``, ``SQLITE_IOERR``, ``SQLITE_CANTOPEN``,
    ``SQLITE_READONLY``, ``SQLITE_BUSY``) becomes :class:`StorageError`; a ``sqlite3`` error that
    means persist misused SQLite (:data:`_MISUSE`) becomes a plain :class:`PersistError`.
    ``operation`` defaults to ``"write"``: the writer's transaction
    (:meth:`persist._engine_writer.Writer.commit`) relies on it.
    """
    try:
        yield
    except PersistError:
        raise
    except sqlite3.Error as e:
        name = getattr(e, "sqlite_errorname", "")
        detail = f"{name or type(e).__name__}: {e}"
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(e):
            raise Corrupt(what, detail) from None
        if isinstance(e, _MISUSE):
            raise PersistError(f"{operation} failed on {what}: {detail}") from None
        raise StorageError(operation, what, detail) from None
    except OSError as e:
        detail = f"{e.strerror or e}" if e.filename is None else f"{e.strerror or e}: {e.filename}"
        raise StorageError(operation, what, detail) from None


# ---- connections and threads -------------------------------------------------------------------------


@final
class Conn:
    """A sqlite3 connection and the lock that keeps it to one thread at a time.

    ``anchor``, if any, is the directory the connection's file was reached through; the connection
    owns it and :func:`close_all` closes it after the connection.
    """

    __slots__ = ("anchor", "db", "lock")

    def __init__(self, db: sqlite3.Connection, anchor: Anchor | None = None) -> None:
        self.db = db
        self.anchor = anchor
        self.lock = threading.Lock()


def locked(conn: Conn, work: Callable[[sqlite3.Connection], _T], what: str, operation: str = "read") -> _T:
    """Run ``work(conn.db)`` under the connection's lock (in the executor); ``operation`` is for errors."""
    with conn.lock, storage_errors(what, operation):
        return work(conn.db)


def close_all(conns: Sequence[Conn]) -> None:
    """Close every connection, each under its lock (in the executor), then the anchors they own.

    Anchors are closed last: SQLite may still name ``-wal``/``-shm`` through one until every
    connection to the file is closed. Close errors are ignored.
    """
    for conn in conns:
        with conn.lock, contextlib.suppress(sqlite3.Error):
            conn.db.close()
    for conn in conns:
        if conn.anchor is not None:
            with contextlib.suppress(OSError):
                conn.anchor.close()


@final
class Jobs:
    """Submits work to the owner's executor and remembers what is still running (to wait for it)."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._inflight: set[concurrent.futures.Future[Any]] = set()

    def submit(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        """Run ``fn()`` in the executor; the result as an asyncio future of the running loop."""
        cf = self._executor.submit(fn)
        self._inflight.add(cf)
        cf.add_done_callback(self._inflight.discard)
        return asyncio.wrap_future(cf)

    async def join(self) -> None:
        """Wait for every job submitted so far (whatever its outcome)."""
        pending = [asyncio.wrap_future(f) for f in list(self._inflight)]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


@final
class _Read:
    """One queued read: its work, and who learns the outcome (a future or a callback)."""

    __slots__ = ("done", "future", "work")

    def __init__(
        self,
        work: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any] | None,
        done: Callable[[Any], object] | None,
    ) -> None:
        self.work = work
        self.future = future
        self.done = done

    def wanted(self) -> bool:
        return self.future is None or not self.future.cancelled()

    def give(self, ok: bool, value: Any) -> None:
        if self.done is not None:
            try:
                self.done(value)
            except Exception:
                logger.exception("a persist read callback failed")
            return
        fut = self.future
        assert fut is not None
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


@final
class ReaderPool:
    """The reader connections of one file: opened on demand, at most ``max_readers``, reused.

    Each reader is ``query_only``, so WAL lets reads run beside the writer. Once :meth:`attach` ed
    to the writer's anchor, readers connect through it (and are verified like the writer).

    **Group reads.** Reads queued while every reader is busy run together, in one executor call on
    one connection, as writes share a transaction: a thread hop costs more than a point query, so
    under concurrency (a service answering many ``get`` s of one stream) this is what keeps reads
    from paying one hop each. Each read still gets its own result or error.
    """

    def __init__(self, file: Path, jobs: Jobs, max_readers: int, what: str) -> None:
        self._file = file
        self._anchor: Anchor | None = None
        self._jobs = jobs
        self._what = what
        self._max = max_readers
        self._running = 0
        self._closed = False
        self._queue: list[_Read] = []
        self._idle: list[Conn] = []
        self.all: list[Conn] = []

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(db)`` on a reader connection in the executor (with the reads queued beside it)."""
        fut: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Read(work, fut, None))
        self._start()
        return await fut

    def submit(self, work: Callable[[sqlite3.Connection], Any], done: Callable[[Any], object]) -> None:
        """:meth:`run` with a callback: ``done(outcome)`` is called on the loop with the result, or
        the exception that failed the read (a :class:`PersistError`; :class:`ClosedError` if the
        pool closed first)."""
        self._queue.append(_Read(work, None, done))
        self._start()

    def _start(self) -> None:
        if self._closed:
            queued, self._queue = self._queue, []
            for read in queued:
                read.give(False, ClosedError(f"persist stream {self._what}"))
            return
        while self._queue and self._running < self._max:
            batch, self._queue = self._queue, []
            batch = [r for r in batch if r.wanted()]
            if not batch:
                continue
            self._running += 1
            try:
                job = self._jobs.submit(functools.partial(self._with_reader, [r.work for r in batch]))
            except BaseException as e:
                self._running -= 1
                for r in batch:
                    r.give(False, e)
                raise
            job.add_done_callback(functools.partial(self._finished, batch))

    def _finished(self, batch: list[_Read], job: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        self._running -= 1
        failure = None if job.cancelled() else job.exception()
        outcomes = job.result() if failure is None and not job.cancelled() else None
        for n, read in enumerate(batch):
            if outcomes is None:
                read.give(False, failure if failure is not None else asyncio.CancelledError())
            else:
                read.give(*outcomes[n])
        self._start()

    def attach(self, anchor: Anchor) -> None:
        """Connect readers through ``anchor`` (owned by the writer, open longer than every reader)."""
        self._anchor = anchor

    def take_all(self) -> list[Conn]:
        """Forget every connection (to close them); the pool is unusable afterwards."""
        self._closed = True
        self._start()  # fails the reads still queued
        conns = list(self.all)
        self.all.clear()
        self._idle.clear()
        return conns

    def _with_reader(self, works: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        """Run ``works`` on one reader connection (in the executor): per work, (ok, result or error)."""
        with storage_errors(self._what, "read"):
            try:
                conn = self._idle.pop()
            except IndexError:
                anchor = self._anchor
                db = (
                    anchor.connect(reader=True)
                    if anchor is not None
                    else _sql.connect(self._file, reader=True)
                )
                conn = Conn(db)
                self.all.append(conn)
        outcomes: list[tuple[bool, Any]] = []
        try:
            with conn.lock:
                for work in works:
                    try:
                        with storage_errors(self._what, "read"):
                            outcomes.append((True, work(conn.db)))
                    except Exception as e:  # noqa: BLE001 - handed to that read's caller
                        outcomes.append((False, e))
        finally:
            self._idle.append(conn)
        return outcomes


# ---- the writer's queue ------------------------------------------------------------------------------


Done = Callable[[list[object] | PersistError], None]
"""A group's completion callback (:meth:`GroupCommit.put_nowait`): called on the loop with one
outcome per mutation (a result, or the :class:`PersistError` that refused it) once its transaction
committed, or with the one :class:`PersistError` that failed the whole transaction."""


@final
class _Group:
    """What one :meth:`GroupCommit.put` (or :meth:`GroupCommit.put_nowait`) queued."""

    __slots__ = ("applies", "done", "futures", "nbytes")

    def __init__(
        self,
        applies: list[Apply],
        nbytes: int,
        futures: list[asyncio.Future[Any]] | None,
        done: Done | None,
    ) -> None:
        self.applies = applies
        self.nbytes = nbytes
        self.futures = futures
        self.done = done

    def _call(self, outcome: list[object] | PersistError) -> None:
        assert self.done is not None
        try:
            self.done(outcome)
        except Exception:
            logger.exception("a persist completion callback failed")

    def live(self) -> bool:
        """Whether someone still waits for it (every future of a group cancelled: skip it)."""
        return self.futures is None or not all(f.done() for f in self.futures)

    def deliver(self, outcomes: Sequence[object]) -> None:
        """Hand each mutation its outcome (a result, or a :class:`PersistError`)."""
        if self.done is not None:
            self._call(list(outcomes))
            return
        assert self.futures is not None
        for fut, res in zip(self.futures, outcomes, strict=True):
            if fut.done():
                continue
            if isinstance(res, PersistError):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def fail(self, error: PersistError) -> None:
        if self.done is not None:
            self._call(error)
            return
        assert self.futures is not None
        for fut in self.futures:
            if not fut.done():
                fut.set_exception(error)


MAX_BATCH_OPS: Final = 1000
"""Most mutations in one transaction (a :meth:`GroupCommit.put` group is never split, so one larger
group makes a transaction of its own)."""
MAX_BATCH_BYTES: Final = 16 * 1024 * 1024
"""Most bytes of messages in one transaction (same rule: whole groups, at least one)."""


@final
class GroupCommit:
    """The writer's queue: a drain task runs what is queued in one ``commit`` call in the executor.

    ``commit(applies)`` runs in one transaction and returns, per mutation, its result or the
    :class:`PersistError` that refused it; if it raises, every mutation of the batch fails with that
    error (a :class:`PersistError`, or one wrapping anything else). Mutations queued while a batch
    commits go into the next one. A caller learns its outcome only after its batch has committed:
    through a future (:meth:`put`) or a callback (:meth:`put_nowait`, which costs no future and
    no task per caller). Outcomes are delivered in queue order, on the loop.

    **Bounded batches.** A batch takes whole groups (what one :meth:`put` queued: a ``set_many`` is
    one group, so it commits in one transaction) in order, up to :data:`MAX_BATCH_OPS` mutations and
    :data:`MAX_BATCH_BYTES` of messages, and always at least one group; the rest waits for the next
    transaction. So a burst of writes makes several moderate transactions, not one that holds the
    writer (and every caller of the batch) for as long as the whole burst takes to write.

    Args:
        loop: the event loop the owner is bound to.
        jobs: runs ``commit`` in the executor.
        commit: runs a batch in one transaction (in the executor).
        what: names the file in errors and in the drain task's name.
        max_ops, max_bytes: the bounds of a batch.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        jobs: Jobs,
        commit: Callable[[Sequence[Apply]], list[object]],
        what: str,
        *,
        max_ops: int = MAX_BATCH_OPS,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._loop = loop
        self._jobs = jobs
        self._commit = commit
        self._what = what
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._queue: collections.deque[_Group] = collections.deque()
        self._queued = 0
        self._drainer: asyncio.Task[None] | None = None
        self.largest = 0
        """The most mutations one batch has held (for statistics)."""

    @property
    def queued(self) -> int:
        """Mutations waiting for the next transaction."""
        return self._queued

    @property
    def busy(self) -> bool:
        """Whether mutations are queued or a transaction is running."""
        return bool(self._queue) or (self._drainer is not None and not self._drainer.done())

    def put(self, applies: Sequence[Apply], nbytes: int = 0) -> list[asyncio.Future[Any]]:
        """Queue ``applies`` as one group (in order, in one transaction) of ``nbytes`` of messages;
        one future each."""
        futures = [self._loop.create_future() for _ in applies]
        self._add(_Group(list(applies), nbytes, futures, None))
        return futures

    def put_nowait(self, applies: Sequence[Apply], nbytes: int, done: Done) -> None:
        """Queue ``applies`` as one group, like :meth:`put`; ``done(outcomes)`` is called on the
        loop once its transaction has committed (or failed: then every outcome is the error)."""
        self._add(_Group(list(applies), nbytes, None, done))

    def _add(self, group: _Group) -> None:
        self._queue.append(group)
        self._queued += len(group.applies)
        if self._drainer is None or self._drainer.done():
            self._drainer = self._loop.create_task(self._drain(), name=f"persist-writer {self._what}")

    async def wait(self) -> None:
        """Wait until the drain task has emptied the queue (not cancelled by the caller's cancellation)."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)

    def _take(self) -> list[_Group]:
        """The next batch: whole groups, within the bounds, at least one."""
        batch: list[_Group] = []
        ops = size = 0
        while self._queue:
            group = self._queue[0]
            n = len(group.applies)
            if batch and (ops + n > self._max_ops or size + group.nbytes > self._max_bytes):
                break
            self._queue.popleft()
            self._queued -= n
            if group.live():
                batch.append(group)
                ops += n
                size += group.nbytes
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            if not batch:
                continue
            applies = [a for group in batch for a in group.applies]
            self.largest = max(self.largest, len(applies))
            try:
                results = await asyncio.shield(self._jobs.submit(functools.partial(self._commit, applies)))
            except BaseException as e:
                error = (
                    e if isinstance(e, PersistError) else PersistError(f"write failed on {self._what}: {e!r}")
                )
                for group in batch:
                    group.fail(error)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            at = 0
            for group in batch:
                n = len(group.applies)
                group.deliver(results[at : at + n])
                at += n


# ---- opening -----------------------------------------------------------------------------------------


def open_writer(
    file: Path | None,
    wanted: StreamConfig,
    create: bool,
    what: str,
    *,
    root: Path | None = None,
    readers: ReaderPool | None = None,
    check: bool | None = None,
) -> tuple[Conn, _sql.Opened, bool]:
    """Open the writer connection of ``file`` (``None``: a private in-memory database), in the executor.

    ``file`` is reached from ``root`` (default: its own directory) without following a symlink
    (:mod:`persist._beneath`); missing directories beneath the root are created if ``create``. A
    quarantined stream is refused first (:mod:`persist._quarantine`), whether the file exists or
    not. A file that exists is refused if its schema holds objects persist did not make (a trigger,
    a view: it was tampered with), and checked with ``PRAGMA quick_check`` if it was not closed
    cleanly (its ``-wal`` or ``-shm`` is still there: a clean close removes both), or if ``check``
    says so (a caller that saw that before something else opened the file); a file that fails
    either is quarantined (moved aside, and refused until an operator resets it). A quick check
    reads the whole file, so it is not paid on every open of every stream.
    On success ``readers`` (the file's pool) is attached to the writer's anchor.

    Returns:
        the writer, what was read back, and whether the file was quick-checked.

    Raises:
        NotFound: ``create`` is false and the file does not exist.
        BadPath: a symlink beneath ``root`` or at the file (its ``-wal``/``-shm``); nothing was created
            through it.
        OutsideScope: ``file`` is not inside ``root``.
        Corrupt: the stream is quarantined, or the file failed its checks and was quarantined now
            (both paths are in the detail, and what to do).
        StorageError: the file could not be opened (permission, I/O error, disk full...).
    """
    if file is None:
        with storage_errors(what, "open"):
            memory = _sql.connect(":memory:")
            return Conn(memory), _sql.init_db(memory, wanted, what, durable=False), False
    base = file.parent if root is None else root
    with storage_errors(what, "open"):
        # Whether the walk may create directories (by the text: this only decides what to fsync, and
        # a stream's directory is there for every stream but the first of its scope).
        new_dirs = create and not file.parent.is_dir()
        anchor = Anchor.open(base, file, create=False, create_dirs=create, missing_ok=True)
    try:
        with storage_errors(what, "open"):
            refuse_if_quarantined(anchor)  # before anything is created: it reads as corrupt, not empty
            if not anchor.existed:
                if not create:
                    raise NotFound(f"stream file {file}")
                anchor.close()
                anchor = Anchor.open(base, file, create=True)  # the file, never through a symlink
    except BaseException:
        anchor.close()
        raise
    db: sqlite3.Connection | None = None
    checked = False
    try:
        with storage_errors(what, "open"):
            if new_dirs:  # make their entries durable (the new file's is SQLite's, with its -wal)
                sync_parents(anchor.dirfd, levels_beneath(base, file))
            checked = anchor.existed and (check if check is not None else unclean(anchor))
            db = anchor.connect()
            if anchor.existed:
                foreign = _sql.foreign_objects(db)
                if foreign:
                    raise Corrupt(str(file), "objects persist did not make: " + ", ".join(foreign[:5]))
            if checked:
                problems = _sql.problems(db)
                if problems:
                    raise Corrupt(str(file), "; ".join(problems[:5]))
            opened = _sql.init_db(db, wanted, what, durable=True)
            anchor.verify(db)  # again, now that SQLite has made -wal and -shm
    except Corrupt as e:
        _close_quietly(db)
        try:
            with storage_errors(str(file), "quarantine"):
                moved = quarantine(anchor, e.detail)
        finally:
            anchor.close()
        raise Corrupt(str(file), f"{e.detail}; moved aside to {moved}; {WAY_OUT}") from None
    except BaseException:
        _close_quietly(db)
        anchor.close()
        raise
    if readers is not None:
        readers.attach(anchor)
    return Conn(db, anchor), opened, checked


def unclean(anchor: Anchor) -> bool:
    """Whether the file in ``anchor`` was not closed cleanly: its ``-wal`` or ``-shm`` is still there.

    SQLite removes both when the last connection to a WAL database closes, so either one left means
    a crash (or a connection open elsewhere, which the root lock rules out for persist's own files).
    """
    return any(anchor.lstat(anchor.name + side) is not None for side in ("-wal", "-shm"))


def _close_quietly(db: sqlite3.Connection | None) -> None:
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.close()
