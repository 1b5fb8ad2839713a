"""persist._checks, function by function: each error, its code and fields, and what a check returns."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import persist._checks as checks
from persist import MAX_HEADER_BYTES, MAX_KEY_BYTES, BadRequest, TooLarge
from persist._checks import (
    DeleteArgs,
    check_delete_args,
    check_encoding,
    check_key,
    check_now,
    check_selector,
    check_seq,
    check_set_args,
    check_utf8,
    is_number,
    message_size,
)

LONE_SURROGATE = "\ud800"


def assert_bad_request(error: pytest.ExceptionInfo[BadRequest], op: str, *words: str) -> None:
    """``error`` is a ``BadRequest`` of ``op`` whose reason names every word."""
    e = error.value
    assert e.code == "bad-request"
    assert e.op == op, e
    for word in words:
        assert word in e.reason, (word, e.reason)
    assert e.reason in str(e) and op in str(e)


def assert_too_large(error: pytest.ExceptionInfo[TooLarge], what: str, size: int, limit: int) -> None:
    e = error.value
    assert e.code == "too-large"
    assert (e.what, e.size, e.limit) == (what, size, limit)
    assert what in str(e) and str(size) in str(e)


# ---- message_size, is_number ------------------------------------------------------------------------


def test_message_size_counts_payload_key_and_headers_in_utf8() -> None:
    assert message_size(None, None, b"") == 0
    assert message_size(None, {}, b"abc") == 3
    assert message_size("ké", None, b"abc") == 3 + 3
    assert message_size("k", {"h": "vé", "x": ""}, b"12") == 2 + 1 + (1 + 3) + 1


@given(
    st.binary(max_size=100),
    st.none() | st.text(min_size=1, max_size=20),
    st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=5),
)
def test_message_size_is_the_sum_of_the_parts(
    payload: bytes, key: str | None, headers: dict[str, str]
) -> None:
    try:
        parts = [payload, (key or "").encode(), *(n.encode() + v.encode() for n, v in headers.items())]
    except UnicodeEncodeError:
        return  # lone surrogates: check_utf8 refuses them before sizes are counted
    assert message_size(key, headers, payload) == sum(len(p) for p in parts)


@pytest.mark.parametrize("value", [0, 1, -5, 2.5, -0.0, 10**30])
def test_is_number_yes(value: object) -> None:
    assert is_number(value)


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, "1", None, [1], 1j])
def test_is_number_no(value: object) -> None:
    assert not is_number(value)


# ---- check_now, check_seq, check_utf8 -------------------------------------------------------------------


def test_check_now() -> None:
    assert check_now("get", 5) == 5.0 and type(check_now("get", 5)) is float
    assert check_now("get", 1.5) == 1.5


@pytest.mark.parametrize("value", [None, "1", True, math.nan, math.inf])
def test_check_now_bad(value: object) -> None:
    with pytest.raises(BadRequest) as e:
        check_now("sweep", value)
    assert_bad_request(e, "sweep", "now", repr(value))


def test_check_seq() -> None:
    assert check_seq("get", "seq", 0) == 0
    assert check_seq("get", "seq", 17) == 17


@pytest.mark.parametrize("value", [-1, 1.0, True, False, "3", None])
def test_check_seq_bad(value: object) -> None:
    with pytest.raises(BadRequest) as e:
        check_seq("delete", "up_to", value)
    assert_bad_request(e, "delete", "up_to", "non-negative int", repr(value))


def test_check_utf8() -> None:
    assert check_utf8("set", "key", "") == 0
    assert check_utf8("set", "key", "aé€😀") == 1 + 2 + 3 + 4
    with pytest.raises(BadRequest) as e:
        check_utf8("set", "a header", "x" + LONE_SURROGATE)
    assert_bad_request(e, "set", "a header", "UTF-8")


# ---- check_key, check_encoding, check_selector ------------------------------------------------------


def test_check_key() -> None:
    assert check_key("get", "k") == "k"
    assert check_key("get", "x" * MAX_KEY_BYTES) == "x" * MAX_KEY_BYTES  # the bound is inclusive


@pytest.mark.parametrize("key", ["", None, 1, b"k"])
def test_check_key_bad(key: object) -> None:
    with pytest.raises(BadRequest) as e:
        check_key("get", key)
    assert_bad_request(e, "get", "key", "non-empty string")


def test_check_key_not_utf8() -> None:
    with pytest.raises(BadRequest) as e:
        check_key("get", LONE_SURROGATE)
    assert_bad_request(e, "get", "key", "UTF-8")


def test_check_key_too_large_counts_utf8_bytes() -> None:
    key = "é" * (MAX_KEY_BYTES // 2 + 1)  # fewer characters than the bound, more bytes
    with pytest.raises(TooLarge) as e:
        check_key("set", key)
    assert_too_large(e, "key", MAX_KEY_BYTES + 2, MAX_KEY_BYTES)


@given(st.text(max_size=MAX_KEY_BYTES // 2 + 10) | st.builds(lambda n: "é" * n, st.integers(2040, 2060)))
@settings(max_examples=200)
def test_check_key_accepts_exactly_the_valid_keys(key: str) -> None:
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        size = None
    if size is None or not key:
        with pytest.raises(BadRequest):
            check_key("get", key)
    elif size > MAX_KEY_BYTES:
        with pytest.raises(TooLarge):
            check_key("get", key)
    else:
        assert check_key("get", key) == key


def test_check_encoding() -> None:
    assert check_encoding("set", "msgpack") == "msgpack"
    for bad in ("", None, 3):
        with pytest.raises(BadRequest) as e:
            check_encoding("set", bad)
        assert_bad_request(e, "set", "encoding", "non-empty string")
    with pytest.raises(BadRequest) as e:
        check_encoding("set", LONE_SURROGATE)
    assert_bad_request(e, "set", "encoding", "UTF-8")


def test_check_selector() -> None:
    assert check_selector("get", 3, None) == (3, None)
    assert check_selector("get", 0, None) == (0, None)
    assert check_selector("get", None, "k") == (None, "k")


@pytest.mark.parametrize(
    ("seq", "key", "words"),
    [
        (None, None, ("exactly one of seq, key",)),
        (1, "k", ("exactly one of seq, key",)),
        (-1, None, ("seq", "non-negative")),
        (None, "", ("key", "non-empty")),
    ],
)
def test_check_selector_bad(seq: object, key: object, words: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as e:
        check_selector("get", seq, key)
    assert_bad_request(e, "get", *words)


def test_check_selector_key_too_large() -> None:
    with pytest.raises(TooLarge) as e:
        check_selector("get", None, "k" * (MAX_KEY_BYTES + 1))
    assert_too_large(e, "key", MAX_KEY_BYTES + 1, MAX_KEY_BYTES)


# ---- check_set_args ------------------------------------------------------------------------------------


def set_args(payload: object = b"", **kw: object) -> checks.SetArgs:
    args: dict[str, object] = {
        "key": None,
        "headers": None,
        "ttl": None,
        "previous_seq": None,
        "msg_id": None,
    }
    args.update(kw)
    return check_set_args(payload, **args)


def test_check_set_args_returns_checked_copies() -> None:
    headers = {"h": "v"}
    args = set_args(bytearray(b"ab"), key="k", headers=headers, ttl=2, previous_seq=0, msg_id="m")
    assert args == checks.SetArgs(
        payload=b"ab", key="k", headers={"h": "v"}, ttl=2, previous_seq=0, msg_id="m", size=2 + 1 + 2
    )
    assert type(args.payload) is bytes
    assert args.headers is not headers
    headers["h2"] = "x"
    assert args.headers == {"h": "v"}
    assert set_args(memoryview(b"xyz")).payload == b"xyz"
    assert set_args(b"", headers=None).headers == {}


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"payload": "text"}, ("payload", "bytes", "str")),
        ({"payload": None}, ("payload", "bytes", "NoneType")),
        ({"key": ""}, ("key", "non-empty")),
        ({"key": 5}, ("key", "non-empty")),
        ({"key": LONE_SURROGATE}, ("key", "UTF-8")),
        ({"headers": [("h", "v")]}, ("headers", "mapping", "list")),
        ({"headers": {"": "v"}}, ("headers", "non-empty str")),
        ({"headers": {"h": 1}}, ("headers", "non-empty str")),
        ({"headers": {1: "v"}}, ("headers", "non-empty str")),
        ({"headers": {"h": LONE_SURROGATE}}, ("a header", "UTF-8")),
        ({"ttl": 0}, ("ttl", "positive")),
        ({"ttl": -1}, ("ttl", "positive")),
        ({"ttl": math.nan}, ("ttl", "positive")),
        ({"ttl": math.inf}, ("ttl", "positive")),
        ({"ttl": True}, ("ttl", "positive")),
        ({"ttl": "5"}, ("ttl", "positive")),
        ({"previous_seq": -1}, ("previous_seq", "non-negative")),
        ({"previous_seq": 1.0}, ("previous_seq", "non-negative")),
        ({"msg_id": ""}, ("msg_id", "non-empty")),
        ({"msg_id": 7}, ("msg_id", "non-empty")),
        ({"msg_id": LONE_SURROGATE}, ("msg_id", "UTF-8")),
    ],
)
def test_check_set_args_bad_request(kw: dict[str, object], words: tuple[str, ...]) -> None:
    payload = kw.pop("payload", b"x")
    with pytest.raises(BadRequest) as e:
        set_args(payload, **kw)
    assert_bad_request(e, "set", *words)


def test_check_set_args_reports_the_first_bad_argument_in_parameter_order() -> None:
    bad: dict[str, object] = {"key": "", "headers": 1, "ttl": 0, "previous_seq": -1, "msg_id": ""}
    order = ["payload", "key", "headers", "ttl", "previous_seq", "msg_id"]
    for i, name in enumerate(order):
        kw = {n: v for n, v in bad.items() if order.index(n) >= i}
        with pytest.raises(BadRequest) as e:
            set_args("text" if i == 0 else b"x", **kw)
        assert name in e.value.reason, (name, e.value.reason)


def test_check_set_args_too_large() -> None:
    with pytest.raises(TooLarge) as e:
        set_args(key="k" * (MAX_KEY_BYTES + 1))
    assert_too_large(e, "key", MAX_KEY_BYTES + 1, MAX_KEY_BYTES)
    with pytest.raises(TooLarge) as e:
        set_args(msg_id="m" * (MAX_KEY_BYTES + 1))
    assert_too_large(e, "msg_id", MAX_KEY_BYTES + 1, MAX_KEY_BYTES)
    half = MAX_HEADER_BYTES // 2
    assert set_args(headers={"h" * half: "v" * half}).size == MAX_HEADER_BYTES  # inclusive
    with pytest.raises(TooLarge) as e:
        set_args(headers={"h" * half: "v" * half, "x": ""})
    assert_too_large(e, "headers", MAX_HEADER_BYTES + 1, MAX_HEADER_BYTES)


def test_check_set_args_message_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "MAX_MESSAGE_BYTES", 10)  # not 256 MiB of payload in a unit test
    assert set_args(b"1234", key="k", headers={"h": "vvvv"}).size == 10
    with pytest.raises(TooLarge) as e:
        set_args(b"12345", key="k", headers={"h": "vvvv"})
    assert_too_large(e, "message", 11, 10)


@given(
    payload=st.binary(max_size=50),
    key=st.none() | st.text(min_size=1, max_size=10),
    headers=st.none() | st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3),
    ttl=st.none() | st.floats(min_value=1e-6, max_value=1e6),
    previous_seq=st.none() | st.integers(0, 10**9),
    msg_id=st.none() | st.text(min_size=1, max_size=10),
)
@settings(max_examples=200)
def test_check_set_args_valid_input_is_accepted_unchanged(
    payload: bytes,
    key: str | None,
    headers: dict[str, str] | None,
    ttl: float | None,
    previous_seq: int | None,
    msg_id: str | None,
) -> None:
    try:
        args = check_set_args(payload, key, headers, ttl, previous_seq, msg_id)
    except BadRequest as e:
        assert "UTF-8" in e.reason  # only lone surrogates from st.text() are refused
        return
    assert (args.payload, args.key, args.ttl, args.previous_seq, args.msg_id) == (
        payload,
        key,
        ttl,
        previous_seq,
        msg_id,
    )
    assert args.headers == (headers or {})
    assert args.size == message_size(key, headers, payload)


# ---- check_delete_args --------------------------------------------------------------------------------


def test_check_delete_args_one_selector_each() -> None:
    assert check_delete_args(4, None, None, None) == DeleteArgs(targets=[4], up_to=None, key=None)
    assert check_delete_args(None, [3, 1, 3, 2], None, None) == DeleteArgs(
        targets=[1, 2, 3], up_to=None, key=None
    )
    assert check_delete_args(None, (s for s in [5, 5]), None, None).targets == [5]
    assert check_delete_args(None, [], None, None).targets == []
    assert check_delete_args(None, None, 0, None) == DeleteArgs(targets=None, up_to=0, key=None)
    assert check_delete_args(None, None, None, "k") == DeleteArgs(targets=None, up_to=None, key="k")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((None, None, None, None), ("exactly one of seq, seqs, up_to, key",)),
        ((1, [1], None, None), ("exactly one",)),
        ((None, None, 3, "k"), ("exactly one",)),
        ((-1, None, None, None), ("seq", "non-negative")),
        ((None, "123", None, None), ("seqs", "list of ints")),
        ((None, b"\x01", None, None), ("seqs", "list of ints")),
        ((None, 5, None, None), ("seqs", "list of ints")),
        ((None, [1, -2], None, None), ("seqs", "non-negative")),
        ((None, [1, True], None, None), ("seqs", "non-negative")),
        ((None, None, 1.5, None), ("up_to", "non-negative")),
        ((None, None, None, ""), ("key", "non-empty")),
    ],
)
def test_check_delete_args_bad(args: tuple[object, object, object, object], words: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as e:
        check_delete_args(*args)
    assert_bad_request(e, "delete", *words)


def test_check_delete_args_key_too_large() -> None:
    with pytest.raises(TooLarge) as e:
        check_delete_args(None, None, None, "k" * (MAX_KEY_BYTES + 1))
    assert_too_large(e, "key", MAX_KEY_BYTES + 1, MAX_KEY_BYTES)


@given(st.lists(st.integers(0, 1000), max_size=30))
def test_check_delete_args_seqs_are_sorted_and_unique(seqs: list[int]) -> None:
    targets = check_delete_args(None, seqs, None, None).targets
    assert targets == sorted(set(seqs))
