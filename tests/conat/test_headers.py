"""The wire protocol's header names, reservations and error replies (conat._headers), pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conat import PayloadError, RemoteError
from conat._headers import (
    BUS_HEADERS,
    MAX_ERROR_DATA_BYTES,
    MAX_ERROR_TEXT_BYTES,
    check_user_headers,
    error_from_headers,
    error_headers,
    is_reserved,
    micro_code,
    truncate_text,
)
from conat._transport import encode_headers


@pytest.mark.parametrize(
    "name", ["Conat-Encoding", "conat-error", "CONAT-CHUNKED", "Conat-Anything", "Status", "DESCRIPTION",
             "Nats-Service-Error", "nats-service-error-code"],
)  # fmt: skip
def test_protocol_names_are_reserved_whatever_their_case(name: str) -> None:
    assert is_reserved(name)
    with pytest.raises(PayloadError) as e:
        check_user_headers({"X-Fine": "1", name: "v"})
    assert e.value.code == 400 and name in str(e.value)


def test_extension_headers_pass_only_where_allowed() -> None:
    assert is_reserved("Conat-Chain") and not is_reserved("Conat-Chain", extensions=True)
    for name in BUS_HEADERS:
        assert is_reserved(name, extensions=True)
    for name in ["Nats-Msg-Id", "X-Status", "Statuses", "Conat", "Trace"]:
        assert not is_reserved(name)


@pytest.mark.parametrize(("code", "micro"), [(404, 404), (503, 503), ("ENOENT", 500), ("reject", 500)])
def test_error_replies_carry_conat_and_micro_codes(code: int | str, micro: int) -> None:
    headers, body = error_headers(code, "line one\nline two", {"limit": 3})
    assert headers["Conat-Error"] == str(code) and headers["Nats-Service-Error-Code"] == str(micro)
    assert headers["Nats-Service-Error"] == "line one line two"  # one header line
    assert body == b"line one\nline two"
    encode_headers(headers)  # valid on the wire
    error = error_from_headers(headers, body, "svc.x")
    assert isinstance(error, RemoteError)
    assert (error.code, error.remote_message, error.data) == (code, "line one\nline two", {"limit": 3})
    assert micro_code(code) == micro


def test_oversized_error_text_and_data_are_bounded() -> None:
    headers, body = error_headers(500, "é" * 10_000, {"blob": "x" * (2 * MAX_ERROR_DATA_BYTES)})
    assert len(body) <= MAX_ERROR_TEXT_BYTES and body.decode().endswith("(truncated)")
    assert "Conat-Error-Data" not in headers  # left out, the code and text stay
    assert len(encode_headers(headers)) < 1024


def test_foreign_micro_errors_and_plain_replies() -> None:
    error = error_from_headers({"Nats-Service-Error-Code": "418", "Nats-Service-Error": "teapot"}, b"", "s")
    assert error is not None and (error.code, error.remote_message) == (418, "teapot")
    error = error_from_headers({"Nats-Service-Error-Code": "503"}, b"body text", "s")
    assert error is not None and (error.code, error.remote_message) == (503, "body text")
    assert error_from_headers({"X": "1"}, b"", "s") is None


@given(st.text(max_size=300), st.integers(16, 200))
def test_truncate_text_never_exceeds_its_limit_nor_splits_a_character(text: str, limit: int) -> None:
    cut = truncate_text(text, limit)
    assert len(cut.encode()) <= limit or cut == text
    if len(text.encode()) <= limit:
        assert cut == text
