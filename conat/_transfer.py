"""Chunked transfers over the bus: the asyncio pump around :mod:`conat._chunking`.

The sender side answers pull requests that arrive in its inbox; the receiver side pulls a
transfer's chunks in pipelined windows (two windows in flight hide the round trip), re-pulls what
is missing after an idle gap, and gives up at the reassembly deadline. See ``_chunking`` for the
protocol and why it pulls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ._chunking import (
    CHUNK_HEADER,
    CHUNKED_HEADER,
    PULL_HEADER,
    ChunkHead,
    ChunkRef,
    OutgoingTransfers,
    PullRequest,
    Reassembly,
    ReassemblyBudget,
)
from ._errors import ConatError, PayloadError, RemoteError, Timeout
from ._message import ERROR_HEADER, REPLY_HEADER, Message, parse_error_code

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["TransferEngine"]

log = logging.getLogger("conat.transfer")

WINDOW_BYTES: Final = 8 * 1024 * 1024
IDLE_REPULL: Final = 3.0
MAX_REPULLS: Final = 5
GONE: Final = 410


class TransferEngine:
    """Both halves of chunked transfer for one client."""

    def __init__(
        self, client: Client, *, max_reassembly_bytes: int, max_outgoing_bytes: int, timeout: float
    ) -> None:
        self._client = client
        self.timeout = timeout
        self.outgoing = OutgoingTransfers(max_bytes=max_outgoing_bytes, ttl=timeout)
        self.budget = ReassemblyBudget(max_reassembly_bytes)

    # -- sender ----------------------------------------------------------------------------
    def add_outgoing(self, payload: bytes, chunk_size: int) -> ChunkHead:
        return self.outgoing.add(self._client._transport.new_token(), payload, chunk_size)

    async def serve_pull(self, header: str, reply: str) -> None:
        client = self._client
        try:
            pull = PullRequest.parse(header)
        except PayloadError as e:
            if reply:
                await client._publish_control(reply, {ERROR_HEADER: "400"}, str(e).encode())
            return
        chunks = self.outgoing.chunks(pull)
        if chunks is None:
            await client._publish_control(
                reply, {ERROR_HEADER: str(GONE)}, f"transfer {pull.transfer_id} is gone".encode()
            )
            return
        for index, data in chunks:
            await client._transport.publish(
                reply, data, headers={CHUNK_HEADER: ChunkRef(pull.transfer_id, index).header()}
            )

    # -- receiver --------------------------------------------------------------------------
    def start_incoming(
        self, subject: str, source: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[Message]:
        """Begin pulling a transfer whose head just arrived; the future yields the whole message."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        try:
            head = ChunkHead.parse(headers[CHUNKED_HEADER])
            self.budget.reserve(head.total_size)
        except ConatError as e:
            future.set_exception(e)
            future.exception()  # the consumer may never look; don't warn about it
            user_reply = headers.get(REPLY_HEADER, "")
            if user_reply:
                self._client._spawn(
                    self._client._publish_control(user_reply, {ERROR_HEADER: str(e.code)}, str(e).encode())
                )
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
                    future.set_result(Message(subject, reply, payload, headers, self._client))
            finally:
                self.budget.release(head.total_size)

        task = self._client._spawn(run())
        # Whoever waits may give up (cancel, deadline): then stop pulling at once.
        future.add_done_callback(lambda f: None if task.done() else task.cancel())
        return future

    async def _pull(self, head: ChunkHead, source: str, first: bytes) -> bytes:
        client = self._client
        assembly = Reassembly(head)
        assembly.add(0, first)
        if assembly.complete:
            return assembly.payload()
        queue: asyncio.Queue[tuple[int, bytes] | ConatError] = asyncio.Queue()
        token, inbox = client._open_route(_chunk_route(queue, head.transfer_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        window = max(1, WINDOW_BYTES // head.chunk_size)
        requested = 1
        repulls = 0

        async def pull(first_index: int, count: int) -> None:
            hdr = {PULL_HEADER: PullRequest(head.transfer_id, first_index, count).header()}
            await client._transport.publish(source, b"", reply=inbox, headers=hdr)

        try:
            while requested < head.count and requested < 1 + 2 * window:
                n = min(window, head.count - requested)
                await pull(requested, n)
                requested += n
            while not assembly.complete:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Timeout(source, self.timeout, what="chunked transfer")
                try:
                    async with asyncio.timeout(min(remaining, IDLE_REPULL)):
                        item = await queue.get()
                except TimeoutError:
                    repulls += 1
                    missing = assembly.missing(limit=1)
                    if repulls > MAX_REPULLS or not missing:
                        elapsed = loop.time() - (deadline - self.timeout)
                        raise Timeout(source, elapsed, "chunked transfer") from None
                    await pull(missing[0], requested - missing[0])
                    continue
                if isinstance(item, ConatError):
                    raise item
                index, data = item
                assembly.add(index, data)
                # Keep two windows in flight: ask for the next one when one window is left.
                if requested < head.count and requested - assembly.received <= window:
                    n = min(window, head.count - requested)
                    await pull(requested, n)
                    requested += n
            return assembly.payload()
        finally:
            client._close_route(token)


def _chunk_route(
    queue: asyncio.Queue[tuple[int, bytes] | ConatError], transfer_id: str
) -> Callable[[str, str, bytes, dict[str, str] | None], None]:
    def route(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        if not headers:
            return
        if ERROR_HEADER in headers:
            code = parse_error_code(headers[ERROR_HEADER])
            queue.put_nowait(RemoteError(code, data.decode(errors="replace"), subject))
            return
        value = headers.get(CHUNK_HEADER)
        if value is None:
            return
        try:
            ref = ChunkRef.parse(value)
        except PayloadError as e:
            queue.put_nowait(e)
            return
        if ref.transfer_id == transfer_id:
            queue.put_nowait((ref.index, data))

    return route
