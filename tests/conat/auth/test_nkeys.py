"""nkeys: published vectors, strict decoding, and properties of encode/decode/sign (conat.auth._nkeys)."""

from __future__ import annotations

import base64
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conat import ConatError
from conat.auth import (
    CredentialError,
    KeyKind,
    KeyPair,
    NkeyError,
    check_public_key,
    crc16,
    decode_public_key,
    decode_seed,
    encode_public_key,
    encode_seed,
    public_key_kind,
    verify_signature,
)
from conat.auth._nkeys import _b32decode, _b32encode

# --- Published vectors (typed in as data) ----------------------------------------------------------
# nats-io/nats-server server/auth_callout_test.go: the callout issuer account and a user.
ISSUER_SEED = "SAANDLKMXL6CUS3CP52WIXBEDN6YJ545GDKC65U5JZPPV6WH6ESWUA6YAI"
ISSUER_PUBLIC = "ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA"
USER_SEED = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU"
USER_PUBLIC = "UBO2MQV67TQTVIRV3XFTEZOACM4WLOCMCDMAWN5QVN5PI2N6JHTVDRON"
# nats-io/nkeys.py tests/nkeys_test.py: a user seed, its public key, and a signature (std base64).
PY_SEED = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
PY_PUBLIC = "UCK5N7N66OBOINFXAYC2ACJQYFSOD4VYNU6APEJTAVFZB2SVHLKGEW7L"
PY_NONCE = b"PXoWU7zWAMt75FY"
PY_SIGNATURE_B64 = "ZaAiVDgB5CeYoXoQ7cBCmq+ZllzUnGUoDVb8C7PilWvCs8XKfUchAUhz2P4BYAF++Dg3w05CqyQFRDiGL6LrDw=="
# nats-io/nkeys strkey_test.go: a user seed used as a decode benchmark input.
GO_BENCH_SEED = "SUAMAR5BIQ2AZCPYRTLLK7UGWMGSG2GWD2VPIXBNO7ZIB6TZAU4QAEJS2Q"

SIGNING_KINDS = [k for k in KeyKind if k.can_sign]
raw_keys = st.binary(min_size=32, max_size=32)


@pytest.mark.parametrize(
    ("seed", "public", "kind"),
    [
        (ISSUER_SEED, ISSUER_PUBLIC, KeyKind.ACCOUNT),
        (USER_SEED, USER_PUBLIC, KeyKind.USER),
        (PY_SEED, PY_PUBLIC, KeyKind.USER),
    ],
)
def test_published_seeds_give_published_public_keys(seed: str, public: str, kind: KeyKind) -> None:
    kp = KeyPair.from_seed(seed)
    assert kp.public_key == public
    assert kp.kind is kind
    assert kp.seed == seed  # re-encoding is byte-for-byte the same
    assert public_key_kind(public) is kind


def test_published_signature_is_reproduced_and_verifies() -> None:
    kp = KeyPair.from_seed(PY_SEED)
    signature = kp.sign(PY_NONCE)
    assert base64.b64encode(signature).decode() == PY_SIGNATURE_B64  # Ed25519 is deterministic
    kp.verify(PY_NONCE, signature)
    verify_signature(PY_PUBLIC, PY_NONCE, signature)
    with pytest.raises(NkeyError) as e:
        verify_signature(PY_PUBLIC, PY_NONCE + b"asdf", signature)
    assert e.value.code == "bad-signature"


def test_go_benchmark_seed_decodes() -> None:
    kind, raw = decode_seed(GO_BENCH_SEED)
    assert kind is KeyKind.USER and len(raw) == 32


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"", 0x0000),
        (b"123456789", 0x31C3),  # the CRC-16/XMODEM check value (CRC RevEng catalogue)
        (b"\x00", 0x0000),
        (b"A", 0x58E5),
    ],
)
def test_crc16_xmodem_vectors(data: bytes, crc: int) -> None:
    assert crc16(data) == crc


def test_crc16_matches_the_checksums_inside_published_keys() -> None:
    for text in (ISSUER_PUBLIC, USER_PUBLIC, PY_PUBLIC, ISSUER_SEED, USER_SEED, PY_SEED, GO_BENCH_SEED):
        raw = _b32decode(text, "key")
        assert crc16(raw[:-2]) == int.from_bytes(raw[-2:], "little")


@pytest.mark.parametrize(
    ("kind", "letter"),
    [
        (KeyKind.OPERATOR, "O"),
        (KeyKind.ACCOUNT, "A"),
        (KeyKind.USER, "U"),
        (KeyKind.SERVER, "N"),
        (KeyKind.CLUSTER, "C"),
        (KeyKind.CURVE, "X"),
    ],
)
def test_prefix_letters(kind: KeyKind, letter: str) -> None:
    assert kind.letter == letter
    public = encode_public_key(kind, bytes(32))
    seed = encode_seed(kind, bytes(32))
    assert public[0] == letter and len(public) == 56
    assert seed[:2] == "S" + letter and len(seed) == 58


def test_errors_are_conat_errors_with_codes() -> None:
    with pytest.raises(ConatError) as e:
        decode_public_key("nope")
    assert isinstance(e.value, NkeyError) and isinstance(e.value, CredentialError)
    assert e.value.code == "bad-nkey"
    assert "56 characters" in str(e.value)


def _flip_last(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (ISSUER_PUBLIC[:-1], "bad-nkey"),  # too short
        (ISSUER_PUBLIC + "A", "bad-nkey"),  # too long
        (ISSUER_PUBLIC.lower(), "bad-nkey"),  # the alphabet is upper case
        (ISSUER_PUBLIC[:-1] + "1", "bad-nkey"),  # not in the alphabet
        (ISSUER_PUBLIC[:-1] + "=", "bad-nkey"),  # no padding
        (ISSUER_PUBLIC[:-1] + "é", "bad-nkey"),
        (_flip_last(ISSUER_PUBLIC), "bad-checksum"),
        ("U" + ISSUER_PUBLIC[1:], "bad-checksum"),  # the prefix is under the checksum too
        (ISSUER_SEED[:56], "bad-checksum"),  # right length, wrong bytes
        (encode_seed(KeyKind.USER, bytes(32))[:56], "bad-checksum"),
    ],
)
def test_bad_public_keys_are_refused_with_their_code(text: str, code: str) -> None:
    with pytest.raises(NkeyError) as e:
        decode_public_key(text)
    assert e.value.code == code


def test_unknown_public_prefix_is_refused() -> None:
    # A well-formed, checksummed string whose prefix byte names no kind (3 << 3 is 'D').
    from conat.auth._nkeys import _with_crc

    with pytest.raises(NkeyError) as e:
        decode_public_key(_with_crc(bytes([3 << 3]) + bytes(32)))
    assert e.value.code == "bad-prefix" and "'D'" in str(e.value)


def test_a_seed_shaped_public_key_is_refused_as_a_secret() -> None:
    from conat.auth._nkeys import _with_crc

    with pytest.raises(NkeyError) as e:
        decode_public_key(_with_crc(bytes([18 << 3]) + bytes(32)))
    assert e.value.code == "bad-prefix" and "secret" in str(e.value)


def test_check_public_key_kinds() -> None:
    assert check_public_key(ISSUER_PUBLIC) is KeyKind.ACCOUNT
    assert check_public_key(ISSUER_PUBLIC, KeyKind.ACCOUNT, KeyKind.OPERATOR) is KeyKind.ACCOUNT
    with pytest.raises(NkeyError) as e:
        check_public_key(USER_PUBLIC, KeyKind.ACCOUNT, what="issuer")
    assert e.value.code == "bad-prefix"
    assert str(e.value) == "issuer: expected a key of kind account, got kind user"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (ISSUER_PUBLIC, "bad-nkey"),  # a public key is 56 characters, a seed 58
        (ISSUER_SEED[:-1], "bad-nkey"),
        (ISSUER_SEED.lower(), "bad-nkey"),
        (_flip_last(ISSUER_SEED), "bad-checksum"),
        # nkeys.py's test data: the same tail with another kind letter. It accepts them; the
        # checksum says the second character was changed, so we refuse.
        ("SNAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU", "bad-checksum"),
        ("SCAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU", "bad-checksum"),
        ("SOAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU", "bad-checksum"),
    ],
)
def test_bad_seeds_are_refused_without_echoing_them(text: str, code: str) -> None:
    with pytest.raises(NkeyError) as e:
        KeyPair.from_seed(text)
    assert e.value.code == code
    assert text not in str(e.value) and text[2:20] not in str(e.value)


def test_seed_with_stray_trailing_bits_is_not_canonical() -> None:
    # 36 bytes need 58 characters: the last carries 2 unused bits. Setting them must not be
    # silently read as the same seed.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".index(ISSUER_SEED[-1])
    twin = ISSUER_SEED[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[last | 1]
    assert twin != ISSUER_SEED
    with pytest.raises(NkeyError) as e:
        decode_seed(twin)
    assert e.value.code == "bad-nkey"


def test_non_seed_and_malformed_seed_prefixes() -> None:
    from conat.auth._nkeys import _with_crc

    with pytest.raises(NkeyError) as e:  # 'P' (a Go private key) is not a seed
        decode_seed(_with_crc(bytes([15 << 3, 0]) + bytes(32)))
    assert e.value.code == "bad-prefix"
    with pytest.raises(NkeyError) as e:  # low bits of the second byte must be zero
        decode_seed(_with_crc(bytes([18 << 3, 1]) + bytes(32)))
    assert e.value.code == "bad-prefix"
    with pytest.raises(NkeyError) as e:  # seed of an unknown kind (3 << 3)
        decode_seed(_with_crc(bytes([18 << 3, 3 << 3]) + bytes(32)))
    assert e.value.code == "bad-prefix"


def test_keypair_refuses_curve() -> None:
    curve_seed = encode_seed(KeyKind.CURVE, bytes(32))
    with pytest.raises(NkeyError) as e:
        KeyPair.from_seed(curve_seed)
    assert e.value.code == "bad-prefix"
    with pytest.raises(ValueError, match="kind"):
        KeyPair.create(KeyKind.CURVE)
    with pytest.raises(ValueError, match="kind"):
        KeyPair.create("wizard")
    assert KeyPair.create("account").kind is KeyKind.ACCOUNT


def test_curve_key_cannot_verify() -> None:
    with pytest.raises(NkeyError) as e:
        verify_signature(encode_public_key(KeyKind.CURVE, bytes(32)), b"x", bytes(64))
    assert e.value.code == "bad-prefix"


def test_raw_size_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        encode_public_key(KeyKind.USER, bytes(31))
    with pytest.raises(ValueError, match="32 bytes"):
        encode_seed(KeyKind.USER, bytes(33))


def test_seed_never_in_repr_and_never_pickled() -> None:
    kp = KeyPair.from_seed(ISSUER_SEED)
    assert ISSUER_SEED not in repr(kp) and ISSUER_PUBLIC in repr(kp)
    with pytest.raises(TypeError, match="secret"):
        pickle.dumps(kp)


def test_keypair_equality_is_by_public_key() -> None:
    assert KeyPair.from_seed(ISSUER_SEED) == KeyPair.from_seed(ISSUER_SEED)
    assert len({KeyPair.from_seed(ISSUER_SEED), KeyPair.from_seed(USER_SEED)}) == 2


def test_signature_length_is_checked() -> None:
    kp = KeyPair.create(KeyKind.USER)
    with pytest.raises(NkeyError) as e:
        kp.verify(b"data", kp.sign(b"data")[:-1])
    assert e.value.code == "bad-signature"


# --- Properties ------------------------------------------------------------------------------------


@given(data=st.binary(max_size=64))
def test_base32_round_trip(data: bytes) -> None:
    text = _b32encode(data)
    assert "=" not in text
    assert _b32decode(text, "x") == data


@given(kind=st.sampled_from(list(KeyKind)), raw=raw_keys)
def test_public_key_round_trip_for_every_prefix(kind: KeyKind, raw: bytes) -> None:
    assert decode_public_key(encode_public_key(kind, raw)) == (kind, raw)


@given(kind=st.sampled_from(list(KeyKind)), raw=raw_keys)
def test_seed_round_trip_for_every_prefix(kind: KeyKind, raw: bytes) -> None:
    assert decode_seed(encode_seed(kind, raw)) == (kind, raw)


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@settings(max_examples=300)
@given(
    kind=st.sampled_from(list(KeyKind)),
    raw=raw_keys,
    seed=st.booleans(),
    position=st.integers(min_value=0, max_value=57),
    replacement=st.sampled_from(_ALPHABET + "abc0189=-_ "),
)
def test_any_single_character_corruption_is_detected(
    kind: KeyKind, raw: bytes, seed: bool, position: int, replacement: str
) -> None:
    text = encode_seed(kind, raw) if seed else encode_public_key(kind, raw)
    position %= len(text)
    corrupted = text[:position] + replacement + text[position + 1 :]
    if corrupted == text:
        return
    with pytest.raises(NkeyError) as e:
        decode_seed(corrupted) if seed else decode_public_key(corrupted)
    assert e.value.code in ("bad-nkey", "bad-checksum", "bad-prefix")


@settings(max_examples=50)
@given(kind=st.sampled_from(SIGNING_KINDS), data=st.binary(max_size=256))
def test_sign_verify(kind: KeyKind, data: bytes) -> None:
    kp = KeyPair.create(kind)
    assert KeyPair.from_seed(kp.seed) == kp
    signature = kp.sign(data)
    kp.verify(data, signature)
    verify_signature(kp.public_key, data, signature)
    with pytest.raises(NkeyError) as e:
        kp.verify(data + b"!", signature)
    assert e.value.code == "bad-signature"
    other = KeyPair.create(kind)
    with pytest.raises(NkeyError):
        other.verify(data, signature)


@settings(max_examples=50)
@given(data=st.binary(max_size=64), index=st.integers(min_value=0, max_value=63), bit=st.integers(0, 7))
def test_any_flipped_signature_bit_is_refused(data: bytes, index: int, bit: int) -> None:
    kp = KeyPair.from_seed(USER_SEED)
    signature = bytearray(kp.sign(data))
    signature[index] ^= 1 << bit
    with pytest.raises(NkeyError) as e:
        kp.verify(data, bytes(signature))
    assert e.value.code == "bad-signature"
