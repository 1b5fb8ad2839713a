"""Chunked transfers over the bus: the asyncio pump around :mod:`conat._chunking`.

The sender side answers pull requests that arrive in its inbox, frees a transfer when its
receivers say they are finished (or when nats-server says nobody got its head), and runs one timer
for what lingers. The receiver side pulls a transfer's chunks in pipelined windows (two windows in
flight hide the round trip), stores each chunk as it arrives (straight from the read loop, so
nothing queues up unbounded), re-pulls what is missing after an idle gap, and gives up at once when
the sender is gone (a 503 answer to a pull), after :data:`MAX_STALLS` idle gaps in a row, or at the
transfer deadline. Whatever the outcome, it tells the sender it has finished. See ``_chunking`` for
the protocol and why it pulls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from ._chunking import (
    ChunkHead,
    ChunkRef,
    OutgoingTransfers,
    PullRequest,
    Reassembly,
    ReassemblyBudget,
    Receivers,
    reassembly_cost,
)
from ._codecs import MSGPACK, Codec
from ._errors import BAD_REQUEST, ClosedError, ConatError, Disconnected, NoResponders, PayloadError, Timeout
from ._headers import (
    CHUNK_HEADER,
    CHUNKED_HEADER,
    PULL_HEADER,
    REPLY_HEADER,
    STATUS_HEADER,
    error_from_headers,
    error_headers,
)
from ._message import Message

if TYPE_CHECKING:
    from ._core import ClientCore

__all__ = ["TransferEngine"]

log = logging.getLogger("conat.transfer")

WINDOW_BYTES: Final = 8 * 1024 * 1024
IDLE_REPULL: Final = 3.0
MAX_STALLS: Final = 3
"""Idle gaps (of :data:`IDLE_REPULL` s, each followed by a re-pull) in a row before giving up."""
GONE: Final = 410


def _now() -> float:
    """The event loop's monotonic time (:class:`~conat.SystemClock`'s), which the timer runs on."""
    return asyncio.get_running_loop().time()


class TransferEngine:
    """Both halves of chunked transfer for one client."""

    def __init__(
        self, core: ClientCore, *, max_reassembly_bytes: int, max_outgoing_bytes: int, timeout: float
    ) -> None:
        self._core = core
        self.timeout = timeout
        self.outgoing = OutgoingTransfers(
            max_bytes=max_outgoing_bytes, ttl=timeout, on_release=self._released
        )
        self.budget = ReassemblyBudget(max_reassembly_bytes)
        self._sources: dict[str, str] = {}  # inbox token of a publish's source -> its transfer id
        self._source_of: dict[str, str] = {}  # and back
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._incoming: set[_Incoming] = set()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def disconnected(self) -> None:
        """The link dropped: chunks on their way are lost, so every transfer being pulled fails."""
        for incoming in list(self._incoming):
            incoming.fail(Disconnected(incoming.source, 0.0, "chunked transfer"))

    # -- sender ----------------------------------------------------------------------------
    def add_outgoing(
        self, transfer_id: str, payload: bytes, chunk_size: int, receivers: Receivers
    ) -> ChunkHead:
        head = self.outgoing.add(transfer_id, payload, chunk_size, receivers, now=_now())
        self._schedule()
        return head

    def watch_source(self, transfer_id: str, token: str) -> None:
        """Remember that inbox ``token`` is the source of ``transfer_id`` (see :meth:`no_interest`)."""
        self._sources[token] = transfer_id
        self._source_of[transfer_id] = token

    def no_interest(self, token: str) -> None:
        """nats-server answered source ``token`` with 503: nobody got the head, so free it now."""
        transfer_id = self._sources.get(token)
        if transfer_id is not None:
            self.outgoing.no_interest(transfer_id)

    def _released(self, transfer_id: str) -> None:
        token = self._source_of.pop(transfer_id, None)
        if token is not None:
            del self._sources[token]

    def _schedule(self) -> None:
        """Keep one timer at the next moment :meth:`OutgoingTransfers.expire` has work."""
        at = self.outgoing.next_expiry()
        if at is None or (self._timer is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.outgoing.expire(_now())
        self._schedule()

    async def serve_pull(self, header: str, reply: str) -> None:
        core = self._core
        try:
            pull = PullRequest.parse(header)
        except PayloadError as e:
            await core.publish_control(reply, *error_headers(BAD_REQUEST, str(e)))
            return
        chunks = self.outgoing.chunks(pull, reply, now=_now())
        if pull.finished:
            self._schedule()
            return
        if chunks is None:
            await core.publish_control(reply, *error_headers(GONE, f"transfer {pull.transfer_id} is gone"))
            return
        for index, data in chunks:
            await core.transport.publish(
                reply, data, headers={CHUNK_HEADER: ChunkRef(pull.transfer_id, index).header()}
            )

    # -- receiver --------------------------------------------------------------------------
    def start_incoming(
        self,
        subject: str,
        source: str,
        data: bytes,
        headers: dict[str, str],
        default: Codec = MSGPACK,
    ) -> asyncio.Future[Message]:
        """Begin pulling a transfer whose head just arrived; the future yields the whole message
        (``default``: the codec of a body without ``Conat-Encoding``, the subscription's).

        Cancelling the future stops the pulling at once.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        core = self._core
        head: ChunkHead | None = None
        try:
            head = ChunkHead.parse(headers[CHUNKED_HEADER])
            if not source and head.count > 1:
                raise PayloadError("decode", "chunked", "a chunked head without a reply subject to pull from")
            cost = reassembly_cost(head)
            self.budget.reserve(cost)
        except ConatError as e:
            future.set_exception(e)
            future.exception()  # the consumer may never look; don't warn about it
            user_reply = headers.get(REPLY_HEADER, "")
            if user_reply:
                core.spawn(core.publish_control(user_reply, *error_headers(e.code, str(e))))
            if head is not None and source:  # refused for its size: the sender may free it now
                done = PullRequest(head.transfer_id, head.count, 0)
                core.spawn(self._finished(source, done, core.new_inbox_subject()))
            return future

        async def run() -> None:
            try:
                payload = await self._pull(head, source, data)
            except BaseException as e:
                if not future.done():
                    future.set_exception(e if isinstance(e, Exception) else ConatError("transfer cancelled"))
                    future.exception()
                if not isinstance(e, Exception):
                    raise
            else:
                if not future.done():
                    reply = headers.get(REPLY_HEADER, "")
                    future.set_result(Message(subject, reply, payload, headers, core.client, default))
            finally:
                self.budget.release(cost)

        task = core.spawn(run())
        # Whoever waits may give up (cancel, deadline): then stop pulling at once.
        future.add_done_callback(lambda f: None if task.done() else task.cancel())
        return future

    async def _pull(self, head: ChunkHead, source: str, first: bytes) -> bytes:
        core = self._core
        incoming = _Incoming(head, source)
        incoming.assembly.add(0, first)
        if incoming.assembly.complete:
            return incoming.assembly.payload()
        token, inbox = core.open_route(incoming)
        self._incoming.add(incoming)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout
        window = max(1, WINDOW_BYTES // head.chunk_size)
        assembly = incoming.assembly
        requested = 1
        stalls = 0
        sender_gone = False

        async def pull(first_index: int, count: int) -> None:
            hdr = {PULL_HEADER: PullRequest(head.transfer_id, first_index, count).header()}
            await core.transport.publish(source, b"", reply=inbox, headers=hdr)

        try:
            while requested < head.count and requested < 1 + 2 * window:
                n = min(window, head.count - requested)
                await pull(requested, n)
                requested += n
            while not assembly.complete:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Timeout(source, loop.time() - started, "chunked transfer")
                before = assembly.received
                await incoming.wait(min(remaining, IDLE_REPULL))
                if incoming.error is not None:
                    sender_gone = isinstance(incoming.error, NoResponders)
                    raise incoming.error
                if assembly.received == before:
                    stalls += 1
                    missing = assembly.missing(limit=1)
                    if stalls >= MAX_STALLS or not missing:
                        raise Timeout(source, loop.time() - started, "chunked transfer")
                    await pull(missing[0], requested - missing[0])
                    continue
                stalls = 0
                # Keep two windows in flight: ask for the next one when one window is left.
                if requested < head.count and requested - assembly.received <= window:
                    n = min(window, head.count - requested)
                    await pull(requested, n)
                    requested += n
            return assembly.payload()
        finally:
            core.close_route(token)
            self._incoming.discard(incoming)
            if not sender_gone and not core.closing:
                core.spawn(self._finished(source, PullRequest(head.transfer_id, head.count, 0), inbox))

    async def _finished(self, source: str, done: PullRequest, inbox: str) -> None:
        """Tell the sender we are done with a transfer (best effort: it expires anyway)."""
        try:
            await self._core.transport.publish(source, b"", reply=inbox, headers={PULL_HEADER: done.header()})
        except ClosedError:
            pass
        except ConatError as e:
            log.debug("could not tell %s that transfer %s is finished: %s", source, done.transfer_id, e)


class _Incoming:
    """The route of one transfer's pull inbox: stores chunks as they come, straight from the read loop.

    ``fail`` (the client closes, the link drops) and a 503 or error answer end it at once.
    """

    __slots__ = ("assembly", "error", "source", "transfer_id", "waiter")

    def __init__(self, head: ChunkHead, source: str) -> None:
        self.assembly = Reassembly(head)
        self.transfer_id = head.transfer_id
        self.source = source
        self.error: ConatError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def __call__(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        if self.error is not None or not headers:
            return
        if headers.get(STATUS_HEADER) == "503":  # nobody listens on the source: the sender is gone
            self.fail(NoResponders(self.source))
            return
        error = error_from_headers(headers, data, self.source)
        if error is not None:
            self.fail(error)
            return
        value = headers.get(CHUNK_HEADER)
        if value is None:
            return
        try:
            ref = ChunkRef.parse(value)
            if ref.transfer_id == self.transfer_id:
                self.assembly.add(ref.index, data)
        except PayloadError as e:
            self.fail(e)
            return
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error if isinstance(error, ConatError) else ConatError(str(error))
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Wait until a chunk or an error arrives, or ``timeout`` seconds pass."""
        if self.error is not None:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self.waiter = None
