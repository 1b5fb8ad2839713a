"""NATS JWTs: encode, decode, verify and every refusal (conat.auth._jwt)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conat.auth import JWT_HEADER, JwtError, KeyKind, KeyPair, decode_jwt, encode_jwt, verify_jwt
from conat.auth._nkeys import encode_public_key

# nats-io/nats-server server/auth_callout_test.go: the callout issuer account.
ISSUER = KeyPair.from_seed("SAANDLKMXL6CUS3CP52WIXBEDN6YJ545GDKC65U5JZPPV6WH6ESWUA6YAI")
ISSUER_PUBLIC = "ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA"
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def code_of(token: str, **kwargs: object) -> str:
    with pytest.raises(JwtError) as e:
        verify_jwt(token, **kwargs)  # type: ignore[arg-type]
    return e.value.code


def test_round_trip_and_filled_claims() -> None:
    token = encode_jwt({"sub": "x", "aud": "APP", "exp": int(NOW) + 60}, ISSUER, now=NOW)
    header, claims = decode_jwt(token)
    assert header == JWT_HEADER
    assert claims["iss"] == ISSUER_PUBLIC and claims["iat"] == int(NOW)
    assert len(claims["jti"]) == 52 and claims["jti"].isupper()  # base32 of 32 bytes, no padding
    assert verify_jwt(token, issuer=ISSUER_PUBLIC, audience="APP", now=NOW) == claims
    # the header segment is the exact JSON the Go library writes
    assert json.loads(unb64(token.split(".")[0])) == {"typ": "JWT", "alg": "ed25519-nkey"}


def test_jti_depends_on_the_claims() -> None:
    a = decode_jwt(encode_jwt({"sub": "a"}, ISSUER, now=NOW))[1]["jti"]
    b = decode_jwt(encode_jwt({"sub": "b"}, ISSUER, now=NOW))[1]["jti"]
    assert a != b


def test_conflicting_iss_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="iss"):
        encode_jwt({"iss": "AOTHER"}, ISSUER)
    encode_jwt({"iss": ISSUER_PUBLIC}, ISSUER)  # the same key is fine


def _resign(header: dict[str, object], claims: dict[str, object], signer: KeyPair = ISSUER) -> str:
    h = b64(json.dumps(header).encode())
    c = b64(json.dumps(claims).encode())
    return f"{h}.{c}.{b64(signer.sign(f'{h}.{c}'.encode()))}"


def test_tampered_header_is_refused() -> None:
    token = encode_jwt({"sub": "x"}, ISSUER, now=NOW)
    _, c, s = token.split(".")
    forged_header = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey", "kid": "1"}).encode())
    assert code_of(f"{forged_header}.{c}.{s}", now=NOW) == "bad-signature"


def test_tampered_claims_are_refused() -> None:
    token = encode_jwt({"sub": "x", "nats": {"pub": {"allow": ["a"]}}}, ISSUER, now=NOW)
    h, c, s = token.split(".")
    claims = json.loads(unb64(c))
    claims["nats"]["pub"]["allow"] = [">"]
    assert code_of(f"{h}.{b64(json.dumps(claims).encode())}.{s}", now=NOW) == "bad-signature"


def test_tampered_signature_is_refused() -> None:
    token = encode_jwt({"sub": "x"}, ISSUER, now=NOW)
    h, c, s = token.split(".")
    sig = bytearray(unb64(s))
    sig[0] ^= 1
    assert code_of(f"{h}.{c}.{b64(bytes(sig))}", now=NOW) == "bad-signature"
    assert code_of(f"{h}.{c}.{b64(bytes(sig[:32]))}", now=NOW) == "bad-signature"


def test_claims_signed_by_another_key_but_naming_the_issuer_are_refused() -> None:
    mallory = KeyPair.create(KeyKind.ACCOUNT)
    token = _resign(dict(JWT_HEADER), {"sub": "x", "iss": ISSUER_PUBLIC}, signer=mallory)
    assert code_of(token, now=NOW) == "bad-signature"


def test_wrong_issuer_and_audience() -> None:
    other = KeyPair.create(KeyKind.ACCOUNT)
    token = encode_jwt({"sub": "x", "aud": "APP"}, other, now=NOW)
    verify_jwt(token, now=NOW)  # intact, just not from whom we expect
    assert code_of(token, issuer=ISSUER_PUBLIC, now=NOW) == "wrong-issuer"
    assert code_of(token, audience="SYS", now=NOW) == "wrong-audience"


def test_expired_and_not_yet_valid() -> None:
    token = encode_jwt({"sub": "x", "exp": int(NOW), "nbf": int(NOW) - 10}, ISSUER, now=NOW - 20)
    verify_jwt(token, now=NOW, leeway=0)
    verify_jwt(token, now=NOW + 4, leeway=5)
    assert code_of(token, now=NOW + 1, leeway=0) == "expired"
    assert code_of(token, now=NOW + 6) == "expired"  # the default leeway is 5 s
    assert code_of(token, now=NOW - 11, leeway=0) == "not-yet-valid"
    verify_jwt(token, now=NOW - 11, leeway=1)


def test_zero_or_absent_times_mean_no_limit() -> None:
    token = encode_jwt({"sub": "x", "exp": 0}, ISSUER, now=NOW)
    verify_jwt(token, now=NOW * 2)


@pytest.mark.parametrize("exp", ["soon", True, [1]])
def test_malformed_time_claims(exp: object) -> None:
    token = encode_jwt({"sub": "x", "exp": exp}, ISSUER, now=NOW)
    assert code_of(token, now=NOW) == "bad-jwt"


def test_header_must_be_nats() -> None:
    for header in ({"typ": "JWT", "alg": "none"}, {"typ": "JWT", "alg": "ed25519"}, {"alg": "ed25519-nkey"}):
        assert code_of(_resign(header, {"sub": "x", "iss": ISSUER_PUBLIC}), now=NOW) == "bad-jwt"


def test_iss_must_be_a_signing_nkey() -> None:
    assert code_of(_resign(dict(JWT_HEADER), {"sub": "x"}), now=NOW) == "bad-jwt"
    assert code_of(_resign(dict(JWT_HEADER), {"iss": "not-a-key"}), now=NOW) == "bad-jwt"
    curve = encode_public_key(KeyKind.CURVE, bytes(32))
    assert code_of(_resign(dict(JWT_HEADER), {"iss": curve}), now=NOW) == "bad-jwt"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "eyJ0eXAiOiJKV1QifQ.!!!.c2ln",
        "eyJ0eXAiOiJKV1QifQ=.e30.c2ln",  # padding is not allowed
        "W10.e30.c2ln",  # header is a JSON array
        "eyJ0eXAiOiJKV1QifQ.bm90IGpzb24.c2ln",  # claims are not JSON
        "eyJ0eXAiOiJKV1QifQ.e30.",  # empty signature
        "eyJ0eXAiOiJKV1QifQ.e31.c2ln",  # stray bits: not canonical
    ],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(JwtError) as e:
        decode_jwt(token)
    assert e.value.code == "bad-jwt"
    assert code_of(token, now=NOW) == "bad-jwt"


def test_decode_does_not_verify() -> None:
    token = encode_jwt({"sub": "x", "exp": 1}, ISSUER, now=NOW)
    h, c, s = token.split(".")
    sig = bytearray(unb64(s))
    sig[5] ^= 0xFF
    assert decode_jwt(f"{h}.{c}.{b64(bytes(sig))}")[1]["sub"] == "x"


@settings(max_examples=200)
@given(data=st.data())
def test_any_character_change_is_refused(data: st.DataObject) -> None:
    token = encode_jwt({"sub": "x", "aud": "APP"}, ISSUER, now=NOW)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from("AQgw-_.=+/eyJ0"))
    forged = token[:index] + replacement + token[index + 1 :]
    if forged == token:
        return
    with pytest.raises(JwtError) as e:
        verify_jwt(forged, issuer=ISSUER_PUBLIC, now=NOW)
    assert e.value.code in ("bad-jwt", "bad-signature", "wrong-issuer")


@settings(max_examples=50)
@given(
    claims=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in ("iss", "iat", "jti", "exp", "nbf")),
        st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=20), st.booleans(), st.none()),
        max_size=6,
    )
)
def test_round_trip_property(claims: dict[str, object]) -> None:
    out = verify_jwt(encode_jwt(claims, ISSUER, now=NOW), issuer=ISSUER_PUBLIC, now=NOW)
    assert {k: v for k, v in out.items() if k not in ("iss", "iat", "jti")} == claims
