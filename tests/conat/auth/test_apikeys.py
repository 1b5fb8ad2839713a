"""API keys: shown once, stored as a scrypt hash, checked in constant time."""

from __future__ import annotations

import re

import msgspec
import pytest

from conat.auth import ApiKeyError, ApiKeyRecord, CredentialError, api_key_id, new_api_key, verify_api_key

FAST = {"n": 2**10, "r": 8, "p": 1}  # cheap parameters where the cost does not matter


def test_new_key_and_verify() -> None:
    key_id, key, record = new_api_key()
    assert re.fullmatch(r"ck_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", key)
    assert key.startswith(f"ck_{key_id}_")
    assert record.key_id == key_id
    assert (record.n, record.r, record.p) == (2**14, 8, 1)
    assert len(record.hash) == 32 and len(record.salt) == 16
    assert api_key_id(key) == key_id
    assert verify_api_key(key, record)


def test_wrong_keys() -> None:
    key_id, key, record = new_api_key(**FAST)
    _, other, _ = new_api_key(**FAST)
    assert not verify_api_key(other, record)
    # Same id, another secret.
    head, secret = key[: len("ck_") + 16], key[len("ck_") + 17 :]
    flipped = ("B" if secret[0] == "A" else "A") + secret[1:]
    assert not verify_api_key(f"{head}_{flipped}", record)
    # Same secret, another id.
    assert not verify_api_key(key.replace(key_id, "0" * 16), record)


def test_keys_are_unique() -> None:
    keys = {new_api_key(**FAST)[1] for _ in range(20)}
    assert len(keys) == 20


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ck_",
        "ck__",
        "nope",
        "ck_0123456789abcdef_",
        "ck_0123456789ABCDEF_" + "A" * 43,
        "ck_0123456789abcdef_" + "A" * 42,
        "ck_0123456789abcdef_" + "A" * 44,
        "ck_0123456789abcdef_" + "A" * 42 + "B",  # non-canonical base64: unused bits set
        "ck_0123456789abcdef_" + "A" * 42 + "\u00e9",
        "xk_0123456789abcdef_" + "A" * 43,
        " ck_0123456789abcdef_" + "A" * 43,
        "ck_0123456789abcdef_" + "A" * 43 + "\n",
        "\x00" * 64,
    ],
)
def test_malformed_keys(bad: str) -> None:
    _, _, record = new_api_key(**FAST)
    assert not verify_api_key(bad, record)
    with pytest.raises(ApiKeyError) as info:
        api_key_id(bad)
    assert info.value.code == "malformed"
    assert isinstance(info.value, CredentialError)
    if len(bad) > 8:
        assert bad not in str(info.value)


def test_not_a_string() -> None:
    _, _, record = new_api_key(**FAST)
    for value in (None, 42, b"ck_0123456789abcdef_" + b"A" * 43, ["ck"]):
        assert not verify_api_key(value, record)  # type: ignore[arg-type]
        with pytest.raises(ApiKeyError):
            api_key_id(value)  # type: ignore[arg-type]


def test_well_formed_key_parses() -> None:
    assert api_key_id("ck_0123456789abcdef_" + "A" * 43) == "0123456789abcdef"


@pytest.mark.parametrize("codec", [msgspec.json, msgspec.msgpack])
def test_record_round_trip(codec: object) -> None:
    _, key, record = new_api_key(**FAST)
    encode = codec.encode  # type: ignore[attr-defined]
    decode = codec.decode  # type: ignore[attr-defined]
    again = decode(encode(record), type=ApiKeyRecord)
    assert again == record
    assert verify_api_key(key, again)


def test_record_repr_hides_the_hash() -> None:
    key_id, key, record = new_api_key(**FAST)
    text = repr(record)
    assert key_id in text
    assert record.hash.hex() not in text and repr(record.hash) not in text
    assert key not in text


@pytest.mark.parametrize(
    "changes",
    [
        {"key_id": "XYZ"},
        {"hash": b"short"},
        {"salt": b"short"},
        {"n": 1000},
        {"n": 0},
        {"r": 0},
        {"p": 0},
        {"n": 2**24},
    ],
)
def test_bad_records_are_refused(changes: dict[str, object]) -> None:
    _, _, record = new_api_key(**FAST)
    fields = {f: getattr(record, f) for f in record.__struct_fields__} | changes
    with pytest.raises(ValueError):
        ApiKeyRecord(**fields)  # type: ignore[arg-type]
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(fields), type=ApiKeyRecord)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match=r"^n:"):
        new_api_key(n=1000)
    with pytest.raises(ValueError):
        new_api_key(r=0)


def test_parameters_are_kept_in_the_record() -> None:
    _, key, record = new_api_key(n=2**11, r=4, p=2)
    assert (record.n, record.r, record.p) == (2**11, 4, 2)
    assert verify_api_key(key, record)
    tampered = msgspec.structs.replace(record, n=2**12)
    assert not verify_api_key(key, tampered)
