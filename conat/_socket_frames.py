"""Wire frames, events and tunables of the reliable-socket protocol (see :mod:`conat._socket_protocol`).

Frames are msgspec structs, a tagged union encoded as msgpack arrays (``[tag, field, ...]``); the
encoder and decoder are built once (:data:`FRAME_ENCODER`, :data:`FRAME_DECODER`). A frame holds
only bytes, strings and numbers, so it can never be part of a reference cycle: frames are
``gc=False`` structs, and the one or two made per message stay out of the garbage collector::

    Open(id, limit, max_message)   client -> server: connect; retransmitted until Accept comes
    Accept(limit, max_message)     server -> client: the connection exists
    Data(seq, payload, more)       one fragment of a message; ``more`` says another one follows
    Head(seq, payload, more, headers, encoding, request, reply_to, error)
                                   the first fragment of a message that carries metadata
    Fin(seq)                       end of stream in this direction (it has a sequence number)
    Ack(ack, limit, missing)       cumulative ack, credit limit, ranges the receiver lacks
    Ping()                         keepalive and window probe: the peer answers with an Ack
    Close()                        the sender is gone for good (after its Fin was acknowledged);
                                   repeated in answer to late frames while it lingers
    Reset(code, reason)            the sender aborted, or does not know this connection

A sequenced frame costs credit (:func:`frame_cost`): its payload bytes plus :data:`FRAME_COST`, and
for a Head the characters of its metadata plus :data:`FRAME_COST` per header, so a peer cannot make
the receiver hold more than its window in headers either. A ``Reset`` names why with a stable code:
:data:`RESET_MALFORMED` (400), :data:`RESET_UNKNOWN` (404), :data:`RESET_ABORTED` (410),
:data:`RESET_TOO_LARGE` (413), :data:`RESET_WINDOW` (429), :data:`RESET_UNAVAILABLE` (503).

Events are what :meth:`SocketProtocol.receive <conat._socket_protocol.SocketProtocol.receive>`
reports, in order. :class:`SocketConfig` validates every tunable once, so the protocol can trust them;
:func:`socket_config` builds one from a client's options and its server's max_payload. The statistics
records of a protocol endpoint and of a :class:`~conat.Socket` are here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, final

import msgspec

from ._errors import BAD_REQUEST, BUSY, NOT_FOUND, UNAVAILABLE, ConatError, ErrorCode, SocketProtocolError

__all__ = [
    "DATA_OVERHEAD",
    "DEFAULT_BACKLOG",
    "DEFAULT_CONNECT_TIMEOUT",
    "FRAME_COST",
    "FRAME_DECODER",
    "FRAME_ENCODER",
    "FRAME_ROOM",
    "HEAD_OVERHEAD_BOUND",
    "MALFORMED",
    "MAX_REASON",
    "MAX_SOCKET_ID",
    "MIN_FRAGMENT",
    "MIN_FRAME_SIZE",
    "RESET_ABORTED",
    "RESET_MALFORMED",
    "RESET_TOO_LARGE",
    "RESET_UNAVAILABLE",
    "RESET_UNKNOWN",
    "RESET_WINDOW",
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
    "Sequenced",
    "SocketConfig",
    "SocketStatistics",
    "StreamEnded",
    "decode_frame",
    "encode_frame",
    "frame_cost",
    "head_cost",
    "socket_config",
]

FRAME_COST: Final = 32
"""Credit units charged per data frame on top of its payload bytes."""
MIN_FRAME_SIZE: Final = 256
"""The smallest ``frame_size`` a :class:`SocketConfig` accepts."""
MIN_FRAGMENT: Final = MIN_FRAME_SIZE // 2
"""The least payload of a fragment that is not a message's last (``more=True``). Senders always
fill fragments far beyond it; a receiver refuses smaller ones, which bounds the number of
fragments (and their per-frame cost) a message can have."""
FRAME_ROOM: Final = 256
"""Bytes kept free below the server's max_payload in every frame."""
DATA_OVERHEAD: Final = 24
"""Bounds an encoded Data frame less its payload: array header, tag, seq (<= 9 bytes), bin32 header, bool."""
HEAD_OVERHEAD_BOUND: Final = 160
"""Bounds an encoded Head frame without headers, less its payload (codes and error codes are short)."""
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
"""Seconds a client waits for its connection to be accepted (``socket_connect(timeout=)``)."""
DEFAULT_BACKLOG: Final = 1024
"""Connections that may wait to be accepted on one listening server (``socket_listen(backlog=)``)."""
MAX_SOCKET_ID: Final = 64
"""The longest socket id (``Open.id``) a listener takes; ours are 22-character NUIDs."""
MAX_REASON: Final = 256
"""The longest reset reason (and string code) kept from a peer; the rest is cut off."""

RESET_MALFORMED: Final = BAD_REQUEST
"""Reset code: the peer broke the protocol (a frame out of place, a bad socket id)."""
RESET_UNKNOWN: Final = NOT_FOUND
"""Reset code: no such connection (the listener restarted, or forgot it long ago)."""
RESET_ABORTED: Final = 410
"""Reset code: the application aborted the socket (``abort()``, a cancelled close or connect)."""
RESET_TOO_LARGE: Final = 413
"""Reset code: a message over the receiver's ``max_message``."""
RESET_WINDOW: Final = BUSY
"""Reset code: the peer sent beyond the credit it was granted (it overran the window)."""
RESET_UNAVAILABLE: Final = UNAVAILABLE
"""Reset code: the listener refused a connection (closing, backlog full, or that client's share of it)."""


# -- frames ----------------------------------------------------------------------------------------


class Open(msgspec.Struct, tag=1, array_like=True, frozen=True, gc=False):
    id: str
    limit: int
    max_message: int


class Accept(msgspec.Struct, tag=2, array_like=True, frozen=True, gc=False):
    limit: int
    max_message: int


class Data(msgspec.Struct, tag=3, array_like=True, frozen=True, gc=False):
    seq: int
    payload: bytes
    more: bool = False


class Head(msgspec.Struct, tag=4, array_like=True, frozen=True, gc=False):
    seq: int
    payload: bytes
    more: bool = False
    headers: dict[str, str] | None = None
    encoding: str | None = None
    request: int = 0
    reply_to: int = 0
    error: int | str | None = None


class Fin(msgspec.Struct, tag=5, array_like=True, frozen=True, gc=False):
    seq: int


class Ack(msgspec.Struct, tag=6, array_like=True, frozen=True, gc=False):
    ack: int
    limit: int
    missing: tuple[tuple[int, int], ...] = ()


class Ping(msgspec.Struct, tag=7, array_like=True, frozen=True, gc=False):
    pass


class Close(msgspec.Struct, tag=8, array_like=True, frozen=True, gc=False):
    pass


class Reset(msgspec.Struct, tag=9, array_like=True, frozen=True, gc=False):
    code: int | str
    reason: str


Frame = Open | Accept | Data | Head | Fin | Ack | Ping | Close | Reset
Sequenced = Data | Head | Fin
"""The frames that carry a sequence number (and are acknowledged and retransmitted)."""

FRAME_ENCODER: Final = msgspec.msgpack.Encoder()
"""The one frame encoder. Hot paths call its ``encode`` directly (see :func:`encode_frame`)."""
FRAME_DECODER: Final = msgspec.msgpack.Decoder(Frame)
"""The one frame decoder. Its ``decode`` raises one of :data:`MALFORMED` for a malformed frame."""
MALFORMED: Final = (msgspec.DecodeError, ValueError)
"""What :data:`FRAME_DECODER` raises for bytes that are not a frame."""


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame (msgpack, as an array)."""
    return FRAME_ENCODER.encode(frame)


def head_cost(
    size: int, headers: dict[str, str] | None, encoding: str | None, error: int | str | None
) -> int:
    """The credit a Head frame with a ``size``-byte payload costs (both sides compute the same).

    Metadata is charged by its characters, plus :data:`FRAME_COST` per header (a header is a dict
    entry and two objects to the receiver), so a peer's headers count against its window too.
    """
    cost = size + FRAME_COST
    if encoding:
        cost += len(encoding)
    if type(error) is str:
        cost += len(error)
    if headers:
        for key, value in headers.items():
            cost += len(key) + len(value) + FRAME_COST
    return cost


def frame_cost(frame: Sequenced) -> int:
    """The credit a sequenced frame costs: nothing for a Fin (it goes out without credit)."""
    kind = type(frame)
    if kind is Data:
        return len(frame.payload) + FRAME_COST  # type: ignore[union-attr]
    if kind is Head:
        return head_cost(len(frame.payload), frame.headers, frame.encoding, frame.error)  # type: ignore[union-attr]
    return 0


def decode_frame(raw: bytes | memoryview) -> Frame:
    """Decode one frame; raises :class:`SocketProtocolError` for anything that is not one."""
    try:
        frame: Frame = FRAME_DECODER.decode(raw)
    except MALFORMED as e:
        raise SocketProtocolError("?", f"malformed frame: {e}") from None
    return frame


# -- events ----------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Opened:
    """The connection is open. ``peer_id``: the client's id (on the server side), else ``""``."""

    peer_id: str


@final
class MessageReceived(msgspec.Struct, frozen=True, gc=False):
    """A whole message, in order. Hand ``cost`` back to :meth:`SocketProtocol.consume` once read.

    ``error`` is set only on a response (``reply_to``): the receiver fails the connection with a
    protocol error for any other message that carries one.

    One is made per message, so it is a (frozen) msgspec struct rather than a frozen dataclass,
    whose ``__init__`` costs ten times as much. It holds bytes, a str dict and scalars, so it
    cannot be part of a reference cycle: ``gc=False`` keeps it out of the collector.
    """

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


# -- configuration and statistics ----------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class SocketConfig:
    """Tunables of one socket endpoint; validated here, so the protocol can trust them.

    Attributes:
        window: credit granted to the peer, in bytes (plus :data:`FRAME_COST` per frame); also
            the most this side keeps sent but unacknowledged, whatever credit the peer grants.
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
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    rto_min: float = 0.25
    rto_max: float = 4.0

    def __post_init__(self) -> None:
        for name, least in (("window", FRAME_COST), ("max_message", 0), ("frame_size", MIN_FRAME_SIZE)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ValueError(f"{name} must be an int of at least {least} bytes, not {value!r}")
        for name in ("keepalive", "peer_timeout", "connect_timeout", "rto_min", "rto_max"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and value > 0
                and math.isfinite(value)
            ):
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
    """A snapshot of one protocol endpoint's counters (``window``: the credit the peer still grants;
    ``buffered_bytes``: the credit this side holds for its application, see :class:`SocketStatistics`)."""

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
    buffered_bytes: int
    rto: float


@final
@dataclass(frozen=True, slots=True)
class SocketStatistics:
    """A snapshot of one socket's counters (see :mod:`conat._socket_protocol` for the terms).

    ``window`` is the credit the peer still grants (bytes, 0 when full); ``unacked`` and
    ``unacked_bytes`` are frames sent but not acknowledged; ``queued`` frames wait for credit;
    ``buffered`` messages wait for this side's reader. ``buffered_bytes`` is what this side holds
    from the peer, in credit units: unread messages, the message being reassembled and frames held
    beyond a gap. The peer can never make it exceed the window plus one frame, plus the one
    message being reassembled (up to ``max_message``).
    """

    state: str
    subject: str
    id: str
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
    buffered_bytes: int
    buffered: int
    pending_requests: int
    no_responders: int
    malformed: int
    rto: float


def socket_config(
    max_payload: int,
    *,
    window: int | None,
    max_message: int | None,
    keepalive: float | None,
    peer_timeout: float | None,
    connect_timeout: float | None = None,
) -> SocketConfig:
    """The config of a socket on a bus whose server takes ``max_payload`` bytes a message.

    Tunables left None take the defaults; ``peer_timeout`` defaults to at least three keepalives,
    and frames leave :data:`FRAME_ROOM` bytes below ``max_payload``.
    """
    defaults = SocketConfig()
    keepalive = defaults.keepalive if keepalive is None else keepalive
    if peer_timeout is None:
        peer_timeout = max(defaults.peer_timeout, 3 * keepalive)
    return SocketConfig(
        window=defaults.window if window is None else window,
        max_message=defaults.max_message if max_message is None else max_message,
        frame_size=max(max_payload - FRAME_ROOM, MIN_FRAME_SIZE),
        keepalive=keepalive,
        peer_timeout=peer_timeout,
        connect_timeout=defaults.connect_timeout if connect_timeout is None else connect_timeout,
    )
