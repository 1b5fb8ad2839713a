"""The writer of a stream file: its in-memory state and the mutations it runs, one transaction a batch.

Runs in the executor only, under the writer connection's lock (:class:`persist.StreamFile` drains its
queue into :meth:`Writer.commit`). Each mutation makes the model's decisions with the shared, pure
rules (:mod:`persist._admission`) and the statements of :mod:`persist._sql`; every check runs before
anything changes, so a refused write changes nothing. If the transaction fails, it is rolled back and
the in-memory state (config, last seq, counters, rate buckets) restored as it was before the batch.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import final

from conat import Clock

from . import _sql
from ._admission import Rates, admit, trim
from ._checks import SetArgs
from ._config import StreamConfig
from ._engine_io import Apply, Conn, storage_errors
from ._errors import BadRequest, PersistError
from ._model import DeleteResult, SetResult, StoredMessage
from ._tail import Commit

__all__ = ["State", "Writer"]


@final
class State:
    """What the writer keeps in memory, restored as a whole if a transaction fails."""

    __slots__ = ("bytes", "config", "count", "first_delete", "last_delete", "last_seq", "rates")

    def __init__(self, opened: _sql.Opened) -> None:
        self.config = opened.config
        self.last_seq = opened.last_seq
        self.count = opened.count
        self.bytes = opened.nbytes
        self.first_delete = opened.first_delete
        self.last_delete = opened.last_delete
        self.rates = Rates(opened.config)

    def copy(self) -> State:
        """An independent copy (the rate buckets too)."""
        other = State.__new__(State)
        for name in State.__slots__:
            setattr(other, name, getattr(self, name))
        other.rates = self.rates.copy()
        return other


@final
class Writer:
    """The writer connection of one file and its state (module docstring).

    Args:
        conn: the writer connection.
        opened: the state read back when the file was opened.
        clock: ``wall()`` gives each transaction its time.
        durable: a file (not ``:memory:``): apply the config's ``synchronous`` level.
        what: names the file in errors.
        on_commit: called (in the executor thread) after each committed transaction that changed
            messages, with what it changed (:class:`persist._tail.Commit`), so the owner can
            answer changefeed readers.
    """

    def __init__(
        self,
        conn: Conn,
        opened: _sql.Opened,
        clock: Clock,
        *,
        durable: bool,
        what: str,
        on_commit: Callable[[Commit], object] = lambda commit: None,
    ) -> None:
        self.conn = conn
        self.state = State(opened)
        self.stream_id = opened.stream_id
        self.transactions = 0
        self._on_commit = on_commit
        self._deleted: list[int] = []
        self._deleted_through = 0
        self._added: list[StoredMessage] = []
        self._logged: list[tuple[int, int, int]] = []
        self.writes = 0
        self._clock = clock
        self._durable = durable
        self._what = what
        self._swept_at: float | None = None

    def commit(self, batch: Sequence[Apply]) -> list[object]:
        """Run ``batch`` in one transaction (the group commit). Returns a result or error per mutation.

        Every mutation of the batch sees the same ``now`` (``clock.wall()``, read once).

        Raises:
            PersistError: the transaction failed; it was rolled back and the state restored.
        """
        with self.conn.lock, storage_errors(self._what, "write"):
            db = self.conn.db
            saved = self.state.copy()
            last_seq = saved.last_seq
            now = self._clock.wall()
            results: list[object] = []
            db.execute("BEGIN IMMEDIATE")
            self._swept_at = None
            self._deleted, self._deleted_through = [], 0
            self._added, self._logged = [], []
            try:
                for apply in batch:
                    try:
                        results.append(apply(db, now))
                    except PersistError as e:
                        results.append(e)
                if self.state.last_seq != last_seq:
                    _sql.set_meta(db, "last_seq", self.state.last_seq)
                logged = self._log_deletes(db)  # before the test below, which must not skip it
                changed = logged or self.state.last_seq != last_seq
                db.execute("COMMIT")
            except BaseException:
                self.state = saved
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            self.transactions += 1
            self.writes += len(batch)
            if self.state.config.sync != saved.config.sync and self._durable:
                _sql.set_synchronous(db, self.state.config)
            if changed:
                st = self.state
                self._on_commit(Commit(self._added, self._logged, st.last_seq, st.first_delete, st.last_delete))
            return results

    def _log_deletes(self, db: sqlite3.Connection) -> bool:
        """Append this transaction's deletes to the delete log; whether there were any."""
        through, seqs = self._deleted_through, self._deleted
        ranges = [(0, through)] if through else []
        ranges += _sql.as_ranges([s for s in seqs if s > through])
        if not ranges:
            return False
        st = self.state
        last = st.last_delete
        st.first_delete, st.last_delete = _sql.log_deletes(db, ranges, st.first_delete, st.last_delete)
        self._logged = [(last + i, low, high) for i, (low, high) in enumerate(ranges, 1)]
        return True

    # ---- mutations (each runs inside commit's transaction) ------------------------------------------

    def sweep(self, db: sqlite3.Connection, now: float) -> int:
        """Remove what is expired at ``now`` and stale msg-ids; return how many messages were removed."""
        self._swept_at = now
        st = self.state
        removed, freed = _sql.sweep(db, st.config, now)
        st.count -= len(removed)
        st.bytes -= freed
        self._deleted.extend(removed)
        return len(removed)

    def _presweep(self, db: sqlite3.Connection, now: float) -> None:
        """The model's sweep before each mutation, done once per transaction (same ``now``)."""
        if self._swept_at != now:
            self.sweep(db, now)

    def set(self, db: sqlite3.Connection, now: float, args: SetArgs, encoding: str) -> SetResult:
        """The model's ``set`` (its arguments already checked)."""
        self._presweep(db, now)
        st = self.state
        if args.msg_id is not None:
            seen = _sql.find_msg_id(db, args.msg_id)
            if seen is not None:
                if seen[2] is not None:
                    raise BadRequest("set", f"msg_id {args.msg_id!r} was used by a delete")
                return SetResult(seq=seen[0], time=seen[1], duplicate=True)
        replaced = _sql.find_key(db, args.key) if args.key is not None else None
        with contextlib.closing(_sql.oldest(db)) as oldest:
            evict = admit(
                st.config,
                st.rates,
                args,
                now=now,
                replaced=replaced,
                last_seq=st.last_seq,
                count=st.count,
                nbytes=st.bytes,
                oldest=oldest,
            )
        # ---- every check passed: from here on, change things ----
        doomed = [*evict, replaced[0]] if replaced is not None else evict
        self._deleted.extend(doomed)  # the replaced one too: its replacement may be gone before it is read
        if doomed:
            st.count -= len(doomed)
            st.bytes -= sum(_sql.delete_seq(db, s) for s in doomed)
        st.last_seq += 1
        _sql.insert(db, st.last_seq, now, args, encoding)
        st.count += 1
        st.bytes += args.size
        self._added.append(
            StoredMessage(
                seq=st.last_seq,
                time=now,
                key=args.key,
                headers=args.headers,
                payload=args.payload,
                ttl=float(args.ttl) if args.ttl is not None else None,
                size=args.size,
                encoding=encoding,
            )
        )
        return SetResult(seq=st.last_seq, time=now)

    def delete(
        self,
        db: sqlite3.Connection,
        now: float,
        targets: list[int] | None,
        up_to: int | None,
        key: str | None,
        msg_id: str | None = None,
    ) -> DeleteResult:
        """The model's ``delete`` by ``targets``, else every seq ``<= up_to``, else ``key``; a
        ``msg_id`` seen before returns that delete's result (and deletes nothing)."""
        self._presweep(db, now)
        if msg_id is not None:
            seen = _sql.find_msg_id(db, msg_id)
            if seen is not None:
                if seen[2] is None:
                    raise BadRequest("delete", f"msg_id {msg_id!r} was used by a set")
                return DeleteResult(seqs=seen[2])
        st = self.state
        rows = _sql.delete_by(db, targets, up_to, key)
        if up_to is not None:
            if rows:  # never past last_seq: later messages with a seq <= up_to are not deleted
                self._deleted_through = max(self._deleted_through, min(up_to, st.last_seq))
        else:
            self._deleted.extend(seq for seq, _ in rows)
        st.count -= len(rows)
        st.bytes -= sum(size for _, size in rows)
        removed = sorted(seq for seq, _ in rows)
        if msg_id is not None:
            _sql.remember_delete(db, msg_id, now, removed)
        return DeleteResult(seqs=removed)

    def update_config(
        self, db: sqlite3.Connection, now: float, changes: Mapping[str, object]
    ) -> StreamConfig:
        """The model's ``update_config``: store the new config, sweep, then trim to its limits."""
        st = self.state
        old = st.config
        new = old.merge(changes)
        st.config = new
        st.rates = st.rates.reconfigured(old, new)
        _sql.set_meta(db, "config", new)
        self.sweep(db, now)
        with contextlib.closing(_sql.oldest(db)) as oldest:
            seqs = trim(new, st.count, st.bytes, oldest)
        if seqs:
            st.count -= len(seqs)
            st.bytes -= _sql.delete_through(db, seqs[-1])
            self._deleted_through = max(self._deleted_through, seqs[-1])
        return new
