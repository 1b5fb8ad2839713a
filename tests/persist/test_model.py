"""The reference model, rule by rule: seqs, keys, every limit, TTL and sweep, CAS, dedup, bad input."""

from typing import Any

import pytest

from persist import (
    MAX_HEADER_BYTES,
    MAX_KEY_BYTES,
    BadConfig,
    BadRequest,
    Inventory,
    Rejected,
    StreamConfig,
    TooLarge,
    WrongLastSequence,
    message_size,
)
from persist.testing import StreamModel


def model(**config: Any) -> StreamModel:
    return StreamModel(StreamConfig(**config))


def seqs(m: StreamModel, now: float = 0) -> list[int]:
    return [msg.seq for msg in m.get_all(now=now)]


def test_seqs_increase_and_are_never_reused() -> None:
    m = model()
    assert [m.set(b"x", now=0).seq for _ in range(3)] == [1, 2, 3]
    assert m.delete(now=0, up_to=3).seqs == [1, 2, 3]
    assert m.set(b"y", now=0).seq == 4
    assert m.inventory(now=0) == Inventory(count=1, bytes=1, first_seq=4, last_seq=4)


def test_message_fields() -> None:
    m = model(allow_msg_ttl=True)
    result = m.set(b"data", now=5.5, key="k", headers={"h": "v"}, ttl=10)
    got = m.get(now=6, seq=result.seq)
    assert got is not None
    assert (got.seq, got.time, got.key, got.headers, got.payload, got.ttl) == (
        1,
        5.5,
        "k",
        {"h": "v"},
        b"data",
        10,
    )
    assert got.size == message_size("k", {"h": "v"}, b"data") == 4 + 1 + 2
    assert m.get(now=6, key="k") == got


def test_a_key_keeps_only_its_last_value() -> None:
    m = model()
    m.set(b"1", now=0, key="a")
    m.set(b"x", now=0)
    m.set(b"2", now=0, key="a")
    assert seqs(m) == [2, 3]
    got = m.get(now=0, key="a")
    assert got is not None and got.payload == b"2"
    assert m.get(now=0, seq=1) is None
    assert m.keys(now=0) == ["a"]


def test_delete_selectors() -> None:
    m = model()
    for i in range(6):
        m.set(b"x", now=0, key="k" if i == 5 else None)
    assert m.delete(now=0, seq=2).seqs == [2]
    assert m.delete(now=0, seq=2).seqs == []
    assert m.delete(now=0, seqs=[4, 1, 99, 4]).seqs == [1, 4]
    assert m.delete(now=0, key="k").seqs == [6]
    assert m.delete(now=0, key="missing").seqs == []
    assert m.delete(now=0, up_to=5).seqs == [3, 5]
    assert m.inventory(now=0) == Inventory(count=0, bytes=0, first_seq=0, last_seq=6)
    assert m.keys(now=0) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"seq": 1, "key": "k"},
        {"seq": -1},
        {"seq": True},
        {"seqs": "12"},
        {"seqs": [1, "2"]},
        {"up_to": 1.5},
        {"key": ""},
    ],
)
def test_delete_bad_requests(kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        model().delete(now=0, **kwargs)
    assert info.value.code == "bad-request"


def test_get_all_from_seq() -> None:
    m = model()
    for _ in range(5):
        m.set(b"x", now=0)
    assert [msg.seq for msg in m.get_all(now=0, from_seq=3)] == [3, 4, 5]
    assert m.get_all(now=0, from_seq=6) == []


# ---- limits -------------------------------------------------------------------------------------


def test_max_msg_size() -> None:
    m = model(max_msg_size=4)
    m.set(b"1234", now=0)
    with pytest.raises(Rejected) as info:
        m.set(b"12345", now=0)
    assert (info.value.code, info.value.limit, info.value.value) == ("reject", "max_msg_size", 4)
    with pytest.raises(Rejected):
        m.set(b"123", now=0, key="kk")  # the key counts toward the size
    assert seqs(m) == [1]


def test_max_msgs_discard_old() -> None:
    m = model(max_msgs=3)
    for _ in range(5):
        m.set(b"x", now=0)
    assert seqs(m) == [3, 4, 5]


def test_max_msgs_discard_new() -> None:
    m = model(max_msgs=2, discard="new")
    m.set(b"x", now=0)
    m.set(b"x", now=0, key="k")
    with pytest.raises(Rejected) as info:
        m.set(b"x", now=0)
    assert info.value.limit == "max_msgs"
    m.set(b"y", now=0, key="k")  # replacing a key does not grow the stream; a rejected seq is not used
    assert seqs(m) == [1, 3]


def test_max_bytes_discard_old_and_new() -> None:
    m = model(max_bytes=10)
    for _ in range(4):
        m.set(b"xxx", now=0)
    assert seqs(m) == [2, 3, 4]
    m.set(b"x" * 10, now=0)
    assert seqs(m) == [5]
    with pytest.raises(Rejected) as info:
        m.set(b"x" * 11, now=0)  # can never fit: rejected even with discard old, nothing evicted
    assert info.value.limit == "max_bytes"
    assert seqs(m) == [5]

    n = model(max_bytes=10, discard="new")
    n.set(b"x" * 6, now=0)
    with pytest.raises(Rejected) as info:
        n.set(b"x" * 5, now=0)
    assert info.value.limit == "max_bytes"
    n.set(b"x" * 4, now=0)
    assert n.inventory(now=0).bytes == 10


def test_eviction_skips_the_replaced_key() -> None:
    m = model(max_msgs=2)
    m.set(b"a", now=0, key="a")
    m.set(b"b", now=0, key="b")
    m.set(b"a2", now=0, key="a")  # replaces seq 1; nothing else needs evicting
    assert seqs(m) == [2, 3]
    assert m.keys(now=0) == ["a", "b"]


def test_ephemeral_memory_cap() -> None:
    m = model(ephemeral=True, max_memory=8)
    m.set(b"x" * 5, now=0)
    m.set(b"x" * 5, now=0)
    assert seqs(m) == [2]
    with pytest.raises(Rejected) as info:
        m.set(b"x" * 9, now=0)
    assert info.value.limit == "max_memory"
    n = model(ephemeral=True, max_memory=8, discard="new")
    n.set(b"x" * 5, now=0)
    with pytest.raises(Rejected) as info:
        n.set(b"x" * 5, now=0)
    assert info.value.limit == "max_memory"
    assert model(ephemeral=True, max_memory=100, max_bytes=3).config.byte_cap == 3


def test_max_msgs_per_second_token_bucket() -> None:
    m = model(max_msgs_per_second=2)
    m.set(b"x", now=10)
    m.set(b"x", now=10)
    with pytest.raises(Rejected) as info:
        m.set(b"x", now=10.4)
    assert info.value.limit == "max_msgs_per_second"
    m.set(b"x", now=10.5)  # half a second refills one token
    with pytest.raises(Rejected):
        m.set(b"x", now=10.5)
    m.set(b"x", now=100)
    m.set(b"x", now=100)  # the bucket holds one second: a long pause gives 2, not 180
    with pytest.raises(Rejected):
        m.set(b"x", now=100)
    with pytest.raises(Rejected):
        m.set(b"x", now=50)  # time going backwards refills nothing
    assert m.inventory(now=100).last_seq == 5


def test_max_bytes_per_second() -> None:
    m = model(max_bytes_per_second=10)
    m.set(b"x" * 6, now=0)
    with pytest.raises(Rejected) as info:
        m.set(b"x" * 6, now=0)
    assert info.value.limit == "max_bytes_per_second"
    m.set(b"x" * 4, now=0)
    m.set(b"x" * 5, now=0.5)
    with pytest.raises(Rejected):
        m.set(b"x" * 11, now=1000)  # larger than one second of bytes: never fits


def test_rejected_writes_take_no_tokens() -> None:
    m = model(max_msgs_per_second=1, max_msg_size=3)
    with pytest.raises(Rejected):
        m.set(b"toolong", now=0)
    with pytest.raises(WrongLastSequence):
        m.set(b"x", now=0, previous_seq=7)
    m.set(b"x", now=0)


# ---- ttl and age --------------------------------------------------------------------------------


def test_max_age_hides_then_sweeps() -> None:
    m = model(max_age=10)
    m.set(b"a", now=0, key="a")
    m.set(b"b", now=5)
    assert m.get(now=9.99, seq=1) is not None
    assert m.get(now=10, seq=1) is None  # expired at exactly time + max_age
    assert m.get(now=10, key="a") is None
    assert m.keys(now=10) == []
    assert seqs(m, now=10) == [2]
    assert m.inventory(now=10) == Inventory(count=1, bytes=1, first_seq=2, last_seq=2)
    assert m.sweep(10) == [1]
    assert m.sweep(10) == []
    assert m.sweep(20) == [2]
    assert m.inventory(now=0).count == 0  # removed for real, not just hidden


def test_msg_ttl() -> None:
    m = model(allow_msg_ttl=True, max_age=100)
    m.set(b"a", now=0, ttl=1)
    m.set(b"b", now=0, ttl=500)  # max_age still applies: the first deadline wins
    m.set(b"c", now=0)
    assert seqs(m, now=0.5) == [1, 2, 3]
    assert seqs(m, now=1) == [2, 3]
    assert m.sweep(100) == [1, 2, 3]


def test_ttl_requires_allow_msg_ttl() -> None:
    m = model()
    with pytest.raises(Rejected) as info:
        m.set(b"a", now=0, ttl=1)
    assert info.value.limit == "allow_msg_ttl"
    assert m.inventory(now=0).last_seq == 0


def test_expired_key_is_absent_for_cas() -> None:
    m = model(allow_msg_ttl=True)
    m.set(b"a", now=0, key="k", ttl=1)
    with pytest.raises(WrongLastSequence):
        m.set(b"b", now=0.5, key="k", previous_seq=0)
    assert m.set(b"b", now=1, key="k", previous_seq=0).seq == 2


def test_writes_sweep_first() -> None:
    m = model(max_age=1, max_msgs=1, discard="new")
    m.set(b"a", now=0)
    with pytest.raises(Rejected):
        m.set(b"b", now=0.5)
    m.set(b"b", now=1)  # the expired message no longer counts
    assert seqs(m, now=1) == [2]


# ---- compare-and-set ----------------------------------------------------------------------------


def test_cas_on_key() -> None:
    m = model()
    assert m.set(b"1", now=0, key="k", previous_seq=0).seq == 1
    with pytest.raises(WrongLastSequence) as info:
        m.set(b"2", now=0, key="k", previous_seq=0)
    assert (info.value.code, info.value.expected, info.value.actual, info.value.key) == (
        "wrong-last-sequence",
        0,
        1,
        "k",
    )
    m.set(b"x", now=0)  # other writes do not matter to a key's CAS
    assert m.set(b"2", now=0, key="k", previous_seq=1).seq == 3
    m.delete(now=0, key="k")
    assert m.set(b"3", now=0, key="k", previous_seq=0).seq == 4


def test_cas_on_stream() -> None:
    m = model()
    assert m.set(b"1", now=0, previous_seq=0).seq == 1
    m.set(b"k", now=0, key="k")
    with pytest.raises(WrongLastSequence) as info:
        m.set(b"2", now=0, previous_seq=1)
    assert (info.value.actual, info.value.key) == (2, None)
    m.delete(now=0, up_to=2)
    assert m.set(b"2", now=0, previous_seq=2).seq == 3  # deletes do not change last_seq


# ---- msg-id dedup -------------------------------------------------------------------------------


def test_duplicate_msg_id_writes_nothing() -> None:
    m = model(duplicate_window=60)
    first = m.set(b"a", now=0, msg_id="id1")
    again = m.set(b"other", now=30, msg_id="id1", key="k")
    assert (again.seq, again.time, again.duplicate) == (first.seq, first.time, True)
    assert m.inventory(now=30).last_seq == 1
    assert m.keys(now=30) == []


def test_duplicate_beats_cas_and_limits() -> None:
    m = model(max_msgs=1, discard="new")
    first = m.set(b"a", now=0, key="k", previous_seq=0, msg_id="x")
    # The retry of a CAS write that already succeeded reports that success, not a conflict.
    assert m.set(b"a", now=1, key="k", previous_seq=0, msg_id="x") == first.__class__(
        seq=1, time=0, duplicate=True
    )


def test_dedup_window_is_bounded() -> None:
    m = model(duplicate_window=60)
    m.set(b"a", now=0, msg_id="id")
    assert m.set(b"a", now=59.9, msg_id="id").duplicate
    assert not m.set(b"a", now=60, msg_id="id").duplicate
    forever = model(duplicate_window=-1)
    forever.set(b"a", now=0, msg_id="id")
    assert forever.set(b"a", now=1e9, msg_id="id").duplicate


def test_dedup_outlives_the_message() -> None:
    m = model()
    m.set(b"old", now=0, key="k", msg_id="w1")
    m.set(b"new", now=1, key="k", msg_id="w2")
    assert m.set(b"old", now=2, key="k", msg_id="w1").duplicate  # a late retry cannot resurrect "old"
    got = m.get(now=2, key="k")
    assert got is not None and got.payload == b"new"


def test_rejected_write_is_not_remembered() -> None:
    m = model(max_msg_size=2)
    with pytest.raises(Rejected):
        m.set(b"abc", now=0, msg_id="id")
    assert not m.set(b"a", now=0, msg_id="id").duplicate


# ---- config updates -----------------------------------------------------------------------------


def test_update_config_trims_and_sweeps() -> None:
    m = model(discard="new")
    for t in range(5):
        m.set(b"xx", now=t)
    new = m.update_config({"max_msgs": 3, "max_age": 10}, now=11)
    assert new.max_msgs == 3
    assert m.config == new
    assert seqs(m, now=11) == [3, 4, 5]  # trimmed although discard is "new"
    m.update_config({"max_age": 10, "max_bytes": 3}, now=11)
    assert seqs(m, now=11) == [5]
    m.update_config({}, now=12)
    assert seqs(m, now=13.9) == [5]
    m.update_config({"max_age": 5}, now=12)
    assert seqs(m, now=12) == []


def test_update_config_bad_changes_nothing() -> None:
    m = model(max_msgs=5)
    m.set(b"x", now=0)
    with pytest.raises(BadConfig):
        m.update_config({"max_msgs": 1, "discard": "sideways"}, now=0)
    assert m.config.max_msgs == 5


def test_rate_change_starts_a_new_bucket() -> None:
    m = model(max_msgs_per_second=1)
    m.set(b"x", now=0)
    m.update_config({"max_msgs_per_second": 2}, now=0)
    m.set(b"x", now=0)
    m.set(b"x", now=0)
    with pytest.raises(Rejected):
        m.set(b"x", now=0)
    m.update_config({"max_msgs_per_second": -1}, now=0)
    m.set(b"x", now=0)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload": "text"},
        {"payload": None},
        {"now": "0"},
        {"now": float("nan")},
        {"now": True},
        {"key": ""},
        {"key": 3},
        {"key": "\ud800"},
        {"headers": [("a", "b")]},
        {"headers": {"a": 1}},
        {"headers": {"": "v"}},
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": "1"},
        {"previous_seq": -1},
        {"previous_seq": 1.0},
        {"msg_id": ""},
        {"msg_id": 5},
    ],
)
def test_set_bad_requests(kwargs: dict[str, Any]) -> None:
    m = model(allow_msg_ttl=True)
    args: dict[str, Any] = {"payload": b"x", "now": 0, **kwargs}
    with pytest.raises(BadRequest) as info:
        m.set(args.pop("payload"), **args)
    assert info.value.code == "bad-request"
    assert m.inventory(now=0).last_seq == 0


def test_too_large() -> None:
    m = model()
    with pytest.raises(TooLarge) as info:
        m.set(b"", now=0, key="k" * (MAX_KEY_BYTES + 1))
    assert (info.value.code, info.value.what) == ("too-large", "key")
    with pytest.raises(TooLarge) as info:
        m.set(b"", now=0, headers={"h": "v" * MAX_HEADER_BYTES})
    assert info.value.what == "headers"
    with pytest.raises(TooLarge) as info:
        m.set(b"", now=0, msg_id="i" * (MAX_KEY_BYTES + 1))
    assert info.value.what == "msg_id"


def test_too_large_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import persist._checks

    monkeypatch.setattr(persist._checks, "MAX_MESSAGE_BYTES", 10)
    with pytest.raises(TooLarge) as info:
        model().set(b"x" * 11, now=0)
    assert info.value.what == "message"


def test_bytearray_and_memoryview_payloads() -> None:
    m = model()
    m.set(bytearray(b"ab"), now=0)
    m.set(memoryview(b"cd"), now=0)
    assert [msg.payload for msg in m.get_all(now=0)] == [b"ab", b"cd"]


@pytest.mark.parametrize("kwargs", [{}, {"seq": 1, "key": "k"}, {"seq": -1}, {"key": 3}])
def test_get_bad_requests(kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        model().get(now=0, **kwargs)


def test_reads_do_not_mutate() -> None:
    m = model(max_age=1)
    m.set(b"x", now=0)
    assert m.get_all(now=5) == []
    assert m.sweep(0.5) == []
    assert seqs(m, now=0.5) == [1]
