"""The SQLite side of a stream file: schema, statements, and rows to and from messages.

Every function here takes a ``sqlite3.Connection`` and runs its statements on it, nothing more: no
transactions (the caller begins and commits them), no threads, no error translation. They are only
called inside :func:`persist._engine_io.storage_errors`, the one place where ``sqlite3`` errors
become persist errors.

Schema (``meta.schema = 2``; a version 1 file is migrated when opened: ``dedup.result`` is added)::

    messages(seq INTEGER PRIMARY KEY, time REAL, key TEXT UNIQUE NULL, headers BLOB NULL,
             payload BLOB, encoding TEXT, compressed INT, size INT, ttl REAL NULL,
             expires REAL NULL /* time + ttl */, msg_id TEXT NULL)
    dedup(msg_id TEXT PRIMARY KEY, seq INT, time REAL, result BLOB NULL)
        -- msg-id -> original SetResult (result NULL), or a delete's removed seqs (msgpack ranges)
    meta(name TEXT PRIMARY KEY, value)                   -- schema, config (JSON), last_seq, stream_id
    deletes(id INTEGER PRIMARY KEY, low INT, high INT)   -- the delete log: seqs low..high are gone

The **delete log** lets a changefeed tell a consumer which messages it holds were removed: every
transaction that deletes messages (an explicit delete, an eviction, a trim, an expiry sweep, a
keyed write replacing the key's previous message) appends rows naming the removed seqs as ranges, in
the same transaction. The log keeps its last
:data:`DELETE_LOG_KEEP` rows; ``stream_id`` (random, made when the file is created) tells a
consumer's cursor into the log from one of a re-created file.

A payload is stored as :mod:`persist._codec` encodes it (maybe compressed), headers as a msgpack map
(``NULL`` when there are none). Reads filter expired rows in SQL (:func:`live_clause`) with the same
float arithmetic as the model's expiry rule, so an expired message is never returned, swept or not.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final

import msgspec

from . import _codec
from ._admission import expired_through
from ._checks import SetArgs
from ._config import UNLIMITED, StreamConfig
from ._errors import Corrupt, PersistError, StorageError
from ._model import Inventory, StoredMessage

__all__ = [
    "SCHEMA_VERSION",
    "Opened",
    "connect",
    "decode_row",
    "delete_by",
    "delete_seq",
    "delete_through",
    "as_ranges",
    "log_deletes",
    "select_changes",
    "find_key",
    "find_msg_id",
    "foreign_objects",
    "harden",
    "init_db",
    "insert",
    "oldest",
    "problems",
    "remember_delete",
    "select_inventory",
    "select_keys",
    "select_message",
    "select_messages",
    "set_meta",
    "set_synchronous",
    "sweep",
]

SCHEMA_VERSION: Final = 2
_BUSY_TIMEOUT_MS: Final = 10_000
DELETE_LOG_KEEP: Final = 10_000
"""Rows of the delete log kept (at least); a changefeed cursor older than that must resync."""
_SYNC_PRAGMA: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

MESSAGES_TABLE: Final = """
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
"""
"""The message table and its indexes (the bench's raw-sqlite3 baseline writes the same rows)."""

_SCHEMA: Final = (
    MESSAGES_TABLE
    + """
CREATE TABLE IF NOT EXISTS dedup (
    msg_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    result BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_time ON dedup(time);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deletes (
    id INTEGER PRIMARY KEY,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL
);
"""
)

_COLUMNS: Final = "seq, time, key, headers, payload, encoding, compressed, size, ttl"

_headers_encoder: Final = msgspec.msgpack.Encoder()
_headers_decoder: Final = msgspec.msgpack.Decoder(dict[str, str])


# ---- opening -----------------------------------------------------------------------------------------


def connect(file: Path | str, *, reader: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from any one thread at a time.

    ``reader`` makes it ``query_only``. ``":memory:"`` opens a private in-memory database. Every
    connection is :func:`harden` ed.
    """
    db = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
    harden(db)
    if file != ":memory:":
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    if reader:
        db.execute("PRAGMA query_only = 1")
    return db


def harden(db: sqlite3.Connection) -> None:
    """Treat the file's schema as untrusted: a project's owner can write its stream files.

    ``trusted_schema = OFF``: views, triggers, CHECK/DEFAULT and index expressions in the file may
    not call functions that have side effects (only those SQLite marks innocuous) nor use virtual
    tables, so SQL planted in a file never runs with the service's rights. ``cell_size_check = ON``:
    a malformed b-tree page is reported as corrupt when it is read (``SQLITE_CORRUPT``, so
    :class:`~persist.Corrupt`) instead of being trusted, which matters since a file is not checked
    whole when it is opened after a clean close (:func:`persist._engine_io.open_writer`).
    """
    db.execute("PRAGMA trusted_schema = OFF")
    db.execute("PRAGMA cell_size_check = ON")


SCHEMA_OBJECTS: Final = frozenset(
    {
        ("table", "messages"),
        ("index", "sqlite_autoindex_messages_1"),
        ("index", "messages_time"),
        ("index", "messages_expires"),
        ("table", "dedup"),
        ("index", "dedup_time"),
        ("table", "meta"),
        ("table", "deletes"),
    }
)
"""What :data:`_SCHEMA` creates (the names in ``sqlite_master``)."""


def foreign_objects(db: sqlite3.Connection) -> list[str]:
    """The schema objects of a stream file that persist did not create (triggers, views, tables...)."""
    rows = db.execute("SELECT type, name FROM sqlite_master").fetchall()
    return [f"{kind} {name!r}" for kind, name in rows if (kind, name) not in SCHEMA_OBJECTS]


def problems(db: sqlite3.Connection, pragma: str = "quick_check") -> list[str]:
    """What ``PRAGMA quick_check`` (or ``integrity_check``) finds wrong; empty when the file is sound."""
    rows = [str(r[0]) for r in db.execute(f"PRAGMA {pragma}")]
    return [] if rows == ["ok"] else rows


class Opened(msgspec.Struct, frozen=True):
    """What :func:`init_db` read back: the stored config, ``last_seq``, and the rows' count and bytes."""

    config: StreamConfig
    last_seq: int
    count: int
    nbytes: int
    stream_id: str
    first_delete: int
    """The lowest id still in the delete log (``last_delete + 1`` when it is empty)."""
    last_delete: int


def init_db(db: sqlite3.Connection, wanted: StreamConfig, what: str, *, durable: bool) -> Opened:
    """Create the schema if missing (storing ``wanted`` as the config) and read the stream's state back.

    ``durable`` (a file, not ``:memory:``) switches to WAL and to the config's ``synchronous`` level.

    Raises:
        Corrupt: an unknown schema version or an unreadable stored config.
        StorageError: WAL cannot be used.
    """
    if durable:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError("open", what, f"cannot use WAL (journal_mode={mode})")
    db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _meta(db, "schema", None)
        if version is None:
            set_meta(db, "schema", SCHEMA_VERSION)
            set_meta(db, "config", wanted)
            set_meta(db, "last_seq", 0)
        elif version == 1:  # deletes got msg-ids: remember what each removed
            db.execute("ALTER TABLE dedup ADD COLUMN result BLOB")
            set_meta(db, "schema", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise Corrupt(what, f"unknown schema version {version!r}")
        stored = _meta(db, "config", None)
        try:
            config = StreamConfig.from_dict(msgspec.json.decode(str(stored)))
        except (PersistError, msgspec.DecodeError, TypeError) as e:
            raise Corrupt(what, f"bad stored config: {e}") from None
        last_seq = int(_meta(db, "last_seq", 0))
        stream_id = _meta(db, "stream_id", None)
        if stream_id is None:
            stream_id = secrets.token_hex(8)
            db.execute("INSERT INTO meta (name, value) VALUES ('stream_id', ?)", (stream_id,))
        count, nbytes = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
        low, high = db.execute("SELECT min(id), max(id) FROM deletes").fetchone()
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if durable:
        set_synchronous(db, config)
    last_delete = high or 0
    return Opened(config, last_seq, count, nbytes, str(stream_id), low or last_delete + 1, last_delete)


def set_synchronous(db: sqlite3.Connection, config: StreamConfig) -> None:
    """Set ``PRAGMA synchronous`` from ``config.sync`` (outside a transaction: SQLite ignores it inside)."""
    db.execute(f"PRAGMA synchronous = {_SYNC_PRAGMA[config.sync]}")


def _meta(db: sqlite3.Connection, name: str, default: Any) -> Any:
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return default if row is None else row[0]


def set_meta(db: sqlite3.Connection, name: str, value: int | StreamConfig) -> None:
    """Store ``meta.name`` (a config is stored as JSON)."""
    stored = msgspec.json.encode(value).decode() if isinstance(value, StreamConfig) else value
    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, stored))


# ---- writes (in the writer's transaction) ------------------------------------------------------------


def sweep(db: sqlite3.Connection, config: StreamConfig, now: float) -> tuple[list[int], int]:
    """Delete what is expired at ``now`` and the msg-ids older than the dedup window.

    Each age rule is one range of its ``time`` index (:func:`persist._admission.expired_through`), so
    a sweep touches only the rows it removes: it runs before every write transaction.

    Returns:
        the seqs of the messages deleted, and their bytes.
    """
    age = config.max_age
    removed: list[int] = []
    freed = 0
    if age != UNLIMITED:
        rows = db.execute(
            "DELETE FROM messages WHERE time <= ? RETURNING seq, size", (expired_through(now, float(age)),)
        ).fetchall()
        removed.extend(r[0] for r in rows)
        freed += sum(r[1] for r in rows)
    rows = db.execute("DELETE FROM messages WHERE expires <= ? RETURNING seq, size", (now,)).fetchall()
    removed.extend(r[0] for r in rows)
    freed += sum(r[1] for r in rows)
    window = config.duplicate_window
    if window != UNLIMITED:
        db.execute("DELETE FROM dedup WHERE time <= ?", (expired_through(now, float(window)),))
    return removed, freed


_ranges_encoder: Final = msgspec.msgpack.Encoder()
_ranges_decoder: Final = msgspec.msgpack.Decoder(list[tuple[int, int]])


def find_msg_id(db: sqlite3.Connection, msg_id: str) -> tuple[int, float, list[int] | None] | None:
    """What a remembered msg-id did: ``(seq, time, None)`` for a write, ``(0, time, seqs)`` for a
    delete (the seqs it removed); ``None`` if it is not remembered.

    Raises:
        Corrupt: a delete's stored result does not decode.
    """
    row = db.execute("SELECT seq, time, result FROM dedup WHERE msg_id = ?", (msg_id,)).fetchone()
    if row is None:
        return None
    if row[2] is None:
        return row[0], row[1], None
    try:
        ranges = _ranges_decoder.decode(row[2])
    except msgspec.DecodeError as e:
        raise Corrupt(f"msg-id {msg_id!r}", f"its delete's result does not decode: {e}") from None
    return 0, row[1], [s for low, high in ranges for s in range(low, high + 1)]


def remember_delete(db: sqlite3.Connection, msg_id: str, now: float, seqs: list[int]) -> None:
    """Remember a delete's msg-id with the seqs it removed (as ranges: ``up_to`` deletes are runs)."""
    db.execute(
        "INSERT OR REPLACE INTO dedup (msg_id, seq, time, result) VALUES (?, 0, ?, ?)",
        (msg_id, now, _ranges_encoder.encode(as_ranges(seqs))),
    )


def find_key(db: sqlite3.Connection, key: str) -> tuple[int, int] | None:
    """The ``(seq, size)`` of the key's message, or ``None`` (call after a sweep: no expiry filter)."""
    row = db.execute("SELECT seq, size FROM messages WHERE key = ?", (key,)).fetchone()
    return None if row is None else (row[0], row[1])


def oldest(db: sqlite3.Connection) -> Generator[tuple[int, int], None, None]:
    """``(seq, size)`` of every message, ascending; the query runs only when first iterated.

    Close the generator (``contextlib.closing``) to close the cursor if it is not run to the end.
    """
    cur = db.execute("SELECT seq, size FROM messages ORDER BY seq")
    try:
        yield from cur
    finally:
        cur.close()


def delete_seq(db: sqlite3.Connection, seq: int) -> int:
    """Delete the message ``seq``, which exists; return its size."""
    size: int = db.execute("DELETE FROM messages WHERE seq = ? RETURNING size", (seq,)).fetchone()[0]
    return size


def delete_through(db: sqlite3.Connection, seq: int) -> int:
    """Delete every message with a seq ``<= seq``; return their bytes."""
    rows = db.execute("DELETE FROM messages WHERE seq <= ? RETURNING size", (seq,)).fetchall()
    return sum(r[0] for r in rows)


def delete_by(
    db: sqlite3.Connection, targets: list[int] | None, up_to: int | None, key: str | None
) -> list[tuple[int, int]]:
    """Delete the messages ``targets``, else those ``<= up_to``, else the key's; return ``(seq, size)`` of each."""
    rows: list[Any] = []
    if targets is not None:
        for s in targets:
            rows.extend(db.execute("DELETE FROM messages WHERE seq = ? RETURNING seq, size", (s,)).fetchall())
    elif up_to is not None:
        rows = db.execute("DELETE FROM messages WHERE seq <= ? RETURNING seq, size", (up_to,)).fetchall()
    else:
        rows = db.execute("DELETE FROM messages WHERE key = ? RETURNING seq, size", (key,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def log_deletes(
    db: sqlite3.Connection, ranges: list[tuple[int, int]], first: int, last: int
) -> tuple[int, int]:
    """Append ``ranges`` to the delete log after id ``last``; prune it to about :data:`DELETE_LOG_KEEP` rows.

    Args:
        first, last: the lowest and highest ids in the log now.

    Returns:
        the new ``(first, last)``.
    """
    db.executemany(
        "INSERT INTO deletes (id, low, high) VALUES (?, ?, ?)",
        [(last + i, low, high) for i, (low, high) in enumerate(ranges, 1)],
    )
    last += len(ranges)
    if last - first + 1 > 2 * DELETE_LOG_KEEP:  # amortized: prune in steps of KEEP rows
        first = last - DELETE_LOG_KEEP + 1
        db.execute("DELETE FROM deletes WHERE id < ?", (first,))
    return first, last


def as_ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted, merged ``(low, high)`` runs of consecutive seqs."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and out[-1][1] + 1 == s:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def insert(db: sqlite3.Connection, seq: int, now: float, args: SetArgs, encoding: str) -> None:
    """Store the message ``seq`` written at ``now`` (and its msg-id, if any, in ``dedup``)."""
    stored, compressed = _codec.encode(args.payload)
    ttl = float(args.ttl) if args.ttl is not None else None
    db.execute(
        "INSERT INTO messages (seq, time, key, headers, payload, encoding, compressed, size, ttl,"
        " expires, msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            now,
            args.key,
            _headers_encoder.encode(args.headers) if args.headers else None,
            stored,
            encoding,
            int(compressed),
            args.size,
            ttl,
            now + ttl if ttl is not None else None,
            args.msg_id,
        ),
    )
    if args.msg_id is not None:
        db.execute(
            "INSERT OR REPLACE INTO dedup (msg_id, seq, time) VALUES (?, ?, ?)", (args.msg_id, seq, now)
        )


# ---- reads -------------------------------------------------------------------------------------------


def live_clause(config: StreamConfig) -> str:
    """SQL that keeps rows live at ``:now`` (the model's ``_expired``, in the same float arithmetic)."""
    clause = "(expires IS NULL OR expires > :now)"
    if config.max_age != UNLIMITED:
        clause += " AND time + :age > :now"
    return clause


def _live_params(config: StreamConfig, now: float) -> dict[str, object]:
    return {"now": now, "age": float(config.max_age)}


def select_message(
    db: sqlite3.Connection, config: StreamConfig, now: float, seq: int | None, key: str | None
) -> list[Any]:
    """The row of the live message ``seq`` (or of ``key``, if given), as a list of at most one row."""
    where, arg = ("key = :sel", key) if key is not None else ("seq = :sel", seq)
    sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} AND {live_clause(config)}"
    return db.execute(sql, {**_live_params(config, now), "sel": arg}).fetchall()


def _page_end(
    db: sqlite3.Connection, config: StreamConfig, now: float, after: int, max_msgs: int, max_bytes: int
) -> int | None:
    """The last seq of a page: up to ``max_msgs`` live messages with ``seq > after`` whose sizes sum to
    at most ``max_bytes`` (at least one message, however large), or ``None`` if there is none.

    Reads only ``seq`` and ``size`` (never a payload), and stops at the first message that does not
    fit: a page is bounded by bytes *while* reading, so a client's large ``max_msgs`` never loads more
    than ``max_bytes`` of payloads (plus one message).
    """
    sql = f"SELECT seq, size FROM messages WHERE seq > :after AND {live_clause(config)} ORDER BY seq LIMIT :n"
    cur = db.execute(sql, {**_live_params(config, now), "after": after, "n": max_msgs})
    last: int | None = None
    total = 0
    try:
        for seq, size in cur:
            total += size
            if last is not None and total > max_bytes:
                break
            last = seq
    finally:
        cur.close()
    return last


def _page_rows(
    db: sqlite3.Connection, config: StreamConfig, now: float, after: int, max_msgs: int, max_bytes: int
) -> list[Any]:
    """The rows of the page :func:`_page_end` bounds (call inside one read transaction)."""
    last = _page_end(db, config, now, after, max_msgs, max_bytes)
    if last is None:
        return []
    sql = (
        f"SELECT {_COLUMNS} FROM messages WHERE seq > :after AND seq <= :last AND {live_clause(config)}"
        " ORDER BY seq"
    )
    return db.execute(sql, {**_live_params(config, now), "after": after, "last": last}).fetchall()


def select_messages(
    db: sqlite3.Connection, config: StreamConfig, now: float, start: int, batch: int, max_bytes: int
) -> list[Any]:
    """The rows of the first ``batch`` live messages with ``seq >= start``, in seq order, within
    ``max_bytes`` of message sizes (at least one), read in one read transaction."""
    db.execute("BEGIN")
    try:
        return _page_rows(db, config, now, start - 1, batch, max_bytes)
    finally:
        db.execute("COMMIT")


def select_changes(
    db: sqlite3.Connection,
    config: StreamConfig,
    now: float,
    after_seq: int,
    after_delete: int | None,
    max_msgs: int,
    max_bytes: int,
    max_deletes: int,
) -> tuple[list[Any], list[tuple[int, int]], int, int, int]:
    """One consistent page of a changefeed, read in one read transaction.

    Returns:
        the rows of up to ``max_msgs`` live messages with ``seq > after_seq`` within ``max_bytes``
        (at least one; :func:`_page_end`); the delete-log ranges with ``id > after_delete`` (up to
        ``max_deletes``; none if ``after_delete`` is None); the id of the last log row read (the
        cursor for the next page); the lowest id in the log; and ``last_seq``.
    """
    db.execute("BEGIN")
    try:
        rows = _page_rows(db, config, now, after_seq, max_msgs, max_bytes)
        low, high = db.execute("SELECT min(id), max(id) FROM deletes").fetchone()
        last_delete = high or 0
        first_delete = low or last_delete + 1
        deletes: list[tuple[int, int]] = []
        cursor = last_delete
        if after_delete is not None and after_delete < last_delete:
            logged = db.execute(
                "SELECT id, low, high FROM deletes WHERE id > ? ORDER BY id LIMIT ?",
                (after_delete, max_deletes),
            ).fetchall()
            deletes = [(r[1], r[2]) for r in logged]
            if len(logged) == max_deletes:
                cursor = logged[-1][0]
        last_seq = int(_meta(db, "last_seq", 0))
    finally:
        db.execute("COMMIT")
    return rows, deletes, cursor, first_delete, last_seq


def select_keys(
    db: sqlite3.Connection,
    config: StreamConfig,
    now: float,
    after: str | None = None,
    limit: int | None = None,
    max_bytes: int | None = None,
) -> list[str]:
    """The keys with a live message that sort after ``after``, by code point (UTF-8 byte order is code
    point order), at most ``limit`` of them and ``max_bytes`` of UTF-8 (at least one), read no further."""
    sql = (
        f"SELECT key FROM messages WHERE key IS NOT NULL AND key > :after AND {live_clause(config)}"
        " ORDER BY key LIMIT :limit"
    )
    params = {**_live_params(config, now), "after": "" if after is None else after, "limit": limit or -1}
    keys: list[str] = []
    total = 0
    cur = db.execute(sql, params)
    try:
        for (key,) in cur:
            total += len(key.encode())
            if keys and max_bytes is not None and total > max_bytes:
                break
            keys.append(key)
    finally:
        cur.close()
    return keys


def select_inventory(db: sqlite3.Connection, config: StreamConfig, now: float) -> Inventory:
    """Live count and bytes, lowest live seq and ``last_seq``, read in one read transaction."""
    sql = (
        "SELECT count(*), coalesce(sum(size), 0), coalesce(min(seq), 0) FROM messages"
        f" WHERE {live_clause(config)}"
    )
    db.execute("BEGIN")
    try:
        count, nbytes, first = db.execute(sql, _live_params(config, now)).fetchone()
        last = _meta(db, "last_seq", 0)
    finally:
        db.execute("COMMIT")
    return Inventory(count=count, bytes=nbytes, first_seq=first, last_seq=int(last))


def decode_row(row: Any, what: str) -> StoredMessage:
    """The message of a row selected by :func:`select_message` or :func:`select_messages`.

    Raises:
        Corrupt: its headers or payload cannot be decoded (``what`` names the stream).
    """
    seq, at, key, headers, payload, encoding, compressed, size, ttl = row
    try:
        hdrs = _headers_decoder.decode(headers) if headers is not None else {}
        data = _codec.decode(payload, bool(compressed))
    except (ValueError, msgspec.DecodeError) as e:
        raise Corrupt(f"seq {seq} of {what}", str(e)) from None
    return StoredMessage(
        seq=seq, time=at, key=key, headers=hdrs, payload=data, ttl=ttl, size=size, encoding=encoding
    )
