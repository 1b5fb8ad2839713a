"""The persist service: a keyed actor per storage scope on ``persist.<scope>.>``.

Theory of operation
-------------------

**One activation per scope, turns stay short.** The actor's key is the scope token
(``project-<uuid>``, ``account-<uuid>``, ``host-<uuid>``, ``hub``), so a scope's requests arrive in one
mailbox, in order. A turn only decodes the request, leases the stream from the shared
:class:`~persist.StreamStore` (opening it if needed) and starts the operation; the reply is sent by
the operation's own task when it finishes (the turn returns :data:`actors.NO_REPLY`). So many writes
of a scope wait on the same group commit instead of one transaction each, and a long-polling
changefeed never blocks the scope.

**The fast path.** A request for a stream that is open now, arriving while the scope's activation is
idle, is started on the read loop (:meth:`PersistService.handle_now`): no task and no turn; the
write is queued on the stream's group commit (a read on a reader connection) with a completion
callback that answers (``respond_nowait``). Anything else becomes a turn as described above.

**Order.** Both paths queue a write before the scope's next message is looked at (a turn queues it
before it returns, and the runtime offers the fast path only to an idle activation), so writes of
one scope are queued in the order their requests arrived: a client that sends ``set a`` then
``set b`` gets ``seq(a) < seq(b)``.

**Partitions.** With ``partitions`` the service serves one partition of the scopes (the bus splits
``persist.*.>``: :func:`persist_mappings`, :mod:`persist._workers`).

**Acknowledgement.** A write is answered after the transaction holding it has committed (with
``sync="full"``, after the fsync), never before: an acknowledged write survives a kill -9 of the
service. A client retrying with the same ``msg_id`` after a crash gets the original result, since
msg-ids are stored with the write.

**Bounds.** At most ``max_inflight`` operations of a scope run at once (beyond that the turn waits,
the mailbox fills, and callers get 429), and at most ``max_waiters`` changefeed reads of a scope are
held waiting; one more gets 429 at once. A page (``get_all``, the changefeed) is bounded in messages
and bytes while it is read, and capped (``max_page_msgs``, ``max_page_bytes``; by default
:data:`persist._wire.MAX_PAGE_MSGS`, :data:`persist._wire.MAX_PAGE_BYTES`) whatever the client asks: the service never loads more than the page it sends (or one message, if that one alone
is larger). The service holds no per-consumer buffer: a consumer pulls the next page when it is
ready (the cursor is its own), so a slow consumer costs nothing here; one that falls behind the
delete log gets a page with ``resync`` set and reloads.

**Expiry.** Each activation sweeps the streams it used within ``idle_close`` every
``sweep_interval`` seconds, so expired messages are removed (and reach changefeeds as deletes) even
when nobody writes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from actors import NO_REPLY, Actor, subject_mapping
from conat import BUSY, UNAVAILABLE, ConatError, Message, PayloadError, error_fields, respond_error
from subjects import InvalidSubject, ScopeKind, parse_scope, persist_scope

from ._config import StreamConfig
from ._engine import ChangePage, StreamFile
from ._errors import BadPath, BadRequest, NotFound, PersistError
from ._inventory import names_page
from ._model import DeleteResult
from ._placement import StoragePath
from ._replies import (
    _answer,
    _answer_many,
    _decode,
    _decode_or_raise,
    _fail_nowait,
    _forward,
    _Hold,
    _respond,
    _respond_failure,
    _Shared,
    _Slots,
)
from ._wire import (
    MAX_INVENTORY,
    MAX_KEYS,
    MAX_WAIT,
    ConfigOp,
    DeleteOp,
    GetOp,
    InventoryOp,
    KeysOp,
    ReadOp,
    Request,
    ResetOp,
    ResetResult,
    SetManyOp,
    SetOp,
    StreamInventory,
)

__all__ = [
    "BOOTLOG_CONFIG",
    "BOOTLOG_STREAM",
    "SUBJECT",
    "BootlogService",
    "PersistService",
    "persist_mappings",
]

log = logging.getLogger("persist.service")

BOOTLOG_STREAM: Final = "bootlog"
BOOTLOG_CONFIG: Final = StreamConfig(max_age=3600, max_msgs=10_000)
"""A bootlog keeps an hour of events (at most 10,000)."""
_SCOPES: Final = "use hub, project-<uuid>, account-<uuid> or host-<uuid>"
SUBJECT: Final = "persist.*.>"
"""What the persist service serves: every scope's requests."""


def persist_mappings(workers: int) -> dict[str, str]:
    """The nats-server subject mapping that splits the persist service's scopes among ``workers``
    partitioned workers (``ServerConfig(mappings=...)``); none for one worker."""
    return dict([subject_mapping(SUBJECT, workers)]) if workers > 1 else {}


class PersistService(Actor, subject="persist.*.>", idle=600.0, max_buffer=10_000):
    """The persist service of one scope (the key). Built by :class:`PersistServer`."""

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._slots = _Slots(shared.max_inflight, shared.inflight)
        self._waiters = 0
        self._used: dict[str, float] = {}
        self._bad_scope: BadPath | None = None

    def _scope(self) -> tuple[ScopeKind, str | None]:
        """The storage scope of this activation's key."""
        return parse_scope(self.key)

    def _check(self, request: Request | InventoryOp) -> None:
        """Refuse operations this service does not offer (all are offered here)."""

    def _new_config(self, request: Request) -> StreamConfig | None:
        """The config of a stream this request creates (the caller's, else the defaults)."""
        raw = getattr(request, "config", None)
        return None if raw is None else _parse_config(msgspec.msgpack.encode(raw))

    async def on_activate(self) -> None:
        try:
            self._kind, self._id = self._scope()
        except InvalidSubject:
            # Anyone may send to any subject the pattern matches: a key that names no scope is the
            # caller's mistake, answered (and passivated) by receive, never a crash of the activation
            # (crashes count towards the supervisor giving up on the whole service).
            self._bad_scope = BadPath(self.key, f"{self.key!r} is not a scope: {_SCOPES}")
            return
        interval = self._shared.sweep_interval
        if interval > 0:
            self.timer(interval, self._sweep, period=interval)

    def handle_now(self, msg: Message) -> bool:
        """The fast path (:meth:`actors.Actor.handle_now`): a request on a stream that is open
        now is started here, on the read loop, with no task and no turn; its reply is sent by the
        operation's completion callback. Anything else (a stream to open, a long poll, a refusal
        to explain, a scope at its in-flight limit) becomes a turn (:meth:`receive`)."""
        if self._bad_scope is not None:
            return False
        request = _decode(msg)
        if request is None or not isinstance(request, _FAST_OPS):
            return False
        if isinstance(request, ReadOp) and request.wait > 0:
            return False
        try:
            self._check(request)
            path = self._storage_path(request.stream)
        except PersistError:
            return False
        if not self._slots.take_nowait():
            return False
        lease = self._shared.store.lease_nowait(path)
        if lease is None:
            self._slots.give()
            return False
        self._used[path] = self.clock.now()
        self._start(msg, lease.file, request, _Hold(self._slots, lease))
        return True

    async def receive(self, msg: Message) -> Any:
        if self._bad_scope is not None:
            self.passivate()
            await _respond_failure(msg, self._bad_scope)
            return NO_REPLY
        try:
            request = _decode_or_raise(msg)
        except (msgspec.DecodeError, msgspec.ValidationError, PayloadError) as e:
            await respond_error(msg, BadRequest.code, f"bad persist request: {e}")
            return NO_REPLY
        try:
            self._check(request)
        except PersistError as e:
            await _respond_failure(msg, e)
            return NO_REPLY
        if isinstance(request, InventoryOp):
            self._spawn(msg, self._inventory(request))
            return NO_REPLY
        if isinstance(request, ResetOp):  # a quarantined stream cannot be leased: no lease, no slot
            self._spawn(msg, self._reset(request))
            return NO_REPLY
        if isinstance(request, ReadOp) and request.wait > 0 and self._waiters >= self._shared.max_waiters:
            await respond_error(msg, BUSY, f"persist {self.key}: {self._waiters} changefeed reads waiting")
            return NO_REPLY
        await self._slots.take()
        hold = _Hold(self._slots)
        try:
            path = self._storage_path(request.stream)
            create = isinstance(request, SetOp | SetManyOp | ConfigOp) or (
                isinstance(request, ReadOp) and request.wait > 0
            )
            file = await hold.lease(self._shared.store, path, self._new_config(request), create)
        except BaseException as e:
            hold.release()
            if isinstance(e, NotFound) and not isinstance(request, ConfigOp):
                await _respond(msg, _EMPTY[type(request)](request))
                return NO_REPLY
            if not isinstance(e, Exception):
                raise
            await _respond_failure(msg, e)
            return NO_REPLY
        self._used[path] = self.clock.now()
        if isinstance(request, ReadOp):
            self._spawn(msg, self._read(file, request, hold), hold)
        else:
            self._start(msg, file, request, hold)
        return NO_REPLY

    def _start(self, msg: Message, file: StreamFile, request: Request, hold: _Hold) -> None:
        """Start ``request`` on ``file`` now (a write is queued before this returns, so writes are
        queued in the order their requests arrived); the reply goes out when it is done."""
        answer = functools.partial(_answer, msg, hold)
        try:
            match request:
                case SetOp():
                    file.set_nowait(
                        request.payload,
                        key=request.key,
                        headers=request.headers,
                        encoding=request.encoding,
                        ttl=request.ttl,
                        msg_id=request.msg_id,
                        previous_seq=request.previous_seq,
                        done=answer,
                    )
                case SetManyOp():
                    file.set_many_nowait(request.writes, done=functools.partial(_answer_many, msg, hold))
                case GetOp():
                    file.get_nowait(seq=request.seq, key=request.key, done=answer)
                case DeleteOp():
                    file.delete_nowait(
                        seq=request.seq,
                        seqs=request.seqs,
                        up_to=request.up_to,
                        key=request.key,
                        msg_id=request.msg_id,
                        done=answer,
                    )
                case _:
                    self._spawn(msg, self._operate(file, request), hold)
        except Exception as e:  # noqa: BLE001 - a refusal before anything was queued
            hold.release()
            _fail_nowait(msg, e)

    # ---- operations (each in its own task, replying when done) -----------------------------------

    def _operate(self, file: StreamFile, request: Request) -> Awaitable[object]:
        """The awaitable of an operation that :meth:`_start` does not start by itself."""
        match request:
            case KeysOp():
                limit = min(request.limit, MAX_KEYS) if request.limit > 0 else request.limit
                return file.keys(after=request.after, limit=limit, max_bytes=self._shared.max_page_bytes)
            case ConfigOp():
                if request.changes is None:
                    return _ready(file.config())
                return file.set_config(request.changes)
            case ReadOp():
                max_msgs = min(request.max_msgs, self._shared.max_page_msgs)
                max_bytes = min(request.max_bytes, self._shared.max_page_bytes)
                return file.changes(
                    request.after_seq,
                    after_delete=request.after_delete,
                    stream_id=request.stream_id,
                    max_msgs=max_msgs,
                    max_bytes=max_bytes,
                )
        raise BadRequest("persist", f"unknown operation {type(request).__name__}")  # pragma: no cover

    async def _read(self, file: StreamFile, request: ReadOp, hold: _Hold) -> ChangePage:
        """A page after the request's cursor; with ``wait``, a long poll until there is one.

        While it waits it holds no lease and no in-flight slot (a thousand idle feeds must not
        pin a thousand open files, nor block writes): it waits on the store's change signal of the
        stream, taken before the page is read so no commit can slip between the two, and leases
        the stream again when woken.
        """
        wait = min(max(request.wait, 0.0), MAX_WAIT)
        max_msgs = min(request.max_msgs, self._shared.max_page_msgs)  # whatever the client asked
        max_bytes = min(request.max_bytes, self._shared.max_page_bytes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        store = self._shared.store
        path = self._storage_path(request.stream)
        task = asyncio.current_task()
        waiting = False
        after_delete, stream_id = request.after_delete, request.stream_id
        try:
            while True:
                with store.watching(path) as changed:
                    page = await file.changes(
                        request.after_seq,
                        after_delete=after_delete,
                        stream_id=stream_id,
                        max_msgs=max_msgs,
                        max_bytes=max_bytes,
                    )
                    left = deadline - loop.time()
                    if page.messages or page.deletes or page.resync or left <= 0:
                        return page
                    # a first read holds no delete cursor: from now on, deletes while it waits count
                    after_delete, stream_id = page.delete_cursor, page.stream_id
                    if not waiting and task is not None:
                        waiting = True
                        self._waiters += 1
                        self._shared.waiting.add(task)
                    hold.release()
                    try:
                        await asyncio.wait_for(asyncio.shield(changed), left)
                    except TimeoutError:
                        return page  # nothing changed: the empty page stands
                file = hold.lease_nowait(store, path) or await hold.lease(
                    store, path, self._new_config(request), True
                )
        finally:
            if waiting:
                self._waiters -= 1
                self._shared.waiting.discard(task)

    async def _reset(self, request: ResetOp) -> ResetResult:
        path = self._storage_path(request.stream)
        moved = await self._shared.store.reset(path, restore=request.restore)
        log.warning("stream %s reset%s; moved aside: %s", path, " from its archive" * request.restore, moved)
        return ResetResult(moved_aside=moved, restored=request.restore)

    async def _inventory(self, request: InventoryOp) -> list[StreamInventory]:
        """A page of the scope's streams (:mod:`persist._inventory`): bounded in names and opens."""
        if not isinstance(request.prefix, str) or request.limit < 1:
            raise BadRequest("inventory", "prefix must be a string and limit positive")
        placement, store = self._shared.placement, self._shared.store
        scope_dir = placement.path(StoragePath.of(self._kind, self._id, "x")).parent
        limit = min(request.limit, MAX_INVENTORY)
        names = await asyncio.to_thread(names_page, scope_dir, request.prefix, request.after, limit)
        out: list[StreamInventory] = []
        for name in names:
            try:
                path = self._storage_path(name)
                inventory, config = await store.inventory(path)
            except (NotFound, BadPath):  # gone meanwhile, or a name no stream may have
                continue
            except PersistError as e:  # one bad stream is listed as such; the others still are
                out.append(
                    StreamInventory(name=name, error=str(e.code), message=str(e), error_data=error_fields(e))
                )
                continue
            out.append(StreamInventory(name=name, inventory=inventory, config=msgspec.to_builtins(config)))
        return out

    # ---- plumbing --------------------------------------------------------------------------------

    def _storage_path(self, name: str) -> str:
        return _storage_path(self._kind, self._id, name)

    def _spawn(self, msg: Message, work: Awaitable[object], hold: _Hold | None = None) -> None:
        async def run() -> None:
            try:
                result = await work
            except asyncio.CancelledError:
                await respond_error(msg, UNAVAILABLE, "persist service stopping")
                raise
            except Exception as e:  # noqa: BLE001 - every failure becomes the caller's error reply
                await _respond_failure(msg, e)
            else:
                await _respond(msg, result)
            finally:
                if hold is not None:
                    hold.release()

        task = asyncio.get_running_loop().create_task(run(), name=f"persist {self.key} {msg.subject}")
        self._shared.tasks.add(task)
        task.add_done_callback(self._shared.tasks.discard)

    async def _sweep(self) -> None:
        horizon = self.clock.now() - self._shared.store.idle_close
        for path, used in list(self._used.items()):
            if used < horizon:
                del self._used[path]
                continue
            if not self._shared.store.is_open(path):
                continue
            try:
                async with self._shared.store.stream(path, create=False) as file:
                    await file.sweep()
            except ConatError as e:  # a refusal, a stopping store: the next round tries again
                log.warning("sweep of %s failed: %s", path, e)


class BootlogService(PersistService, subject="bootlog.*.*", idle=600.0, max_buffer=10_000):
    """The bootlogs, on their own subjects (``bootlog.project.<p>``, ``bootlog.host.<h>``).

    A bootlog is the stream ``bootlog`` of its project's (host's) scope, with the config
    :data:`BOOTLOG_CONFIG` (messages kept for an hour). It has its own subject because the auth
    policy grants a host's bootlog to the host's owners and collaborators, who may not use the
    host's persist scope; on it only writes and reads of that one stream are served.
    """

    def _scope(self) -> tuple[ScopeKind, str | None]:
        kind, _, ident = self.key.partition(".")
        if kind not in ("project", "host"):
            raise InvalidSubject(self.key, "bad-scope", field="scope")
        return parse_scope(f"{kind}-{ident}")

    def _new_config(self, request: Request) -> StreamConfig | None:
        return BOOTLOG_CONFIG

    def _check(self, request: Request | InventoryOp) -> None:
        if not isinstance(request, SetOp | ReadOp | GetOp) or request.stream != BOOTLOG_STREAM:
            raise BadRequest(
                "bootlog", f"only set, get and read of stream {BOOTLOG_STREAM!r} are served here"
            )

    def handle_now(self, msg: Message) -> bool:
        return not self._shared.forward_bootlogs and super().handle_now(msg)

    async def receive(self, msg: Message) -> Any:
        if not self._shared.forward_bootlogs:
            return await super().receive(msg)
        # partitioned workers: the scope's stream files belong to the worker of its partition, so
        # the bootlog (a stream of that scope) is written there, through the persist subject
        try:
            request = _decode_or_raise(msg)
            self._check(request)
            self._scope()  # the key names a scope
        except (msgspec.DecodeError, msgspec.ValidationError, PayloadError, InvalidSubject) as e:
            await respond_error(msg, BadRequest.code, f"bad bootlog request: {e}")
            return NO_REPLY
        except PersistError as e:
            await _respond_failure(msg, e)
            return NO_REPLY
        assert isinstance(request, SetOp | ReadOp | GetOp)
        if not isinstance(request, GetOp):
            request = msgspec.structs.replace(request, config=msgspec.to_builtins(BOOTLOG_CONFIG))
        scope = self.key.replace(".", "-", 1)
        wait = request.wait if isinstance(request, ReadOp) else 0.0
        self._spawn(msg, _forward(self.client, persist_scope(scope, "api"), request, wait))
        return NO_REPLY


_FAST_OPS: Final = (SetOp, SetManyOp, GetOp, DeleteOp, KeysOp, ReadOp)
"""The operations the fast path starts (a long-polling ``ReadOp`` excepted)."""


@functools.lru_cache(maxsize=4096)
def _storage_path(kind: ScopeKind, ident: str | None, name: str) -> str:
    """The storage path of a stream (validated once per name: every request names its stream)."""
    return str(StoragePath.of(kind, ident, name))


@functools.lru_cache(maxsize=256)
def _parse_config(raw: bytes) -> StreamConfig:
    """A requested config, parsed once (a client sends the same one with every write)."""
    return StreamConfig.from_dict(msgspec.msgpack.decode(raw))


async def _ready(value: object) -> object:
    return value


# What a read of a stream that does not exist answers (nothing to report; no file is created).
_EMPTY: Final[dict[type, Callable[[Any], object]]] = {
    GetOp: lambda r: None,
    KeysOp: lambda r: [],
    ReadOp: lambda r: ChangePage(messages=[], deletes=[], delete_cursor=0, last_seq=0, stream_id=""),
    DeleteOp: lambda r: DeleteResult(seqs=[]),
}
