"""The header codec conat writes and reads itself (pure), and bad headers on a real client."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conat
from conat import PayloadError
from conat._transport import check_url, encode_headers, parse_headers

header_names = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)
header_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
).map(str.strip)


@given(st.dictionaries(header_names, header_values, max_size=6))
def test_headers_round_trip(headers: dict[str, str]) -> None:
    assert parse_headers(encode_headers(headers)) == (headers or None)


def test_inline_status_is_parsed() -> None:
    assert parse_headers(b"NATS/1.0 503\r\n\r\n") == {"Status": "503"}
    assert parse_headers(b"NATS/1.0 408 Request Timeout\r\nA: b\r\n\r\n") == {
        "Status": "408",
        "Description": "Request Timeout",
        "A": "b",
    }


def test_status_and_description_come_only_from_the_status_line() -> None:
    # Regression: a sender's "Status: 503" header line read as the server's no-responders status.
    assert parse_headers(b"NATS/1.0\r\nStatus: 503\r\nstatus: 1\r\nDescription: x\r\nA: b\r\n\r\n") == {
        "A": "b"
    }
    assert parse_headers(b"NATS/1.0 503\r\nStatus: 200\r\n\r\n") == {"Status": "503"}


@pytest.mark.parametrize(
    "headers", [{"bad name": "x"}, {"": "x"}, {"Ok": "line\nbreak"}, {"Ok": "cr\r"}, {"Ok": 5}]
)
def test_bad_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(PayloadError) as e:
        encode_headers(headers)
    assert e.value.code == 400


@pytest.mark.anyio
async def test_bad_header_on_publish_is_a_clear_error(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        with pytest.raises(PayloadError, match="header name"):
            await c.publish("hdr.test", 1, headers={"no spaces": "x"})
        sub = await c.subscribe("hdr.test")
        await c.publish("hdr.test", 1, headers={"X-Ok": "fine"})
        assert (await sub.next(timeout=5)).headers == {"X-Ok": "fine"}


@pytest.mark.parametrize(
    "url",
    [
        "nats://[::1]:99999",  # regression: a port out of range behind an IPv6 host was accepted
        "nats://a:b:c",  # regression: two colons were taken for an IPv6 host without brackets
        "nats://h:0",
        "nats://h:-1",
        "nats://h:42x",
        "nats://[::1",
        "nats://:4222",
        "nats://user:pw@:4222",
        "NATS-X://h:1",
        "h:4222",
        "",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(conat.BadURL) as e:
        check_url(url)
    assert e.value.code == 400


@pytest.mark.parametrize(
    "url",
    [
        "nats://127.0.0.1:4222",
        "nats://[::1]:4222",
        "nats://[::1]",
        "tls://user:secret@bus.example.org:4443",
        "ws://localhost:8080/path",
        "wss://h",
        "NATS://h:1",
    ],
)
def test_well_formed_urls_pass(url: str) -> None:
    assert check_url(url) == url
