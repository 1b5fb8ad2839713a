"""Chunked transfer of payloads larger than the server's max_payload: the pure protocol.

Theory of operation
-------------------
A payload that does not fit in one NATS message travels as a *transfer*, pulled by its receiver:

1. The sender keeps the payload in :class:`OutgoingTransfers` and publishes a **head**: the first
   chunk, with header ``Conat-Chunked: <id> <total> <chunk_size> <count>`` and, as the NATS reply
   subject, a *source* subject in the sender's own inbox.
2. Whoever receives the head (one member of a queue group, or every plain subscriber) reserves
   ``total`` bytes in its :class:`ReassemblyBudget` (refusing the transfer if the cap would be
   exceeded) and pulls the remaining chunks in windows: a request to the source with header
   ``Conat-Pull: <id> <first> <count>``, answered by one message per chunk carrying
   ``Conat-Chunk: <id> <index>``.
3. :class:`Reassembly` collects chunks in any order, ignores duplicates, and yields the payload.

Why pull rather than push: a queue group hands each NATS message to a different member, so pushed
chunks would scatter; pulling lets exactly the member that got the head fetch the rest. It also
gives flow control for free (the receiver never has more than a few windows in flight), and it
only ever *answers* messages, which is what NATS response permissions allow between principals.

This module does no I/O and reads time only through the injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, final

from ._errors import PayloadError, PayloadTooLarge

__all__ = [
    "CHUNKED_HEADER",
    "CHUNK_HEADER",
    "PULL_HEADER",
    "ChunkHead",
    "ChunkRef",
    "OutgoingTransfers",
    "OutgoingTransfersStatistics",
    "PullRequest",
    "Reassembly",
    "ReassemblyBudget",
    "chunk_count",
]

CHUNKED_HEADER: Final = "Conat-Chunked"
PULL_HEADER: Final = "Conat-Pull"
CHUNK_HEADER: Final = "Conat-Chunk"

Clock = Callable[[], float]


def chunk_count(total_size: int, chunk_size: int) -> int:
    """How many chunks ``total_size`` bytes need (at least one, so an empty payload is one chunk)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return max(1, -(-total_size // chunk_size))


def _ints(value: str, n: int, header: str) -> tuple[str, list[int]]:
    parts = value.split()
    if len(parts) != n + 1:
        raise PayloadError("decode", "chunked", f"malformed {header} header {value!r}")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise PayloadError("decode", "chunked", f"malformed {header} header {value!r}") from None
    if any(x < 0 for x in numbers):
        raise PayloadError("decode", "chunked", f"negative number in {header} header {value!r}")
    return parts[0], numbers


@final
@dataclass(frozen=True, slots=True)
class ChunkHead:
    """Describes one transfer; travels in the head message's ``Conat-Chunked`` header."""

    transfer_id: str
    total_size: int
    chunk_size: int
    count: int

    def header(self) -> str:
        return f"{self.transfer_id} {self.total_size} {self.chunk_size} {self.count}"

    @classmethod
    def parse(cls, value: str) -> ChunkHead:
        tid, (total, size, count) = _ints(value, 3, CHUNKED_HEADER)
        if size <= 0 or count != chunk_count(total, size):
            raise PayloadError("decode", "chunked", f"inconsistent {CHUNKED_HEADER} header {value!r}")
        return cls(tid, total, size, count)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.total_size)


@final
@dataclass(frozen=True, slots=True)
class PullRequest:
    """A receiver's request for chunks ``first .. first+count-1`` of a transfer."""

    transfer_id: str
    first: int
    count: int

    def header(self) -> str:
        return f"{self.transfer_id} {self.first} {self.count}"

    @classmethod
    def parse(cls, value: str) -> PullRequest:
        tid, (first, count) = _ints(value, 2, PULL_HEADER)
        return cls(tid, first, count)


@final
@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Which transfer and index a chunk message carries (its ``Conat-Chunk`` header)."""

    transfer_id: str
    index: int

    def header(self) -> str:
        return f"{self.transfer_id} {self.index}"

    @classmethod
    def parse(cls, value: str) -> ChunkRef:
        tid, (index,) = _ints(value, 1, CHUNK_HEADER)
        return cls(tid, index)


@final
@dataclass(frozen=True, slots=True)
class OutgoingTransfersStatistics:
    transfers: int
    bytes_held: int
    max_bytes: int
    started: int
    expired: int


@dataclass(slots=True)
class _Outgoing:
    head: ChunkHead
    payload: memoryview
    expires: float


@final
class OutgoingTransfers:
    """Payloads a sender holds until their receivers have pulled them (or they expire).

    A transfer lives ``ttl`` seconds after its last pull: a fan-out to several subscribers can
    pull the same payload more than once, and the sender cannot know how many will. Memory held
    is capped by ``max_bytes``; :meth:`add` refuses with :class:`PayloadTooLarge` beyond it.
    """

    def __init__(self, *, max_bytes: int, ttl: float, clock: Clock = time.monotonic) -> None:
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._clock = clock
        self._transfers: dict[str, _Outgoing] = {}
        self._bytes = 0
        self._started = 0
        self._expired = 0

    def add(self, transfer_id: str, payload: bytes, chunk_size: int) -> ChunkHead:
        self.expire()
        size = len(payload)
        if self._bytes + size > self._max_bytes:
            raise PayloadTooLarge(size, self._max_bytes - self._bytes, "outgoing chunked payload")
        head = ChunkHead(transfer_id, size, chunk_size, chunk_count(size, chunk_size))
        self._transfers[transfer_id] = _Outgoing(head, memoryview(payload), self._clock() + self._ttl)
        self._bytes += size
        self._started += 1
        return head

    def chunks(self, pull: PullRequest) -> list[tuple[int, memoryview]] | None:
        """The requested chunks (clipped to the transfer), or ``None`` if it is unknown or expired."""
        out = self._transfers.get(pull.transfer_id)
        if out is None or out.expires < self._clock():
            return None
        out.expires = self._clock() + self._ttl
        head = out.head
        last = min(pull.first + pull.count, head.count)
        result = []
        for index in range(pull.first, last):
            start, end = head.bounds(index)
            result.append((index, out.payload[start:end]))
        return result

    def first_chunk(self, transfer_id: str) -> memoryview:
        out = self._transfers[transfer_id]
        start, end = out.head.bounds(0)
        return out.payload[start:end]

    def discard(self, transfer_id: str) -> None:
        out = self._transfers.pop(transfer_id, None)
        if out is not None:
            self._bytes -= out.head.total_size

    def expire(self) -> int:
        now = self._clock()
        dead = [tid for tid, out in self._transfers.items() if out.expires < now]
        for tid in dead:
            self.discard(tid)
        self._expired += len(dead)
        return len(dead)

    def __len__(self) -> int:
        return len(self._transfers)

    def statistics(self) -> OutgoingTransfersStatistics:
        return OutgoingTransfersStatistics(
            len(self._transfers), self._bytes, self._max_bytes, self._started, self._expired
        )


@final
class ReassemblyBudget:
    """A memory cap shared by every transfer a client is receiving at once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.reserved = 0

    def reserve(self, size: int) -> None:
        if size > self.max_bytes - self.reserved:
            raise PayloadTooLarge(size, self.max_bytes - self.reserved, "chunked payload (reassembly cap)")
        self.reserved += size

    def release(self, size: int) -> None:
        self.reserved = max(0, self.reserved - size)


@final
@dataclass(slots=True)
class Reassembly:
    """Collects one transfer's chunks in any order; duplicates are ignored, sizes are checked."""

    head: ChunkHead
    _buffer: bytearray = field(init=False)
    _have: bytearray = field(init=False)
    received: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._buffer = bytearray(self.head.total_size)
        self._have = bytearray(self.head.count)

    def add(self, index: int, data: bytes | memoryview) -> bool:
        """Store chunk ``index``; return True once every chunk is here."""
        head = self.head
        if not 0 <= index < head.count:
            raise PayloadError("decode", "chunked", f"chunk index {index} outside 0..{head.count - 1}")
        start, end = head.bounds(index)
        if len(data) != end - start:
            raise PayloadError(
                "decode", "chunked", f"chunk {index} has {len(data)} bytes, expected {end - start}"
            )
        if not self._have[index]:
            self._buffer[start:end] = data
            self._have[index] = 1
            self.received += 1
        return self.complete

    @property
    def complete(self) -> bool:
        return self.received == self.head.count

    def missing(self, first: int = 0, limit: int | None = None) -> list[int]:
        out = []
        for index in range(first, self.head.count):
            if not self._have[index]:
                out.append(index)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def payload(self) -> bytes:
        if not self.complete:
            raise PayloadError("decode", "chunked", "transfer is incomplete")
        return bytes(self._buffer)
