"""Token codec: exact round trips, always-valid tokens, canonical and strict decoding."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subjects import (
    EMPTY_TOKEN,
    InvalidSubject,
    decode_token,
    decode_token_str,
    encode_token,
    is_valid_subject,
    validate_token,
)

# st.text() leaves out lone surrogates; mix them in, since any Python str must round-trip.
any_text = st.text() | st.lists(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=8
).map("".join)

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_bytes_round_trip_and_tokens_are_valid(data: bytes) -> None:
    token = encode_token(data)
    assert validate_token(token) == token
    assert is_valid_subject(f"a.{token}.b")
    assert decode_token(token) == data


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_text_round_trip_and_tokens_are_valid(text: str) -> None:
    token = encode_token(text)
    assert validate_token(token) == token
    assert decode_token_str(token) == text
    assert encode_token(text.encode("utf-8", "surrogatepass")) == token


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=B64URL + "=+/.", max_size=12))
def test_decoding_is_canonical(token: str) -> None:
    """Every string either fails with bad-token or is exactly what encode_token produces."""
    try:
        data = decode_token(token)
    except InvalidSubject as error:
        assert error.reason == "bad-token" and error.code == 400
    else:
        assert encode_token(data) == token


def test_empty_values_get_a_non_empty_marker() -> None:
    assert EMPTY_TOKEN == "="
    assert encode_token("") == encode_token(b"") == EMPTY_TOKEN
    assert validate_token(EMPTY_TOKEN) == EMPTY_TOKEN
    assert decode_token(EMPTY_TOKEN) == b""
    assert decode_token_str(EMPTY_TOKEN) == ""


def test_known_vectors_are_base64url_without_padding() -> None:
    assert encode_token(b"\xfb\xff") == "-_8"
    assert encode_token("hello") == "aGVsbG8"
    assert encode_token("a.b c/*") == base64.urlsafe_b64encode(b"a.b c/*").decode().rstrip("=")
    assert encode_token(bytearray(b"x")) == encode_token(b"x")
    assert encode_token(memoryview(b"xy")) == encode_token(b"xy")


@pytest.mark.parametrize(
    "token",
    [
        "",  # empty is not a token (the empty value is "=")
        "A",  # length 1 mod 4 is never base64
        "QR",  # non-zero unused bits: "QQ" is the canonical spelling of b"A"
        "QQ==",  # padding
        "QQ=",
        "==",
        "+/8",  # standard alphabet, not urlsafe
        "a.b",
        "*",
        "é",
        "AA AA",
    ],
)
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidSubject) as info:
        decode_token(token)
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.code, error.reason, error.field, error.subject) == (400, "bad-token", "token", token)


def test_non_string_token_is_rejected() -> None:
    with pytest.raises(InvalidSubject) as info:
        decode_token(b"QQ")  # type: ignore[arg-type]
    assert info.value.reason == "bad-token"


def test_decode_token_str_rejects_non_utf8() -> None:
    token = encode_token(b"\xff\xfe")
    assert decode_token(token) == b"\xff\xfe"
    with pytest.raises(InvalidSubject) as info:
        decode_token_str(token)
    assert info.value.reason == "bad-token"


def test_encode_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        encode_token(12)  # type: ignore[arg-type]
