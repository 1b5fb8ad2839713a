"""One stream in one SQLite file: the storage engine behind the persist service.

:class:`StreamFile` implements the semantics of :class:`persist.StreamModel` (same results, same
errors, same order of checks) on a SQLite database in WAL mode, and is tested against the model
operation by operation.

Theory of operation
-------------------

**Threads.** No SQLite call runs on the event loop. Every call runs in a ``ThreadPoolExecutor``
passed in by the owner (:class:`persist.StreamStore` shares one, bounded, between all its files), and a
connection is only ever used by one thread at a time (each has a lock).

**One writer, group commit.** Each file has one writer connection. Every mutation (``set``,
``set_many``, ``delete``, ``set_config``, ``sweep``) is queued; a drain task takes what is queued (up
to 1,000 mutations and 16 MiB of messages: :class:`persist._engine_io.GroupCommit`), runs it in one
``BEGIN IMMEDIATE ... COMMIT`` in one executor call, then resolves each caller's future. Writes queued
while a transaction commits go into the next one. A caller is answered only after
the transaction holding its write has committed (with ``sync="full"``, after the fsync), so an
acknowledged write is on disk. One fsync costs ~0.45 ms here, so batching is where durable
throughput comes from; :meth:`StreamFile.statistics` counts transactions and writes.

**Atomicity of a refused write.** Every check of a write runs before it changes anything (the model
is written the same way), so a refused write (``reject``, ``wrong-last-sequence``...) changes nothing
and the other writes of its transaction are unaffected. If the transaction itself fails (disk full,
I/O error) it is rolled back, the in-memory state (last seq, counters, rate buckets, config) is
restored, and every write of the batch fails with :class:`PersistError`.

**Time.** Writes read ``clock.wall()`` once per transaction: every write of a batch has the same
``time``, and each transaction first sweeps (removes, for real) what is expired at that time, as the
model does before each mutation. Reads filter expired rows in SQL at their own ``now``, so an expired
message is never returned even before a sweep deletes it.

**Readers.** Reads run on their own connections (``query_only``; at most ``max_readers`` per file), so
WAL lets them run beside the writer. An ephemeral stream lives in a private ``:memory:`` database; its
reads share the writer connection (and its lock).

**Dedup.** Msg-ids live in the ``dedup`` table, written in the same transaction as their message, so a
retry after a crash or restart is still recognised (an in-memory cache of msg-ids would forget them
at a restart, and the retry would be stored twice). Rate buckets are
in memory only: they start full when a file is opened.

**Errors.** No ``sqlite3`` (or ``OSError``) error leaves the engine: they are translated at one
boundary (:func:`persist._engine_io.storage_errors`), inside which every storage call runs. A
corrupt or unreadable file becomes :class:`persist.Corrupt`, any other storage failure (disk
full, I/O error, permission) :class:`persist.StorageError` (code ``storage``). On open a file is
refused if its schema holds objects persist did not make, and checked with ``PRAGMA quick_check``
after an unclean close (:func:`persist._engine_io.open_writer`); every connection treats the schema
as untrusted (:func:`persist._sql.harden`). A corrupt file is renamed to ``<name>.corrupt-<UTC
timestamp>`` (with its ``-wal``/``-shm``), never deleted, and ``Corrupt`` names both paths.

Layout
------

This module is the asyncio face of the engine; the rest is split by job:

- :mod:`persist._checks`: argument checks, shared with the model (same errors);
- :mod:`persist._admission`: the pure write-admission rules (limits, compare-and-set, rate buckets,
  eviction and trim), shared with the model;
- :mod:`persist._sql`: the schema (documented there), the statements, rows to and from messages;
- :mod:`persist._engine_writer`: the writer's in-memory state and the mutations of one transaction;
- :mod:`persist._engine_io`: the executor, connections and their locks, the reader pool, the
  group-commit queue, opening and quarantine, and the error boundary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import sqlite3
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, final

import msgspec

from conat import Clock, ClosedError, SystemClock

from . import _sql
from ._checks import (
    SetArgs,
    check_delete_args,
    check_encoding,
    check_now,
    check_selector,
    check_seq,
    check_set_args,
)
from ._config import StreamConfig
from ._durable import write_copy
from ._engine_io import Conn, GroupCommit, Jobs, ReaderPool, close_all, locked, open_writer
from ._engine_writer import Writer
from ._errors import BadRequest, PersistError
from ._model import DEFAULT_ENCODING, DeleteResult, Inventory, SetResult, StoredMessage
from ._tail import Commit, Tail

__all__ = [
    "DEFAULT_PAGE_BYTES",
    "DEFAULT_PAGE_MSGS",
    "ChangePage",
    "StoredMessage",
    "StreamFile",
    "StreamFileStatistics",
    "Write",
]

_T = TypeVar("_T")

DEFAULT_PAGE_MSGS: Final = 1000
"""Messages in a page of :meth:`StreamFile.get_all` / :meth:`StreamFile.changes` by default."""
DEFAULT_PAGE_BYTES: Final = 4 * 1024 * 1024
"""Bytes (:func:`persist.message_size` summed) in a page by default: a page stops before the first
message that would pass it, however many ``max_msgs`` allows (and always holds at least one)."""


class Write(msgspec.Struct, frozen=True, kw_only=True):
    """One write of :meth:`StreamFile.set_many` (the arguments of :meth:`StreamFile.set`)."""

    payload: bytes
    key: str | None = None
    headers: dict[str, str] | None = None
    encoding: str = DEFAULT_ENCODING
    ttl: float | None = None
    msg_id: str | None = None
    previous_seq: int | None = None


@final
class ChangePage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a stream's changes after a cursor (:meth:`StreamFile.changes`), read as one snapshot.

    Attributes:
        messages: live messages with ``seq > after_seq``, in seq order (a keyed one replaces the
            key's previous message).
        deletes: ``(low, high)`` ranges of seqs removed since ``after_delete`` (explicit deletes,
            evictions, trims, expiry); applying one to seqs never held is harmless.
        delete_cursor: pass it as ``after_delete`` next time.
        last_seq: the last seq ever assigned at the snapshot.
        stream_id: changes when the file is re-created; a cursor is only valid for one id.
        resync: the deletes since ``after_delete`` are no longer all in the log (the consumer fell
            too far behind, or ``stream_id`` changed): reload instead of applying ``deletes``.
    """

    messages: list[StoredMessage]
    deletes: list[tuple[int, int]]
    delete_cursor: int
    last_seq: int
    stream_id: str
    resync: bool = False


@final
class StreamFileStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one :class:`StreamFile` since it was opened.

    Attributes:
        transactions: write transactions committed.
        writes: mutations (each ``set``, each write of ``set_many``, ``delete``...) committed.
        queued: mutations waiting for the next transaction.
        readers: reader connections open.
        largest_batch: the most mutations one transaction has held (bounded: group commit takes
            at most :data:`persist._engine_io.MAX_BATCH_OPS`, or one larger ``set_many``).
    """

    transactions: int
    writes: int
    queued: int
    readers: int
    largest_batch: int = 0


def _check_write(
    payload: object,
    key: object,
    headers: object,
    encoding: object,
    ttl: object,
    previous_seq: object,
    msg_id: object,
) -> tuple[SetArgs, str]:
    """The model's argument checks of ``set`` (same errors, in the same order), then ``encoding``."""
    args = check_set_args(payload, key, headers, ttl, previous_seq, msg_id)
    return args, check_encoding("set", encoding)


def _check_bound(op: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(op, f"{name} must be a positive int, not {value!r}")


_OPEN_TOKEN: Final = object()


@final
class StreamFile:
    """One stream (or KV) stored in one SQLite file, or in memory if ``config.ephemeral``.

    Open with :meth:`open`; close with :meth:`aclose` (or ``async with``). Bound to the event loop
    it was opened on. Every operation has the model's semantics (:mod:`persist._model`); times are
    ``clock.wall()``.
    """

    _writer: Writer
    _queue: GroupCommit
    _tail: Tail

    def __init__(
        self,
        file: Path | None,
        executor: concurrent.futures.Executor,
        clock: Clock,
        max_readers: int,
        *,
        _token: object = None,
    ) -> None:
        if _token is not _OPEN_TOKEN:
            raise TypeError("use `await StreamFile.open(...)`")
        self._closed = True
        self._file = file
        self._what = str(file) if file is not None else "ephemeral stream"
        self._executor = executor
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._jobs = Jobs(executor)
        self._readers = ReaderPool(file, self._jobs, max_readers, self._what) if file is not None else None
        self._closing = False
        self._checked = False
        self._version = 0
        self.on_change: Callable[[], object] | None = None
        """Called on the event loop after each committed transaction that changed messages (the
        store signals changefeed readers through it: they must not need the file to stay open)."""

    # ---- lifecycle --------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        file: str | os.PathLike[str] | None,
        *,
        executor: concurrent.futures.Executor,
        config: StreamConfig | None = None,
        clock: Clock | None = None,
        create: bool = True,
        max_readers: int = 2,
        root: str | os.PathLike[str] | None = None,
        check: bool | None = None,
    ) -> StreamFile:
        """Open (creating it if ``create``) the stream stored in ``file``.

        Args:
            file: the database file, or ``None`` for an ephemeral stream.
            executor: runs every SQLite call; shared, bounded, owned by the caller.
            config: the config of a new stream (an existing file keeps its stored config; change it
                with :meth:`set_config`). ``config.ephemeral`` makes a memory-only stream.
            clock: the source of ``wall()`` times (default: the system clock).
            create: create a missing file; if false, a missing file raises :class:`NotFound`.
            max_readers: most reader connections at once.
            root: the trusted directory ``file`` lies in (default: ``file``'s directory). It may be
                a symlink; beneath it no symlink is followed, and missing directories are created
                if ``create`` (:mod:`persist._beneath`).
            check: run ``PRAGMA quick_check`` on an existing file (it reads the whole file); by
                default only after an unclean close (its ``-wal``/``-shm`` left behind). Pass
                ``True`` if you saw that before something else opened the file.

        Raises:
            Corrupt: the file failed its check, or holds schema objects persist did not make (a
                trigger, a view); it was moved aside (both paths are in the error).
            BadPath: a symlink beneath ``root``, or at the file (``OutsideScope``: not in ``root``).
            NotFound: ``create`` is false and the file does not exist.
            BadRequest: neither a file nor an ephemeral config.
            PersistError: the file could not be opened.
        """
        ephemeral = config is not None and config.ephemeral
        if file is None and not ephemeral:
            raise BadRequest("open", "a stream that is not ephemeral needs a file")
        if max_readers < 1:
            raise BadRequest("open", f"max_readers must be at least 1, not {max_readers!r}")
        path = None if ephemeral or file is None else Path(file)
        self = cls(
            path, executor, clock if clock is not None else SystemClock(), max_readers, _token=_OPEN_TOKEN
        )
        wanted = config if config is not None else StreamConfig()
        conn, opened, self._checked = await self._jobs.submit(
            functools.partial(
                open_writer,
                path,
                wanted,
                create,
                self._what,
                root=None if root is None else Path(root),
                readers=self._readers,
                check=check,
            )
        )
        loop = self._loop
        self._writer = Writer(
            conn,
            opened,
            self._clock,
            durable=path is not None,
            what=self._what,
            on_commit=lambda commit: loop.call_soon_threadsafe(self._changed, commit),
        )
        state = self._writer.state
        self._tail = Tail(state.last_seq, state.first_delete, state.last_delete)
        self._queue = GroupCommit(self._loop, self._jobs, self._writer.commit, self._what)
        self._closed = False
        return self

    async def __aenter__(self) -> StreamFile:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish every queued write, then close the connections. Idempotent."""
        if self._closed or self._closing:
            await self._queue.wait()
            return
        self._closing = True
        await self._queue.wait()
        await self._jobs.join()
        readers = self._readers.take_all() if self._readers is not None else []
        conns: list[Conn] = [*readers, self._writer.conn]
        await asyncio.wrap_future(self._executor.submit(close_all, conns))
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def file(self) -> Path | None:
        """The database file, or ``None`` for an ephemeral stream."""
        return self._file

    @property
    def checked(self) -> bool:
        """Whether the whole file was checked (``quick_check``) when it was opened: it is after an
        unclean close, not after a clean one nor when the file was created."""
        return self._checked

    @property
    def busy(self) -> bool:
        """Whether writes are queued or running (an owner should not close it now)."""
        return self._queue.busy

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not getattr(self, "_closed", True):
            _warn(f"unclosed persist stream {self._what}", ResourceWarning, source=self, stacklevel=2)

    def __repr__(self) -> str:
        return f"StreamFile({self._what!r})"

    def statistics(self) -> StreamFileStatistics:
        return StreamFileStatistics(
            transactions=self._writer.transactions,
            writes=self._writer.writes,
            queued=self._queue.queued,
            readers=len(self._readers.all) if self._readers is not None else 0,
            largest_batch=self._queue.largest,
        )

    # ---- writes ----------------------------------------------------------------------------------

    async def set(
        self,
        payload: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        encoding: str = DEFAULT_ENCODING,
        ttl: float | None = None,
        msg_id: str | None = None,
        previous_seq: int | None = None,
    ) -> SetResult:
        """Write one message; return once it is committed (the model's ``set``).

        Raises:
            BadRequest, TooLarge: malformed arguments (before anything is queued).
            Rejected: a limit refused it (``limit`` names which); nothing was written.
            WrongLastSequence: ``previous_seq`` did not match; nothing was written.
            PersistError: the transaction failed; the write may be retried (with its msg-id).
        """
        args, enc = _check_write(payload, key, headers, encoding, ttl, previous_seq, msg_id)
        result: SetResult = await self._enqueue(
            functools.partial(self._writer.set, args=args, encoding=enc), args.size
        )
        return result

    def set_nowait(
        self,
        payload: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        encoding: str = DEFAULT_ENCODING,
        ttl: float | None = None,
        msg_id: str | None = None,
        previous_seq: int | None = None,
        done: Callable[[SetResult | PersistError], object],
    ) -> None:
        """:meth:`set` without waiting: the write is queued now, and ``done(outcome)`` is called on
        the loop once its transaction has committed, with its :class:`SetResult`, or the
        :class:`PersistError` that refused or failed it.

        Writes queued this way and by :meth:`set` commit in the order they were queued.

        Raises:
            BadRequest, TooLarge: malformed arguments (nothing is queued, ``done`` is not called).
            ClosedError: the stream is closing.
        """
        args, enc = _check_write(payload, key, headers, encoding, ttl, previous_seq, msg_id)
        self._check_open()
        self._queue.put_nowait(
            [functools.partial(self._writer.set, args=args, encoding=enc)], args.size, _first(done)
        )

    def set_many_nowait(
        self, writes: Sequence[Write], done: Callable[[list[SetResult | PersistError] | PersistError], object]
    ) -> None:
        """:meth:`set_many` without waiting: ``done(outcomes)`` gets one outcome per write (its
        result, or the error that refused it), or the one error that failed the transaction.

        Raises:
            BadRequest, TooLarge: a malformed write (nothing is queued, ``done`` is not called).
            ClosedError: the stream is closing.
        """
        checked = [
            _check_write(w.payload, w.key, w.headers, w.encoding, w.ttl, w.previous_seq, w.msg_id)
            for w in writes
        ]
        self._check_open()
        if not checked:
            self._loop.call_soon(done, [])
            return
        self._queue.put_nowait(
            [functools.partial(self._writer.set, args=args, encoding=enc) for args, enc in checked],
            sum(args.size for args, _ in checked),
            done,  # type: ignore[arg-type]
        )

    async def set_many(self, writes: Sequence[Write]) -> list[SetResult | PersistError]:
        """Write several messages in one transaction; each is judged on its own, in order.

        The writes are never split between transactions, however many (a transaction otherwise holds
        at most :data:`persist._engine_io.MAX_BATCH_OPS` writes): keep batches moderate.

        Returns:
            for each write, its :class:`SetResult` or the :class:`PersistError` that refused it
            (a refused write does not affect the others).

        Raises:
            BadRequest, TooLarge: a malformed write (nothing is queued).
            PersistError: the transaction failed; none was written.
        """
        checked = [
            _check_write(w.payload, w.key, w.headers, w.encoding, w.ttl, w.previous_seq, w.msg_id)
            for w in writes
        ]
        if not checked:
            return []
        self._check_open()
        futures = self._queue.put(
            [functools.partial(self._writer.set, args=args, encoding=enc) for args, enc in checked],
            sum(args.size for args, _ in checked),
        )
        out: list[SetResult | PersistError] = []
        for fut in futures:
            try:
                out.append(await fut)
            except PersistError as e:
                out.append(e)
        return out

    async def delete(
        self,
        *,
        seq: int | None = None,
        seqs: Iterable[int] | None = None,
        up_to: int | None = None,
        key: str | None = None,
        msg_id: str | None = None,
    ) -> DeleteResult:
        """Delete by exactly one of ``seq``, ``seqs``, every seq ``<= up_to``, or ``key`` (the model's).

        With ``msg_id``, a retry (within ``duplicate_window``) gets the first delete's result and
        deletes nothing: it is remembered in the delete's own transaction.
        """
        sel = check_delete_args(seq, seqs, up_to, key, msg_id)
        result: DeleteResult = await self._enqueue(
            functools.partial(
                self._writer.delete, targets=sel.targets, up_to=sel.up_to, key=sel.key, msg_id=sel.msg_id
            )
        )
        return result

    def delete_nowait(
        self,
        *,
        seq: int | None = None,
        seqs: Iterable[int] | None = None,
        up_to: int | None = None,
        key: str | None = None,
        msg_id: str | None = None,
        done: Callable[[DeleteResult | PersistError], object],
    ) -> None:
        """:meth:`delete` without waiting (see :meth:`set_nowait`)."""
        sel = check_delete_args(seq, seqs, up_to, key, msg_id)
        self._check_open()
        apply = functools.partial(
            self._writer.delete, targets=sel.targets, up_to=sel.up_to, key=sel.key, msg_id=sel.msg_id
        )
        self._queue.put_nowait([apply], 0, _first(done))

    async def sweep(self, now: float | None = None) -> int:
        """Remove (for real) every message expired at ``now`` (default: the clock) and stale msg-ids.

        Returns:
            how many messages were removed.
        """
        at = None if now is None else check_now("sweep", now)
        writer = self._writer
        result: int = await self._enqueue(lambda db, t: writer.sweep(db, t if at is None else at))
        return result

    def config(self) -> StreamConfig:
        """The config in force."""
        return self._writer.state.config

    async def set_config(self, changes: Mapping[str, object]) -> StreamConfig:
        """Change the config, then trim and sweep under the new limits (the model's ``update_config``).

        Raises:
            BadConfig: a bad change; nothing changed.
        """
        self._writer.state.config.merge(changes)  # fail fast, on the caller's task
        result: StreamConfig = await self._enqueue(
            functools.partial(self._writer.update_config, changes=changes)
        )
        return result

    # ---- reads -----------------------------------------------------------------------------------

    async def get(self, *, seq: int | None = None, key: str | None = None) -> StoredMessage | None:
        """The live message with ``seq``, or of ``key`` (exactly one), or ``None``."""
        by_seq, by_key = check_selector("get", seq, key)
        config, now = self._writer.state.config, self._clock.wall()
        rows = await self._read(
            functools.partial(_sql.select_message, config=config, now=now, seq=by_seq, key=by_key)
        )
        return _sql.decode_row(rows[0], self._what) if rows else None

    def get_nowait(
        self,
        *,
        seq: int | None = None,
        key: str | None = None,
        done: Callable[[StoredMessage | PersistError | None], object],
    ) -> None:
        """:meth:`get` without waiting: ``done(outcome)`` is called on the loop with the message (or
        ``None``), or the :class:`PersistError` that failed the read.

        Raises:
            BadRequest: not exactly one of ``seq`` and ``key``. ClosedError: the stream is closing.
        """
        by_seq, by_key = check_selector("get", seq, key)
        config, now = self._writer.state.config, self._clock.wall()
        what = self._what

        def work(db: sqlite3.Connection) -> StoredMessage | None:
            rows = _sql.select_message(db, config=config, now=now, seq=by_seq, key=by_key)
            return _sql.decode_row(rows[0], what) if rows else None

        self._read_nowait(work, done)

    async def get_all(
        self, from_seq: int = 0, *, batch: int = DEFAULT_PAGE_MSGS, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> AsyncIterator[list[StoredMessage]]:
        """Every live message with ``seq >= from_seq`` in seq order, in lists of at most ``batch``
        messages and ``max_bytes`` bytes (a list holds at least one message, however large).

        Each list is read in its own read transaction at the time it is fetched (nothing is held
        open between lists), so messages written meanwhile appear in later lists. A list is bounded
        while it is read: no more than its own bytes are ever loaded.
        """
        start = check_seq("get_all", "from_seq", from_seq)
        _check_bound("get_all", "batch", batch)
        _check_bound("get_all", "max_bytes", max_bytes)
        while True:
            config, now = self._writer.state.config, self._clock.wall()
            rows = await self._read(
                functools.partial(
                    _sql.select_messages,
                    config=config,
                    now=now,
                    start=start,
                    batch=batch,
                    max_bytes=max_bytes,
                )
            )
            if not rows:
                return
            yield [_sql.decode_row(r, self._what) for r in rows]
            start = rows[-1][0] + 1

    async def keys(
        self, *, after: str | None = None, limit: int | None = None, max_bytes: int | None = None
    ) -> list[str]:
        """The keys with a live message, sorted (by code point, as the model sorts); a page of them
        with ``after`` (the last key of the previous page), ``limit`` keys and ``max_bytes`` of key
        text (at least one key), read no further."""
        if after is not None and not isinstance(after, str):
            raise BadRequest("keys", f"after must be a string, not {after!r}")
        for name, bound in (("limit", limit), ("max_bytes", max_bytes)):
            if bound is not None:
                _check_bound("keys", name, bound)
        config, now = self._writer.state.config, self._clock.wall()
        return await self._read(
            functools.partial(
                _sql.select_keys, config=config, now=now, after=after, limit=limit, max_bytes=max_bytes
            )
        )

    async def inventory(self) -> Inventory:
        """Live count and bytes now, the lowest live seq (0 if none) and the last seq ever assigned."""
        config, now = self._writer.state.config, self._clock.wall()
        return await self._read(functools.partial(_sql.select_inventory, config=config, now=now))

    async def integrity_check(self) -> list[str]:
        """Run ``PRAGMA integrity_check``; return the problems found (empty when the file is sound)."""
        return await self._read(functools.partial(_sql.problems, pragma="integrity_check"))

    async def backup(self, dest: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the stream to ``dest`` with SQLite's online backup API.

        Safe under concurrent writes (never a file copy, which can miss what sits in the ``-wal``):
        the copy holds every write committed before it started. ``dest`` is written to a temporary
        file of its own beside it (two backups to one ``dest`` never share one), fsynced, renamed
        into place, and its directory fsynced (:func:`persist._durable.write_copy`).
        """
        await self._read(functools.partial(write_copy, dest=Path(dest)))

    # ---- changes ---------------------------------------------------------------------------------

    @property
    def stream_id(self) -> str:
        """A random id made when the file was created: a changefeed cursor belongs to one id."""
        return self._writer.stream_id

    @property
    def version(self) -> int:
        """Counts committed transactions that changed messages (since open)."""
        return self._version

    def _changed(self, commit: Commit) -> None:
        self._tail.committed(commit)
        self._version += 1
        if self.on_change is not None and not self._closed:
            self.on_change()

    async def changes(
        self,
        after_seq: int = 0,
        *,
        after_delete: int | None = None,
        stream_id: str | None = None,
        max_msgs: int = DEFAULT_PAGE_MSGS,
        max_bytes: int = DEFAULT_PAGE_BYTES,
        max_deletes: int = 1000,
    ) -> ChangePage:
        """The changes after a cursor, as one consistent page (the changefeed's read).

        Args:
            after_seq: return messages with a higher seq.
            after_delete: the ``delete_cursor`` of the previous page (``None``: no deletes wanted,
                e.g. the first page of a consumer holding nothing).
            stream_id: the ``stream_id`` the cursor came from; another one sets ``resync``.
            max_msgs, max_bytes, max_deletes: page bounds (the rest comes in the next pages); a
                page stops before the message that would pass ``max_bytes`` while it is read, and
                holds at least one message.
        """
        start = check_seq("changes", "after_seq", after_seq)
        if after_delete is not None:
            check_seq("changes", "after_delete", after_delete)
        for name, bound in (("max_msgs", max_msgs), ("max_bytes", max_bytes), ("max_deletes", max_deletes)):
            _check_bound("changes", name, bound)
        if stream_id is not None and not isinstance(stream_id, str):
            raise BadRequest("changes", f"stream_id must be a string, not {stream_id!r}")
        if stream_id is not None and stream_id != self.stream_id:
            after_delete, resync = None, True
        else:
            resync = False
        config, now = self._writer.state.config, self._clock.wall()
        if not resync:
            self._check_open()
            recent = self._tail.page(config, now, start, after_delete, max_msgs, max_bytes, max_deletes)
            if recent is not None:  # the recent commits tell it: no read of the file
                return ChangePage(
                    messages=recent.messages,
                    deletes=recent.deletes,
                    delete_cursor=recent.delete_cursor,
                    last_seq=recent.last_seq,
                    stream_id=self.stream_id,
                )
        rows, deletes, cursor, first_delete, last_seq = await self._read(
            functools.partial(
                _sql.select_changes,
                config=config,
                now=now,
                after_seq=start,
                after_delete=after_delete,
                max_msgs=max_msgs,
                max_bytes=max_bytes,
                max_deletes=max_deletes,
            )
        )
        if after_delete is not None and after_delete + 1 < first_delete:
            deletes, resync = [], True  # the log no longer reaches back to the cursor
        return ChangePage(
            messages=[_sql.decode_row(r, self._what) for r in rows],
            deletes=deletes,
            delete_cursor=cursor,
            last_seq=last_seq,
            stream_id=self.stream_id,
            resync=resync,
        )

    # ---- plumbing --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise ClosedError(f"persist stream {self._what}")

    async def _enqueue(self, apply: Callable[[sqlite3.Connection, float], _T], nbytes: int = 0) -> _T:
        self._check_open()
        (fut,) = self._queue.put([apply], nbytes)
        result: _T = await fut
        return result

    def _read_nowait(self, work: Callable[[sqlite3.Connection], Any], done: Callable[[Any], object]) -> None:
        self._check_open()
        if self._readers is None:  # ephemeral: the writer connection, under its lock
            job = self._jobs.submit(functools.partial(locked, self._writer.conn, work, self._what))
            job.add_done_callback(functools.partial(_hand_over, done))
            return
        self._readers.submit(work, done)

    async def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        self._check_open()
        if self._readers is None:  # ephemeral: the writer connection, under its lock
            return await self._jobs.submit(functools.partial(locked, self._writer.conn, work, self._what))
        return await self._readers.run(work)


def _first(done: Callable[[Any], object]) -> Callable[[list[object] | PersistError], None]:
    """A group callback for a group of one mutation: ``done`` gets its one outcome (the error
    that failed the transaction, if it failed)."""

    def deliver(outcomes: list[object] | PersistError) -> None:
        done(outcomes if isinstance(outcomes, PersistError) else outcomes[0])

    return deliver


def _hand_over(done: Callable[[Any], object], job: asyncio.Future[Any]) -> None:
    """Give an executor job's outcome to ``done`` (its result, or the exception that failed it)."""
    if job.cancelled():
        done(ClosedError("persist stream"))
        return
    error = job.exception()
    done(error if error is not None else job.result())
