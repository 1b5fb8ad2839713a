"""What the persist service's operations hold and how they answer.

The bookkeeping every activation shares (:class:`_Shared`: the store, the bounds, the tasks in
flight), the in-flight slots of a scope and what one operation holds (:class:`_Slots`,
:class:`_Hold`), and the replies: decoding a request, answering it (awaited or, from a completion
callback, without waiting), its failure as the error tree's reply, and a request relayed elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, final

import msgspec

from conat import (
    UNAVAILABLE,
    Client,
    ClosedError,
    ConatError,
    ErrorCode,
    Message,
    PayloadError,
    error_fields,
    error_reply,
    respond_error,
)

from ._config import StreamConfig
from ._engine import StreamFile
from ._errors import PersistError
from ._placement import Placement
from ._store import Lease, StreamStore
from ._wire import REQUEST_DECODER, InventoryOp, Request

log = logging.getLogger("persist.service")


class _Shared:
    """What every activation of the service shares: the store, placement, bounds and live tasks."""

    def __init__(
        self,
        store: StreamStore,
        placement: Placement,
        max_inflight: int,
        max_waiters: int,
        sweep: float,
        page: tuple[int, int],
    ) -> None:
        self.store = store
        self.placement = placement
        self.max_inflight = max_inflight
        self.max_waiters = max_waiters
        self.sweep_interval = sweep
        self.max_page_msgs, self.max_page_bytes = page
        self.tasks: set[asyncio.Task[None]] = set()
        self.waiting: set[asyncio.Task[Any]] = set()
        """Tasks of changefeed reads waiting for a change: a stop answers them at once (503)."""
        self.inflight = _InFlight()
        self.forward_bootlogs = False
        """Partitioned workers: bootlog requests go on to the persist subject (the scope's worker)."""


@final
class _InFlight:
    """Every operation of the service in flight (every scope's): a stop waits until none is left,
    since an operation started on the fast path has no task to wait for."""

    __slots__ = ("_drained", "count")

    def __init__(self) -> None:
        self.count = 0
        self._drained: asyncio.Future[None] | None = None

    def done(self) -> None:
        self.count -= 1
        if self.count == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drained(self) -> None:
        """Return once no operation is in flight."""
        if self.count > 0:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained


@final
class _Slots:
    """The operations of one scope in flight, at most ``limit``: a turn waits for a free slot,
    the fast path takes one only if one is free (else the message becomes a turn)."""

    __slots__ = ("_all", "_freed", "free")

    def __init__(self, limit: int, everywhere: _InFlight) -> None:
        self.free = limit
        self._all = everywhere
        self._freed: asyncio.Future[None] | None = None

    def take_nowait(self) -> bool:
        if self.free <= 0:
            return False
        self.free -= 1
        self._all.count += 1
        return True

    async def take(self) -> None:
        while self.free <= 0:
            if self._freed is None or self._freed.done():
                self._freed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._freed)
        self.free -= 1
        self._all.count += 1

    def give(self) -> None:
        self.free += 1
        self._all.done()
        freed, self._freed = self._freed, None
        if freed is not None and not freed.done():
            freed.set_result(None)


@final
class _Hold:
    """What one operation holds: an in-flight slot of its scope and a lease on its stream.

    Both are given back by :meth:`release` (idempotent); a waiting changefeed read releases them
    while it waits and leases the stream again (without a slot) if the file was closed meanwhile.
    """

    __slots__ = ("_lease", "_slots")

    def __init__(self, slots: _Slots, lease: Lease | None = None) -> None:
        self._slots: _Slots | None = slots
        self._lease = lease

    async def lease(
        self, store: StreamStore, path: str, config: StreamConfig | None, create: bool
    ) -> StreamFile:
        self._lease = await store.lease(path, config=config, create=create)
        return self._lease.file

    def lease_nowait(self, store: StreamStore, path: str) -> StreamFile | None:
        """The stream, if it is open now (no wait: the woken changefeed read's usual case)."""
        self._lease = store.lease_nowait(path)
        return None if self._lease is None else self._lease.file

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.give()
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()


# ---- replies -----------------------------------------------------------------------------------------


class _Relayed:
    """A reply relayed as it came (its bytes already the answer's msgpack)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


async def _forward(client: Client, subject: str, request: Request, wait: float) -> _Relayed:
    """Send ``request`` on to ``subject``; its answer, or its refusal raised as it came."""
    reply = await client.request(
        subject, msgspec.msgpack.encode(request), timeout=wait + 10.0, encoding="raw", wait_for_interest=True
    )
    return _Relayed(reply.raw)


async def _respond(msg: Message, result: object) -> None:
    if not msg.reply:
        return
    try:
        if isinstance(result, _Relayed):
            await msg.respond(result.raw, encoding="raw")
        else:
            await msg.respond(result)
    except ConatError as e:
        log.debug("could not answer %s: %s", msg.subject, e)


async def _respond_failure(msg: Message, error: Exception) -> None:
    if isinstance(error, ClosedError):
        await respond_error(msg, UNAVAILABLE, f"persist service stopping: {error}")
        return
    if not isinstance(error, ConatError):
        log.exception("persist operation on %s failed", msg.subject, exc_info=error)
    await respond_error(msg, *error_reply(error))


def _answer(msg: Message, hold: _Hold, outcome: object) -> None:
    """An operation's completion: give back what it held, then reply with its outcome."""
    hold.release()
    if isinstance(outcome, Exception):
        _fail_nowait(msg, outcome)
    elif msg.reply:
        try:
            msg.respond_nowait(outcome)
        except ConatError as e:
            log.debug("could not answer %s: %s", msg.subject, e)


def _answer_many(msg: Message, hold: _Hold, outcomes: list[object] | PersistError) -> None:
    """A ``set_many``'s completion: each write's result, or its refusal as an error entry (the
    transaction's failure is one error for the request)."""
    if isinstance(outcomes, PersistError):
        _answer(msg, hold, outcomes)
        return
    out: list[Any] = []
    for result in outcomes:
        if isinstance(result, PersistError):
            out.append({"error": result.code, "message": str(result), "data": error_fields(result)})
        else:
            out.append(result)
    _answer(msg, hold, out)


def _fail_nowait(msg: Message, error: Exception) -> None:
    """:func:`_respond_failure` without waiting."""
    if not msg.reply:
        return
    code: ErrorCode
    data: Mapping[str, Any] | None
    if isinstance(error, ClosedError):
        code, text, data = UNAVAILABLE, f"persist service stopping: {error}", None
    else:
        if not isinstance(error, ConatError):
            log.error("persist operation on %s failed", msg.subject, exc_info=error)
        code, text, data = error_reply(error)
    try:
        msg.respond_error_nowait(code, text, data=data)
    except ConatError as e:
        log.debug("could not answer %s: %s", msg.subject, e)


def _decode_or_raise(msg: Message) -> Request | InventoryOp:
    """The request in ``msg``. conat's own clients send msgpack (unlabelled, or labelled "raw");
    any other codec is honoured.

    Raises:
        msgspec.DecodeError, msgspec.ValidationError, PayloadError: it is not a persist request.
    """
    if msg.encoding in ("msgpack", "raw"):
        return REQUEST_DECODER.decode(msg.raw)
    return msg.decode(Request)  # type: ignore[arg-type]


def _decode(msg: Message) -> Request | InventoryOp | None:
    """:func:`_decode_or_raise`, or ``None`` (the turn that follows explains the refusal)."""
    try:
        return _decode_or_raise(msg)
    except (msgspec.DecodeError, msgspec.ValidationError, PayloadError):
        return None
