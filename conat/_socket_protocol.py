"""The reliable-socket protocol, sans I/O: frames and time in, events and frames out.

Theory of operation
-------------------
A socket joins two endpoints, a *client* (the side that connects) and a *server connection* (one per
client, made by the listening side), over a lossy datagram service: core NATS delivers each frame at
most once, and drops everything sent while the link is down. This module holds no sockets, tasks or
clocks. The asyncio pump (:mod:`conat._socket`) hands it frames with :meth:`SocketProtocol.receive`
and the time with every call, publishes whatever :meth:`SocketProtocol.send` and
:meth:`SocketProtocol.poll` return, and calls ``poll`` again at :meth:`SocketProtocol.next_deadline`.

The frames (:mod:`conat._socket_frames`) are ``Open``/``Accept`` (connect), ``Data``/``Head``
(message fragments, numbered), ``Fin`` (end of stream, numbered), ``Ack`` (acks, credit, repair),
``Ping`` (keepalive, probe), ``Close`` and ``Reset``. This module owns the lifecycle and the timers;
the data path is split into a :class:`~conat._socket_flow.Sender` and a
:class:`~conat._socket_flow.Receiver` (:mod:`conat._socket_flow`).

**Sequencing.** Each direction numbers its Data/Head/Fin frames 1, 2, 3, ... The receiver delivers
frames strictly in sequence: a duplicate (seq already delivered or already held) is dropped and
counted; a frame from the future is held (up to :data:`~conat._socket_flow.MAX_OUT_OF_ORDER`
beyond the gap, and within credit) until the gap before it is filled. Fragments are joined into one message when the frame with ``more=False`` arrives.

**Acks and repair.** Whatever arrives sets "ack needed"; the next :meth:`poll` sends one ``Ack``
carrying the highest in-order seq, the credit limit, and (when frames are held beyond a gap) the
missing ranges. The pump polls at the end of each batch of incoming frames, so acks are coalesced
per batch. The sender drops acknowledged frames; it retransmits a frame named in ``missing`` at
once (at most once per ``rto_min / 2``), and when acks stop progressing for ``rto`` it resends
every unacknowledged frame (go-back-N) and doubles ``rto`` up to ``rto_max``. Progress resets it.

**Credit.** The unit is a frame's payload bytes plus :data:`~conat._socket_frames.FRAME_COST`
(so empty messages cost something too), plus a Head's metadata
(:func:`~conat._socket_frames.frame_cost`). The receiver grants
``limit = consumed + window + partial``: ``consumed`` counts messages the application has *read*
(:meth:`consume`), ``partial`` the fragments of the message being reassembled (so a message
larger than the window still gets through). The limit never shrinks. The sender may release the
next frame while its cumulative cost is below the peer's limit and while less than its own
``window`` is unacknowledged. The receiver *enforces* the rule: a frame that a sender keeping to
its grants could not have sent fails the connection with ``Reset(429)``
(:class:`~conat._socket_flow.Receiver` explains how out-of-order frames are judged). So at most
``window`` plus one frame plus one message is buffered on the receiving side, whatever the peer
does, and the sender keeps at most its window for retransmission, whatever the peer grants. A
sender with queued frames and no credit, or whose application waits for credit
(:meth:`want_credit`), probes with ``Ping`` in case the window update was lost: after ``rto_min``,
then twice as long each time up to ``rto_max``, until credit comes.

**Before accept.** A server connection grants no credit until the application accepts it
(:meth:`accepted`): its ``Accept`` carries limit 0 unless the application took the connection
before that frame went out, and accepting sends the window in an ``Ack``. So connections waiting
in a listener's backlog hold no data; their clients' sends wait (a Fin needs no credit).

**Keepalive.** A side that has sent nothing for ``keepalive`` seconds sends ``Ping``; a side that
has heard nothing for ``peer_timeout`` seconds fails with :class:`PeerDead`. While the pump reports
the link down (:meth:`link_down`) pings and retransmits pause (nothing would get through), but
dead-peer detection does not: the outage counts as hearing from the peer when it began, so a link
that stays down for ``peer_timeout`` fails the socket with :class:`PeerDead` rather than leaving
its readers waiting forever. :meth:`link_up` counts as hearing from the peer too, and resends
every unacknowledged frame at once.

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

**Closing, and a lost Close.** ``Close`` and ``Reset`` are sent once and never acknowledged. A lost
``Reset`` still ends the peer with an error, if another one: the listening side answers a client's
next frame with ``Reset(404)``, and a server connection whose client is gone fails with
:class:`PeerDead`. A lost ``Close`` would leave the peer open, and its next keepalive would meet "unknown
connection" (or silence, on the client side), failing a connection that ended cleanly. So a side
that closed gracefully (``close`` or ``finish``) *lingers* for ``peer_timeout`` seconds
(:attr:`SocketProtocol.linger_until`): it answers every late frame of the connection but ``Close``
and ``Reset`` with ``Close``. Until then the client's socket keeps its inbox route (and feeds this
rule), and the listening side remembers the connection's key and answers the same way.
The peer, still open, sends something within its own ``keepalive`` (a ping, a retransmit, data),
which is shorter than our ``peer_timeout`` in any configuration where an idle connection survives
at all (else we would declare it dead), so it hears ``Close`` unless every answer is lost too. The
same repairs a lost final ``Ack`` after both Fins: the peer's retransmitted Fin is answered with
``Close``. A side that received ``Close``, failed or aborted does not linger.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Final, Literal, final

from ._errors import (
    ConatError,
    ErrorCode,
    PeerDead,
    SocketClosed,
    SocketProtocolError,
    SocketReset,
    Timeout,
)
from ._socket_flow import PeerFault, Receiver, Sender
from ._socket_frames import (
    MAX_REASON,
    Accept,
    Ack,
    Close,
    ConnectionClosed,
    Data,
    Event,
    Fin,
    Frame,
    Head,
    Open,
    Opened,
    Ping,
    ProtocolStatistics,
    Reset,
    SocketConfig,
)

__all__ = [
    "TRANSITIONS",
    "Role",
    "SocketProtocol",
    "SocketState",
    "Trigger",
]


class SocketState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


Trigger = Literal["accept", "send_eof", "finish", "close", "peer_close", "fail", "abort"]
Role = Literal["client", "server"]

# The states as module globals: on CPython 3.11 ``SocketState.OPEN`` costs a metaclass attribute
# lookup (~0.1 us) at every use, and the per-message paths check the state several times.
_CONNECTING: Final = SocketState.CONNECTING
_OPEN: Final = SocketState.OPEN
_CLOSING: Final = SocketState.CLOSING
_CLOSED: Final = SocketState.CLOSED
_SEQUENCED_TYPES: Final = (Data, Head, Fin)
"""The frames that carry the stream (a tuple built once: ``Data | Head | Fin`` would build a new
union object at every test of the per-poll count below)."""
_C, _O, _CL, _X = _CONNECTING, _OPEN, _CLOSING, _CLOSED
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
        self.state = _CONNECTING
        self.error: ConatError | None = None
        self.closed_by_peer = False
        self.eof_sent = False
        self.linger_until: float | None = None
        """After a graceful close: until then, late frames from the peer are answered with Close."""
        self._tx = Sender(config, subject)
        self._rx = Receiver(config, subject, config.window if role == "client" else 0)
        self._accept_needed = False
        self._close_needed = False
        self._reset_needed: Reset | None = None
        # time
        self._link_up = True
        self._last_sent = now
        self._last_received = now
        self._connect_deadline = now + config.connect_timeout
        self._open_at: float | None = None
        # counters (the halves count the data path)
        self.frames_received = 0
        self._control_frames_sent = 0

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
        self._tx.queued.clear()
        return ConnectionClosed(error)

    @property
    def eof_received(self) -> bool:
        """The peer's Fin was delivered: it sends nothing more."""
        return self._rx.eof_received

    @property
    def writable(self) -> bool:
        """True when :meth:`send` would accept a message now (open, and the peer granted credit)."""
        tx = self._tx  # Sender.has_credit, inlined: this is read before every send
        return (
            self.state is _OPEN
            and not tx.queued
            and tx.sent_cost < tx.peer_limit
            and tx.unacked_cost < self.config.window
        )

    @property
    def retransmit_at(self) -> float | None:
        """When unacknowledged frames are next resent if no ack comes (None: nothing in flight)."""
        return self._tx.retransmit_at

    @property
    def drained(self) -> bool:
        """Everything sent so far (Fin included) has been acknowledged."""
        return self._tx.drained

    def connect(self, now: float) -> list[Frame]:
        """Client only: the Open frame (retransmitted by :meth:`poll` until Accept arrives)."""
        if self.role != "client" or self.state is not _CONNECTING or self._open_at is not None:
            raise SocketProtocolError(
                self.subject, f"connect() on a {self.role} in state {self.state.value!r}"
            )
        self._open_at = now + self._tx.rto
        self._last_sent = now
        self._control_frames_sent += 1
        return [self._open_frame()]

    def _open_frame(self) -> Open:
        return Open(self.id, self._rx.advertised, self.config.max_message)

    # -- sending ---------------------------------------------------------------------------------
    def check_can_send(self) -> None:
        """Raise what :meth:`send` would raise for the state alone (closed, closing, connecting)."""
        if self.state is _OPEN:
            return
        if self.state is _CONNECTING:
            raise SocketProtocolError(self.subject, "send before the connection is open")
        if self.state is _CLOSING:
            raise SocketClosed(self.subject, "closed for writing (end of stream sent)")
        raise self.closed_error()

    def closed_error(self) -> ConatError:
        """What ended the connection, as sending and receiving both report it (once CLOSED).

        Its error (reset, dead peer, "aborted: ...", "closed by peer before end of stream"), else
        :class:`SocketClosed` "closed by peer" (after the peer's end of stream) or "closed".
        """
        return self.error or SocketClosed(self.subject, "closed by peer" if self.closed_by_peer else "closed")

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
            SocketProtocolError: ``error`` without ``reply_to`` (only a response carries an error).
        """
        if self.state is not _OPEN:
            self.check_can_send()
        if error is not None and not reply_to:
            raise SocketProtocolError(self.subject, "an error code can only be sent in a response")
        frames = self._tx.send(payload, now, headers, encoding, request, reply_to, error)
        if frames:
            self._last_sent = now
        return frames

    def want_credit(self, now: float) -> None:
        """The application waits to send but the peer's window is shut (nothing is queued).

        Probes for a lost window update (see :attr:`next_deadline`, and "Credit") until credit
        comes: without it, a lost update would leave both sides waiting, since a side that only
        answers the peer's keepalives never pings itself.
        """
        if self.state is _OPEN and not self.writable:
            self._tx.want_credit(now)

    def send_eof(self, now: float) -> list[Frame]:
        """Half-close: queue our Fin after every message sent so far. We may still receive."""
        self._transition("send_eof")
        self.eof_sent = True
        frames = self._tx.send_fin(now)
        if frames:
            self._last_sent = now
        return frames

    def close(self, now: float) -> list[Frame]:
        """Leave for good after :meth:`send_eof` (normally once :attr:`drained`): tell the peer."""
        self._transition("close")
        self._linger(now)
        return self.poll(now)

    def abort(self, code: ErrorCode, reason: str, now: float) -> list[Frame]:
        """Abort at once: the peer gets ``Reset(code, reason)``; unsent data is discarded."""
        self._transition("abort")
        self.error = SocketClosed(self.subject, f"aborted: {reason}")
        self._reset_needed = Reset(code, reason)
        self._tx.queued.clear()
        return self.poll(now)

    def fail(self, error: ConatError) -> None:
        """Fail for a reason outside the protocol (the bus client closed). The peer is not told."""
        if self.state is not _CLOSED:
            self._fail(error)

    def consume(self, cost: int) -> bool:
        """The application read a message of ``cost`` credit units. True if a window update is due."""
        return self._rx.consume(cost)

    def accepted(self) -> None:
        """Server only: the application accepted this connection; grant the peer the full window.

        Until then the peer has no credit (see "Before accept"). The window goes out in the
        ``Accept`` if that is still due, else in an ``Ack`` from the next :meth:`poll`. Idempotent.
        """
        if self.role != "server":
            raise SocketProtocolError(self.subject, "accepted() on a client")
        rx = self._rx
        if rx.window == self.config.window:
            return
        rx.window = self.config.window
        if self.state is not _CLOSED and not self._accept_needed:
            rx.ack_needed = True

    # -- receiving -------------------------------------------------------------------------------
    def receive(self, frame: Frame, now: float) -> list[Event]:
        """Take one frame from the peer; return what happened, in order."""
        if self.state is _CLOSED:
            linger = self.linger_until
            if linger is not None and now < linger and not isinstance(frame, Close | Reset):
                self._close_needed = True  # the peer missed our Close: say it again
            return []
        self._last_received = now
        self.frames_received += 1
        events: list[Event] = []
        kind = type(frame)
        if kind is Data or kind is Head or kind is Fin:
            if self.state is not _CONNECTING:
                try:
                    self._rx.on_sequenced(frame, events)  # type: ignore[arg-type]
                except PeerFault as fault:
                    events.append(self._fail(fault.error, fault.reset))
        elif isinstance(frame, Ack):
            self._tx.on_ack(frame, now)
        elif isinstance(frame, Ping):
            self._rx.ack_needed = True
        elif isinstance(frame, Open):
            self._on_open(frame, events)
        elif isinstance(frame, Accept):
            if self.role == "client" and self.state is _CONNECTING:
                self._transition("accept")
                self._tx.peer_limit = max(self._tx.peer_limit, frame.limit)  # an Ack may have come first
                self._tx.peer_max_message = frame.max_message
                self._last_sent = now
                events.append(Opened(""))
        elif isinstance(frame, Close):
            self._on_close(events)
        elif isinstance(frame, Reset):
            self._on_reset(frame, events)
        if self.state is _CLOSING and self._rx.eof_received and self._fin_acked:
            self._transition("finish")
            self._linger(now)
            events.append(ConnectionClosed(None))
        return events

    def _linger(self, now: float) -> None:
        self._close_needed = True
        self.linger_until = now + self.config.peer_timeout

    @property
    def _fin_acked(self) -> bool:
        return self.eof_sent and self._tx.acked >= self._tx.fin_seq

    def _on_open(self, frame: Open, events: list[Event]) -> None:
        if self.role != "server":
            return
        if self.state is _CONNECTING:
            self._transition("accept")
            self.id = frame.id
            self._tx.peer_limit = frame.limit
            self._tx.peer_max_message = frame.max_message
            events.append(Opened(frame.id))
        self._accept_needed = True  # also for a retransmitted Open: our Accept may have been lost

    def _on_close(self, events: list[Event]) -> None:
        if self.state is _CONNECTING:
            return
        self._transition("peer_close")
        self.closed_by_peer = True
        self._tx.queued.clear()
        if not self._rx.eof_received:
            self.error = SocketClosed(self.subject, "closed by peer before end of stream")
        events.append(ConnectionClosed(self.error))

    def _on_reset(self, frame: Reset, events: list[Event]) -> None:
        if self.state is _CLOSING and self._rx.eof_received:
            # Both Fins were sent and ours was retransmitted only because its ack was lost: the
            # peer finished, forgot us, and answers "unknown connection". Nothing is lost.
            self._transition("finish")
            events.append(ConnectionClosed(None))
            return
        code = frame.code if type(frame.code) is int else str(frame.code)[:MAX_REASON]
        events.append(self._fail(SocketReset(self.subject, code, frame.reason[:MAX_REASON])))

    # -- link state ------------------------------------------------------------------------------
    def link_down(self, now: float) -> None:
        """The bus connection is down: pause pings and retransmits. The peer now has
        ``peer_timeout`` seconds (from now, or from when it was last heard if that is later) to
        be heard from again, or the socket fails with :class:`PeerDead`."""
        self._link_up = False
        self._last_received = max(self._last_received, now)

    def link_up(self, now: float) -> list[Frame]:
        """The bus connection is back: resend everything unacknowledged now, and restart timers."""
        self._link_up = True
        self._last_received = max(self._last_received, now)
        self._tx.rto = self.config.rto_min
        if self.state is _CONNECTING:
            if self.role == "client" and self._open_at is not None:
                self._open_at = now
            return self.poll(now)
        if self.state is _CLOSED:
            return self.poll(now)
        out = self._tx.resend_all(now)
        out.extend(self.poll(now))
        if not out or not isinstance(out[-1], Ack | Ping):
            out.append(Ping())  # elicit an ack (and, server side, refresh the reply permission)
        self._last_sent = now
        self._control_frames_sent += 1
        return out

    # -- timers ----------------------------------------------------------------------------------
    def poll(self, now: float) -> list[Frame]:
        """Everything due at ``now``: acks, accepts, released credit, retransmits, keepalives.

        Also fails the connection on a connect timeout or a dead peer (see :attr:`state` and
        :attr:`error` afterwards).
        """
        state = self.state
        out: list[Frame] = []
        if state is _CLOSED:
            self._final_frames(out)
            return out
        tx = self._tx
        if state is _CONNECTING:
            if self.role == "client" and self._open_at is not None:
                if now >= self._connect_deadline:
                    elapsed = now - (self._connect_deadline - self.config.connect_timeout)
                    self._fail(Timeout(self.subject, elapsed, "socket connect"))
                elif now >= self._open_at and self._link_up:
                    out.append(self._open_frame())
                    tx.rto = min(tx.rto * 2, self.config.rto_max)
                    self._open_at = now + tx.rto
                    self._control_frames_sent += 1
                    self._last_sent = now
            return out
        if now - self._last_received >= self.config.peer_timeout:
            self._fail(PeerDead(self.subject, self.config.peer_timeout))
            return out
        rx = self._rx
        if self._accept_needed:
            self._accept_needed = False
            out.append(Accept(rx.grant(), self.config.max_message))
        if tx.queued:
            out.extend(tx.release(now))
        if self._link_up:
            tx.retransmit(now, out)
        if rx.ack_needed:
            out.append(rx.ack_frame())
        elif self._link_up and tx.probe(now):
            out.append(Ping())  # the window is shut: probe in case the update was lost
        if not out and self._link_up and now - self._last_sent >= self.config.keepalive:
            out.append(Ping())
        if out:
            self._last_sent = now
            self._control_frames_sent += sum(1 for f in out if not isinstance(f, _SEQUENCED_TYPES))
        return out

    def _final_frames(self, out: list[Frame]) -> None:
        if self._rx.ack_needed and self.error is None:
            out.append(self._rx.ack_frame())
        if self._close_needed:
            self._close_needed = False
            out.append(Close())
        if self._reset_needed is not None:
            out.append(self._reset_needed)
            self._reset_needed = None
        if out:
            self._control_frames_sent += len(out)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do (``-inf``: now); None if never."""
        state = self.state
        if state is _CLOSED:
            due = self._close_needed or self._reset_needed or self._rx.ack_needed
            return -math.inf if due else None
        if self._rx.ack_needed or self._accept_needed:
            return -math.inf
        if state is _CONNECTING:
            if self._open_at is None:
                return None
            return min(self._open_at, self._connect_deadline)
        if not self._link_up:
            return self._last_received + self.config.peer_timeout
        return min(
            self._last_received + self.config.peer_timeout,
            self._last_sent + self.config.keepalive,
            self._tx.deadline(),
        )

    def statistics(self) -> ProtocolStatistics:
        tx, rx = self._tx, self._rx
        return ProtocolStatistics(
            state=self.state.value,
            messages_sent=tx.messages_sent,
            messages_received=rx.messages_received,
            frames_sent=tx.frames_sent + self._control_frames_sent,
            frames_received=self.frames_received,
            retransmitted=tx.retransmitted,
            duplicates_dropped=rx.duplicates_dropped,
            out_of_order=len(rx.held),
            unacked=len(tx.unacked),
            unacked_bytes=tx.unacked_cost,
            queued=len(tx.queued),
            window=tx.credit,
            buffered_bytes=rx.buffered,
            rto=tx.rto,
        )
