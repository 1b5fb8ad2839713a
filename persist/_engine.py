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
``set_many``, ``delete``, ``set_config``, ``sweep``) is queued; a drain task takes *everything queued*,
runs it in one ``BEGIN IMMEDIATE ... COMMIT`` in one executor call, then resolves each caller's future.
Writes queued while a transaction commits go into the next one. A caller is answered only after
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
retry after a crash or restart is still recognised (notes/reliability.md, lesson 3). Rate buckets are
in memory only: they start full when a file is opened.

**Errors.** No ``sqlite3`` (or ``OSError``) error leaves this module: a corrupt or unreadable file
becomes :class:`persist.Corrupt`, any other storage failure a plain :class:`persist.PersistError`.
On open a file is checked with ``PRAGMA quick_check``; a corrupt one is renamed to
``<name>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``), never deleted, and ``Corrupt`` names
both paths.

Schema (``meta.schema = 1``)::

    messages(seq INTEGER PRIMARY KEY, time REAL, key TEXT UNIQUE NULL, headers BLOB NULL,
             payload BLOB, encoding TEXT, compressed INT, size INT, ttl REAL NULL,
             expires REAL NULL /* time + ttl */, msg_id TEXT NULL)
    dedup(msg_id TEXT PRIMARY KEY, seq INT, time REAL)          -- msg-id -> original SetResult
    meta(name TEXT PRIMARY KEY, value)                            -- schema, config (JSON), last_seq
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, final

import msgspec

from conat._clock import Clock, SystemClock
from conat._errors import ClosedError

from . import _codec
from ._config import UNLIMITED, StreamConfig
from ._errors import BadRequest, Corrupt, Limit, NotFound, PersistError, Rejected, WrongLastSequence
from ._model import (
    DeleteResult,
    Inventory,
    Message,
    SetResult,
    StreamModel,
    _Bucket,
    _check_key,
    _check_now,
    _check_seq,
    _check_utf8,
    _is_number,
)

__all__ = ["StoredMessage", "StreamFile", "StreamFileStatistics", "Write"]

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 1
DEFAULT_ENCODING: Final = "msgpack"
_BUSY_TIMEOUT_MS: Final = 10_000
_SYNC_PRAGMA: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key TEXT UNIQUE,
    headers BLOB,
    payload BLOB NOT NULL,
    encoding TEXT NOT NULL,
    compressed INTEGER NOT NULL,
    size INTEGER NOT NULL,
    ttl REAL,
    expires REAL,
    msg_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_time ON messages(time);
CREATE INDEX IF NOT EXISTS messages_expires ON messages(expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS dedup (
    msg_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    time REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_time ON dedup(time);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

_COLUMNS: Final = "seq, time, key, headers, payload, encoding, compressed, size, ttl"

_headers_encoder: Final = msgspec.msgpack.Encoder()
_headers_decoder: Final = msgspec.msgpack.Decoder(dict[str, str])


class StoredMessage(Message, frozen=True, kw_only=True):
    """A :class:`persist.Message` as read back from storage, with the payload's ``encoding`` label.

    ``encoding`` is opaque to persist (the client's codec name, ``"msgpack"`` by default).
    """

    encoding: str = DEFAULT_ENCODING


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
class StreamFileStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one :class:`StreamFile` since it was opened.

    Attributes:
        transactions: write transactions committed.
        writes: mutations (each ``set``, each write of ``set_many``, ``delete``...) committed.
        queued: mutations waiting for the next transaction.
        readers: reader connections open.
    """

    transactions: int
    writes: int
    queued: int
    readers: int


class _Prepared(msgspec.Struct, frozen=True):
    """A validated write, ready for the writer thread."""

    payload: bytes
    key: str | None
    headers: dict[str, str]
    encoding: str
    ttl: float | None
    msg_id: str | None
    previous_seq: int | None
    size: int


class _State:
    """What the writer keeps in memory, restored as a whole if a transaction fails."""

    __slots__ = ("byte_bucket", "bytes", "config", "count", "last_seq", "msg_bucket")

    def __init__(self, config: StreamConfig, last_seq: int, count: int, nbytes: int) -> None:
        self.config = config
        self.last_seq = last_seq
        self.count = count
        self.bytes = nbytes
        self.msg_bucket: _Bucket | None = None
        self.byte_bucket: _Bucket | None = None
        self.reset_buckets()

    def reset_buckets(self) -> None:
        rate = self.config.max_msgs_per_second
        self.msg_bucket = None if rate == UNLIMITED else _Bucket(rate)
        rate = self.config.max_bytes_per_second
        self.byte_bucket = None if rate == UNLIMITED else _Bucket(rate)

    def copy(self) -> _State:
        other = _State.__new__(_State)
        other.config, other.last_seq, other.count, other.bytes = (
            self.config,
            self.last_seq,
            self.count,
            self.bytes,
        )
        other.msg_bucket = _copy_bucket(self.msg_bucket)
        other.byte_bucket = _copy_bucket(self.byte_bucket)
        return other


def _copy_bucket(bucket: _Bucket | None) -> _Bucket | None:
    if bucket is None:
        return None
    other = _Bucket(bucket.rate)
    other.tokens, other.stamp = bucket.tokens, bucket.stamp
    return other


class _Conn:
    """A sqlite3 connection and the lock that keeps it to one thread at a time."""

    __slots__ = ("db", "lock")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.lock = threading.Lock()


class _Op:
    """A queued mutation: ``apply(conn, now)`` runs in the writer's transaction."""

    __slots__ = ("apply", "future")

    def __init__(self, apply: Callable[[sqlite3.Connection, float], object], future: asyncio.Future[Any]):
        self.apply = apply
        self.future = future


# ---- error translation (the one boundary for sqlite3/OSError, STYLE rule 5) ------------------------


@contextlib.contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    try:
        yield
    except PersistError:
        raise
    except sqlite3.Error as e:
        name = getattr(e, "sqlite_errorname", "")
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(e):
            raise Corrupt(what, f"{name or type(e).__name__}: {e}") from None
        raise PersistError(f"storage failure on {what}: {name or type(e).__name__}: {e}") from None
    except OSError as e:
        raise PersistError(f"storage failure on {what}: {e.strerror or e}") from None


def _live_clause(config: StreamConfig) -> str:
    """SQL that keeps rows live at ``:now`` (the model's ``_expired``, in the same float arithmetic)."""
    clause = "(expires IS NULL OR expires > :now)"
    if config.max_age != UNLIMITED:
        clause += " AND time + :age > :now"
    return clause


def _live_params(config: StreamConfig, now: float) -> dict[str, float]:
    return {"now": now, "age": float(config.max_age)}


def _slack(x: float) -> float:
    """A margin so an indexed ``time <= now - age + slack`` pre-filter never misses a row."""
    return 1e-6 * max(1.0, abs(x))


def _validate_set(
    payload: object,
    key: object,
    headers: object,
    encoding: object,
    ttl: object,
    previous_seq: object,
    msg_id: object,
) -> _Prepared:
    """The model's argument checks of ``set`` (same errors), plus ``encoding``."""
    # The model's own checks, so both raise the same errors (one source of truth).
    data, hdrs, size = _VALIDATOR._check_set_args(payload, key, headers, ttl, previous_seq, msg_id)
    if not isinstance(encoding, str) or not encoding:
        raise BadRequest("set", f"encoding must be a non-empty string, not {encoding!r}")
    _check_utf8("set", "encoding", encoding)
    return _Prepared(
        payload=data,
        key=key if isinstance(key, str) else None,
        headers=hdrs,
        encoding=encoding,
        ttl=float(ttl) if _is_number(ttl) else None,  # type: ignore[arg-type]
        msg_id=msg_id if isinstance(msg_id, str) else None,
        previous_seq=previous_seq if isinstance(previous_seq, int) else None,
        size=size,
    )


_VALIDATOR: Final = StreamModel()


@final
class StreamFile:
    """One stream (or KV) stored in one SQLite file, or in memory if ``config.ephemeral``.

    Open with :meth:`open`; close with :meth:`aclose` (or ``async with``). Bound to the event loop
    it was opened on. Every operation has the model's semantics (:mod:`persist._model`); times are
    ``clock.wall()``.
    """

    _writer: _Conn
    _state: _State

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
        self._reader_slots = asyncio.Semaphore(max_readers)
        self._idle_readers: list[_Conn] = []
        self._all_readers: list[_Conn] = []
        self._queue: list[_Op] = []
        self._drainer: asyncio.Task[None] | None = None
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._transactions = 0
        self._writes = 0
        self._closing = False
        self._swept_at: float | None = None

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

        Raises:
            Corrupt: the file failed its check; it was moved aside (both paths are in the error).
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
        writer, state = await self._submit(lambda: self._open_sync(wanted, create))
        self._writer = writer
        self._state = state
        self._closed = False
        return self

    async def __aenter__(self) -> StreamFile:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish every queued write, then close the connections. Idempotent."""
        if self._closed or self._closing:
            if self._drainer is not None:
                await asyncio.shield(self._drainer)
            return
        self._closing = True
        if self._drainer is not None:
            await asyncio.shield(self._drainer)
        pending = [asyncio.wrap_future(f) for f in list(self._inflight)]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        conns = [*self._all_readers, self._writer]
        self._all_readers.clear()
        self._idle_readers.clear()
        await asyncio.wrap_future(self._executor.submit(_close_all, conns))
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def file(self) -> Path | None:
        """The database file, or ``None`` for an ephemeral stream."""
        return self._file

    @property
    def busy(self) -> bool:
        """Whether writes are queued or running (an owner should not close it now)."""
        return bool(self._queue) or (self._drainer is not None and not self._drainer.done())

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not getattr(self, "_closed", True):
            _warn(f"unclosed persist stream {self._what}", ResourceWarning, source=self, stacklevel=2)

    def __repr__(self) -> str:
        return f"StreamFile({self._what!r})"

    def statistics(self) -> StreamFileStatistics:
        return StreamFileStatistics(
            transactions=self._transactions,
            writes=self._writes,
            queued=len(self._queue),
            readers=len(self._all_readers),
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
        prepared = _validate_set(payload, key, headers, encoding, ttl, previous_seq, msg_id)
        result: SetResult = await self._enqueue(lambda db, now: self._do_set(db, now, prepared))
        return result

    async def set_many(self, writes: Sequence[Write]) -> list[SetResult | PersistError]:
        """Write several messages in one transaction; each is judged on its own, in order.

        Returns:
            for each write, its :class:`SetResult` or the :class:`PersistError` that refused it
            (a refused write does not affect the others).

        Raises:
            BadRequest, TooLarge: a malformed write (nothing is queued).
            PersistError: the transaction failed; none was written.
        """
        prepared = [
            _validate_set(w.payload, w.key, w.headers, w.encoding, w.ttl, w.previous_seq, w.msg_id)
            for w in writes
        ]
        if not prepared:
            return []
        self._check_open()
        futures = [self._loop.create_future() for _ in prepared]
        for p, fut in zip(prepared, futures, strict=True):
            self._queue.append(_Op(functools.partial(self._do_set_at, p), fut))
        self._kick()
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
    ) -> DeleteResult:
        """Delete by exactly one of ``seq``, ``seqs``, every seq ``<= up_to``, or ``key`` (the model's)."""
        given = [s for s in (seq, seqs, up_to, key) if s is not None]
        if len(given) != 1:
            raise BadRequest("delete", "give exactly one of seq, seqs, up_to, key")
        if seq is not None:
            targets: list[int] | None = [_check_seq("delete", "seq", seq)]
        elif seqs is not None:
            if isinstance(seqs, str | bytes) or not isinstance(seqs, Iterable):
                raise BadRequest("delete", f"seqs must be a list of ints, not {seqs!r}")
            targets = sorted({_check_seq("delete", "seqs", s) for s in seqs})
        else:
            targets = None
        if up_to is not None:
            _check_seq("delete", "up_to", up_to)
        if key is not None:
            _check_key("delete", key)
        result: DeleteResult = await self._enqueue(
            lambda db, now: self._do_delete(db, now, targets, up_to, key)
        )
        return result

    async def sweep(self, now: float | None = None) -> int:
        """Remove (for real) every message expired at ``now`` (default: the clock) and stale msg-ids.

        Returns:
            how many messages were removed.
        """
        at = None if now is None else _check_now("sweep", now)
        result: int = await self._enqueue(lambda db, t: self._sweep(db, t if at is None else at))
        return result

    def config(self) -> StreamConfig:
        """The config in force."""
        return self._state.config

    async def set_config(self, changes: Mapping[str, object]) -> StreamConfig:
        """Change the config, then trim and sweep under the new limits (the model's ``update_config``).

        Raises:
            BadConfig: a bad change; nothing changed.
        """
        self._state.config.merge(changes)  # fail fast, on the caller's task
        result: StreamConfig = await self._enqueue(lambda db, now: self._do_config(db, now, changes))
        return result

    # ---- reads -----------------------------------------------------------------------------------

    async def get(self, *, seq: int | None = None, key: str | None = None) -> StoredMessage | None:
        """The live message with ``seq``, or of ``key`` (exactly one), or ``None``."""
        if (seq is None) == (key is None):
            raise BadRequest("get", "give exactly one of seq, key")
        arg: str | int
        if key is not None:
            where, arg = "key = :sel", _check_key("get", key)
        else:
            where, arg = "seq = :sel", _check_seq("get", "seq", seq)
        config, now = self._state.config, self._clock.wall()
        sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} AND {_live_clause(config)}"
        params: dict[str, object] = {**_live_params(config, now), "sel": arg}

        def work(db: sqlite3.Connection) -> list[Any]:
            return db.execute(sql, params).fetchall()

        rows = await self._read(work)
        return self._message(rows[0]) if rows else None

    async def get_all(self, from_seq: int = 0, *, batch: int = 1000) -> AsyncIterator[list[StoredMessage]]:
        """Every live message with ``seq >= from_seq`` in seq order, in lists of at most ``batch``.

        Each list is read in its own read transaction at the time it is fetched (nothing is held
        open between lists), so messages written meanwhile appear in later lists.
        """
        start = _check_seq("get_all", "from_seq", from_seq)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise BadRequest("get_all", f"batch must be a positive int, not {batch!r}")
        while True:
            config, now = self._state.config, self._clock.wall()
            sql = (
                f"SELECT {_COLUMNS} FROM messages WHERE seq >= :start AND {_live_clause(config)}"
                " ORDER BY seq LIMIT :batch"
            )
            params: dict[str, object] = {**_live_params(config, now), "start": start, "batch": batch}

            def work(db: sqlite3.Connection, sql: str = sql, params: dict[str, object] = params) -> list[Any]:
                return db.execute(sql, params).fetchall()

            rows = await self._read(work)
            if not rows:
                return
            yield [self._message(r) for r in rows]
            if len(rows) < batch:
                return
            start = rows[-1][0] + 1

    async def keys(self) -> list[str]:
        """The keys with a live message, sorted (by code point, as the model sorts)."""
        config, now = self._state.config, self._clock.wall()
        sql = f"SELECT key FROM messages WHERE key IS NOT NULL AND {_live_clause(config)} ORDER BY key"
        params = _live_params(config, now)

        def work(db: sqlite3.Connection) -> list[str]:
            return [r[0] for r in db.execute(sql, params)]

        return await self._read(work)

    async def inventory(self) -> Inventory:
        """Live count and bytes now, the lowest live seq (0 if none) and the last seq ever assigned."""
        config, now = self._state.config, self._clock.wall()
        sql = f"SELECT count(*), coalesce(sum(size), 0), coalesce(min(seq), 0) FROM messages WHERE {_live_clause(config)}"
        params = _live_params(config, now)

        def work(db: sqlite3.Connection) -> Inventory:
            db.execute("BEGIN")
            try:
                count, nbytes, first = db.execute(sql, params).fetchone()
                last = _meta(db, "last_seq", 0)
            finally:
                db.execute("COMMIT")
            return Inventory(count=count, bytes=nbytes, first_seq=first, last_seq=int(last))

        return await self._read(work)

    async def integrity_check(self) -> list[str]:
        """Run ``PRAGMA integrity_check``; return the problems found (empty when the file is sound)."""

        def work(db: sqlite3.Connection) -> list[str]:
            rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check")]
            return [] if rows == ["ok"] else rows

        return await self._read(work)

    async def backup(self, dest: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the stream to ``dest`` with SQLite's online backup API.

        Safe under concurrent writes (never a copy of a live WAL file, notes/reliability.md lesson 4):
        the copy holds every write committed before it started. ``dest`` is written to a temporary
        name beside it and renamed into place.
        """
        target = Path(dest)

        def work(db: sqlite3.Connection) -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.unlink(missing_ok=True)
            out = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.backup(out)
            finally:
                out.close()
            os.replace(tmp, target)

        await self._read(work)

    # ---- plumbing --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise ClosedError(f"persist stream {self._what}")

    def _submit(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        cf = self._executor.submit(fn)
        self._inflight.add(cf)
        cf.add_done_callback(self._inflight.discard)
        return asyncio.wrap_future(cf)

    async def _enqueue(self, apply: Callable[[sqlite3.Connection, float], _T]) -> _T:
        self._check_open()
        fut: asyncio.Future[_T] = self._loop.create_future()
        self._queue.append(_Op(apply, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = self._loop.create_task(self._drain(), name=f"persist-writer {self._what}")

    async def _drain(self) -> None:
        while self._queue:
            batch = [op for op in self._queue if not op.future.done()]
            self._queue = []
            if not batch:
                continue
            try:
                results = await asyncio.shield(self._submit(functools.partial(self._commit, batch)))
            except BaseException as e:
                error = (
                    e if isinstance(e, PersistError) else PersistError(f"write failed on {self._what}: {e!r}")
                )
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(error)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            for op, res in zip(batch, results, strict=True):
                if op.future.done():
                    continue
                if isinstance(res, PersistError):
                    op.future.set_exception(res)
                else:
                    op.future.set_result(res)

    async def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        self._check_open()
        if self._file is None:  # ephemeral: the writer connection, under its lock
            return await self._submit(lambda: _locked(self._writer, work, self._what))
        await self._reader_slots.acquire()
        try:
            fut = self._submit(lambda: self._with_reader(work))
        except BaseException:
            self._reader_slots.release()
            raise
        fut.add_done_callback(lambda _: self._reader_slots.release())
        return await fut

    # ---- in the executor -----------------------------------------------------------------------

    def _with_reader(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with _storage_errors(self._what):
            try:
                conn = self._idle_readers.pop()
            except IndexError:
                assert self._file is not None
                db = sqlite3.connect(self._file, isolation_level=None, check_same_thread=False)
                db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                db.execute("PRAGMA query_only = 1")
                conn = _Conn(db)
                self._all_readers.append(conn)
            try:
                with conn.lock:
                    return work(conn.db)
            finally:
                self._idle_readers.append(conn)

    def _open_sync(self, wanted: StreamConfig, create: bool) -> tuple[_Conn, _State]:
        file = self._file
        if file is None:
            with _storage_errors(self._what):
                memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                return self._init_db(memory, wanted)
        with _storage_errors(self._what):
            exists = file.exists()
            if not exists and not create:
                raise NotFound(f"stream file {file}")
            if not exists:
                file.parent.mkdir(parents=True, exist_ok=True)
        db: sqlite3.Connection | None = None
        try:
            with _storage_errors(self._what):
                db = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
                db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                if exists:
                    problems = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
                    if problems != ["ok"]:
                        raise Corrupt(str(file), "; ".join(problems[:5]))
                return self._init_db(db, wanted)
        except Corrupt as e:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            moved = _quarantine(file)
            raise Corrupt(str(file), f"{e.detail}; moved aside to {moved}") from None
        except BaseException:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            raise

    def _init_db(self, db: sqlite3.Connection, wanted: StreamConfig) -> tuple[_Conn, _State]:
        if self._file is not None:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise PersistError(f"storage failure on {self._what}: cannot use WAL (journal_mode={mode})")
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _meta(db, "schema", None)
            if version is None:
                _set_meta(db, "schema", SCHEMA_VERSION)
                _set_meta(db, "config", msgspec.json.encode(wanted).decode())
                _set_meta(db, "last_seq", 0)
            elif version != SCHEMA_VERSION:
                raise Corrupt(self._what, f"unknown schema version {version!r}")
            stored = _meta(db, "config", None)
            try:
                config = StreamConfig.from_dict(msgspec.json.decode(str(stored)))
            except (PersistError, msgspec.DecodeError, TypeError) as e:
                raise Corrupt(self._what, f"bad stored config: {e}") from None
            last_seq = int(_meta(db, "last_seq", 0))
            count, nbytes = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if self._file is not None:
            db.execute(f"PRAGMA synchronous = {_SYNC_PRAGMA[config.sync]}")
        return _Conn(db), _State(config, last_seq, count, nbytes)

    def _commit(self, batch: list[_Op]) -> list[object]:
        """Run ``batch`` in one transaction (the group commit). Returns a result or error per op."""
        with self._writer.lock, _storage_errors(self._what):
            db = self._writer.db
            saved = self._state.copy()
            old_sync = saved.config.sync
            last_seq = saved.last_seq
            now = self._clock.wall()
            results: list[object] = []
            db.execute("BEGIN IMMEDIATE")
            self._swept_at = None
            try:
                for op in batch:
                    try:
                        results.append(op.apply(db, now))
                    except PersistError as e:
                        results.append(e)
                if self._state.last_seq != last_seq:
                    _set_meta(db, "last_seq", self._state.last_seq)
                db.execute("COMMIT")
            except BaseException:
                self._state = saved
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            self._transactions += 1
            self._writes += len(batch)
            new_sync = self._state.config.sync
            if new_sync != old_sync and self._file is not None:
                db.execute(f"PRAGMA synchronous = {_SYNC_PRAGMA[new_sync]}")
            return results

    def _presweep(self, db: sqlite3.Connection, now: float) -> None:
        """The model's sweep before each mutation, done once per transaction (same ``now``)."""
        if self._swept_at != now:
            self._sweep(db, now)

    def _sweep(self, db: sqlite3.Connection, now: float) -> int:
        self._swept_at = now
        st = self._state
        age = st.config.max_age
        removed = 0
        freed = 0
        if age != UNLIMITED:
            rows = db.execute(
                "DELETE FROM messages WHERE time <= ? AND time + ? <= ? RETURNING size",
                (now - age + _slack(now), float(age), now),
            ).fetchall()
            removed += len(rows)
            freed += sum(r[0] for r in rows)
        rows = db.execute("DELETE FROM messages WHERE expires <= ? RETURNING size", (now,)).fetchall()
        removed += len(rows)
        freed += sum(r[0] for r in rows)
        st.count -= removed
        st.bytes -= freed
        window = st.config.duplicate_window
        if window != UNLIMITED:
            db.execute(
                "DELETE FROM dedup WHERE time <= ? AND time + ? <= ?",
                (now - window + _slack(now), float(window), now),
            )
        return removed

    def _do_set_at(self, w: _Prepared, db: sqlite3.Connection, now: float) -> SetResult:
        return self._do_set(db, now, w)

    def _do_set(self, db: sqlite3.Connection, now: float, w: _Prepared) -> SetResult:
        self._presweep(db, now)
        st = self._state
        config = st.config
        if w.msg_id is not None:
            row = db.execute("SELECT seq, time FROM dedup WHERE msg_id = ?", (w.msg_id,)).fetchone()
            if row is not None:
                return SetResult(seq=row[0], time=row[1], duplicate=True)
        if w.ttl is not None and not config.allow_msg_ttl:
            raise Rejected("allow_msg_ttl", False, "this stream does not allow a per-message ttl")
        if config.max_msg_size != UNLIMITED and w.size > config.max_msg_size:
            raise Rejected("max_msg_size", config.max_msg_size, f"the message is {w.size} bytes")
        replaced: int | None = None
        replaced_size = 0
        if w.key is not None:
            row = db.execute("SELECT seq, size FROM messages WHERE key = ?", (w.key,)).fetchone()
            if row is not None:
                replaced, replaced_size = row
        if w.previous_seq is not None:
            actual = (replaced or 0) if w.key is not None else st.last_seq
            if w.previous_seq != actual:
                raise WrongLastSequence(w.previous_seq, actual, w.key)
        self._check_rates(now, w.size)
        evict = self._make_room(db, w.size, replaced, replaced_size)
        # ---- every check passed: from here on, change things ----
        if st.msg_bucket is not None:
            st.msg_bucket.take(now, 1)
        if st.byte_bucket is not None:
            st.byte_bucket.take(now, w.size)
        doomed = [*evict, replaced] if replaced is not None else evict
        if doomed:
            sizes = [
                db.execute("DELETE FROM messages WHERE seq = ? RETURNING size", (s,)).fetchone()[0]
                for s in doomed
            ]
            st.count -= len(doomed)
            st.bytes -= sum(sizes)
        stored, compressed = _codec.encode(w.payload)
        st.last_seq += 1
        db.execute(
            "INSERT INTO messages (seq, time, key, headers, payload, encoding, compressed, size, ttl,"
            " expires, msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                st.last_seq,
                now,
                w.key,
                _headers_encoder.encode(w.headers) if w.headers else None,
                stored,
                w.encoding,
                int(compressed),
                w.size,
                w.ttl,
                now + w.ttl if w.ttl is not None else None,
                w.msg_id,
            ),
        )
        st.count += 1
        st.bytes += w.size
        if w.msg_id is not None:
            db.execute(
                "INSERT OR REPLACE INTO dedup (msg_id, seq, time) VALUES (?, ?, ?)",
                (w.msg_id, st.last_seq, now),
            )
        return SetResult(seq=st.last_seq, time=now)

    def _check_rates(self, now: float, size: int) -> None:
        st = self._state
        config = st.config
        bucket = st.msg_bucket
        if bucket is not None and bucket.available(now) < 1:
            raise Rejected("max_msgs_per_second", config.max_msgs_per_second, "too many writes this second")
        bucket = st.byte_bucket
        if bucket is not None and bucket.available(now) < size:
            raise Rejected(
                "max_bytes_per_second", config.max_bytes_per_second, f"no room for {size} bytes this second"
            )

    def _byte_limit(self) -> Limit:
        config = self._state.config
        if config.ephemeral and (config.max_bytes == UNLIMITED or config.max_memory < config.max_bytes):
            return "max_memory"
        return "max_bytes"

    def _make_room(
        self, db: sqlite3.Connection, size: int, replaced: int | None, replaced_size: int
    ) -> list[int]:
        st = self._state
        config = st.config
        cap = config.byte_cap
        count = st.count + 1
        total = st.bytes + size
        if replaced is not None:
            count -= 1
            total -= replaced_size
        if cap != UNLIMITED and size > cap:
            raise Rejected(
                self._byte_limit(), cap, f"the message is {size} bytes, more than the whole stream may hold"
            )

        def over(count: int, total: int) -> Limit | None:
            if config.max_msgs != UNLIMITED and count > config.max_msgs:
                return "max_msgs"
            if cap != UNLIMITED and total > cap:
                return self._byte_limit()
            return None

        limit = over(count, total)
        if limit is None:
            return []
        if config.discard == "new":
            value = config.max_msgs if limit == "max_msgs" else cap
            raise Rejected(limit, value, "the stream is full (discard new)")
        evict: list[int] = []
        cur = db.execute("SELECT seq, size FROM messages ORDER BY seq")
        try:
            while over(count, total) is not None:
                rows = cur.fetchmany(64)
                if not rows:
                    break
                for seq, sz in rows:
                    if seq == replaced:
                        continue
                    evict.append(seq)
                    count -= 1
                    total -= sz
                    if over(count, total) is None:
                        break
        finally:
            cur.close()
        return evict

    def _do_delete(
        self,
        db: sqlite3.Connection,
        now: float,
        targets: list[int] | None,
        up_to: int | None,
        key: str | None,
    ) -> DeleteResult:
        self._presweep(db, now)
        st = self._state
        rows: list[Any] = []
        if targets is not None:
            for s in targets:
                rows.extend(
                    db.execute("DELETE FROM messages WHERE seq = ? RETURNING seq, size", (s,)).fetchall()
                )
        elif up_to is not None:
            rows = db.execute("DELETE FROM messages WHERE seq <= ? RETURNING seq, size", (up_to,)).fetchall()
        else:
            rows = db.execute("DELETE FROM messages WHERE key = ? RETURNING seq, size", (key,)).fetchall()
        st.count -= len(rows)
        st.bytes -= sum(r[1] for r in rows)
        return DeleteResult(seqs=sorted(r[0] for r in rows))

    def _do_config(self, db: sqlite3.Connection, now: float, changes: Mapping[str, object]) -> StreamConfig:
        st = self._state
        old = st.config
        new = old.merge(changes)
        st.config = new
        if (new.max_msgs_per_second, new.max_bytes_per_second) != (
            old.max_msgs_per_second,
            old.max_bytes_per_second,
        ):
            st.reset_buckets()
        _set_meta(db, "config", msgspec.json.encode(new).decode())
        self._sweep(db, now)
        cap = new.byte_cap

        def over() -> bool:
            return bool(new.max_msgs != UNLIMITED and st.count > new.max_msgs) or bool(
                cap != UNLIMITED and st.bytes > cap
            )

        if over():
            last = 0
            cur = db.execute("SELECT seq, size FROM messages ORDER BY seq")
            try:
                while over():
                    rows = cur.fetchmany(256)
                    if not rows:
                        break
                    for seq, sz in rows:
                        last = seq
                        st.count -= 1
                        st.bytes -= sz
                        if not over():
                            break
            finally:
                cur.close()
            db.execute("DELETE FROM messages WHERE seq <= ?", (last,))
        return new

    def _message(self, row: Any) -> StoredMessage:
        seq, at, key, headers, payload, encoding, compressed, size, ttl = row
        try:
            hdrs = _headers_decoder.decode(headers) if headers is not None else {}
            data = _codec.decode(payload, bool(compressed))
        except (ValueError, msgspec.DecodeError) as e:
            raise Corrupt(f"seq {seq} of {self._what}", str(e)) from None
        return StoredMessage(
            seq=seq, time=at, key=key, headers=hdrs, payload=data, ttl=ttl, size=size, encoding=encoding
        )


_OPEN_TOKEN: Final = object()


def _locked(conn: _Conn, work: Callable[[sqlite3.Connection], _T], what: str) -> _T:
    with conn.lock, _storage_errors(what):
        return work(conn.db)


def _close_all(conns: list[_Conn]) -> None:
    for conn in conns:
        with conn.lock, contextlib.suppress(sqlite3.Error):
            conn.db.close()


def _meta(db: sqlite3.Connection, name: str, default: Any) -> Any:
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return default if row is None else row[0]


def _set_meta(db: sqlite3.Connection, name: str, value: object) -> None:
    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))


def _quarantine(file: Path) -> Path:
    """Rename a corrupt ``file`` (and its ``-wal``/``-shm``) aside; never delete it. Returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = file.with_name(f"{file.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = file.with_name(f"{file.name}.corrupt-{stamp}-{n}")
        n += 1
    with _storage_errors(str(file)):
        os.rename(file, target)
        for suffix in ("-wal", "-shm"):
            side = Path(str(file) + suffix)
            if side.exists():
                os.rename(side, Path(str(target) + suffix))
    return target
