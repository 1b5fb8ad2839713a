"""The socket protocol, pure: frames and explicit ``now`` in, events and frames out. No I/O, no sleeps."""

from __future__ import annotations

import gc
import itertools
import math
import random
from collections import deque

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conat import (
    PayloadTooLarge,
    PeerDead,
    SocketBusy,
    SocketClosed,
    SocketProtocolError,
    SocketReset,
    Timeout,
)
from conat._socket_frames import (
    FRAME_COST,
    MAX_REASON,
    MIN_FRAGMENT,
    RESET_WINDOW,
    Accept,
    Ack,
    Close,
    ConnectionClosed,
    Data,
    Fin,
    Frame,
    Head,
    MessageReceived,
    Open,
    Opened,
    Ping,
    Reset,
    SocketConfig,
    StreamEnded,
    decode_frame,
    encode_frame,
    frame_cost,
)
from conat._socket_protocol import TRANSITIONS, SocketProtocol, SocketState

SUBJECT = "sock.test"


def make_pair(now: float = 0.0, **options: object) -> tuple[SocketProtocol, SocketProtocol]:
    """A client and a server protocol, connected through a perfect channel; the server's
    application accepted the connection before its Accept went out (so it carries the window)."""
    config = SocketConfig(**options)  # type: ignore[arg-type]
    client = SocketProtocol("client", config, now, id="client-1", subject=SUBJECT)
    server = SocketProtocol("server", config, now, subject=SUBJECT)
    [open_] = client.connect(now)
    assert isinstance(open_, Open)
    assert server.receive(open_, now) == [Opened("client-1")]
    server.accepted()
    [accept] = server.poll(now)
    assert isinstance(accept, Accept)
    assert client.receive(accept, now) == [Opened("")]
    assert client.state is server.state is SocketState.OPEN
    return client, server


def deliver(frames: list[Frame], to: SocketProtocol, now: float) -> list[object]:
    events: list[object] = []
    for f in frames:
        events.extend(to.receive(decode_frame(encode_frame(f)), now))
    return events


def exchange(
    a: SocketProtocol, b: SocketProtocol, now: float, first: list[Frame] | None = None
) -> list[object]:
    """Pass frames both ways (perfect channel) until both are quiet; returns b's and a's events."""
    events: list[object] = []
    pending_ab = list(first or [])
    pending_ba: list[Frame] = []
    for _ in range(100):
        events += deliver(pending_ab, b, now)
        pending_ba += b.poll(now)
        pending_ab = []
        events += deliver(pending_ba, a, now)
        pending_ab += a.poll(now)
        pending_ba = []
        if not pending_ab:
            return events
    raise AssertionError("the exchange never went quiet")


def messages(events: list[object]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, MessageReceived)]


# -- frames ----------------------------------------------------------------------------------------


def test_frames_round_trip_and_small_overhead() -> None:
    frames: list[Frame] = [
        Open("id", 10, 20),
        Accept(10, 20),
        Data(1, b"x" * 128),
        Head(2, b"y", True, {"k": "v"}, "json", 3, 0, None),
        Fin(3),
        Ack(2, 1000, ((4, 6),)),
        Ping(),
        Close(),
        Reset(404, "unknown connection"),
    ]
    for f in frames:
        assert decode_frame(encode_frame(f)) == f
    assert len(encode_frame(Data(1000, b"x" * 128))) - 128 <= 8
    with pytest.raises(SocketProtocolError) as e:
        decode_frame(b"\x00garbage")
    assert e.value.code == "protocol" and "malformed frame" in str(e.value)


def test_per_message_objects_stay_out_of_the_garbage_collector() -> None:
    # Frames and MessageReceived hold only bytes, str dicts and numbers: no cycles, so gc=False.
    assert not gc.is_tracked(decode_frame(encode_frame(Head(1, b"x", False, {"k": "v"}, "raw"))))
    assert not gc.is_tracked(MessageReceived(b"x", {"k": "v"}, "raw", 1, 0, None, 33))


@pytest.mark.parametrize(
    ("options", "kind", "cost"),
    [
        ({}, Data, 3 + FRAME_COST),
        ({"encoding": "raw"}, Head, 3 + FRAME_COST + len("raw")),
        ({"request": 4}, Head, 3 + FRAME_COST),
        ({"headers": {"k": "v"}, "encoding": "json"}, Head, 3 + FRAME_COST + len("json") + 2 + FRAME_COST),
        ({"reply_to": 2, "error": 500}, Head, 3 + FRAME_COST),
        ({"reply_to": 2, "error": "EBAD"}, Head, 3 + FRAME_COST + len("EBAD")),
    ],
)
def test_a_message_that_fits_one_frame_goes_out_at_once(
    options: dict[str, object], kind: type, cost: int
) -> None:
    # The credit a message costs: its payload, FRAME_COST, and a Head's metadata by its characters
    # (plus FRAME_COST per header), the same on both sides.
    client, server = make_pair(rto_min=0.5)
    window = client.statistics().window
    [frame] = client.send(b"abc", 1.0, **options)  # type: ignore[arg-type]
    assert isinstance(frame, Data | Head) and type(frame) is kind
    assert frame.seq == 1 and frame.payload == b"abc" and not frame.more
    stats = client.statistics()
    assert (stats.messages_sent, stats.unacked, stats.queued) == (1, 1, 0)
    assert stats.unacked_bytes == cost
    assert stats.window == window - cost and client.retransmit_at == 1.5
    [event] = server.receive(frame, 1.0)
    assert event == MessageReceived(
        b"abc",
        options.get("headers"),  # type: ignore[arg-type]
        options.get("encoding"),  # type: ignore[arg-type]
        options.get("request", 0),  # type: ignore[arg-type]
        options.get("reply_to", 0),  # type: ignore[arg-type]
        options.get("error"),  # type: ignore[arg-type]
        cost,
    )
    [ack] = server.poll(1.0)
    client.receive(ack, 1.0)
    assert client.drained and client.retransmit_at is None


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="window"):
        SocketConfig(window=1)
    with pytest.raises(ValueError, match="frame_size"):
        SocketConfig(frame_size=10)
    with pytest.raises(ValueError, match="keepalive"):
        SocketConfig(keepalive=-1)
    with pytest.raises(ValueError, match="peer_timeout"):
        SocketConfig(keepalive=10, peer_timeout=5)
    with pytest.raises(ValueError, match="rto_max"):
        SocketConfig(rto_min=2, rto_max=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window", 65536.0),
        ("window", True),
        ("window", "65536"),
        ("max_message", 1000.5),
        ("max_message", -1),
        ("max_message", False),
        ("frame_size", 4096.0),
        ("frame_size", None),
        ("keepalive", True),
        ("keepalive", math.nan),
        ("keepalive", "5"),
        ("peer_timeout", True),
        ("peer_timeout", math.inf),
        ("connect_timeout", True),
        ("connect_timeout", 0),
        ("rto_min", True),
        ("rto_max", True),
    ],
)
def test_config_rejects_wrong_types_and_ranges_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SocketConfig(**{field: value})  # type: ignore[arg-type]


def test_config_accepts_ints_for_seconds() -> None:
    config = SocketConfig(keepalive=5, peer_timeout=15, connect_timeout=3, rto_min=1, rto_max=2)
    assert config.keepalive == 5 and config.rto_max == 2


# -- lifecycle -------------------------------------------------------------------------------------


def test_transition_table_is_exhaustive_and_everything_else_is_illegal() -> None:
    triggers = ["accept", "send_eof", "finish", "close", "peer_close", "fail", "abort"]
    for state, trigger in itertools.product(SocketState, triggers):
        proto = SocketProtocol("client", SocketConfig(), 0.0, subject=SUBJECT)
        proto.state = state
        if (state, trigger) in TRANSITIONS:
            proto._transition(trigger)  # type: ignore[arg-type]
            assert proto.state is TRANSITIONS[state, trigger]
        else:
            with pytest.raises(SocketProtocolError) as e:
                proto._transition(trigger)  # type: ignore[arg-type]
            assert trigger in str(e.value) and state.value in str(e.value)
    assert all(v is SocketState.CLOSED for (s, _), v in TRANSITIONS.items() if s is SocketState.CLOSING)


def test_illegal_operations_raise_local_protocol_errors() -> None:
    client, server = make_pair()
    with pytest.raises(SocketProtocolError):
        server.connect(0.0)  # only a client connects
    with pytest.raises(SocketProtocolError):
        client.connect(0.0)  # and only once
    with pytest.raises(SocketProtocolError):
        client.close(0.0)  # close() comes after send_eof()
    client.send_eof(0.0)
    with pytest.raises(SocketProtocolError):
        client.send_eof(0.0)
    client.close(0.0)
    assert client.state is SocketState.CLOSED
    with pytest.raises(SocketProtocolError):
        client.abort(410, "again", 0.0)
    fresh = SocketProtocol("client", SocketConfig(), 0.0, subject=SUBJECT)
    with pytest.raises(SocketProtocolError, match="before the connection is open"):
        fresh.send(b"x", 0.0)


def test_open_is_retransmitted_until_accepted_then_times_out() -> None:
    config = SocketConfig(connect_timeout=3.0, rto_min=0.5, rto_max=1.0)
    client = SocketProtocol("client", config, 0.0, id="c", subject=SUBJECT)
    assert isinstance(client.connect(0.0)[0], Open)
    assert client.poll(0.4) == []
    assert client.next_deadline() == 0.5
    assert isinstance(client.poll(0.5)[0], Open)
    assert isinstance(client.poll(1.5)[0], Open)  # backed off to rto_max
    client.poll(3.0)
    assert client.state is SocketState.CLOSED
    assert isinstance(client.error, Timeout) and client.error.code == 408
    assert "socket connect" in str(client.error)


def test_duplicate_open_gets_the_accept_again() -> None:
    client, server = make_pair()
    server.receive(Open("client-1", 100, 100), 1.0)
    assert [type(f) for f in server.poll(1.0)] == [Accept]
    assert client.receive(Accept(100, 100), 1.0) == []  # a late duplicate changes nothing


# -- data ------------------------------------------------------------------------------------------


def test_ordered_delivery_both_ways_with_metadata() -> None:
    client, server = make_pair()
    frames = client.send(b"one", 0.0) + client.send(b"two", 0.0, headers={"k": "v"}, encoding="json")
    events = deliver(frames, server, 0.0)
    assert messages(events) == [b"one", b"two"]
    second = events[1]
    assert isinstance(second, MessageReceived)
    assert second.headers == {"k": "v"} and second.encoding == "json"
    events = deliver(server.send(b"back", 0.0, request=7), client, 0.0)
    assert isinstance(events[0], MessageReceived) and events[0].request == 7
    [ack] = server.poll(0.0)
    assert isinstance(ack, Ack) and ack.ack == 2 and not ack.missing
    client.receive(ack, 0.0)
    assert client.drained and client.statistics().unacked == 0


def test_fragmentation_and_reassembly() -> None:
    client, server = make_pair(frame_size=300)
    payload = bytes(range(256)) * 20  # 5120 bytes
    frames = client.send(payload, 0.0, headers={"h": "x" * 50}, request=1)
    assert len(frames) > 15 and all(len(encode_frame(f)) <= 300 for f in frames)
    assert isinstance(frames[0], Head) and all(isinstance(f, Data) for f in frames[1:])
    assert [f.more for f in frames if isinstance(f, Data | Head)] == [True] * (len(frames) - 1) + [False]
    events = deliver(frames[:-1], server, 0.0)
    assert events == []  # nothing until the last fragment
    [msg] = deliver(frames[-1:], server, 0.0)
    assert isinstance(msg, MessageReceived) and msg.payload == payload
    assert msg.headers == {"h": "x" * 50} and msg.request == 1
    assert msg.cost == len(payload) + FRAME_COST * len(frames) + (1 + 50 + FRAME_COST)  # + the header


def test_metadata_too_large_for_a_frame_is_413() -> None:
    client, _ = make_pair(frame_size=300)
    with pytest.raises(PayloadTooLarge) as e:
        client.send(b"x", 0.0, headers={"h": "y" * 400})
    assert e.value.code == 413 and "metadata" in str(e.value)
    assert client.writable


def test_duplicates_are_dropped_and_gaps_are_held_and_reported() -> None:
    client, server = make_pair()
    frames = [f for i in range(5) for f in client.send(f"m{i}".encode(), 0.0)]
    assert messages(deliver([frames[0], frames[0]], server, 0.0)) == [b"m0"]
    assert server.statistics().duplicates_dropped == 1
    assert deliver([frames[2], frames[4]], server, 0.0) == []
    assert server.statistics().out_of_order == 2
    [ack] = server.poll(0.0)
    assert isinstance(ack, Ack) and ack.ack == 1 and ack.missing == ((2, 2), (4, 4))
    assert messages(deliver([frames[1], frames[3]], server, 0.0)) == [b"m1", b"m2", b"m3", b"m4"]
    [ack] = server.poll(0.0)
    assert isinstance(ack, Ack) and ack.ack == 5 and not ack.missing


def test_missing_ranges_are_resent_at_once_but_not_twice_in_a_row() -> None:
    client, server = make_pair(rto_min=1.0, rto_max=4.0)
    frames = [f for i in range(4) for f in client.send(f"m{i}".encode(), 0.0)]
    deliver([frames[0], frames[3]], server, 0.0)
    [ack] = server.poll(0.0)
    client.receive(ack, 0.6)  # after rto_min / 2: resend what is missing now
    resent = client.poll(0.6)
    assert [f.seq for f in resent if isinstance(f, Data)] == [2, 3]
    client.receive(ack, 0.7)  # the same nack again, too soon: nothing yet
    assert [f for f in client.poll(0.7) if isinstance(f, Data)] == []
    assert client.next_deadline() == pytest.approx(1.1)  # ...but it is not forgotten: due 0.6 + rto_min / 2
    assert [f.seq for f in client.poll(1.1) if isinstance(f, Data)] == [2, 3]
    assert client.statistics().retransmitted == 4


def test_retransmit_when_acks_do_not_progress_with_backoff() -> None:
    client, server = make_pair(rto_min=0.5, rto_max=2.0, keepalive=100, peer_timeout=1000)
    lost = client.send(b"a", 0.0) + client.send(b"b", 0.0)
    assert client.next_deadline() == 0.5
    assert client.poll(0.4) == []
    first = client.poll(0.5)
    assert [f.seq for f in first if isinstance(f, Data)] == [1, 2]
    assert client.statistics().rto == 1.0
    second = client.poll(1.5)
    assert [f.seq for f in second if isinstance(f, Data)] == [1, 2]
    assert client.statistics().rto == 2.0
    assert client.poll(3.0) == []  # capped at rto_max: next at 3.5
    assert len([f for f in client.poll(3.5) if isinstance(f, Data)]) == 2
    assert messages(deliver(lost, server, 3.5)) == [b"a", b"b"]
    [ack] = server.poll(3.5)
    client.receive(ack, 3.6)
    assert client.drained and client.statistics().rto == 0.5
    assert client.statistics().retransmitted == 6


# -- credit ----------------------------------------------------------------------------------------


def test_window_limits_unread_data_and_reading_reopens_it() -> None:
    window = 10 * (100 + FRAME_COST)
    client, server = make_pair(window=window)
    sent: list[Frame] = []
    while client.writable:
        sent += client.send(b"x" * 100, 0.0)
    assert len(sent) == 10
    with pytest.raises(SocketBusy) as e:
        client.send(b"y", 0.0)
    assert e.value.code == 429 and "window" in str(e.value)
    events = exchange(client, server, 0.0, sent)
    received = [e for e in events if isinstance(e, MessageReceived)]
    assert len(received) == 10
    assert client.drained and not client.writable  # acknowledged, but nobody has read them
    assert client.statistics().window == 0
    for m in received[:2]:
        server.consume(m.cost)
    assert server.poll(0.0) == []  # a small read does not warrant a window update
    for m in received[2:]:
        server.consume(m.cost)
    update = server.poll(0.0)
    assert isinstance(update[0], Ack)
    client.receive(update[0], 0.0)
    assert client.writable and client.statistics().window == window


def test_message_larger_than_the_window_still_gets_through() -> None:
    client, server = make_pair(window=1000, frame_size=300)
    payload = b"z" * 5000
    frames = client.send(payload, 0.0)
    assert client.statistics().queued > 0  # the rest waits for credit
    events = exchange(client, server, 0.0, frames)
    assert messages(events) == [payload]


def test_window_probe_when_the_update_is_lost() -> None:
    client, server = make_pair(window=500, frame_size=300, rto_min=0.5, keepalive=100, peer_timeout=1000)
    frames = client.send(b"q" * 2000, 0.0)
    deliver(frames, server, 0.0)
    [ack] = server.poll(0.0)
    client.receive(ack, 0.1)
    assert client.statistics().queued > 0 and client.statistics().unacked == 0
    assert client.next_deadline() == -math.inf or client.next_deadline() <= 0.1  # probe due now
    probe = client.poll(0.1)
    assert probe and isinstance(probe[0], Data | Ping)


def test_max_message_is_enforced_on_both_sides() -> None:
    client, server = make_pair(max_message=1000)
    with pytest.raises(PayloadTooLarge) as e:
        client.send(b"x" * 1001, 0.0)
    assert e.value.code == 413 and e.value.size == 1001 and e.value.limit == 1000
    assert client.writable  # still usable
    big = SocketProtocol("client", SocketConfig(max_message=5000), 0.0, subject=SUBJECT)
    big.state = SocketState.OPEN
    big._tx.peer_limit = 10**9
    [event] = server.receive(big.send(b"x" * 2000, 0.0)[0], 0.0)
    assert isinstance(event, ConnectionClosed) and isinstance(event.error, PayloadTooLarge)
    assert server.state is SocketState.CLOSED
    [reset] = server.poll(0.0)
    assert isinstance(reset, Reset) and reset.code == 413


# -- hostile peers: the window is enforced on receipt -----------------------------------------------


def _resets(proto: SocketProtocol, now: float = 0.0) -> list[int | str]:
    return [f.code for f in proto.poll(now) if isinstance(f, Reset)]


def _overran(events: list[object]) -> bool:
    [event] = events
    return (
        isinstance(event, ConnectionClosed)
        and isinstance(event.error, SocketProtocolError)
        and "overran the window" in str(event.error)
    )


def test_a_peer_that_overruns_the_window_is_reset_with_429() -> None:
    _, server = make_pair(window=4096)
    chunk = b"x" * 1000  # 1032 credit units a frame
    # A sender lets a frame out while what it sent before is below the limit, so its last frame
    # may go over: frames 1-4 (sent after 0, 1032, 2064 and 3096 units) are within the rules...
    events = [e for seq in range(1, 5) for e in server.receive(Data(seq, chunk), 0.0)]
    assert messages(events) == [chunk] * 4
    assert server.statistics().buffered_bytes == 4 * 1032
    # ...frame 5 (after 4128 >= 4096) is not: nobody read anything, so nothing granted more.
    assert _overran(server.receive(Data(5, chunk), 0.0))
    assert server.state is SocketState.CLOSED and _resets(server) == [RESET_WINDOW] == [429]
    assert server.statistics().buffered_bytes == 4 * 1032  # the overrunning frame was not kept


def test_reading_grants_more_and_the_peer_may_use_it() -> None:
    _, server = make_pair(window=4096)
    chunk = b"x" * 1000
    events = [e for seq in range(1, 5) for e in server.receive(Data(seq, chunk), 0.0)]
    for event in events:
        assert isinstance(event, MessageReceived)
        server.consume(event.cost)
    [ack] = server.poll(0.0)
    assert isinstance(ack, Ack) and ack.limit == 4 * 1032 + 4096
    assert messages(server.receive(Data(5, chunk), 0.0)) == [chunk]  # granted now
    assert server.state is SocketState.OPEN


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_frames_held_beyond_a_gap_count_against_the_window(order: str) -> None:
    # Regression: frames beyond a gap were held without any check (up to 65,536 of them).
    _, server = make_pair(window=4096)
    chunk = b"x" * 1000
    seqs = list(range(2, 12)) if order == "forward" else list(range(11, 1, -1))  # seq 1 never comes
    held = 0
    for seq in seqs:
        events = server.receive(Data(seq, chunk), 0.0)
        if events:
            assert _overran(events)
            break
        held += 1
    else:
        raise AssertionError("ten frames of 1000 bytes were held in a window of 4096")
    assert held == 4  # what a sender keeping to its grant could have sent beyond the gap
    assert server.statistics().buffered_bytes <= 4096 + 1032
    assert _resets(server) == [429]


def test_a_frame_far_beyond_a_gap_is_judged_by_the_frames_that_must_come_before_it() -> None:
    # Every missing frame below it costs at least FRAME_COST: 127 of them fit in 4096, 128 do not.
    _, server = make_pair(window=4096)
    assert server.receive(Data(128, b""), 0.0) == [] and server.statistics().out_of_order == 1
    _, server = make_pair(window=4096)
    assert _overran(server.receive(Data(129, b""), 0.0))


def test_headers_are_charged_against_the_window() -> None:
    # Regression: a Head cost its payload only, so empty messages with 100 kB of headers each
    # could buffer 128 of them (12.8 MB) in a 4 kB window.
    _, server = make_pair(window=4096)
    big = {"h": "x" * 100_000}
    [first] = server.receive(Head(1, b"", False, big, "raw"), 0.0)
    assert isinstance(first, MessageReceived) and first.cost == FRAME_COST + 3 + (1 + 100_000 + FRAME_COST)
    assert _overran(server.receive(Head(2, b"", False, big, "raw"), 0.0))
    client, server = make_pair()
    frames = client.send(b"abc", 0.0, headers={"k": "v"}, encoding="json")
    [event] = deliver(frames, server, 0.0)
    assert isinstance(event, MessageReceived)
    assert event.cost == frame_cost(frames[0]) == client.statistics().unacked_bytes  # both sides agree


def test_empty_fragments_cannot_pile_up() -> None:
    # Regression: the limit grants the fragments of the message being reassembled, so a peer
    # could send empty fragments forever, each granted its own cost.
    _, server = make_pair(window=4096)
    assert server.receive(Data(1, b"x" * MIN_FRAGMENT, True), 0.0) == []
    [event] = server.receive(Data(2, b"", True), 0.0)
    assert isinstance(event, ConnectionClosed) and isinstance(event.error, SocketProtocolError)
    assert "not the last" in str(event.error) and _resets(server) == [400]
    _, server = make_pair(window=4096)
    server.receive(Data(1, b"x" * MIN_FRAGMENT, True), 0.0)
    assert messages(server.receive(Data(2, b"", False), 0.0)) == [b"x" * MIN_FRAGMENT]  # a short last one


def test_a_fin_must_be_the_last_frame() -> None:
    _, server = make_pair()
    assert server.receive(Fin(5), 0.0) == []
    [event] = server.receive(Data(6, b"x"), 0.0)
    assert isinstance(event, ConnectionClosed) and "after end of stream" in str(event.error)
    _, server = make_pair()
    server.receive(Data(5, b"x"), 0.0)
    [event] = server.receive(Fin(3), 0.0)
    assert isinstance(event, ConnectionClosed) and "before the last frame" in str(event.error)
    _, server = make_pair()
    events = server.receive(Fin(3), 0.0) + server.receive(Data(2, b"b"), 0.0)  # reordered: fine
    assert events == [] and messages(server.receive(Data(1, b"a"), 0.0)) == [b"a", b"b"]
    assert server.eof_received


def test_a_server_connection_grants_nothing_until_it_is_accepted() -> None:
    # Regression: every connection in a listener's backlog got the full window at once.
    config = SocketConfig(window=4096)
    client = SocketProtocol("client", config, 0.0, id="c", subject=SUBJECT)
    server = SocketProtocol("server", config, 0.0, subject=SUBJECT)
    server.receive(client.connect(0.0)[0], 0.0)
    [accept] = server.poll(0.0)
    assert accept == Accept(0, config.max_message)
    client.receive(accept, 0.0)
    assert client.state is SocketState.OPEN and not client.writable
    with pytest.raises(SocketBusy):
        client.send(b"early", 0.0)
    fin = client.send_eof(0.0)  # a Fin needs no credit
    assert [type(e) for e in deliver(fin, server, 0.0)] == [StreamEnded]
    assert _overran(server.receive(Data(2, b"x"), 0.0))  # data does, before accept
    assert _resets(server) == [429]

    client = SocketProtocol("client", config, 0.0, id="c", subject=SUBJECT)
    server = SocketProtocol("server", config, 0.0, subject=SUBJECT)
    server.receive(client.connect(0.0)[0], 0.0)
    client.receive(server.poll(0.0)[0], 0.0)
    server.accepted()
    [ack] = server.poll(0.0)  # the Accept went out with 0: the window follows in an Ack
    assert isinstance(ack, Ack) and ack.limit == 4096
    client.receive(ack, 0.0)
    assert client.writable and messages(deliver(client.send(b"now", 0.0), server, 0.0)) == [b"now"]
    assert [type(f) for f in server.poll(0.0)] == [Ack]
    server.accepted()  # idempotent: no second window update
    assert server.poll(0.0) == []
    with pytest.raises(SocketProtocolError):
        client.accepted()


def test_a_sender_waiting_for_credit_probes_for_a_lost_window_update() -> None:
    # Regression (found by the lossy-channel property): the window update that follows accept()
    # was lost, the client had nothing queued (its application waits before queueing), and it
    # only ever answered the server's keepalives, so nothing asked for the update again.
    config = SocketConfig(window=4096, rto_min=0.5, keepalive=5.0, peer_timeout=30.0)
    client = SocketProtocol("client", config, 0.0, id="c", subject=SUBJECT)
    server = SocketProtocol("server", config, 0.0, subject=SUBJECT)
    server.receive(client.connect(0.0)[0], 0.0)
    client.receive(server.poll(0.0)[0], 0.0)  # Accept(0)
    server.accepted()
    assert [type(f) for f in server.poll(0.1)] == [Ack]  # ...and it is lost
    client.want_credit(0.2)  # the application waits to send
    assert client.next_deadline() == 0.7 and client.poll(0.6) == []
    probe = client.poll(0.7)
    assert probe == [Ping()]
    deliver(probe, server, 0.7)
    [ack] = server.poll(0.7)
    assert isinstance(ack, Ack) and ack.limit == 4096
    client.receive(ack, 0.8)
    assert client.writable and client.next_deadline() == 5.7  # credit came: no more probes
    client.want_credit(1.0)  # writable: nothing to wait for
    assert client.next_deadline() == 5.7


def test_probes_of_a_shut_window_back_off() -> None:
    # A peer that does not read is asked for credit ever less often: rto_min, then doubling up
    # to rto_max (not every rto forever).
    client, server = make_pair(window=1000, rto_min=0.5, rto_max=4.0, keepalive=100, peer_timeout=1000)
    exchange(client, server, 0.0, client.send(b"x" * 1000, 0.0))  # acknowledged, never read
    assert not client.writable
    client.want_credit(0.0)
    probes: list[float] = []
    while len(probes) < 7:
        now = client.next_deadline()
        assert now is not None
        if client.poll(now) == [Ping()]:
            probes.append(now)
    assert probes == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    server.consume(1000 + FRAME_COST)
    client.receive(server.poll(20.0)[0], 20.0)  # credit: the next wait starts at rto_min again
    exchange(client, server, 20.0, client.send(b"y" * 1000, 20.0))
    client.want_credit(20.0)
    assert not client.writable and client.next_deadline() == 20.5


def test_an_accept_after_a_window_update_keeps_the_larger_limit() -> None:
    config = SocketConfig(window=4096)
    client = SocketProtocol("client", config, 0.0, id="c", subject=SUBJECT)
    client.connect(0.0)
    client.receive(Ack(0, 4096), 0.0)  # the update overtook a retransmitted Accept(0)
    client.receive(Accept(0, config.max_message), 0.0)
    assert client.statistics().window == 4096 and client.writable


def test_the_sender_keeps_at_most_its_window_unacknowledged() -> None:
    # Regression: a peer that granted endless credit and never acknowledged made us keep (and
    # retransmit) everything the application sent.
    client, _ = make_pair(window=4096, frame_size=300)
    client.receive(Ack(0, 10**12), 0.0)
    sent = 0
    while client.writable:
        client.send(b"x" * 200, 0.0)
        sent += 1
    assert sent == 18 and client.statistics().unacked_bytes == 18 * 232
    with pytest.raises(SocketBusy):
        client.send(b"y", 0.0)
    client.receive(Ack(9, 10**12), 0.0)  # acknowledged: room again
    assert client.writable
    big = client.send(b"z" * 10_000, 0.0)  # a message of many frames waits for acks, not credit
    stats = client.statistics()
    assert stats.queued > 20 and stats.unacked_bytes < 4096 + 300 and len(big) < 10


def test_a_peers_reset_reason_is_cut_to_a_bounded_length() -> None:
    client, _ = make_pair()
    [event] = client.receive(Reset("E" * 10_000, "r" * 100_000), 0.0)
    assert isinstance(event, ConnectionClosed) and isinstance(event.error, SocketReset)
    assert len(event.error.reason) == MAX_REASON and len(str(event.error.reason_code)) == MAX_REASON


_hostile_actions = st.lists(
    st.tuples(
        st.sampled_from(["data", "data", "data", "head", "fin"]),
        st.one_of(st.just(0), st.integers(0, 3), st.integers(0, 200)),  # seq beyond the next one
        st.one_of(st.sampled_from([0, 0, MIN_FRAGMENT - 1, MIN_FRAGMENT, 600]), st.integers(0, 600)),
        st.booleans(),  # more
        st.integers(0, 3),  # headers
        st.sampled_from([1, 8, 64]),  # a burst: this many frames at successive seqs
        st.sampled_from(["", "read", "grant", "read+grant"]),  # then what the application does
        st.sampled_from([1, 10]),  # the burst and what follows, this many times
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(actions=_hostile_actions)
@example(actions=[("data", 0, 0, True, 0, 64, "grant", 10)])  # empty fragments, granted as they come
@example(actions=[("data", 1, 600, False, 0, 64, "", 1)])  # a flood beyond a gap
@example(actions=[("head", 0, 0, False, 3, 64, "", 1)])  # headers without payload
def test_whatever_a_peer_sends_it_cannot_make_us_hold_more_than_the_window(
    actions: list[tuple[str, int, int, bool, int, int, str, int]],
) -> None:
    window, max_message = 2048, 4096
    _, server = make_pair(window=window, max_message=max_message)
    unread: deque[int] = deque()
    # The window, plus a message being reassembled (its fragments are granted on top: max_message
    # bytes, FRAME_COST per fragment of at least MIN_FRAGMENT bytes), plus one frame over the limit.
    frame = 600 + FRAME_COST + 4 + 3 * (2 + FRAME_COST)
    partial = max_message + FRAME_COST * (max_message // MIN_FRAGMENT + 1) + frame
    bound = window + partial + frame
    for kind, ahead, size, more, n_headers, burst, then, rounds in actions:
        for _ in range(rounds):
            if not _hostile_round(server, unread, kind, ahead, size, more, n_headers, burst, then, bound):
                return


def _hostile_round(
    server: SocketProtocol,
    unread: deque[int],
    kind: str,
    ahead: int,
    size: int,
    more: bool,
    n_headers: int,
    burst: int,
    then: str,
    bound: int,
) -> bool:
    """One burst of frames from a hostile peer, then the application's move; False once closed."""
    window = server.config.window
    first = server._rx._expected + ahead
    headers = {f"h{i}": "v" for i in range(n_headers)} or None
    for seq in range(first, first + burst):
        f: Frame
        if kind == "fin":
            f = Fin(seq)
        elif kind == "head":
            f = Head(seq, b"x" * size, more, headers, "raw")
        else:
            f = Data(seq, b"x" * size, more)
        for event in server.receive(f, 0.0):
            if isinstance(event, MessageReceived):
                unread.append(event.cost)
            if isinstance(event, ConnectionClosed):
                assert event.error is not None
                assert _resets(server) in ([400], [413], [429])
        if server.state is SocketState.CLOSED:
            return False
        stats = server.statistics()
        assert stats.buffered_bytes <= bound, stats
        assert stats.out_of_order <= window // FRAME_COST + 1
    if "read" in then:
        while unread:
            server.consume(unread.popleft())
    if "grant" in then:
        server.poll(0.0)  # grants what was read, and the fragments being reassembled
    return True


# -- keepalive -------------------------------------------------------------------------------------


def test_keepalive_ping_and_dead_peer() -> None:
    client, server = make_pair(keepalive=5.0, peer_timeout=15.0)
    assert client.next_deadline() == 5.0
    assert client.poll(4.9) == []
    assert client.poll(5.0) == [Ping()]
    server.receive(Ping(), 5.0)
    [ack] = server.poll(5.0)
    client.receive(ack, 5.1)  # heard from the peer: the dead-peer clock restarts
    assert client.poll(20.0) == [Ping()]
    assert client.state is SocketState.OPEN
    client.poll(20.1)
    assert client.state is SocketState.CLOSED
    assert isinstance(client.error, PeerDead) and client.error.code == 408
    assert isinstance(client.error, TimeoutError)
    with pytest.raises(PeerDead):
        client.send(b"x", 21.0)


def test_link_down_pauses_pings_and_retransmits_and_link_up_resends_everything() -> None:
    client, server = make_pair(keepalive=5.0, peer_timeout=15.0, rto_min=0.5)
    lost = client.send(b"a", 1.0) + client.send(b"b", 1.0)
    client.link_down(1.5)
    assert client.next_deadline() == 16.5  # only dead-peer detection: peer_timeout after the outage began
    assert client.poll(16.4) == []  # no ping, no retransmit: nothing would get through
    assert client.state is SocketState.OPEN  # an outage shorter than peer_timeout is not a dead peer
    again = client.link_up(16.4)
    assert [f.seq for f in again if isinstance(f, Data)] == [1, 2] and isinstance(again[-1], Ping)
    assert messages(deliver(again, server, 16.4)) == [b"a", b"b"]
    assert lost == again[:2]
    assert client.next_deadline() == pytest.approx(16.9)  # timers run again (the retransmit is due)
    assert client.poll(31.3) and client.state is SocketState.OPEN  # link_up counted as hearing from it


def test_a_link_down_for_peer_timeout_is_a_dead_peer() -> None:
    # Regression: dead-peer detection paused while the link was down, so a recv() without a
    # timeout waited forever for a bus that never came back.
    client, _ = make_pair(keepalive=5.0, peer_timeout=15.0)
    client.link_down(10.0)  # last heard at 0: the outage still gets its full peer_timeout
    assert client.poll(24.9) == [] and client.state is SocketState.OPEN
    assert client.next_deadline() == 25.0
    client.poll(25.0)
    assert client.state is SocketState.CLOSED
    assert isinstance(client.error, PeerDead) and client.error.timeout == 15.0


# -- close and EOF ---------------------------------------------------------------------------------


def test_eof_after_the_last_message_then_close() -> None:
    client, server = make_pair()
    frames = client.send(b"last", 0.0) + client.send_eof(0.0)
    assert client.state is SocketState.CLOSING
    with pytest.raises(SocketClosed, match="closed for writing"):
        client.send(b"more", 0.0)
    events = deliver(frames, server, 0.0)
    assert messages(events) == [b"last"] and isinstance(events[-1], StreamEnded)
    assert server.eof_received and server.state is SocketState.OPEN  # half-closed: it may still send
    events = exchange(server, client, 0.0, server.send(b"reply", 0.0))
    assert messages(events) == [b"reply"]
    assert client.drained
    close = client.close(0.0)
    assert client.state is SocketState.CLOSED and Close() in close
    [event] = deliver(close, server, 0.0)
    assert event == ConnectionClosed(None)
    assert server.closed_by_peer
    with pytest.raises(SocketClosed, match="closed by peer"):
        server.send(b"x", 0.0)


def test_both_sides_half_close_and_finish() -> None:
    client, server = make_pair()
    events = exchange(client, server, 0.0, client.send_eof(0.0))
    assert any(isinstance(e, StreamEnded) for e in events)
    events = exchange(server, client, 0.0, server.send_eof(0.0))
    assert ConnectionClosed(None) in events
    assert client.state is server.state is SocketState.CLOSED
    assert client.error is None and server.error is None


def test_close_before_eof_reaches_the_peer_is_an_error_for_it() -> None:
    client, server = make_pair()
    client.send_eof(0.0)  # the Fin is lost
    [event] = server.receive(Close(), 0.0)
    assert isinstance(event, ConnectionClosed) and isinstance(event.error, SocketClosed)
    assert "before end of stream" in str(event.error)


def test_send_and_receive_report_a_peer_close_the_same_way() -> None:
    client, server = make_pair()
    client.send_eof(0.0)  # the Fin is lost: the peer closes before our end of stream
    server.receive(Close(), 0.0)
    with pytest.raises(SocketClosed) as sent:
        server.check_can_send()  # what send() raises
    received = server.closed_error()  # what recv() raises, once the buffered messages are read
    assert type(sent.value) is type(received) and sent.value.code == received.code == "closed"
    assert str(sent.value) == str(received) and "closed by peer before end of stream" in str(received)

    client, server = make_pair()
    exchange(client, server, 0.0, client.send_eof(0.0))
    deliver(client.close(0.0), server, 0.0)  # after our end of stream: a clean close
    with pytest.raises(SocketClosed) as sent:
        server.check_can_send()
    assert str(sent.value) == str(server.closed_error()) and str(sent.value).endswith(": closed by peer")


def test_an_error_code_is_only_for_responses() -> None:
    client, server = make_pair()
    with pytest.raises(SocketProtocolError, match="only be sent in a response"):
        client.send(b"oops", 0.0, error=500)
    assert client.writable and client.statistics().messages_sent == 0
    [event] = server.receive(Head(1, b"oops", False, None, "raw", 0, 0, 500), 0.0)
    assert isinstance(event, ConnectionClosed) and isinstance(event.error, SocketProtocolError)
    assert "not a response" in str(event.error)
    assert any(isinstance(f, Reset) and f.code == 400 for f in server.poll(0.0))
    _, server = make_pair()
    [response] = server.receive(Head(1, b"no", False, None, "raw", 0, 3, 500), 0.0)
    assert isinstance(response, MessageReceived) and response.error == 500 and response.reply_to == 3


def test_reset_and_abort() -> None:
    client, server = make_pair()
    [event] = client.receive(Reset(404, "unknown connection"), 0.0)
    assert isinstance(event, ConnectionClosed) and isinstance(event.error, SocketReset)
    assert event.error.reason_code == 404 and "unknown connection" in str(event.error)
    frames = server.abort(410, "bye", 0.0)
    assert frames == [Reset(410, "bye")] and server.state is SocketState.CLOSED
    with pytest.raises(SocketClosed, match="aborted: bye"):
        server.send(b"x", 0.0)


def test_protocol_violations_reset_the_peer() -> None:
    _, server = make_pair()
    server.receive(Fin(1), 0.0)
    [event] = server.receive(Data(2, b"late"), 0.0)
    assert isinstance(event, ConnectionClosed) and isinstance(event.error, SocketProtocolError)
    assert "after end of stream" in str(event.error)
    assert any(isinstance(f, Reset) and f.code == 400 for f in server.poll(0.0))


# -- a lost Close ----------------------------------------------------------------------------------


def test_a_lost_close_is_said_again_to_the_peers_next_frame() -> None:
    client, server = make_pair(keepalive=5.0, peer_timeout=15.0)
    exchange(client, server, 0.0, client.send(b"last", 0.0) + client.send_eof(0.0))
    assert server.eof_received and server.state is SocketState.OPEN
    close = client.close(1.0)
    assert Close() in close and client.state is SocketState.CLOSED
    assert client.linger_until == 16.0  # peer_timeout after the close
    # ...and the Close is lost. The server, still open, pings after keepalive:
    ping = server.poll(5.0)
    assert ping == [Ping()]
    assert deliver(ping, client, 5.0) == []
    assert client.next_deadline() == -math.inf
    again = client.poll(5.0)
    assert again == [Close()]
    assert deliver(again, server, 5.0) == [ConnectionClosed(None)]
    assert server.state is SocketState.CLOSED and server.error is None and server.closed_by_peer
    # Past the linger, the connection is forgotten: late frames get nothing.
    assert client.receive(Ping(), 16.0) == [] and client.poll(16.0) == []
    assert client.next_deadline() is None


def test_a_lost_final_ack_and_close_after_both_fins() -> None:
    client, server = make_pair(keepalive=5.0, peer_timeout=15.0)
    exchange(client, server, 0.0, client.send_eof(0.0))
    fin = server.send_eof(1.0)
    deliver(fin, client, 1.0)  # the client has both Fins, its own acknowledged: it finishes
    assert client.state is SocketState.CLOSED and client.error is None
    last = client.poll(1.0)
    assert [type(f) for f in last] == [Ack, Close]  # ...and both are lost
    resent = server.poll(1.0 + server.statistics().rto)
    assert resent == fin  # the server's Fin is retransmitted...
    deliver(resent, client, 2.0)
    assert deliver(client.poll(2.0), server, 2.0) == [ConnectionClosed(None)]  # ...and answered
    assert server.state is SocketState.CLOSED and server.error is None


def test_a_side_that_was_closed_or_failed_does_not_linger() -> None:
    client, server = make_pair()
    exchange(client, server, 0.0, client.send_eof(0.0))
    deliver(client.close(0.0), server, 0.0)
    assert server.linger_until is None
    server.receive(Ping(), 0.1)
    assert server.poll(0.1) == []
    _, aborted = make_pair()
    aborted.abort(410, "bye", 0.0)
    assert aborted.linger_until is None and aborted.receive(Ping(), 0.1) == [] and aborted.poll(0.1) == []


def _lossy_close(
    rng: random.Random, drop: float, closer_is_client: bool, both_eof: bool, sent: int
) -> tuple[SocketProtocol, SocketProtocol]:
    """Open, send ``sent`` messages each way, end and close over a lossy channel, where the first
    Close each side sends is always lost. Returns (client, server) once both are CLOSED."""
    config = SocketConfig(
        window=4096, frame_size=256, keepalive=1.0, peer_timeout=10_000.0, rto_min=0.1, rto_max=0.8
    )
    now = 0.0
    client = SocketProtocol("client", config, now, id="c", subject=SUBJECT)
    server = SocketProtocol("server", config, now, subject=SUBJECT)
    server.receive(client.connect(now)[0], now)
    server.accepted()
    client.receive(server.poll(now)[0], now)
    closer, other = (client, server) if closer_is_client else (server, client)
    wires: dict[int, list[Frame]] = {id(client): [], id(server): []}  # frames on their way to
    close_lost = {id(client): False, id(server): False}

    def put(sender: SocketProtocol, frames: list[Frame]) -> None:
        peer = server if sender is client else client
        for f in frames:
            if isinstance(f, Close) and not close_lost[id(sender)]:
                close_lost[id(sender)] = True  # the point of the test
                continue
            if rng.random() >= drop:
                wires[id(peer)].append(f)

    for proto in (client, server):
        for i in range(sent):
            put(proto, proto.send(f"m{i}".encode(), now))
    put(closer, closer.send_eof(now))
    if both_eof:
        put(other, other.send_eof(now))
    for _ in range(20_000):
        if client.state is server.state is SocketState.CLOSED:
            return client, server
        for proto in (client, server):
            frames, wires[id(proto)] = wires[id(proto)], []
            for f in frames:
                for event in proto.receive(f, now):
                    if isinstance(event, MessageReceived):
                        proto.consume(event.cost)
                    assert not isinstance(event, ConnectionClosed) or event.error is None, event
        if closer.state is SocketState.CLOSING and closer.drained:
            put(closer, closer.close(now))  # the application closes once its data is acknowledged
        now += 0.05
        put(client, client.poll(now))
        put(server, server.poll(now))
    raise AssertionError(f"never closed: {client!r}, {server!r}")


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    drop=st.floats(0.0, 0.5),
    closer_is_client=st.booleans(),
    both_eof=st.booleans(),
    sent=st.integers(0, 5),
)
def test_a_graceful_close_ends_cleanly_on_both_sides_when_the_close_is_lost(
    seed: int, drop: float, closer_is_client: bool, both_eof: bool, sent: int
) -> None:
    client, server = _lossy_close(random.Random(seed), drop, closer_is_client, both_eof, sent)
    assert client.error is None and server.error is None


# -- the property ----------------------------------------------------------------------------------


class _Wire:
    """One direction of a lossy, duplicating, reordering datagram channel."""

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()

    def put(self, frames: list[Frame]) -> None:
        self.frames.extend(encode_frame(f) for f in frames)


def _simulate(
    to_server: list[bytes],
    to_client: list[bytes],
    rng: random.Random,
    drop: float,
    dup: float,
    reorder: float,
) -> tuple[list[bytes], list[bytes], SocketProtocol, SocketProtocol]:
    config = SocketConfig(
        window=1500, frame_size=256, keepalive=2.0, peer_timeout=10_000.0, connect_timeout=10_000.0,
        rto_min=0.1, rto_max=0.8, max_message=100_000,
    )  # fmt: skip
    now = 0.0
    client = SocketProtocol("client", config, now, id="c", subject=SUBJECT)
    server: SocketProtocol | None = None
    c2s, s2c = _Wire(), _Wire()
    c2s.put(client.connect(now))
    outbox = {"client": deque(to_server), "server": deque(to_client)}
    got: dict[str, list[bytes]] = {"client": [], "server": []}
    unread: dict[str, deque[int]] = {"client": deque(), "server": deque()}

    def handle(side: str, proto: SocketProtocol, events: list[object]) -> None:
        for e in events:
            if isinstance(e, MessageReceived):
                got[side].append(e.payload)
                unread[side].append(e.cost)
            assert not (isinstance(e, ConnectionClosed) and e.error is not None), e

    def step(lossy: bool) -> None:
        nonlocal now, server
        # the applications write what credit allows, and read some of what arrived
        for side, proto in (("client", client), ("server", server)):
            if proto is None:
                continue
            while outbox[side] and proto.writable:
                (c2s if side == "client" else s2c).put(proto.send(outbox[side].popleft(), now))
            if outbox[side]:
                proto.want_credit(now)  # as Socket.send does while it waits
            while unread[side] and (not lossy or rng.random() < 0.7):
                proto.consume(unread[side].popleft())
        # the network moves some frames
        for wire, side in ((c2s, "server"), (s2c, "client")):
            for _ in range(rng.randint(1, 8) if lossy else len(wire.frames)):
                if not wire.frames:
                    break
                i = rng.randrange(len(wire.frames)) if lossy and rng.random() < reorder else 0
                raw = wire.frames[i]
                if not (lossy and rng.random() < dup):
                    del wire.frames[i]
                if lossy and rng.random() < drop:
                    continue
                frame = decode_frame(raw)
                if side == "server":
                    if server is None:
                        if not isinstance(frame, Open):
                            continue
                        server = SocketProtocol("server", config, now, subject=SUBJECT)
                    handle("server", server, server.receive(frame, now))
                    if rng.random() < 0.3:
                        server.accepted()  # the application accepts some time after the Open
                else:
                    handle("client", client, client.receive(frame, now))
        # time passes; timers fire
        now += rng.uniform(0.0, 0.15) if lossy else 0.1
        c2s.put(client.poll(now))
        if server is not None:
            s2c.put(server.poll(now))

    for _ in range(300):
        step(lossy=True)
    for _ in range(3000):
        if (
            server is not None
            and not outbox["client"] and not outbox["server"]
            and client.drained and server.drained
            and not c2s.frames and not s2c.frames
        ):  # fmt: skip
            break
        step(lossy=False)
    assert server is not None
    return got["server"], got["client"], client, server


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    to_server=st.lists(st.binary(max_size=700), max_size=25),
    to_client=st.lists(st.binary(max_size=700), max_size=25),
    seed=st.integers(0, 2**32),
    drop=st.floats(0.0, 0.4),
    dup=st.floats(0.0, 0.3),
    reorder=st.floats(0.0, 0.5),
)
def test_lossy_channel_delivers_exactly_the_sent_sequence(
    to_server: list[bytes], to_client: list[bytes], seed: int, drop: float, dup: float, reorder: float
) -> None:
    rng = random.Random(seed)
    at_server, at_client, client, server = _simulate(to_server, to_client, rng, drop, dup, reorder)
    assert at_server == to_server
    assert at_client == to_client
    assert client.state is server.state is SocketState.OPEN
    assert client.statistics().unacked == server.statistics().unacked == 0
