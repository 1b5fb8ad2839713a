"""conat tokens: round trip, every refusal with its code, leeway boundaries, one-time tokens."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from conat import ConatError
from conat.auth import (
    MAX_TOKEN_TTL,
    CredentialError,
    Keyring,
    MemoryReplayGuard,
    TokenClaims,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    peek_claims,
)
from subjects import Scope

T0 = 1_700_000_000.0
HOST_A = "host-" + str(uuid.UUID(int=0xA))
HOST_B = "host-" + str(uuid.UUID(int=0xB))
ACCOUNT = "account-" + str(uuid.UUID(int=1))
PROJECT = str(uuid.UUID(int=2))
SCOPE = Scope(projects=(PROJECT,), hosts=(str(uuid.UUID(int=0xA)),))


class FakeTime:
    """A wall clock that tests move by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FixedKeys:
    """A SigningKeys with one key and a chosen kid (to forge tokens with foreign keys)."""

    def __init__(self, kid: str, key: SigningKey | None = None) -> None:
        self.current = kid
        self.key = key or SigningKey.generate()

    def sign(self, kid: str, message: bytes) -> bytes:
        return self.key.sign(message).signature


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(payload: bytes, key: SigningKey) -> str:
    """A token with arbitrary claims bytes, validly signed by ``key``."""
    signed = f"conat1.{b64(payload)}"
    return f"{signed}.{b64(key.sign(signed.encode()).signature)}"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.open(tmp_path / "keys")


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def issuer(keyring: Keyring, clock: FakeTime) -> TokenIssuer:
    return TokenIssuer(keyring, clock=clock)


@pytest.fixture
def verifier(keyring: Keyring, clock: FakeTime) -> TokenVerifier:
    return TokenVerifier(keyring, audience=HOST_A, clock=clock, replay=MemoryReplayGuard())


def refused(verifier: TokenVerifier, token: str | bytes, code: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    assert info.value.code == code, str(info.value)
    message = str(info.value)
    assert code in message
    if isinstance(token, str) and len(token) > 8:
        # Never the token, nor any of its segments.
        for part in token.split("."):
            if len(part) > 8:
                assert part not in message
    return info.value


# -- round trip -----------------------------------------------------------------------------------


def test_round_trip(issuer: TokenIssuer, verifier: TokenVerifier, keyring: Keyring) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    assert token.isascii() and token.startswith("conat1.")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    claims = verifier.verify(token)
    assert claims.kid == keyring.current
    assert claims.iss == "hub"
    assert claims.sub == ACCOUNT
    assert claims.aud == HOST_A
    assert claims.iat == T0
    assert claims.exp == T0 + 600
    assert claims.nbf is None
    assert claims.scope == SCOPE
    assert not claims.once
    assert len(claims.jti) >= 16
    assert verifier.verify(token.encode()) == claims  # bytes are accepted too


def test_each_token_has_its_own_jti(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    first = verifier.verify(issuer.issue(ACCOUNT, HOST_A, SCOPE, 60))
    second = verifier.verify(issuer.issue(ACCOUNT, HOST_A, SCOPE, 60))
    assert first.jti != second.jti


def test_master_audience_and_every_principal(keyring: Keyring, clock: FakeTime) -> None:
    issuer = TokenIssuer(keyring, clock=clock)
    verifier = TokenVerifier(keyring, audience="master", clock=clock)
    for sub in (ACCOUNT, HOST_A, "project-" + PROJECT, "hub"):
        assert verifier.verify(issuer.issue(sub, "master", Scope(admin=True), 60)).sub == sub


def test_token_error_is_in_the_error_tree(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    error = refused(verifier, "nope", "malformed")
    assert isinstance(error, CredentialError)
    assert isinstance(error, ConatError)


# -- issue arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": MAX_TOKEN_TTL + 1}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": 0.5}, "ttl"),
        ({"sub": "alice"}, "sub"),
        ({"sub": "account-not-a-uuid"}, "sub"),
        ({"aud": ACCOUNT}, "aud"),
        ({"aud": "hub"}, "aud"),
        ({"nbf": T0 - 1}, "nbf"),
        ({"nbf": float("inf")}, "nbf"),
        ({"revision": -1}, "revision"),
        ({"revision": True}, "revision"),
        ({"revision": 1.0}, "revision"),
        ({"revision": 2**53 + 1}, "revision"),
    ],
)
def test_issue_refuses_bad_arguments(issuer: TokenIssuer, kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"sub": ACCOUNT, "aud": HOST_A, "scope": SCOPE, "ttl": 60.0} | kwargs
    with pytest.raises(ValueError, match=rf"^{field}:"):
        issuer.issue(**arguments)  # type: ignore[arg-type]


def test_ttl_cap_is_allowed(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    assert verifier.verify(issuer.issue(ACCOUNT, HOST_A, SCOPE, MAX_TOKEN_TTL)).exp == T0 + MAX_TOKEN_TTL


def test_verifier_refuses_bad_arguments(keyring: Keyring) -> None:
    with pytest.raises(ValueError, match=r"^audience:"):
        TokenVerifier(keyring, audience=ACCOUNT)
    with pytest.raises(ValueError, match=r"^leeway:"):
        TokenVerifier(keyring, audience=HOST_A, leeway=-1)
    with pytest.raises(ValueError, match=r"^max_size:"):
        TokenVerifier(keyring, audience=HOST_A, max_size=0)
    with pytest.raises(ValueError, match=r"^public_keys:"):
        TokenVerifier({"k1": b"short"}, audience=HOST_A)
    with pytest.raises(ValueError, match=r"^public_keys:"):
        TokenVerifier({"bad kid": bytes(32)}, audience=HOST_A)
    with pytest.raises(ValueError, match=r"^public_keys:"):
        TokenVerifier({"k1": "not base64!"}, audience=HOST_A)


# -- attacks --------------------------------------------------------------------------------------


def test_tampered_payload(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    prefix, payload, signature = token.split(".")
    claims = msgspec.msgpack.decode(unb64(payload))
    claims["scope"]["admin"] = True
    claims["sub"] = "hub"
    forged = ".".join((prefix, b64(msgspec.msgpack.encode(claims)), signature))
    refused(verifier, forged, "bad-signature")


def test_tampered_so_that_no_kid_can_be_read(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    """Without a readable kid, every current key is tried: none verifies, so a bad signature."""
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    prefix, payload, signature = token.split(".")
    raw = unb64(payload)
    assert b"kid" in raw
    forged_payload = b64(raw.replace(b"kid", b"kix", 1))
    refused(verifier, f"{prefix}.{forged_payload}.{signature}", "bad-signature")
    chars = list(token)
    chars[11] = "A" if chars[11] != "A" else "B"
    refused(verifier, "".join(chars), "bad-signature")


def test_tampered_signature(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    head, signature = token.rsplit(".", 1)
    raw = bytearray(unb64(signature))
    raw[10] ^= 0x01
    refused(verifier, f"{head}.{b64(bytes(raw))}", "bad-signature")
    refused(verifier, f"{head}.{b64(bytes(64))}", "bad-signature")


def test_signed_by_a_foreign_key_with_our_kid(
    keyring: Keyring, clock: FakeTime, verifier: TokenVerifier
) -> None:
    foreign = TokenIssuer(FixedKeys(keyring.current), clock=clock)
    refused(verifier, foreign.issue(ACCOUNT, HOST_A, SCOPE, 600), "bad-signature")


def test_token_of_another_keyring(tmp_path: Path, clock: FakeTime, verifier: TokenVerifier) -> None:
    other = TokenIssuer(Keyring.open(tmp_path / "other"), clock=clock)
    refused(verifier, other.issue(ACCOUNT, HOST_A, SCOPE, 600), "unknown-kid")


def test_kid_swapped(keyring: Keyring, issuer: TokenIssuer, clock: FakeTime) -> None:
    old = keyring.current
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    new = keyring.rotate()
    verifier = TokenVerifier(keyring, audience=HOST_A, clock=clock)
    assert verifier.verify(token).kid == old
    prefix, payload, signature = token.split(".")
    claims = msgspec.msgpack.decode(unb64(payload))
    claims["kid"] = new
    refused(verifier, f"{prefix}.{b64(msgspec.msgpack.encode(claims))}.{signature}", "bad-signature")


def test_unknown_kid(issuer: TokenIssuer, clock: FakeTime) -> None:
    verifier = TokenVerifier({"other": bytes(SigningKey.generate().verify_key)}, audience=HOST_A, clock=clock)
    refused(verifier, issuer.issue(ACCOUNT, HOST_A, SCOPE, 600), "unknown-kid")
    refused(TokenVerifier({}, audience=HOST_A), issuer.issue(ACCOUNT, HOST_A, SCOPE, 600), "unknown-kid")


def test_wrong_audience(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    error = refused(verifier, issuer.issue(ACCOUNT, HOST_B, SCOPE, 600), "wrong-audience")
    assert HOST_B in str(error) and HOST_A in str(error)
    refused(verifier, issuer.issue(ACCOUNT, "master", SCOPE, 600), "wrong-audience")


def test_expired_and_leeway_boundary(issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeTime) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    clock.now = T0 + 600  # at exp, still inside the 30 s leeway
    verifier.verify(token)
    clock.now = T0 + 630 - 0.001
    verifier.verify(token)
    clock.now = T0 + 630
    refused(verifier, token, "expired")
    clock.now = T0 + 10_000
    refused(verifier, token, "expired")


def test_zero_leeway(issuer: TokenIssuer, keyring: Keyring, clock: FakeTime) -> None:
    verifier = TokenVerifier(keyring, audience=HOST_A, leeway=0, clock=clock)
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 60, nbf=T0 + 100)
    clock.now = T0 + 100 - 0.001
    refused(verifier, token, "not-yet-valid")
    clock.now = T0 + 100
    verifier.verify(token)
    clock.now = T0 + 160 - 0.001
    verifier.verify(token)
    clock.now = T0 + 160
    refused(verifier, token, "expired")


def test_not_yet_valid_and_leeway_boundary(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeTime
) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600, nbf=T0 + 3600)
    clock.now = T0
    refused(verifier, token, "not-yet-valid")
    clock.now = T0 + 3600 - 30 - 0.001
    refused(verifier, token, "not-yet-valid")
    clock.now = T0 + 3600 - 30
    claims = verifier.verify(token)
    assert claims.nbf == T0 + 3600
    assert claims.exp == T0 + 3600 + 600  # ttl counts from nbf


def test_issued_in_the_future(issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeTime) -> None:
    """An issuer whose clock runs ahead: iat counts as nbf when there is none."""
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600, now=T0 + 31)
    refused(verifier, token, "not-yet-valid")
    clock.now = T0 + 1
    verifier.verify(token)


@pytest.mark.parametrize("cut", [1, 10, 50, 87, 90])
def test_truncated(issuer: TokenIssuer, verifier: TokenVerifier, cut: int) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    refused(verifier, token[:-cut], "malformed")


def test_truncated_segments(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    parts = token.split(".")
    for count in range(len(parts)):
        refused(verifier, ".".join(parts[:count]), "malformed")
    refused(verifier, f"{parts[0]}..{parts[2]}", "malformed")
    refused(verifier, token.rsplit(".", 1)[0] + ".", "malformed")


def test_oversized(issuer: TokenIssuer, keyring: Keyring, clock: FakeTime) -> None:
    verifier = TokenVerifier(keyring, audience=HOST_A, clock=clock, max_size=4096)
    refused(verifier, "A" * 4097, "too-large")
    refused(verifier, b"\xff" * 100_000, "too-large")
    many = Scope(projects=tuple(str(uuid.UUID(int=i)) for i in range(200)))
    big = issuer.issue(ACCOUNT, HOST_A, many, 600)
    assert len(big) > 4096
    refused(verifier, big, "too-large")
    assert TokenVerifier(keyring, audience=HOST_A, clock=clock, max_size=len(big)).verify(big).scope == many


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        b"",
        ".",
        "...",
        "conat1...",
        "conat1.kid.payload.signature",
        "conat1.payload.signature",
        "garbage",
        "conat1.k\u00e9y.AAAA." + "A" * 86,
        "\u00e9" * 100,
        "\x00" * 100,
        b"\x00\xff\xfe" * 30,
        bytes(range(256)),
    ],
)
def test_garbage(verifier: TokenVerifier, garbage: str | bytes) -> None:
    refused(verifier, garbage, "malformed")


def test_not_a_string(verifier: TokenVerifier) -> None:
    refused(verifier, 12345, "malformed")  # type: ignore[arg-type]
    refused(verifier, ["conat1"], "malformed")  # type: ignore[arg-type]


def test_random_bytes(verifier: TokenVerifier) -> None:
    import os

    for _ in range(50):
        refused(verifier, os.urandom(200), "malformed")


def test_other_version_prefix_and_whitespace(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    refused(verifier, "conat2" + token.removeprefix("conat1"), "malformed")
    refused(verifier, "CONAT1" + token.removeprefix("conat1"), "malformed")
    refused(verifier, token + "\n", "malformed")
    refused(verifier, " " + token, "malformed")
    refused(verifier, token + "=", "malformed")
    head, signature = token.rsplit(".", 1)
    refused(verifier, f"{head}.{signature}==", "malformed")


def test_non_canonical_base64_is_malformed(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)
    head, signature = token.rsplit(".", 1)
    # 64 bytes = 85 1/3 characters: the last character carries 4 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    sibling = alphabet[last ^ 0x01]
    assert unb64(signature[:-1] + sibling) == unb64(signature)
    refused(verifier, f"{head}.{signature[:-1]}{sibling}", "malformed")


# -- bad claims -----------------------------------------------------------------------------------


def _claims(header_kid: str, **changes: object) -> bytes:
    fields: dict[str, object] = {
        "kid": header_kid,
        "iss": "hub",
        "sub": ACCOUNT,
        "aud": HOST_A,
        "iat": T0,
        "exp": T0 + 600,
        "jti": "j" * 22,
        "scope": {},
    }
    fields.update(changes)
    return msgspec.msgpack.encode({key: value for key, value in fields.items() if value is not None})


@pytest.mark.parametrize(
    "changes",
    [
        {"kid": "not a kid!"},
        {"kid": None},
        {"kid": 7},
        {"exp": T0},
        {"exp": T0 - 1},
        {"exp": T0 + MAX_TOKEN_TTL + 60},
        {"nbf": T0 - 1},
        {"nbf": T0 + 700},
        {"exp": float("inf")},
        {"iat": float("nan")},
        {"sub": "alice"},
        {"sub": ""},
        {"aud": "project-" + PROJECT},
        {"jti": ""},
        {"iss": ""},
        {"exp": "tomorrow"},
        {"scope": {"projects": "p"}},
        {"once": "yes"},
        {"jti": None},
        {"rev": -1},
        {"rev": 2**53 + 1},
        {"rev": 1.5},
        {"rev": True},
    ],
)
def test_bad_claims(clock: FakeTime, changes: dict[str, object]) -> None:
    keys = FixedKeys("k1")
    verifier = TokenVerifier({"k1": bytes(keys.key.verify_key)}, audience=HOST_A, clock=clock)
    verifier.verify(forge(_claims("k1"), keys.key))  # the baseline is fine
    refused(verifier, forge(_claims("k1", **changes), keys.key), "bad-claims")


@pytest.mark.parametrize("payload", [b"\xc1", b"not msgpack", msgspec.msgpack.encode([1, 2, 3]), b"\x80"])
def test_claims_that_do_not_decode(clock: FakeTime, payload: bytes) -> None:
    keys = FixedKeys("k1")
    verifier = TokenVerifier({"k1": b64(bytes(keys.key.verify_key))}, audience=HOST_A, clock=clock)
    refused(verifier, forge(payload, keys.key), "bad-claims")


def test_check_order(clock: FakeTime) -> None:
    """Each refusal comes before the later checks: expired AND wrong audience reads wrong-audience."""
    keys = FixedKeys("k1")
    verifier = TokenVerifier({"k1": bytes(keys.key.verify_key)}, audience=HOST_A, clock=clock)
    late = forge(_claims("k1", aud=HOST_B, exp=T0 + 1, iat=T0 - 100), keys.key)
    clock.now = T0 + 1000
    refused(verifier, late, "wrong-audience")
    refused(verifier, forge(_claims("k1", aud=HOST_B, sub="x"), keys.key), "bad-claims")
    refused(verifier, forge(_claims("k1", sub="x"), FixedKeys("k1").key), "bad-signature")


# -- one-time tokens ------------------------------------------------------------------------------


def test_one_time_token(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(HOST_A, HOST_A, Scope(), 600, once=True)
    assert verifier.verify(token).once
    refused(verifier, token, "replayed")
    refused(verifier, token, "replayed")
    # An ordinary token can be used any number of times.
    plain = issuer.issue(HOST_A, HOST_A, Scope(), 600)
    for _ in range(3):
        verifier.verify(plain)


def test_one_time_token_without_guard(issuer: TokenIssuer, keyring: Keyring, clock: FakeTime) -> None:
    verifier = TokenVerifier(keyring, audience=HOST_A, clock=clock)
    refused(verifier, issuer.issue(HOST_A, HOST_A, Scope(), 600, once=True), "no-replay-guard")


def test_a_refused_one_time_token_is_not_used_up(
    issuer: TokenIssuer, keyring: Keyring, clock: FakeTime
) -> None:
    guard = MemoryReplayGuard()
    token = issuer.issue(HOST_A, HOST_A, Scope(), 600, once=True, nbf=T0 + 100)
    verifier = TokenVerifier(keyring, audience=HOST_A, clock=clock, replay=guard)
    refused(verifier, token, "not-yet-valid")
    refused(TokenVerifier(keyring, audience=HOST_B, clock=clock, replay=guard), token, "wrong-audience")
    assert len(guard) == 0
    clock.now = T0 + 100
    verifier.verify(token)
    refused(verifier, token, "replayed")


def test_replay_guard_forgets_expired_tokens() -> None:
    guard = MemoryReplayGuard()
    assert guard.first_use("a", expires=T0 + 10, now=T0)
    assert guard.first_use("b", expires=T0 + 20, now=T0)
    assert not guard.first_use("a", expires=T0 + 10, now=T0 + 5)
    assert len(guard) == 2
    assert guard.first_use("c", expires=T0 + 30, now=T0 + 10)  # prunes "a"
    assert len(guard) == 2
    assert guard.first_use("a", expires=T0 + 40, now=T0 + 10)  # expired long ago: forgotten
    assert guard.first_use("d", expires=T0 + 50, now=T0 + 100)
    assert len(guard) == 1
    assert "entries=1" in repr(guard)


def test_replay_guard_remembers_through_the_leeway(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeTime
) -> None:
    token = issuer.issue(HOST_A, HOST_A, Scope(), 60, once=True)
    verifier.verify(token)
    clock.now = T0 + 60 + 29  # past exp, inside the leeway: still remembered
    refused(verifier, token, "replayed")
    clock.now = T0 + 90
    refused(verifier, token, "expired")


# -- peeking (no verification) --------------------------------------------------------------------


def test_revision_is_carried_and_defaults_to_zero(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    """The issuer's revision of the principal (revocation compares it, never a time)."""
    assert verifier.verify(issuer.issue(ACCOUNT, HOST_A, SCOPE, 60)).rev == 0
    assert verifier.verify(issuer.issue(ACCOUNT, HOST_A, SCOPE, 60, revision=7)).rev == 7
    # a token minted without a revision (an older issuer) reads as revision 0, and is unchanged
    old = issuer.issue(ACCOUNT, HOST_A, SCOPE, 60)
    assert b"rev" not in unb64(old.split(".")[1])


def test_the_caller_may_take_over_the_one_time_check(
    issuer: TokenIssuer, keyring: Keyring, clock: FakeTime
) -> None:
    """A bus checks one-time use itself, after revocation, against its durable store."""
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 60, once=True)
    bare = TokenVerifier(keyring, audience=HOST_A, clock=clock)
    assert bare.verify(token, check_replay=False).once
    assert bare.verify(token, check_replay=False).once  # not remembered here
    refused(bare, token, "no-replay-guard")


def test_peek_claims_reads_without_verifying(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(ACCOUNT, HOST_B, SCOPE, 600, now=T0 - 10_000)
    claims = peek_claims(token)
    assert (claims.sub, claims.aud, claims.scope, claims.exp) == (ACCOUNT, HOST_B, SCOPE, T0 - 10_000 + 600)
    refused(verifier, token, "wrong-audience")
    foreign = TokenIssuer(FixedKeys("k1"), clock=lambda: T0).issue(ACCOUNT, HOST_A, SCOPE, 60)
    assert peek_claims(foreign).kid == "k1"  # no key needed: it does not check the signature


@pytest.mark.parametrize("token", ["", "garbage", b"\xff" * 10, 42])
def test_peek_claims_refuses_garbage(token: object) -> None:
    with pytest.raises(TokenError) as info:
        peek_claims(token)  # type: ignore[arg-type]
    assert info.value.code == "malformed"


def test_peek_claims_refuses_bad_claims_and_huge_tokens() -> None:
    key = SigningKey.generate()
    with pytest.raises(TokenError) as info:
        peek_claims(forge(_claims("k1", exp=T0 - 1), key))
    assert info.value.code == "bad-claims"
    with pytest.raises(TokenError) as info:
        peek_claims("A" * 100_000)
    assert info.value.code == "too-large"


# -- keys given as a mapping ----------------------------------------------------------------------


def test_pinned_mapping_is_a_snapshot(keyring: Keyring, issuer: TokenIssuer, clock: FakeTime) -> None:
    pinned = TokenVerifier(keyring.public_keys(), audience=HOST_A, clock=clock)
    live = TokenVerifier(keyring, audience=HOST_A, clock=clock)
    keyring.rotate()
    token = issuer.issue(ACCOUNT, HOST_A, SCOPE, 60)
    live.verify(token)
    refused(pinned, token, "unknown-kid")


def test_reprs_hold_no_secrets(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    assert "TokenIssuer" in repr(issuer)
    assert HOST_A in repr(verifier)


# -- properties -----------------------------------------------------------------------------------


Shared = tuple[Keyring, TokenIssuer, TokenVerifier, str]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    keyring = Keyring.open(tmp_path_factory.mktemp("keys") / "keys")
    clock = FakeTime()
    issuer = TokenIssuer(keyring, clock=clock)
    verifier = TokenVerifier(keyring, audience=HOST_A, clock=clock)
    yield keyring, issuer, verifier, issuer.issue(ACCOUNT, HOST_A, SCOPE, 600)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_refused(shared: Shared, data: st.DataObject) -> None:
    _, _, verifier, token = shared
    raw = bytearray(token.encode())
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda byte: byte != raw[index]), label="byte")
    raw[index] = value
    with pytest.raises(TokenError):
        verifier.verify(bytes(raw))
    if value < 128:
        with pytest.raises(TokenError):
            verifier.verify(raw.decode())


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 10_000), insert=st.booleans())
def test_any_deletion_or_insertion_is_refused(shared: Shared, index: int, insert: bool) -> None:
    _, _, verifier, token = shared
    index %= len(token)
    changed = token[:index] + "A" + token[index:] if insert else token[:index] + token[index + 1 :]
    with pytest.raises(TokenError):
        verifier.verify(changed)


uuids = st.uuids().map(str)
principals = st.one_of(
    st.just("hub"),
    st.tuples(st.sampled_from(["account", "host", "project"]), uuids).map(
        lambda pair: f"{pair[0]}-{pair[1]}"
    ),
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sub=principals,
    host=st.one_of(st.none(), uuids),
    projects=st.lists(uuids, max_size=5).map(tuple),
    hosts=st.lists(uuids, max_size=3).map(tuple),
    admin=st.booleans(),
    ttl=st.floats(min_value=1, max_value=MAX_TOKEN_TTL),
    delay=st.one_of(st.none(), st.floats(min_value=0, max_value=3600)),
    once=st.booleans(),
)
def test_verify_returns_what_was_issued(
    shared: Shared,
    sub: str,
    host: str | None,
    projects: tuple[str, ...],
    hosts: tuple[str, ...],
    admin: bool,
    ttl: float,
    delay: float | None,
    once: bool,
) -> None:
    keyring, issuer, _, _ = shared
    aud = "master" if host is None else f"host-{host}"
    scope = Scope(projects=projects, hosts=hosts, admin=admin)
    now = T0 + 12.5
    nbf = None if delay is None else now + delay
    token = issuer.issue(sub, aud, scope, ttl, nbf=nbf, once=once, now=now)
    verifier = TokenVerifier(
        keyring,
        audience=aud,
        clock=lambda: now if nbf is None else nbf,
        replay=MemoryReplayGuard(),
    )
    claims = verifier.verify(token)
    assert isinstance(claims, TokenClaims)
    assert (claims.sub, claims.aud, claims.scope, claims.once, claims.iat, claims.nbf) == (
        sub,
        aud,
        scope,
        once,
        now,
        nbf,
    )
    assert claims.exp == (now if nbf is None else nbf) + ttl
