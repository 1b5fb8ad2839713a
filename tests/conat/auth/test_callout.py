"""The decider on its own (a real store, no server): xkey is required once configured, the user
JWT's expiry tells the truth, a grant is recorded before its revocation check, a store that cannot
answer refuses; and the kick list (:class:`Connections`)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conat.auth import (
    AUTHORIZATION_REQUEST_AUDIENCE,
    MIN_CONNECTION_LIFETIME,
    TOKEN_LEEWAY,
    AuthStore,
    Connections,
    CurveKeyPair,
    Decider,
    Decision,
    KeyKind,
    KeyPair,
    Keyring,
    TokenIssuer,
    TokenVerifier,
    decode_jwt,
    encode_jwt,
)
from subjects import Scope

pytestmark = pytest.mark.anyio

BUS = "host-00000000-0000-0000-0000-000000000003"
A = "account-00000000-0000-0000-0000-000000000005"
SERVER = KeyPair.create(KeyKind.SERVER)
SERVER_XKEY = CurveKeyPair.create()


@dataclass
class Setup:
    decider: Decider
    issuer: TokenIssuer
    store: AuthStore
    clock: list[float]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    keyring = Keyring.open(tmp_path / "keys")
    clock = [time.time()]
    store = await AuthStore.open(tmp_path / "auth.sqlite")
    decider = Decider(
        bus=BUS,
        issuer=KeyPair.create(KeyKind.ACCOUNT),
        verifier=TokenVerifier(keyring, audience=BUS, clock=lambda: clock[0]),
        store=store,
        xkey=CurveKeyPair.create(),
        clock=lambda: clock[0],
    )
    try:
        yield Setup(decider, TokenIssuer(keyring, clock=lambda: clock[0]), store, clock)
    finally:
        await store.aclose()


def request(token: str, cid: int = 7) -> bytes:
    """An authorization request as nats-server sends it (signed by its server key, unsealed)."""
    claims: dict[str, Any] = {
        "aud": AUTHORIZATION_REQUEST_AUDIENCE,
        "sub": SERVER.public_key,
        "exp": int(time.time()) + 2,
        "nats": {
            "server_id": {
                "id": SERVER.public_key,
                "name": "n1",
                "host": "127.0.0.1",
                "xkey": SERVER_XKEY.public_key,
            },
            "user_nkey": KeyPair.create(KeyKind.USER).public_key,
            "client_info": {"host": "127.0.0.1", "id": cid, "kind": "Client", "type": "nats"},
            "connect_opts": {"auth_token": token},
            "type": "authorization_request",
            "version": 2,
        },
    }
    return encode_jwt(claims, SERVER).encode()


async def decide(decider: Decider, token: str, cid: int = 7) -> Decision:
    assert decider.xkey is not None
    sealed = SERVER_XKEY.seal(request(token, cid), decider.xkey.public_key)
    decision = await decider.decide(sealed, SERVER_XKEY.public_key)
    assert decision is not None
    return decision


def user_jwt_expiry(decider: Decider, decision: Decision) -> int:
    assert decider.xkey is not None
    response = SERVER_XKEY.open(decision.response, decider.xkey.public_key).decode()
    _, claims = decode_jwt(response)
    _, user = decode_jwt(claims["nats"]["jwt"])
    return int(user["exp"])


async def test_a_request_without_the_xkey_header_is_ignored_once_xkey_is_configured(setup: Setup) -> None:
    token = setup.issuer.issue(A, BUS, Scope(), 300)
    # plaintext, no header: fail closed (nats-server then refuses the client), nothing granted
    assert await setup.decider.decide(request(token), None) is None
    assert len(setup.decider.connections) == 0
    # the same request sealed, with the header: granted
    assert (await decide(setup.decider, token)).granted


async def test_the_user_jwt_expires_with_the_acceptance_window(setup: Setup) -> None:
    now = setup.clock[0]
    fresh = await decide(setup.decider, setup.issuer.issue(A, BUS, Scope(), 300, now=now))
    assert user_jwt_expiry(setup.decider, fresh) == int(now + 300 + TOKEN_LEEWAY)
    # past exp but inside the leeway: granted, and the JWT outlives exp (nats-server keeps it)
    late = await decide(setup.decider, setup.issuer.issue(A, BUS, Scope(), 60, now=now - 70), cid=8)
    assert late.granted and user_jwt_expiry(setup.decider, late) == int(now - 10 + TOKEN_LEEWAY)
    # too little left: refused as what it is
    left = MIN_CONNECTION_LIFETIME - 1
    nearly = setup.issuer.issue(A, BUS, Scope(), 60, now=now - 60 - TOKEN_LEEWAY + left)
    refused = await decide(setup.decider, nearly, cid=9)
    assert (refused.granted, refused.reason) == (False, "expired")
    # the lifetime cap still applies
    setup.decider.max_lifetime = 100.0
    capped = await decide(setup.decider, setup.issuer.issue(A, BUS, Scope(), 300, now=now), cid=10)
    assert user_jwt_expiry(setup.decider, capped) == int(now + 100)


async def test_a_grant_is_recorded_before_its_revocation_check(setup: Setup) -> None:
    """The order that makes a racing revoke kick: while the decider reads the floor, the
    connection is already in the kick list; a refusal takes it out again."""
    reading, go_on = asyncio.Event(), asyncio.Event()
    floor = setup.store.floor
    seen: list[list[tuple[str, int]]] = []

    async def slow_floor(principal: str) -> int:
        seen.append(setup.decider.connections.of(principal))
        reading.set()
        await go_on.wait()
        return await floor(principal)

    setup.store.floor = slow_floor  # type: ignore[method-assign]
    deciding = asyncio.ensure_future(decide(setup.decider, setup.issuer.issue(A, BUS, Scope(), 300)))
    await reading.wait()
    assert seen == [[(SERVER.public_key, 7)]]
    await setup.store.raise_floor(A)  # the revoke commits while the decision reads
    go_on.set()
    decision = await deciding
    assert (decision.granted, decision.reason) == (False, "revoked")
    assert setup.decider.connections.of(A) == []


async def test_a_store_that_cannot_answer_refuses(setup: Setup) -> None:
    token = setup.issuer.issue(A, BUS, Scope(), 300)
    await setup.store.aclose()
    decision = await decide(setup.decider, token)
    assert (decision.granted, decision.reason) == (False, "store-unavailable")
    assert len(setup.decider.connections) == 0


async def test_a_revoked_one_time_token_is_not_used_up(setup: Setup) -> None:
    token = setup.issuer.issue(A, BUS, Scope(), 300, once=True)
    await setup.store.raise_floor(A)
    assert (await decide(setup.decider, token)).reason == "revoked"
    fresh = setup.issuer.issue(A, BUS, Scope(), 300, once=True, revision=1)
    assert (await decide(setup.decider, fresh)).granted
    assert (await decide(setup.decider, fresh, cid=8)).reason == "replayed"


def test_connections_kick_list() -> None:
    connections = Connections()
    connections.add(A, "N1", 1, revision=0, expires=100.0)
    connections.add(A, "N1", 2, revision=3, expires=200.0)
    connections.add("hub", "N2", 1, revision=0, expires=100.0)
    assert connections.of(A) == [("N1", 1), ("N1", 2)]
    assert connections.of(A, below=3) == [("N1", 1)]  # a token at the new revision stays
    connections.remove("N1", 1)
    assert connections.of(A) == [("N1", 2)]
    connections.add(A, "N1", 2, revision=3, expires=300.0)  # the same connection, re-granted
    connections.prune(150.0)  # the hub's JWT expired: nats-server closed it
    assert connections.of("hub") == [] and connections.of(A) == [("N1", 2)]
    connections.prune(250.0)  # the stale expiry of the first grant of ("N1", 2) is ignored
    assert connections.of(A) == [("N1", 2)]
    connections.prune(300.0)
    assert len(connections) == 0


async def test_connect_attempts_are_limited_on_the_deciders_clock(setup: Setup) -> None:
    """The per-principal limit refills with the decider's own clock (not the event loop's), so
    it is exact under a fixed clock: 3 attempts per 60 s, one more every 20 s."""
    decider = dataclasses.replace(setup.decider, per_principal=(3.0, 60.0))
    token = setup.issuer.issue(A, BUS, Scope(), 3600, now=setup.clock[0])
    outcomes = [(await decide(decider, token, cid=20 + i)).reason for i in range(4)]
    assert outcomes == ["ok", "ok", "ok", "rate-limited"]
    setup.clock[0] += 19.0
    assert (await decide(decider, token, cid=30)).reason == "rate-limited"
    setup.clock[0] += 1.0
    assert (await decide(decider, token, cid=31)).granted
    assert (await decide(decider, token, cid=32)).reason == "rate-limited"
