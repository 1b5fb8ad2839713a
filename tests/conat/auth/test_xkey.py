"""Curve keys and xkv1 sealed boxes (conat.auth._xkey)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conat.auth import XKEY_VERSION, CurveKeyPair, KeyKind, KeyPair, NkeyError, XkeyError

# nats-io/nats-server server/auth_callout_test.go (curveSeed / curvePublic).
CURVE_SEED = "SXAAXMRAEP6JWWHNB6IKFL554IE6LZVT6EY5MBRICPILTLOPHAG73I3YX4"
CURVE_PUBLIC = "XAB3NANV3M6N7AHSQP2U5FRWKKUT7EG2ZXXABV4XVXYQRJGM4S2CZGHT"

ALICE = CurveKeyPair.from_seed(CURVE_SEED)
BOB = CurveKeyPair.create()


def test_published_curve_seed_gives_published_public_key() -> None:
    assert ALICE.public_key == CURVE_PUBLIC
    assert ALICE.seed == CURVE_SEED
    assert CURVE_SEED not in repr(ALICE)
    with pytest.raises(TypeError, match="secret"):
        pickle.dumps(ALICE)


def test_seal_format() -> None:
    sealed = ALICE.seal(b"hello", BOB.public_key)
    assert sealed.startswith(XKEY_VERSION)
    assert len(sealed) == 4 + 24 + 16 + 5
    assert ALICE.seal(b"hello", BOB.public_key)[4:28] != sealed[4:28]  # a fresh nonce every time


def test_wrong_kinds_are_refused() -> None:
    account_seed = KeyPair.create(KeyKind.ACCOUNT).seed
    with pytest.raises(NkeyError) as e:
        CurveKeyPair.from_seed(account_seed)
    assert e.value.code == "bad-prefix"
    with pytest.raises(NkeyError) as e:
        ALICE.seal(b"x", KeyPair.create(KeyKind.USER).public_key)
    assert e.value.code == "bad-prefix"
    with pytest.raises(NkeyError) as e:
        BOB.open(ALICE.seal(b"x", BOB.public_key), "XNOTAKEY")
    assert e.value.code == "bad-nkey"


@pytest.mark.parametrize(
    ("sealed", "code"),
    [
        (b"xkv2" + bytes(60), "bad-version"),
        (b"", "bad-version"),
        (b"xkv1" + bytes(39), "bad-length"),
    ],
)
def test_malformed_boxes(sealed: bytes, code: str) -> None:
    with pytest.raises(XkeyError) as e:
        BOB.open(sealed, ALICE.public_key)
    assert e.value.code == code


def test_open_needs_the_right_sender_and_recipient() -> None:
    sealed = ALICE.seal(b"secret", BOB.public_key)
    carol = CurveKeyPair.create()
    with pytest.raises(XkeyError) as e:
        carol.open(sealed, ALICE.public_key)  # not for carol
    assert e.value.code == "bad-mac"
    with pytest.raises(XkeyError) as e:
        BOB.open(sealed, carol.public_key)  # not from carol
    assert e.value.code == "bad-mac"


@settings(max_examples=50)
@given(message=st.binary(max_size=512))
def test_seal_open_round_trip(message: bytes) -> None:
    assert BOB.open(ALICE.seal(message, BOB.public_key), ALICE.public_key) == message
    assert ALICE.open(BOB.seal(message, ALICE.public_key), BOB.public_key) == message


@settings(max_examples=100)
@given(message=st.binary(max_size=64), data=st.data())
def test_any_tampering_is_detected(message: bytes, data: st.DataObject) -> None:
    sealed = bytearray(ALICE.seal(message, BOB.public_key))
    index = data.draw(st.integers(min_value=0, max_value=len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(XkeyError) as e:
        BOB.open(bytes(sealed), ALICE.public_key)
    assert e.value.code == ("bad-version" if index < 4 else "bad-mac")


@settings(max_examples=30)
@given(message=st.binary(min_size=1, max_size=64), cut=st.integers(min_value=1, max_value=200))
def test_truncation_is_detected(message: bytes, cut: int) -> None:
    sealed = ALICE.seal(message, BOB.public_key)
    with pytest.raises(XkeyError) as e:
        BOB.open(sealed[: max(0, len(sealed) - cut)], ALICE.public_key)
    assert e.value.code in ("bad-version", "bad-length", "bad-mac")
