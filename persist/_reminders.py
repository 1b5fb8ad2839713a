"""Durable reminders: :class:`actors.ReminderStore` kept in one persist stream used as a KV.

Theory of operation
-------------------

Every reminder is one keyed message of one stream (``hosts/<uuid>/reminders``, ``hub/reminders``...):
the key names the reminder, the payload is the msgpack-encoded :class:`actors.Reminder`. ``save`` is
a keyed ``set`` (which replaces the previous message of the key), ``delete`` a ``delete(key=)``, and
``load`` one scan of the stream. The engine answers a write only after the transaction holding it
committed (fsynced with the default ``sync="full"``), so a reminder that ``save`` returned for is on
disk and survives a process kill or, with ``full``, a power loss. Writes of concurrent callers share
transactions (group commit), so many actors setting reminders at once cost few fsyncs.

**Key encoding.** ``quote(actor) + "/" + quote(key) + "/" + quote(name)``, where ``quote`` is
:func:`urllib.parse.quote` with no safe characters: every byte of the UTF-8 text except ASCII letters,
digits and ``_.-~`` becomes ``%XX``, so no part contains ``/`` and the key is unambiguous (``("a/b",
"c", "d")`` is ``a%2Fb/c/d``, ``("a", "b/c", "d")`` is ``a/b%2Fc/d``). It is stable (a pure function
of the three strings), readable for the usual dotted or alphanumeric names, and the reminders of one
actor type are exactly the keys starting with ``quote(actor) + "/"``: ``load`` picks them out by
their key and decodes only those. The encoded key must fit :data:`persist.MAX_KEY_BYTES` (each
escaped byte takes three), else ``save`` raises :class:`persist.TooLarge`.

**Concurrency.** Every call takes its own lease on the stream from the :class:`persist.StreamStore`,
so the store may close the stream when idle and reopen it on the next call, and any number of calls
may run at once. Writes to one reminder apply in call order. ``load`` is not a snapshot: it reads
the stream in batches, so a write that runs meanwhile may or may not be seen, but each reminder is
returned at most once (the latest version read).
"""

from __future__ import annotations

import asyncio
import os
import warnings
from pathlib import Path
from typing import Any, Final, final
from urllib.parse import quote

import msgspec

from actors import Reminder
from conat import Clock, ClosedError

from ._config import StreamConfig, SyncMode
from ._errors import BadRequest, Corrupt
from ._store import StreamStore

__all__ = ["DurableReminderStore"]

DEFAULT_FILE_NAME: Final = "reminders.db"
"""The file :meth:`DurableReminderStore.open` uses inside a directory."""

_OWN_PATH: Final = "reminders"
_SEP: Final = "/"
_LOAD_BATCH: Final = 1000
_ENCODING: Final = "msgpack"

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Reminder)


def _database_file(location: Path) -> Path:
    """``location``, or the default file inside it if it is a directory."""
    return location / DEFAULT_FILE_NAME if location.is_dir() else location


def _quote(op: str, part: str) -> str:
    try:
        return quote(part, safe="")
    except UnicodeEncodeError:
        raise BadRequest(op, f"{part!r} is not valid UTF-8 text") from None


def _actor_prefix(op: str, actor: str) -> str:
    return _quote(op, actor) + _SEP


def _encode_key(op: str, actor: str, key: str, name: str) -> str:
    """The stream key of the reminder ``(actor, key, name)`` (module docstring)."""
    return _SEP.join((_quote(op, actor), _quote(op, key), _quote(op, name)))


@final
class DurableReminderStore:
    """An :class:`actors.ReminderStore` whose reminders survive the process, in one persist stream.

    Either share a :class:`StreamStore` (the store is not closed by :meth:`aclose`)::

        reminders = DurableReminderStore(streams, "hosts/<uuid>/reminders")

    or, for a single-process service, let it own one over a single file::

        async with await DurableReminderStore.open("/var/lib/svc") as reminders:
            system = ActorSystem(client, reminders=reminders)

    Every method may be called concurrently from tasks of the store's event loop.

    Args:
        streams: opens the stream (and, by its ``root_resolver``, decides its file).
        path: the storage path of the stream, e.g. ``"hub/reminders"``.
        sync: the durability of a stream created by this store (an existing one keeps its own
            config); see :class:`StreamConfig`. ``"full"``: an acknowledged reminder survives a
            power loss.

    Raises:
        ValueError: ``path`` is not a non-empty string.
    """

    def __init__(self, streams: StreamStore, path: str, *, sync: SyncMode = "full") -> None:
        if not isinstance(path, str) or not path:
            raise ValueError(f"path must be a non-empty string, not {path!r}")
        self._streams = streams
        self._path = path
        self._config = StreamConfig(sync=sync)
        self._owns_streams = False
        self._closed = False

    @classmethod
    async def open(
        cls,
        location: str | os.PathLike[str],
        *,
        sync: SyncMode = "full",
        clock: Clock | None = None,
    ) -> DurableReminderStore:
        """A store with its own :class:`StreamStore` over one SQLite file; close it with :meth:`aclose`.

        The stream is opened (created if missing) before this returns, so a bad location fails here.

        Args:
            location: the database file, or an existing directory (the file is then
                ``<directory>/reminders.db``). Missing parent directories are created.
            sync: durability of a new file (see the class).
            clock: time source of the stream store (tests); default the system clock.

        Raises:
            Corrupt: the file failed its check: it was moved aside (both paths are in the error) and
                is refused until :meth:`reset`.
            PersistError: the file could not be opened or created.
        """
        file = await asyncio.to_thread(_database_file, Path(location))
        streams = StreamStore(lambda _path: file, max_open=1, executor_threads=1, clock=clock)
        self = cls(streams, _OWN_PATH, sync=sync)
        self._owns_streams = True
        try:
            async with streams.stream(_OWN_PATH, config=self._config):
                pass
        except BaseException:
            self._closed = True
            await streams.aclose()
            raise
        return self

    @classmethod
    async def reset(cls, location: str | os.PathLike[str]) -> list[str]:
        """After the file at ``location`` (as for :meth:`open`) was found corrupt: start it again
        empty, an operator's decision (its reminders are lost; the corrupt file stays aside).

        Returns:
            the paths moved aside now.

        Raises:
            BadRequest: the file is not quarantined (it was not found corrupt).
        """
        file = await asyncio.to_thread(_database_file, Path(location))
        async with StreamStore(lambda _path: file, max_open=1, executor_threads=1) as streams:
            return await streams.reset(_OWN_PATH)

    @property
    def path(self) -> str:
        """The storage path of the stream."""
        return self._path

    def __repr__(self) -> str:
        return f"DurableReminderStore({self._path!r})"

    # ---- the ReminderStore protocol --------------------------------------------------------------

    async def save(self, reminder: Reminder) -> None:
        """Insert or replace the reminder ``(actor, key, name)``; return once it is committed.

        Raises:
            BadRequest: a part is not valid UTF-8 text (lone surrogates).
            TooLarge: the encoded key is over :data:`persist.MAX_KEY_BYTES`.
            ClosedError: this store (or its stream store) is closed.
            PersistError: the write failed and was not stored; retrying is safe.
        """
        stream_key = _encode_key("set", reminder.actor, reminder.key, reminder.name)
        payload = _encoder.encode(reminder)
        self._check_open()
        async with self._streams.stream(self._path, config=self._config) as stream:
            await stream.set(payload, key=stream_key, encoding=_ENCODING)

    async def delete(self, actor: str, key: str, name: str) -> None:
        """Remove a reminder (a missing one is not an error); return once the removal is committed.

        Raises:
            BadRequest, TooLarge, ClosedError, PersistError: as :meth:`save`.
        """
        stream_key = _encode_key("delete", actor, key, name)
        self._check_open()
        async with self._streams.stream(self._path, config=self._config) as stream:
            await stream.delete(key=stream_key)

    async def load(self, actor: str) -> list[Reminder]:
        """Every reminder of the actor type ``actor``, by ``(key, name)`` (not a snapshot: module docstring).

        Raises:
            Corrupt: a stored reminder of ``actor`` cannot be decoded, or is stored under the key
                of another reminder.
            ClosedError, PersistError: as :meth:`save`.
        """
        prefix = _actor_prefix("load", actor)
        self._check_open()
        found: dict[str, Reminder] = {}
        async with self._streams.stream(self._path, config=self._config) as stream:
            async for batch in stream.get_all(batch=_LOAD_BATCH):
                for message in batch:
                    stream_key = message.key
                    if stream_key is not None and stream_key.startswith(prefix):
                        found[stream_key] = self._decode(stream_key, message.payload)
        return sorted(found.values(), key=lambda r: (r.key, r.name))

    # ---- lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Refuse further calls; close the stream store if :meth:`open` made it. Idempotent.

        The stream store finishes queued writes before it closes, so a ``save`` already running
        completes (or fails) normally.
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_streams:
            await self._streams.aclose()

    async def __aenter__(self) -> DurableReminderStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_owns_streams", False) and not getattr(self, "_closed", True):
            _warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)

    # ---- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"reminder store {self._path}")

    def _decode(self, stream_key: str, payload: bytes) -> Reminder:
        what = f"reminder {stream_key!r} of stream {self._path}"
        try:
            reminder = _decoder.decode(payload)
        except msgspec.DecodeError as e:
            raise Corrupt(what, str(e)) from None
        if _encode_key("load", reminder.actor, reminder.key, reminder.name) != stream_key:
            raise Corrupt(what, f"it holds the reminder {(reminder.actor, reminder.key, reminder.name)!r}")
        return reminder
