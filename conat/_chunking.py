"""Chunked transfer of payloads larger than the server's max_payload: the pure protocol.

Theory of operation
-------------------
A payload that does not fit in one NATS message (headers included) travels as a *transfer*,
pulled by its receiver:

1. The sender keeps the payload in :class:`OutgoingTransfers` and publishes a **head**: the first
   chunk, with header ``Conat-Chunked: <id> <total> <chunk_size> <count>`` and, as the NATS reply
   subject, a *source* subject in the sender's own inbox. If nobody receives the head, nats-server
   answers the source with a 503 status and the sender drops the transfer at once.
2. Whoever receives the head (one member of a queue group, or every plain subscriber) checks it
   (:meth:`ChunkHead.parse`: chunks of at least :data:`MIN_CHUNK_SIZE` bytes, a count that matches
   the total), charges everything the transfer will hold to its :class:`ReassemblyBudget`
   (:func:`reassembly_cost`: the payload *and* the per-chunk bookkeeping), refusing it if the cap
   would be exceeded, and pulls the remaining chunks in windows: a request to the source with
   header ``Conat-Pull: <id> <first> <count>``, answered by one message per chunk carrying
   ``Conat-Chunk: <id> <index>``. A 503 answer to a pull means the sender is gone: the transfer
   ends at once.
3. :class:`Reassembly` collects chunks in any order, ignores duplicates, and yields the payload.
4. The receiver then sends ``Conat-Pull: <id> <count> 0`` (a pull of nothing: "finished"), also
   when it gives up. A transfer with a single receiver (a reply) is freed at that signal; one that
   may have several (a publish, a request) once every receiver that pulled has finished and
   :data:`LINGER` seconds passed without a pull, so that a slower subscriber of a fan-out can still
   start. Under memory pressure finished transfers are freed first. One that nobody finishes is
   dropped ``ttl`` seconds after its last pull.

Why pull rather than push: a queue group hands each NATS message to a different member, so pushed
chunks would scatter; pulling lets exactly the member that got the head fetch the rest. It also
gives flow control for free (the receiver never has more than a few windows in flight), and it
only ever *answers* messages, which is what NATS response permissions allow between principals.

This module does no I/O and keeps no clock: every method that needs the time takes ``now``
(seconds on the caller's monotonic clock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, final

from ._errors import PayloadError, PayloadTooLarge
from ._headers import CHUNK_HEADER, CHUNKED_HEADER, PULL_HEADER

__all__ = [
    "CHUNKED_HEADER",
    "CHUNK_HEADER",
    "LINGER",
    "MAX_PULL_BYTES",
    "MIN_CHUNK_SIZE",
    "PULL_HEADER",
    "ChunkHead",
    "ChunkRef",
    "OutgoingTransfers",
    "OutgoingTransfersStatistics",
    "PullRequest",
    "Reassembly",
    "ReassemblyBudget",
    "Receivers",
    "chunk_count",
    "reassembly_cost",
]

Receivers = Literal["one", "many"]

MIN_CHUNK_SIZE: Final = 1024
"""The smallest chunk a receiver accepts: tiny chunks would make bookkeeping outweigh the data."""
MAX_PULL_BYTES: Final = 16 * 1024 * 1024
"""A sender answers one pull with at most this many bytes of chunks (receivers ask for 8 MiB)."""
LINGER: Final = 3.0
"""Seconds a finished transfer with possibly several receivers waits for late ones before it goes."""
CHUNK_COST: Final = 96
"""Bytes of bookkeeping charged per chunk on top of its data (a list slot and a bytes object)."""
TRANSFER_COST: Final = 1024
"""Bytes charged per transfer for its fixed state."""
_MAX_ID: Final = 64


def chunk_count(total_size: int, chunk_size: int) -> int:
    """How many chunks ``total_size`` bytes need (at least one, so an empty payload is one chunk)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return max(1, -(-total_size // chunk_size))


def _ints(value: str, n: int, header: str) -> tuple[str, list[int]]:
    parts = value.split()
    if len(parts) != n + 1 or len(parts[0]) > _MAX_ID:
        raise PayloadError("decode", "chunked", f"malformed {header} header {value[:200]!r}")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise PayloadError("decode", "chunked", f"malformed {header} header {value[:200]!r}") from None
    if any(x < 0 for x in numbers):
        raise PayloadError("decode", "chunked", f"negative number in {header} header {value[:200]!r}")
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
        """Parse and check a head: the receiver trusts nothing a sender declares.

        Raises:
            PayloadError: (400) malformed, chunks under :data:`MIN_CHUNK_SIZE`, or a count that
                does not match ``total / chunk_size``.
        """
        tid, (total, size, count) = _ints(value, 3, CHUNKED_HEADER)
        if size < MIN_CHUNK_SIZE:
            raise PayloadError(
                "decode", "chunked", f"chunk size {size} in {CHUNKED_HEADER} is under {MIN_CHUNK_SIZE} bytes"
            )
        if count != chunk_count(total, size):
            raise PayloadError("decode", "chunked", f"inconsistent {CHUNKED_HEADER} header {value!r}")
        return cls(tid, total, size, count)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.total_size)


def reassembly_cost(head: ChunkHead) -> int:
    """Every byte receiving ``head``'s transfer holds at once: payload, per-chunk and fixed state."""
    return head.total_size + head.count * CHUNK_COST + TRANSFER_COST


@final
@dataclass(frozen=True, slots=True)
class PullRequest:
    """A receiver's request for chunks ``first .. first+count-1``; ``count == 0`` means finished."""

    transfer_id: str
    first: int
    count: int

    def header(self) -> str:
        return f"{self.transfer_id} {self.first} {self.count}"

    @property
    def finished(self) -> bool:
        return self.count == 0

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
    completed: int
    expired: int


@dataclass(slots=True)
class _Outgoing:
    head: ChunkHead
    payload: memoryview
    receivers: Receivers
    last_activity: float
    pullers: dict[str, bool] = field(default_factory=dict)
    """Each receiver (by the reply subject of its pulls): whether it has finished."""

    @property
    def complete(self) -> bool:
        return bool(self.pullers) and all(self.pullers.values())


@final
class OutgoingTransfers:
    """Payloads a sender holds until their receivers have pulled them (module docstring, step 4).

    Memory held is capped by ``max_bytes``: :meth:`add` first frees finished transfers that are
    still lingering, then refuses with :class:`PayloadTooLarge`. ``on_release(transfer_id)`` is
    called for every transfer that goes, however it goes.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        ttl: float,
        linger: float = LINGER,
        on_release: Callable[[str], object] | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._linger = linger
        self._on_release = on_release
        self._transfers: dict[str, _Outgoing] = {}
        self._bytes = 0
        self._started = 0
        self._completed = 0
        self._expired = 0

    def add(
        self, transfer_id: str, payload: bytes, chunk_size: int, receivers: Receivers = "many", *, now: float
    ) -> ChunkHead:
        """Hold ``payload`` for pulls; ``receivers="one"`` frees it when its receiver finishes."""
        self.expire(now)
        size = len(payload)
        if self._bytes + size > self._max_bytes:
            self._evict_complete(self._bytes + size - self._max_bytes)
        if self._bytes + size > self._max_bytes:
            raise PayloadTooLarge(size, self._max_bytes - self._bytes, "outgoing chunked payload")
        head = ChunkHead(transfer_id, size, chunk_size, chunk_count(size, chunk_size))
        self._transfers[transfer_id] = _Outgoing(head, memoryview(payload), receivers, now)
        self._bytes += size
        self._started += 1
        return head

    def chunks(self, pull: PullRequest, puller: str, *, now: float) -> list[tuple[int, memoryview]] | None:
        """The chunks ``puller`` asked for (clipped to the transfer and to :data:`MAX_PULL_BYTES`),
        or ``None`` if the transfer is unknown or expired. A finishing pull returns ``[]``."""
        out = self._transfers.get(pull.transfer_id)
        if out is None or out.last_activity + self._ttl < now:
            return None
        out.last_activity = now
        if pull.finished:
            self._finish(out, puller)
            return []
        out.pullers.setdefault(puller, False)
        head = out.head
        limit = max(1, MAX_PULL_BYTES // head.chunk_size)
        last = min(pull.first + min(pull.count, limit), head.count)
        result = []
        for index in range(pull.first, last):
            start, end = head.bounds(index)
            result.append((index, out.payload[start:end]))
        return result

    def _finish(self, out: _Outgoing, puller: str) -> None:
        out.pullers[puller] = True
        if out.receivers == "one":
            self._release(out.head.transfer_id, completed=True)

    def no_interest(self, transfer_id: str) -> None:
        """The head reached nobody (nats-server answered its source with 503): free it now."""
        out = self._transfers.get(transfer_id)
        if out is not None and not out.pullers:
            self._release(transfer_id)

    def first_chunk(self, transfer_id: str) -> memoryview:
        out = self._transfers[transfer_id]
        start, end = out.head.bounds(0)
        return out.payload[start:end]

    def discard(self, transfer_id: str) -> None:
        self._release(transfer_id)

    def _release(self, transfer_id: str, *, completed: bool = False) -> None:
        out = self._transfers.pop(transfer_id, None)
        if out is None:
            return
        self._bytes -= out.head.total_size
        self._completed += completed
        if self._on_release is not None:
            self._on_release(transfer_id)

    def _evict_complete(self, needed: int) -> None:
        for tid, out in list(self._transfers.items()):  # oldest first
            if needed <= 0:
                return
            if out.complete:
                needed -= out.head.total_size
                self._release(tid, completed=True)

    def expire(self, now: float) -> int:
        """Free finished transfers whose linger is over and any idle for ``ttl`` at ``now``; returns
        how many."""
        done = [t for t, o in self._transfers.items() if o.complete and o.last_activity + self._linger <= now]
        for tid in done:
            self._release(tid, completed=True)
        dead = [t for t, o in self._transfers.items() if o.last_activity + self._ttl < now]
        for tid in dead:
            self._release(tid)
        self._expired += len(dead)
        return len(done) + len(dead)

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has something to free (clock time), ``None`` if nothing is held."""
        soonest: float | None = None
        for out in self._transfers.values():
            at = out.last_activity + (self._linger if out.complete else self._ttl)
            soonest = at if soonest is None or at < soonest else soonest
        return soonest

    def __contains__(self, transfer_id: object) -> bool:
        return transfer_id in self._transfers

    def __len__(self) -> int:
        return len(self._transfers)

    def statistics(self) -> OutgoingTransfersStatistics:
        return OutgoingTransfersStatistics(
            len(self._transfers), self._bytes, self._max_bytes, self._started, self._completed, self._expired
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
    """Collects one transfer's chunks in any order; duplicates are ignored, sizes are checked.

    Chunks are kept as they arrived (no buffer of the declared size is allocated up front), so
    what a transfer holds is what its sender actually sent; :meth:`payload` joins them once.
    """

    head: ChunkHead
    _parts: list[bytes | None] = field(init=False)
    received: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._parts = [None] * self.head.count

    def add(self, index: int, data: bytes | memoryview) -> bool:
        """Store chunk ``index``; return True once every chunk is here.

        Raises:
            PayloadError: the index is out of range or the chunk has the wrong size.
        """
        head = self.head
        if not 0 <= index < head.count:
            raise PayloadError("decode", "chunked", f"chunk index {index} outside 0..{head.count - 1}")
        start, end = head.bounds(index)
        if len(data) != end - start:
            raise PayloadError(
                "decode", "chunked", f"chunk {index} has {len(data)} bytes, expected {end - start}"
            )
        if self._parts[index] is None:
            self._parts[index] = bytes(data)
            self.received += 1
        return self.complete

    def has(self, index: int) -> bool:
        return 0 <= index < self.head.count and self._parts[index] is not None

    @property
    def complete(self) -> bool:
        return self.received == self.head.count

    def missing(self, first: int = 0, limit: int | None = None) -> list[int]:
        out = []
        for index in range(first, self.head.count):
            if self._parts[index] is None:
                out.append(index)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def payload(self) -> bytes:
        if not self.complete:
            raise PayloadError("decode", "chunked", "transfer is incomplete")
        return b"".join(p for p in self._parts if p is not None)
