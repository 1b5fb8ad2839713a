"""The reliable-socket protocol, sans I/O: frames and time in, events and frames out.

Theory of operation
-------------------
A socket joins two endpoints, a *client* (the side that connects) and a *server connection* (one per
client, made by the listening side), over a lossy datagram service: core NATS delivers each frame at
most once, and drops everything sent while the link is down. This module holds no sockets, tasks or
clocks. The asyncio pump (:mod:`conat._socket`) hands it frames with :meth:`SocketProtocol.receive`
and the time with every call, publishes whatever :meth:`SocketProtocol.send` and
:meth:`SocketProtocol.poll` return, and calls ``poll`` again at :meth:`SocketProtocol.next_deadline`.

Frames are msgspec structs (a tagged union, encoded as msgpack arrays: ``[tag, field, ...]``)::

    Open(id, limit, max_message)   client -> server: connect; retransmitted until Accept comes
    Accept(limit, max_message)     server -> client: the connection exists
    Data(seq, payload, more)       one fragment of a message; ``more`` says another one follows
    Head(seq, payload, more, headers, encoding, request, reply_to, error)
                                   the first fragment of a message that carries metadata
    Fin(seq)                       end of stream in this direction (it has a sequence number)
    Ack(ack, limit, missing)       cumulative ack, credit limit, ranges the receiver lacks
    Ping()                         keepalive and window probe: the peer answers with an Ack
    Close()                        the sender is gone for good (after its Fin was acknowledged)
    Reset(code, reason)            the sender aborted, or does not know this connection

**Sequencing.** Each direction numbers its Data/Head/Fin frames 1, 2, 3, ... The receiver delivers
frames strictly in sequence: a duplicate (seq already delivered or already held) is dropped and
counted; a frame from the future is held (up to :data:`MAX_OUT_OF_ORDER`) until the gap before it
is filled. Fragments are joined into one message when the frame with ``more=False`` arrives.

**Acks and repair.** Whatever arrives sets "ack needed"; the next :meth:`poll` sends one ``Ack``
carrying the highest in-order seq, the credit limit, and (when frames are held beyond a gap) the
missing ranges. The pump polls at the end of each batch of incoming frames, so acks are coalesced
per batch. The sender drops acknowledged frames; it retransmits a frame named in ``missing`` at
once (at most once per ``rto_min / 2``), and when acks stop progressing for ``rto`` it resends
every unacknowledged frame (go-back-N) and doubles ``rto`` up to ``rto_max``. Progress resets it.

**Credit.** The unit is a frame's payload bytes plus :data:`FRAME_COST` (so empty messages cost
something too). The receiver grants ``limit = consumed + window + partial``: ``consumed`` counts
messages the application has *read* (:meth:`consume`), ``partial`` the fragments of the message
being reassembled (so a message larger than the window still gets through). The limit never
shrinks. The sender may release the next frame while its cumulative cost is below the peer's
limit, so at most ``window`` plus one frame plus one message is buffered on the receiving side,
and the sender keeps at most as much for retransmission. A sender with queued frames and no credit
probes with ``Ping`` every ``rto``, in case the window update was lost.

**Keepalive.** A side that has sent nothing for ``keepalive`` seconds sends ``Ping``; a side that
has heard nothing for ``peer_timeout`` seconds fails with :class:`PeerDead`. While the pump reports
the link down (:meth:`link_down`) these timers and retransmits pause; :meth:`link_up` resends every
unacknowledged frame at once.

**Lifecycle** (:data:`TRANSITIONS`, one row per legal move; any other raises
:class:`SocketProtocolError`)::

    CONNECTING --accept--> OPEN --send_eof--> CLOSING --finish / close--> CLOSED
         |                   |                   |
         +--fail / abort-----+--fail / abort / peer_close----------------> CLOSED

``accept``: Open (server) or Accept (client) received. ``send_eof``: our Fin is queued; we may still
read. ``finish``: our Fin is acknowledged and the peer's Fin received (both directions ended).
``close``: the application closes after its Fin was acknowledged (or gave up waiting); the peer is
told with ``Close``. ``peer_close``: the peer's ``Close``. ``fail``: reset, dead peer, connect
timeout, protocol violation. ``abort``: the application aborts (the peer gets ``Reset``).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, final

import msgspec

from ._errors import (
    ConatError,
    ErrorCode,
    PayloadTooLarge,
    PeerDead,
    SocketBusy,
    SocketClosed,
    SocketProtocolError,
    SocketReset,
    Timeout,
)

__all__ = [
    "FRAME_COST",
    "MAX_OUT_OF_ORDER",
    "TRANSITIONS",
    "Accept",
    "Ack",
    "Close",
    "ConnectionClosed",
    "Data",
    "Event",
    "Fin",
    "Frame",
    "Head",
    "MessageReceived",
    "Open",
    "Opened",
    "Ping",
    "ProtocolStatistics",
    "Reset",
    "Role",
    "SocketConfig",
    "SocketProtocol",
    "SocketState",
    "StreamEnded",
    "Trigger",
    "decode_frame",
    "encode_frame",
]

FRAME_COST: Final = 32
"""Credit units charged per data frame on top of its payload bytes."""
MAX_OUT_OF_ORDER: Final = 65_536
"""Frames held beyond a gap; later ones are dropped (the sender resends them)."""
MIN_FRAME_SIZE: Final = 256
_DATA_OVERHEAD: Final = 24  # array header, tag, seq (<= 9 bytes), bin32 header, bool
_MAX_NACK_RANGES: Final = 32
_MAX_NACK_FRAMES: Final = 4096
_HEAD_OVERHEAD_BOUND: Final = 160
"""Bounds an encoded Head frame without headers, less its payload (codes and error codes are short)."""


# -- frames ----------------------------------------------------------------------------------------


class Open(msgspec.Struct, tag=1, array_like=True, frozen=True):
    id: str
    limit: int
    max_message: int


class Accept(msgspec.Struct, tag=2, array_like=True, frozen=True):
    limit: int
    max_message: int


class Data(msgspec.Struct, tag=3, array_like=True, frozen=True):
    seq: int
    payload: bytes
    more: bool = False


class Head(msgspec.Struct, tag=4, array_like=True, frozen=True):
    seq: int
    payload: bytes
    more: bool = False
    headers: dict[str, str] | None = None
    encoding: str | None = None
    request: int = 0
    reply_to: int = 0
    error: int | str | None = None


class Fin(msgspec.Struct, tag=5, array_like=True, frozen=True):
    seq: int


class Ack(msgspec.Struct, tag=6, array_like=True, frozen=True):
    ack: int
    limit: int
    missing: tuple[tuple[int, int], ...] = ()


class Ping(msgspec.Struct, tag=7, array_like=True, frozen=True):
    pass


class Close(msgspec.Struct, tag=8, array_like=True, frozen=True):
    pass


class Reset(msgspec.Struct, tag=9, array_like=True, frozen=True):
    code: int | str
    reason: str


Frame = Open | Accept | Data | Head | Fin | Ack | Ping | Close | Reset
_Sequenced = Data | Head | Fin

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    return _ENCODER.encode(frame)


def decode_frame(raw: bytes | memoryview) -> Frame:
    """Decode one frame; raises :class:`SocketProtocolError` for anything that is not one."""
    try:
        frame: Frame = _DECODER.decode(raw)
    except (msgspec.DecodeError, ValueError) as e:
        raise SocketProtocolError("?", f"malformed frame: {e}") from None
    return frame


# -- events ----------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Opened:
    """The connection is open. ``peer_id``: the client's id (on the server side), else ``""``."""

    peer_id: str


@final
@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A whole message, in order. Hand ``cost`` back to :meth:`SocketProtocol.consume` once read."""

    payload: bytes
    headers: dict[str, str] | None
    encoding: str | None
    request: int
    reply_to: int
    error: ErrorCode | None
    cost: int


@final
@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer's Fin: every message it sent has been delivered before this event."""


@final
@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The protocol reached CLOSED. ``error`` is None for a graceful end."""

    error: ConatError | None


Event = Opened | MessageReceived | StreamEnded | ConnectionClosed


# -- lifecycle -------------------------------------------------------------------------------------


class SocketState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


Trigger = Literal["accept", "send_eof", "finish", "close", "peer_close", "fail", "abort"]
Role = Literal["client", "server"]

_C, _O, _CL, _X = SocketState.CONNECTING, SocketState.OPEN, SocketState.CLOSING, SocketState.CLOSED
TRANSITIONS: Final[Mapping[tuple[SocketState, Trigger], SocketState]] = {
    (_C, "accept"): _O,
    (_C, "fail"): _X,
    (_C, "abort"): _X,
    (_O, "send_eof"): _CL,
    (_O, "peer_close"): _X,
    (_O, "fail"): _X,
    (_O, "abort"): _X,
    (_CL, "finish"): _X,
    (_CL, "close"): _X,
    (_CL, "peer_close"): _X,
    (_CL, "fail"): _X,
    (_CL, "abort"): _X,
}
"""Every legal (state, trigger) -> next state. Anything else is a local protocol error."""


@final
@dataclass(frozen=True, slots=True)
class SocketConfig:
    """Tunables of one socket endpoint; validated here, so the protocol can trust them.

    Attributes:
        window: credit granted to the peer, in bytes (plus :data:`FRAME_COST` per frame).
        max_message: the largest message sent or accepted, in bytes (PayloadTooLarge, 413).
        frame_size: the largest encoded frame (the server's max_payload minus some room).
        keepalive: send a Ping after this many idle seconds.
        peer_timeout: fail with PeerDead after this many seconds without a frame from the peer.
        connect_timeout: give up connecting after this many seconds.
        rto_min, rto_max: the retransmission timeout's start and cap (it doubles in between).
    """

    window: int = 2 * 1024 * 1024
    max_message: int = 16 * 1024 * 1024
    frame_size: int = 1024 * 1024 - 256
    keepalive: float = 10.0
    peer_timeout: float = 30.0
    connect_timeout: float = 10.0
    rto_min: float = 0.25
    rto_max: float = 4.0

    def __post_init__(self) -> None:
        if self.window < FRAME_COST:
            raise ValueError(f"window must be at least {FRAME_COST} bytes, not {self.window}")
        if self.max_message < 0:
            raise ValueError(f"max_message must not be negative, not {self.max_message}")
        if self.frame_size < MIN_FRAME_SIZE:
            raise ValueError(f"frame_size must be at least {MIN_FRAME_SIZE} bytes, not {self.frame_size}")
        for name in ("keepalive", "peer_timeout", "connect_timeout", "rto_min", "rto_max"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.peer_timeout <= self.keepalive:
            raise ValueError(
                f"peer_timeout ({self.peer_timeout}) must be longer than keepalive ({self.keepalive})"
            )
        if self.rto_max < self.rto_min:
            raise ValueError(f"rto_max ({self.rto_max}) must not be below rto_min ({self.rto_min})")


@final
@dataclass(frozen=True, slots=True)
class ProtocolStatistics:
    state: str
    messages_sent: int
    messages_received: int
    frames_sent: int
    frames_received: int
    retransmitted: int
    duplicates_dropped: int
    out_of_order: int
    unacked: int
    unacked_bytes: int
    queued: int
    window: int
    rto: float


class _Out:
    """One sequenced frame on the sending side, from queued to acknowledged."""

    __slots__ = ("cost", "frame", "nacked", "sent_at")

    def __init__(self, frame: _Sequenced, cost: int) -> None:
        self.frame = frame
        self.cost = cost
        self.sent_at = -math.inf
        self.nacked = False


_CLOSED_HOW: Final = "closed"


@final
class SocketProtocol:
    """One endpoint of a reliable socket. Pure: no I/O, no clock, no asyncio.

    Every method that depends on time takes ``now`` (seconds on any monotonic scale). Frames it
    returns are to be sent in order; events it returns are to be handled in order.
    """

    def __init__(
        self,
        role: Role,
        config: SocketConfig,
        now: float,
        *,
        id: str = "",
        subject: str = "",
    ) -> None:
        self.role: Role = role
        self.config = config
        self.id = id
        self.subject = subject
        self.state = SocketState.CONNECTING
        self.error: ConatError | None = None
        self.closed_by_peer = False
        self.eof_received = False
        self.eof_sent = False
        # sending side
        self._next_seq = 1
        self._queued: deque[_Out] = deque()
        self._unacked: deque[_Out] = deque()
        self._sent_cost = 0
        self._unacked_cost = 0
        self._peer_limit = 0
        self._peer_max_message = config.max_message
        self._acked = 0
        self._fin_seq = 0
        self._rto = config.rto_min
        self._retransmit_at: float | None = None
        self._resend_due: float | None = None
        self._probe_at = -math.inf
        # receiving side
        self._expected = 1
        self._held: dict[int, _Sequenced] = {}
        self._parts: list[bytes] = []
        self._head: Data | Head | None = None
        self._partial_size = 0
        self._partial_cost = 0
        self._consumed = 0
        self._advertised = config.window
        self._ack_needed = False
        self._accept_needed = False
        self._close_needed = False
        self._reset_needed: Reset | None = None
        # time
        self._link_up = True
        self._last_sent = now
        self._last_received = now
        self._connect_deadline = now + config.connect_timeout
        self._open_at: float | None = None
        # counters
        self.messages_sent = 0
        self.messages_received = 0
        self.frames_sent = 0
        self.frames_received = 0
        self.retransmitted = 0
        self.duplicates_dropped = 0
        self._fragment = config.frame_size - _DATA_OVERHEAD

    def __repr__(self) -> str:
        return f"<SocketProtocol {self.role} {self.subject!r} {self.state.value}>"

    # -- lifecycle -------------------------------------------------------------------------------
    def _transition(self, trigger: Trigger) -> None:
        try:
            self.state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise SocketProtocolError(
                self.subject, f"illegal transition {trigger!r} in state {self.state.value!r}"
            ) from None

    def _fail(self, error: ConatError, reset: Reset | None = None) -> ConnectionClosed:
        self._transition("fail")
        self.error = error
        self._reset_needed = reset
        self._queued.clear()
        return ConnectionClosed(error)

    @property
    def writable(self) -> bool:
        """True when :meth:`send` would accept a message now (open, and the peer granted credit)."""
        return self.state is SocketState.OPEN and not self._queued and self._sent_cost < self._peer_limit

    @property
    def retransmit_at(self) -> float | None:
        """When unacknowledged frames are next resent if no ack comes (None: nothing in flight)."""
        return self._retransmit_at

    @property
    def drained(self) -> bool:
        """Everything sent so far (Fin included) has been acknowledged."""
        return not self._queued and not self._unacked

    @property
    def unacked_bytes(self) -> int:
        return self._unacked_cost

    @property
    def credit(self) -> int:
        """Credit the peer still grants us (0 when the window is full)."""
        return max(0, self._peer_limit - self._sent_cost)

    def connect(self, now: float) -> list[Frame]:
        """Client only: the Open frame (retransmitted by :meth:`poll` until Accept arrives)."""
        if self.role != "client" or self.state is not SocketState.CONNECTING or self._open_at is not None:
            raise SocketProtocolError(
                self.subject, f"connect() on a {self.role} in state {self.state.value!r}"
            )
        self._open_at = now + self._rto
        self._last_sent = now
        self.frames_sent += 1
        return [self._open_frame()]

    def _open_frame(self) -> Open:
        return Open(self.id, self._advertised, self.config.max_message)

    # -- sending ---------------------------------------------------------------------------------
    def _check_can_send(self) -> None:
        if self.state is SocketState.OPEN:
            return
        if self.state is SocketState.CONNECTING:
            raise SocketProtocolError(self.subject, "send before the connection is open")
        if self.state is SocketState.CLOSING:
            raise SocketClosed(self.subject, "closed for writing (end of stream sent)")
        if self.closed_by_peer:
            raise SocketClosed(self.subject, "closed by peer")
        if self.error is not None:
            raise self.error
        raise SocketClosed(self.subject, _CLOSED_HOW)

    def send(
        self,
        payload: bytes,
        now: float,
        *,
        headers: dict[str, str] | None = None,
        encoding: str | None = None,
        request: int = 0,
        reply_to: int = 0,
        error: ErrorCode | None = None,
    ) -> list[Frame]:
        """Queue one message; return the frames that the peer's credit lets out now.

        Raises:
            SocketBusy: the window is full (check :attr:`writable` first, or wait for credit).
            PayloadTooLarge: the message is over ``max_message`` (ours or the peer's), or its
                metadata does not fit in one frame.
            SocketClosed: the socket is closed for writing.
        """
        self._check_can_send()
        size = len(payload)
        limit = min(self.config.max_message, self._peer_max_message)
        if size > limit:
            raise PayloadTooLarge(size, limit, "socket message")
        if not self.writable:
            raise SocketBusy(self.subject, self._unacked_cost, self.config.window)
        step = self._fragment
        if headers or encoding is not None or request or reply_to or error is not None:
            if not headers and size + _HEAD_OVERHEAD_BOUND <= self.config.frame_size:
                first = size  # it obviously fits: skip measuring the metadata (an encode per message)
            else:
                overhead = len(
                    _ENCODER.encode(Head(2**63 - 1, b"", True, headers, encoding, request, reply_to, error))
                )
                first = self.config.frame_size - overhead - 8
                if first < MIN_FRAME_SIZE // 2:
                    raise PayloadTooLarge(
                        overhead, self.config.frame_size - MIN_FRAME_SIZE // 2, "socket message metadata"
                    )
            chunk = payload if size <= first else payload[:first]
            seq = self._next_seq
            self._push(
                Head(seq, chunk, size > first, headers, encoding, request, reply_to, error), len(chunk)
            )
            offset = first
        elif size <= step:
            self._push(Data(self._next_seq, payload), size)
            self.messages_sent += 1
            return self._release(now)
        else:
            offset = 0
        while offset < size:
            chunk = payload[offset : offset + step]
            offset += step
            self._push(Data(self._next_seq, chunk, offset < size), len(chunk))
        self.messages_sent += 1
        return self._release(now)

    def _push(self, frame: _Sequenced, size: int) -> None:
        self._next_seq += 1
        self._queued.append(_Out(frame, size + FRAME_COST if not isinstance(frame, Fin) else 0))

    def _release(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        queued = self._queued
        while queued:
            o = queued[0]
            if o.cost and self._sent_cost >= self._peer_limit:
                break
            queued.popleft()
            self._sent_cost += o.cost
            self._unacked_cost += o.cost
            o.sent_at = now
            self._unacked.append(o)
            out.append(o.frame)
        if out:
            self.frames_sent += len(out)
            self._last_sent = now
            if self._retransmit_at is None:
                self._retransmit_at = now + self._rto
        return out

    def send_eof(self, now: float) -> list[Frame]:
        """Half-close: queue our Fin after every message sent so far. We may still receive."""
        self._transition("send_eof")
        self.eof_sent = True
        self._fin_seq = self._next_seq
        self._push(Fin(self._next_seq), 0)
        return self._release(now)

    def close(self, now: float) -> list[Frame]:
        """Leave for good after :meth:`send_eof` (normally once :attr:`drained`): tell the peer."""
        self._transition("close")
        self._close_needed = True
        return self.poll(now)

    def abort(self, code: ErrorCode, reason: str, now: float) -> list[Frame]:
        """Abort at once: the peer gets ``Reset(code, reason)``; unsent data is discarded."""
        self._transition("abort")
        self.error = SocketClosed(self.subject, f"aborted: {reason}")
        self._reset_needed = Reset(code, reason)
        self._queued.clear()
        return self.poll(now)

    def fail(self, error: ConatError) -> None:
        """Fail for a reason outside the protocol (the bus client closed). The peer is not told."""
        if self.state is not SocketState.CLOSED:
            self._fail(error)

    def check_can_send(self) -> None:
        """Raise what :meth:`send` would raise for the state alone (closed, closing, connecting)."""
        self._check_can_send()

    def consume(self, cost: int) -> bool:
        """The application read a message of ``cost`` credit units. True if a window update is due."""
        self._consumed += cost
        if self._consumed + self.config.window - self._advertised >= self.config.window // 4:
            self._ack_needed = True
        return self._ack_needed

    # -- receiving -------------------------------------------------------------------------------
    def receive(self, frame: Frame, now: float) -> list[Event]:
        """Take one frame from the peer; return what happened, in order."""
        if self.state is SocketState.CLOSED:
            return []
        self._last_received = now
        self.frames_received += 1
        events: list[Event] = []
        kind = type(frame)
        if kind is Data or kind is Head or kind is Fin:
            if self.state is not SocketState.CONNECTING:
                self._on_sequenced(frame, events)  # type: ignore[arg-type]
        elif isinstance(frame, Ack):
            self._on_ack(frame, now)
        elif isinstance(frame, Ping):
            self._ack_needed = True
        elif isinstance(frame, Open):
            self._on_open(frame, events)
        elif isinstance(frame, Accept):
            if self.role == "client" and self.state is SocketState.CONNECTING:
                self._transition("accept")
                self._peer_limit = frame.limit
                self._peer_max_message = frame.max_message
                self._last_sent = now
                events.append(Opened(""))
        elif isinstance(frame, Close):
            self._on_close(events)
        elif isinstance(frame, Reset):
            self._on_reset(frame, events)
        if self.state is SocketState.CLOSING and self.eof_received and self._fin_acked:
            self._transition("finish")
            self._close_needed = True
            events.append(ConnectionClosed(None))
        return events

    @property
    def _fin_acked(self) -> bool:
        return self.eof_sent and self._acked >= self._fin_seq

    def _on_open(self, frame: Open, events: list[Event]) -> None:
        if self.role != "server":
            return
        if self.state is SocketState.CONNECTING:
            self._transition("accept")
            self.id = frame.id
            self._peer_limit = frame.limit
            self._peer_max_message = frame.max_message
            events.append(Opened(frame.id))
        self._accept_needed = True  # also for a retransmitted Open: our Accept may have been lost

    def _on_close(self, events: list[Event]) -> None:
        if self.state is SocketState.CONNECTING:
            return
        self._transition("peer_close")
        self.closed_by_peer = True
        self._queued.clear()
        if not self.eof_received:
            self.error = SocketClosed(self.subject, "closed by peer before end of stream")
        events.append(ConnectionClosed(self.error))

    def _on_reset(self, frame: Reset, events: list[Event]) -> None:
        if self.state is SocketState.CLOSING and self.eof_received:
            # Both Fins were sent and ours was retransmitted only because its ack was lost: the
            # peer finished, forgot us, and answers "unknown connection". Nothing is lost.
            self._transition("finish")
            events.append(ConnectionClosed(None))
            return
        events.append(self._fail(SocketReset(self.subject, frame.code, frame.reason)))

    def _on_sequenced(self, frame: _Sequenced, events: list[Event]) -> None:
        self._ack_needed = True
        seq = frame.seq
        expected = self._expected
        if seq != expected:
            if seq < expected or seq in self._held:
                self.duplicates_dropped += 1
            elif seq - expected <= MAX_OUT_OF_ORDER:
                self._held[seq] = frame
            return
        self._deliver(frame, events)
        held = self._held
        while held and self.state is not SocketState.CLOSED:
            nxt = held.pop(self._expected, None)
            if nxt is None:
                break
            self._deliver(nxt, events)

    def _deliver(self, frame: _Sequenced, events: list[Event]) -> None:
        self._expected += 1
        if isinstance(frame, Fin):
            if self._head is not None:
                self._violation("end of stream inside a fragmented message", events)
                return
            self.eof_received = True
            events.append(StreamEnded())
            return
        if self.eof_received:
            self._violation(f"data (seq {frame.seq}) after end of stream", events)
            return
        payload = frame.payload
        head = self._head
        if head is None:
            if not frame.more:  # the common case: a whole message in one frame
                if len(payload) > self.config.max_message:
                    self._too_large(len(payload), events)
                    return
                self.messages_received += 1
                cost = len(payload) + FRAME_COST
                if isinstance(frame, Head):
                    events.append(
                        MessageReceived(payload, frame.headers, frame.encoding, frame.request,
                                        frame.reply_to, frame.error, cost)
                    )  # fmt: skip
                else:
                    events.append(MessageReceived(payload, None, None, 0, 0, None, cost))
                return
            self._head = head = frame
        elif isinstance(frame, Head):
            self._violation(f"a message head (seq {frame.seq}) inside a fragmented message", events)
            return
        self._parts.append(payload)
        self._partial_size += len(payload)
        self._partial_cost += len(payload) + FRAME_COST
        if self._partial_size > self.config.max_message:
            self._too_large(self._partial_size, events)
            return
        if frame.more:
            return
        whole = b"".join(self._parts)
        cost = self._partial_cost
        self._parts = []
        self._head = None
        self._partial_size = 0
        self._consumed_partial(cost)
        self.messages_received += 1
        if isinstance(head, Head):
            events.append(
                MessageReceived(
                    whole, head.headers, head.encoding, head.request, head.reply_to, head.error, cost
                )
            )
        else:
            events.append(MessageReceived(whole, None, None, 0, 0, None, cost))

    def _consumed_partial(self, cost: int) -> None:
        # The credit granted for the fragments stays granted (the limit never shrinks), but it now
        # belongs to an unread message: the application's consume() accounts for it from here on.
        self._advertised = self._limit()
        self._partial_cost = 0

    def _too_large(self, size: int, events: list[Event]) -> None:
        limit = self.config.max_message
        err = PayloadTooLarge(size, limit, "socket message from the peer")
        events.append(
            self._fail(err, Reset(413, f"message of {size} bytes is over the limit of {limit} bytes"))
        )

    def _violation(self, what: str, events: list[Event]) -> None:
        err = SocketProtocolError(self.subject, f"peer broke the protocol: {what}")
        events.append(self._fail(err, Reset(400, what)))

    def _on_ack(self, frame: Ack, now: float) -> None:
        ack = min(frame.ack, self._next_seq - 1)
        if ack > self._acked:
            unacked = self._unacked
            while unacked and unacked[0].frame.seq <= ack:
                self._unacked_cost -= unacked.popleft().cost
            self._acked = ack
            self._rto = self.config.rto_min
            self._retransmit_at = now + self._rto if unacked else None
        self._peer_limit = max(self._peer_limit, frame.limit)
        if frame.missing and self._unacked:
            self._mark_missing(frame.missing, now)

    def _mark_missing(self, ranges: tuple[tuple[int, int], ...], now: float) -> None:
        unacked = self._unacked
        first = unacked[0].frame.seq
        marked = 0
        for lo, hi in ranges[:_MAX_NACK_RANGES]:
            for seq in range(max(lo, first), min(hi, first + len(unacked) - 1) + 1):
                o = unacked[seq - first]
                if not o.nacked:
                    o.nacked = True
                    due = o.sent_at + self.config.rto_min / 2
                    if self._resend_due is None or due < self._resend_due:
                        self._resend_due = due
                marked += 1
                if marked >= _MAX_NACK_FRAMES:
                    return

    # -- link state ------------------------------------------------------------------------------
    def link_down(self, now: float) -> None:
        """The bus connection is down: pause keepalive, dead-peer detection and retransmits."""
        self._link_up = False

    def link_up(self, now: float) -> list[Frame]:
        """The bus connection is back: resend everything unacknowledged now, and restart timers."""
        self._link_up = True
        self._last_received = max(self._last_received, now)
        self._rto = self.config.rto_min
        if self.state is SocketState.CONNECTING:
            if self.role == "client" and self._open_at is not None:
                self._open_at = now
            return self.poll(now)
        if self.state is SocketState.CLOSED:
            return self.poll(now)
        out: list[Frame] = [o.frame for o in self._unacked]
        for o in self._unacked:
            o.sent_at = now
        self.retransmitted += len(out)
        self.frames_sent += len(out)
        self._retransmit_at = now + self._rto if self._unacked else None
        out.extend(self.poll(now))
        if not out or not isinstance(out[-1], Ack | Ping):
            out.append(Ping())  # elicit an ack (and, server side, refresh the reply permission)
        self._last_sent = now
        self.frames_sent += 1
        return out

    # -- timers ----------------------------------------------------------------------------------
    def poll(self, now: float) -> list[Frame]:
        """Everything due at ``now``: acks, accepts, released credit, retransmits, keepalives.

        Also fails the connection on a connect timeout or a dead peer (see :attr:`state` and
        :attr:`error` afterwards).
        """
        state = self.state
        out: list[Frame] = []
        if state is SocketState.CLOSED:
            self._final_frames(out)
            return out
        if state is SocketState.CONNECTING:
            if self.role == "client" and self._open_at is not None:
                if now >= self._connect_deadline:
                    elapsed = now - (self._connect_deadline - self.config.connect_timeout)
                    self._fail(Timeout(self.subject, elapsed, "socket connect"))
                elif now >= self._open_at and self._link_up:
                    out.append(self._open_frame())
                    self._rto = min(self._rto * 2, self.config.rto_max)
                    self._open_at = now + self._rto
                    self.frames_sent += 1
                    self._last_sent = now
            return out
        if self._link_up and now - self._last_received >= self.config.peer_timeout:
            self._fail(PeerDead(self.subject, self.config.peer_timeout))
            return out
        if self._accept_needed:
            self._accept_needed = False
            out.append(Accept(self._limit(), self.config.max_message))
            self._advertised = self._limit()
        if self._queued:
            out.extend(self._release(now))
        if self._link_up:
            self._retransmit(now, out)
        if self._ack_needed:
            out.append(self._ack_frame())
        elif self._link_up and self._queued and not self._unacked and now >= self._probe_at:
            out.append(Ping())  # the window is shut: probe in case the update was lost
            self._probe_at = now + self._rto
        if not out and self._link_up and now - self._last_sent >= self.config.keepalive:
            out.append(Ping())
        if out:
            self._last_sent = now
            self.frames_sent += sum(1 for f in out if not isinstance(f, Data | Head | Fin))
        return out

    def _retransmit(self, now: float, out: list[Frame]) -> None:
        unacked = self._unacked
        if self._retransmit_at is not None and now >= self._retransmit_at and unacked:
            for o in unacked:
                o.sent_at = now
                o.nacked = False
                out.append(o.frame)
            self.retransmitted += len(unacked)
            self.frames_sent += len(unacked)
            self._rto = min(self._rto * 2, self.config.rto_max)
            self._retransmit_at = now + self._rto
            self._resend_due = None
            return
        if self._resend_due is not None and now >= self._resend_due:
            self._resend_due = None
            gap = self.config.rto_min / 2
            for o in unacked:
                if not o.nacked:
                    continue
                if o.sent_at + gap <= now:
                    o.nacked = False
                    o.sent_at = now
                    out.append(o.frame)
                    self.retransmitted += 1
                    self.frames_sent += 1
                elif self._resend_due is None or o.sent_at + gap < self._resend_due:
                    self._resend_due = o.sent_at + gap

    def _final_frames(self, out: list[Frame]) -> None:
        if self._ack_needed and self.error is None:
            out.append(self._ack_frame())
        if self._close_needed:
            self._close_needed = False
            out.append(Close())
        if self._reset_needed is not None:
            out.append(self._reset_needed)
            self._reset_needed = None
        if out:
            self.frames_sent += len(out)

    def _limit(self) -> int:
        return max(self._advertised, self._consumed + self.config.window + self._partial_cost)

    def _ack_frame(self) -> Ack:
        self._ack_needed = False
        self._advertised = limit = self._limit()
        if not self._held:
            return Ack(self._expected - 1, limit)
        return Ack(self._expected - 1, limit, self._missing())

    def _missing(self) -> tuple[tuple[int, int], ...]:
        ranges: list[tuple[int, int]] = []
        lo = self._expected
        for seq in sorted(self._held):
            if seq > lo:
                ranges.append((lo, seq - 1))
                if len(ranges) >= _MAX_NACK_RANGES:
                    break
            lo = seq + 1
        return tuple(ranges)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do (``-inf``: now); None if never."""
        state = self.state
        if state is SocketState.CLOSED:
            return -math.inf if (self._close_needed or self._reset_needed or self._ack_needed) else None
        if self._ack_needed or self._accept_needed:
            return -math.inf
        if state is SocketState.CONNECTING:
            if self._open_at is None:
                return None
            return min(self._open_at, self._connect_deadline)
        if not self._link_up:
            return None
        deadline = min(
            self._last_received + self.config.peer_timeout, self._last_sent + self.config.keepalive
        )
        if self._retransmit_at is not None and self._unacked:
            deadline = min(deadline, self._retransmit_at)
        if self._resend_due is not None:
            deadline = min(deadline, self._resend_due)
        if self._queued and not self._unacked:
            deadline = min(deadline, self._probe_at)
        return deadline

    def statistics(self) -> ProtocolStatistics:
        return ProtocolStatistics(
            state=self.state.value,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            retransmitted=self.retransmitted,
            duplicates_dropped=self.duplicates_dropped,
            out_of_order=len(self._held),
            unacked=len(self._unacked),
            unacked_bytes=self._unacked_cost,
            queued=len(self._queued),
            window=self.credit,
            rto=self._rto,
        )
