"""The two halves of a socket endpoint's data path, sans I/O: what it sends and what it receives.

:class:`Sender` numbers, fragments and queues outgoing messages, lets them out as the peer's credit
allows, keeps them until they are acknowledged, and decides what to retransmit. :class:`Receiver`
puts incoming sequenced frames in order, drops duplicates, reassembles fragments into messages,
and grants credit in its acks. Neither knows the lifecycle: :class:`~conat._socket_protocol.SocketProtocol`
owns both, checks the state before it calls them, and turns a :class:`PeerFault` into a failure.
The rules they implement (sequencing, acks and repair, credit) are in that module's docstring.

Both halves bound what a peer can make them hold. The receiver admits a frame only if a sender
that kept to the credit granted could have sent it (:meth:`Receiver.on_sequenced`), so unread,
reassembling and out-of-order data stay within the window; the sender keeps at most its own
window unacknowledged, whatever credit the peer claims to grant.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, final

import msgspec

from ._errors import ConatError, ErrorCode, PayloadTooLarge, SocketBusy, SocketProtocolError
from ._socket_frames import (
    DATA_OVERHEAD,
    FRAME_COST,
    HEAD_OVERHEAD_BOUND,
    MIN_FRAGMENT,
    RESET_MALFORMED,
    RESET_TOO_LARGE,
    RESET_WINDOW,
    Ack,
    Data,
    Event,
    Fin,
    Frame,
    Head,
    MessageReceived,
    Reset,
    Sequenced,
    SocketConfig,
    StreamEnded,
    encode_frame,
    frame_cost,
    head_cost,
)

__all__ = ["MAX_OUT_OF_ORDER", "PeerFault", "Receiver", "Sender"]

MAX_OUT_OF_ORDER: Final = 4096
"""How far beyond a gap a frame may be and still be held; later ones are dropped (the sender
resends them). Credit bounds the bytes held; this bounds the work of listing what is missing."""
_MAX_NACK_RANGES: Final = 32
_MAX_NACK_FRAMES: Final = 4096


class _Out(msgspec.Struct, gc=False):
    """One sequenced frame on the sending side, from queued to acknowledged.

    One is made per frame sent: a msgspec struct is built in C, and holding only a frame and
    numbers it cannot be part of a cycle (``gc=False``).
    """

    frame: Sequenced
    cost: int
    sent_at: float = -math.inf
    nacked: bool = False


# -- sending ---------------------------------------------------------------------------------------


@final
class Sender:
    """The sending half: sequence numbers, fragmentation, credit, retransmission.

    ``queued`` frames wait for credit; ``unacked`` frames were sent and wait for an ack;
    ``sent_cost`` is the credit used so far (a frame may go out while it is below ``peer_limit``,
    and while less than the window is unacknowledged).
    Counters (``frames_sent`` counts the sequenced frames only) are read by the protocol's
    statistics.
    """

    def __init__(self, config: SocketConfig, subject: str) -> None:
        self.config = config
        self.subject = subject
        self.queued: deque[_Out] = deque()
        self.unacked: deque[_Out] = deque()
        self.unacked_cost = 0
        self.peer_limit = 0
        self.peer_max_message = config.max_message
        self.acked = 0
        self.fin_seq = 0
        self.rto = config.rto_min
        self.retransmit_at: float | None = None
        self.resend_due: float | None = None
        self.probe_at = -math.inf
        self.probe_gap = config.rto_min  # doubles with each probe up to rto_max; credit resets it
        self.credit_wanted = False
        """The application waits for credit (see :meth:`want_credit`)."""
        self.messages_sent = 0
        self.frames_sent = 0
        self.retransmitted = 0
        self.sent_cost = 0
        self._next_seq = 1
        self._fragment = config.frame_size - DATA_OVERHEAD

    @property
    def has_credit(self) -> bool:
        """Nothing waits for credit and the peer grants some: a new message can go out now."""
        return not self.queued and self.sent_cost < self.peer_limit and self.unacked_cost < self.config.window

    @property
    def credit(self) -> int:
        return max(0, self.peer_limit - self.sent_cost)

    @property
    def drained(self) -> bool:
        return not self.queued and not self.unacked

    def send(
        self,
        payload: bytes,
        now: float,
        headers: dict[str, str] | None,
        encoding: str | None,
        request: int,
        reply_to: int,
        error: ErrorCode | None,
    ) -> list[Frame]:
        """Queue one message as frames; return those the credit lets out (see SocketProtocol.send)."""
        size = len(payload)
        config = self.config
        if size > config.max_message or size > self.peer_max_message:
            raise PayloadTooLarge(size, min(config.max_message, self.peer_max_message), "socket message")
        if self.queued or self.sent_cost >= self.peer_limit or self.unacked_cost >= config.window:
            raise SocketBusy(self.subject, self.unacked_cost, config.window)
        # The common case, a message that fits in one frame, goes out at once: nothing is queued
        # and the peer grants credit (checked above), which is all release() would check.
        frame: Sequenced | None = None
        plain = not (headers or encoding is not None or request or reply_to or error is not None)
        cost = size + FRAME_COST
        if plain:
            if size <= self._fragment:
                frame = Data(self._next_seq, payload)
        elif not headers and size + HEAD_OVERHEAD_BOUND <= config.frame_size:
            frame = Head(self._next_seq, payload, False, headers, encoding, request, reply_to, error)
            if encoding:  # head_cost without headers, inlined: a call less per message
                cost += len(encoding)
            if type(error) is str:
                cost += len(error)
        if frame is not None:
            self._next_seq += 1
            self.sent_cost += cost
            self.unacked_cost += cost
            self.unacked.append(_Out(frame, cost, now))
            self.frames_sent += 1
            self.messages_sent += 1
            if self.retransmit_at is None:
                self.retransmit_at = now + self.rto
            return [frame]
        # Fragments, or headers to measure (the Head without headers above obviously fits: it
        # skips measuring the metadata, an encode per message).
        step = self._fragment
        offset = 0
        if not plain:
            overhead = len(
                encode_frame(Head(2**63 - 1, b"", True, headers, encoding, request, reply_to, error))
            )
            first = config.frame_size - overhead - 8
            if first < MIN_FRAGMENT:
                raise PayloadTooLarge(overhead, config.frame_size - MIN_FRAGMENT, "socket message metadata")
            chunk = payload if size <= first else payload[:first]
            self._push(Head(self._next_seq, chunk, size > first, headers, encoding, request, reply_to, error))
            offset = first
        while offset < size:
            chunk = payload[offset : offset + step]
            offset += step
            self._push(Data(self._next_seq, chunk, offset < size))
        self.messages_sent += 1
        return self.release(now)

    def send_fin(self, now: float) -> list[Frame]:
        """Queue our Fin after everything queued so far (it costs no credit)."""
        self.fin_seq = self._next_seq
        self._push(Fin(self._next_seq))
        return self.release(now)

    def _push(self, frame: Sequenced) -> None:
        self._next_seq += 1
        self.queued.append(_Out(frame, frame_cost(frame)))

    def release(self, now: float) -> list[Frame]:
        """Let out the queued frames the peer's credit (and our own window) allows."""
        out: list[Frame] = []
        queued = self.queued
        window = self.config.window
        while queued:
            o = queued[0]
            if o.cost and (self.sent_cost >= self.peer_limit or self.unacked_cost >= window):
                break
            queued.popleft()
            self.sent_cost += o.cost
            self.unacked_cost += o.cost
            o.sent_at = now
            self.unacked.append(o)
            out.append(o.frame)
        if out:
            self.frames_sent += len(out)
            if self.retransmit_at is None:
                self.retransmit_at = now + self.rto
        return out

    def on_ack(self, frame: Ack, now: float) -> None:
        """Drop what the peer acknowledged, take its credit, and mark what it says it lacks."""
        ack = min(frame.ack, self._next_seq - 1)
        if ack > self.acked:
            unacked = self.unacked
            while unacked and unacked[0].frame.seq <= ack:
                self.unacked_cost -= unacked.popleft().cost
            self.acked = ack
            self.rto = self.config.rto_min
            self.retransmit_at = now + self.rto if unacked else None
        if frame.limit > self.peer_limit:
            self.peer_limit = frame.limit
            self.probe_gap = self.config.rto_min
        if self.credit_wanted and self.sent_cost < self.peer_limit:
            self.credit_wanted = False
        if frame.missing and self.unacked:
            self._mark_missing(frame.missing)

    def _mark_missing(self, ranges: tuple[tuple[int, int], ...]) -> None:
        unacked = self.unacked
        first = unacked[0].frame.seq
        marked = 0
        for lo, hi in ranges[:_MAX_NACK_RANGES]:
            for seq in range(max(lo, first), min(hi, first + len(unacked) - 1) + 1):
                o = unacked[seq - first]
                if not o.nacked:
                    o.nacked = True
                    due = o.sent_at + self.config.rto_min / 2
                    if self.resend_due is None or due < self.resend_due:
                        self.resend_due = due
                marked += 1
                if marked >= _MAX_NACK_FRAMES:
                    return

    def retransmit(self, now: float, out: list[Frame]) -> None:
        """Append what is due for resending: everything after ``rto`` without progress, else the
        frames the peer named missing (each at most once per ``rto_min / 2``)."""
        unacked = self.unacked
        if self.retransmit_at is not None and now >= self.retransmit_at and unacked:
            for o in unacked:
                o.sent_at = now
                o.nacked = False
                out.append(o.frame)
            self.retransmitted += len(unacked)
            self.frames_sent += len(unacked)
            self.rto = min(self.rto * 2, self.config.rto_max)
            self.retransmit_at = now + self.rto
            self.resend_due = None
            return
        if self.resend_due is not None and now >= self.resend_due:
            self.resend_due = None
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
                elif self.resend_due is None or o.sent_at + gap < self.resend_due:
                    self.resend_due = o.sent_at + gap

    def resend_all(self, now: float) -> list[Frame]:
        """Every unacknowledged frame, now (the link came back)."""
        out: list[Frame] = [o.frame for o in self.unacked]
        for o in self.unacked:
            o.sent_at = now
        self.retransmitted += len(out)
        self.frames_sent += len(out)
        self.retransmit_at = now + self.rto if self.unacked else None
        return out

    def want_credit(self, now: float) -> None:
        """The application waits for credit to send (nothing of it is queued yet).

        If no window update comes within ``rto``, probe for it (it may have been lost, and with
        nothing queued or in flight nothing else would ask): TCP's persist timer.
        """
        if not self.credit_wanted:
            self.credit_wanted = True
            self.probe_at = now + self.probe_gap

    def probe(self, now: float) -> bool:
        """True when the window is shut and a probe (Ping) is due; schedules the next one, twice
        as far off each time up to ``rto_max`` (a peer that does not read is asked ever less)."""
        if (self.queued or self.credit_wanted) and not self.unacked and now >= self.probe_at:
            self.probe_gap = min(self.probe_gap * 2, self.config.rto_max)
            self.probe_at = now + self.probe_gap
            return True
        return False

    def deadline(self) -> float:
        """When :meth:`retransmit` or :meth:`probe` next has something to do (``inf``: never)."""
        deadline = math.inf
        if self.retransmit_at is not None and self.unacked:
            deadline = self.retransmit_at
        if self.resend_due is not None:
            deadline = min(deadline, self.resend_due)
        if (self.queued or self.credit_wanted) and not self.unacked:
            deadline = min(deadline, self.probe_at)
        return deadline


# -- receiving -------------------------------------------------------------------------------------


class PeerFault(Exception):
    """Raised by :class:`Receiver` when the peer broke the protocol or sent too much.

    Internal: the protocol fails the connection with ``error`` and tells the peer with ``reset``.
    """

    def __init__(self, error: ConatError, reset: Reset) -> None:
        super().__init__(error)
        self.error = error
        self.reset = reset


@final
class Receiver:
    """The receiving half: ordering, duplicate detection, reassembly, credit grants and acks.

    ``ack_needed`` says an Ack is due (the protocol sends it from ``poll``); ``advertised`` is the
    credit limit last granted to the peer; ``window`` is the credit granted beyond what the
    application has read (0 for a server connection until it is accepted). ``received`` counts
    the credit of every frame delivered in order, as the peer's ``sent_cost`` does.

    **Admission.** A sender lets a frame out only while the cost of every frame before it is below
    the limit it was granted (so the last one may go over; a Fin needs no credit). The receiver
    checks each new frame against that rule from what it knows: the frames delivered in order,
    the frames held beyond a gap, and :data:`~conat._socket_frames.FRAME_COST` for each frame
    still missing below the highest one (only the last frame can be a Fin). A peer that kept to
    its grants always passes; one that did not is failed with ``Reset(429)`` before the frame is
    kept. So what the peer makes us hold (:attr:`buffered`) stays below the window plus one frame,
    plus the message being reassembled, whose fragments the limit grants on top: that one is
    bounded by ``max_message`` (413), and its fragments but the last must carry at least
    :data:`~conat._socket_frames.MIN_FRAGMENT` bytes each (400), else empty fragments, each
    granted its own cost, could pile up without end. A Fin must be the last frame (400).
    """

    def __init__(self, config: SocketConfig, subject: str, window: int) -> None:
        self.config = config
        self.subject = subject
        self.window = window
        self.held: dict[int, Sequenced] = {}
        self.advertised = window
        self.ack_needed = False
        self.eof_received = False
        self.messages_received = 0
        self.duplicates_dropped = 0
        self.received = 0
        self._held_cost = 0
        self._held_top = 0
        self._fin_at = 0  # the seq of the peer's Fin, once known (held or delivered)
        self._expected = 1
        self._parts: list[bytes] = []
        self._head: Data | Head | None = None
        self._partial_size = 0
        self._partial_cost = 0
        self._consumed = 0

    @property
    def buffered(self) -> int:
        """Credit held for the application: unread messages, the partial one, frames beyond a gap."""
        return self.received - self._consumed + self._held_cost

    def on_sequenced(self, frame: Sequenced, events: list[Event]) -> None:
        """Take a Data, Head or Fin frame; deliver it and whatever it unblocks, in order.

        Raises:
            PeerFault: the frame breaks the protocol, overruns the credit granted, or makes a
                message too large. Events appended before it stand.
        """
        self.ack_needed = True
        seq = frame.seq
        expected = self._expected
        held = self.held
        if seq != expected:
            if seq < expected or seq in held:
                self.duplicates_dropped += 1
            elif seq - expected <= MAX_OUT_OF_ORDER:
                self._check_order(frame)
                cost = frame_cost(frame)
                self._admit(frame, cost)
                held[seq] = frame
                self._held_cost += cost
                self._held_top = max(self._held_top, seq)
            return
        kind = type(frame)
        if kind is not Fin and not frame.more and self._head is None and not self.eof_received and not held:  # type: ignore[union-attr]
            # The common case, _admit and _deliver inlined: the next message, whole in one frame,
            # with nothing held beyond it (so the credit rule is: what came before is below the limit).
            payload = frame.payload  # type: ignore[union-attr]
            size = len(payload)
            if size > self.config.max_message:
                raise self._too_large(size)
            if self.received >= self.advertised:
                raise self._overrun(seq)
            if kind is Data:
                cost = size + FRAME_COST
                self._expected = seq + 1
                self.received += cost
                self.messages_received += 1
                events.append(MessageReceived(payload, None, None, 0, 0, None, cost))
                return
            head: Head = frame  # type: ignore[assignment]
            if head.error is not None and not head.reply_to:
                raise self._violation(f"an error code on a message that is not a response (seq {seq})")
            encoding = head.encoding
            if head.headers is None and type(head.error) is not str:  # head_cost, inlined
                cost = size + FRAME_COST + len(encoding) if encoding else size + FRAME_COST
            else:
                cost = head_cost(size, head.headers, encoding, head.error)
            self._expected = seq + 1
            self.received += cost
            self.messages_received += 1
            events.append(
                MessageReceived(payload, head.headers, head.encoding, head.request, head.reply_to,
                                head.error, cost)
            )  # fmt: skip
            return
        cost = frame_cost(frame)
        if held:
            self._check_order(frame)
            self._admit(frame, cost)
        elif cost and self.received >= self.advertised:
            raise self._overrun(seq)
        self._deliver(frame, cost, events)
        while held:
            nxt = held.pop(self._expected, None)
            if nxt is None:
                break
            cost = frame_cost(nxt)
            self._held_cost -= cost
            self._deliver(nxt, cost, events)
        if not held:
            self._held_top = 0

    def _check_order(self, frame: Sequenced) -> None:
        """A new frame to hold (or to deliver while others are held): a Fin must be the last frame."""
        seq = frame.seq
        if self._fin_at and seq > self._fin_at:
            raise self._violation(f"data (seq {seq}) after end of stream (seq {self._fin_at})")
        if type(frame) is Fin:
            if self._fin_at or (self.held and self._held_top > seq):
                raise self._violation(f"end of stream (seq {seq}) before the last frame")
            self._fin_at = seq

    def _admit(self, frame: Sequenced, cost: int) -> None:
        """Raise PeerFault unless a sender that kept to our grants could have sent ``frame`` too.

        ``frame`` (of ``cost``) is new: not delivered, not held. See "Admission" above.
        """
        seq = frame.seq
        held = self.held
        top, top_frame = seq, frame
        if held and self._held_top > seq:
            top = self._held_top
            top_frame = held[top]
        below_cost = self._held_cost + cost  # of every known frame; below `last` once adjusted
        below = len(held) + 1
        if type(top_frame) is Fin:  # the Fin needed no credit: the rule binds the frame before it
            last = top - 1
            before = frame if seq == last else held.get(last)
            if before is not None:
                below_cost -= cost if before is frame else frame_cost(before)
                below -= 1
        else:
            last = top
            below_cost -= cost if top_frame is frame else frame_cost(top_frame)
        below -= 1  # the top frame
        if last < self._expected:
            return  # a Fin right after what was delivered
        missing = last - self._expected - below
        if self.received + below_cost + FRAME_COST * missing >= self.advertised:
            raise self._overrun(seq)

    def _deliver(self, frame: Sequenced, cost: int, events: list[Event]) -> None:
        self._expected += 1
        self.received += cost
        if isinstance(frame, Fin):
            if self._head is not None:
                raise self._violation("end of stream inside a fragmented message")
            self.eof_received = True
            self._fin_at = frame.seq
            events.append(StreamEnded())
            return
        if self.eof_received:
            raise self._violation(f"data (seq {frame.seq}) after end of stream")
        if type(frame) is Head and frame.error is not None and not frame.reply_to:
            raise self._violation(f"an error code on a message that is not a response (seq {frame.seq})")
        payload = frame.payload
        head = self._head
        if head is None:
            if not frame.more:  # a whole message in one frame
                if len(payload) > self.config.max_message:
                    raise self._too_large(len(payload))
                self.messages_received += 1
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
            raise self._violation(f"a message head (seq {frame.seq}) inside a fragmented message")
        if frame.more and len(payload) < MIN_FRAGMENT:
            raise self._violation(f"a fragment (seq {frame.seq}) of {len(payload)} bytes, not the last")
        size = self._partial_size + len(payload)
        if size > self.config.max_message:
            raise self._too_large(size)  # before the fragment is kept
        self._parts.append(payload)
        self._partial_size = size
        self._partial_cost += cost
        if frame.more:
            return
        whole = b"".join(self._parts)
        cost = self._partial_cost
        self._parts = []
        self._head = None
        self._partial_size = 0
        # The credit granted for the fragments stays granted (the limit never shrinks), but it now
        # belongs to an unread message: the application's consume() accounts for it from here on.
        self.advertised = self.limit()
        self._partial_cost = 0
        self.messages_received += 1
        if isinstance(head, Head):
            events.append(
                MessageReceived(
                    whole, head.headers, head.encoding, head.request, head.reply_to, head.error, cost
                )
            )
        else:
            events.append(MessageReceived(whole, None, None, 0, 0, None, cost))

    def _too_large(self, size: int) -> PeerFault:
        limit = self.config.max_message
        return PeerFault(
            PayloadTooLarge(size, limit, "socket message from the peer"),
            Reset(RESET_TOO_LARGE, f"message of {size} bytes is over the limit of {limit} bytes"),
        )

    def _overrun(self, seq: int) -> PeerFault:
        what = f"frame {seq} is beyond the credit granted (limit {self.advertised})"
        return PeerFault(
            SocketProtocolError(self.subject, f"peer overran the window: {what}"), Reset(RESET_WINDOW, what)
        )

    def _violation(self, what: str) -> PeerFault:
        return PeerFault(
            SocketProtocolError(self.subject, f"peer broke the protocol: {what}"),
            Reset(RESET_MALFORMED, what),
        )

    def consume(self, cost: int) -> bool:
        """The application read a message of ``cost`` credit units. True if a window update is due."""
        self._consumed += cost
        if self._consumed + self.window - self.advertised >= self.window // 4:
            self.ack_needed = True
        return self.ack_needed

    def limit(self) -> int:
        """The credit limit we grant: consumed + window + the fragments being reassembled."""
        return max(self.advertised, self._consumed + self.window + self._partial_cost)

    def grant(self) -> int:
        """The current limit, now advertised to the peer (in an Accept)."""
        self.advertised = limit = self.limit()
        return limit

    def ack_frame(self) -> Ack:
        """The Ack to send now: the highest in-order seq, the limit, and the missing ranges."""
        self.ack_needed = False
        limit = self.grant()
        if not self.held:
            return Ack(self._expected - 1, limit)
        return Ack(self._expected - 1, limit, self._missing())

    def _missing(self) -> tuple[tuple[int, int], ...]:
        ranges: list[tuple[int, int]] = []
        lo = self._expected
        for seq in sorted(self.held):
            if seq > lo:
                ranges.append((lo, seq - 1))
                if len(ranges) >= _MAX_NACK_RANGES:
                    break
            lo = seq + 1
        return tuple(ranges)
