"""What a refused client is told (401 with a stable ``refusal`` and a reason, never "no servers
available"), what it checks before sending its token, and that the audit log records what really
happened (a grant is a connection that works)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

import conat
from conat import ClientState, Unauthorized
from conat.auth import AuthBus, BusSecrets
from subjects import MASTER_BUS, Scope, bus_server_name

from .conftest import BUS, H, Mint, connect_as, refused_reason, until

pytestmark = pytest.mark.anyio


def account(n: int) -> str:
    return f"account-{uuid.UUID(int=2000 + n)}"


async def _refusal(bus: AuthBus, credentials: object) -> tuple[Unauthorized, list[tuple[str, str, str]]]:
    """Connect with ``credentials``; returns the Unauthorized raised and the audit rows it left."""
    before = len(await bus.audit.entries())
    with pytest.raises(Unauthorized) as e:
        client = await conat.connect(bus.url, credentials=credentials, connect_attempts=1)  # type: ignore[arg-type]
        await client.aclose()
    rows = [(r.result, r.reason, r.principal) for r in (await bus.audit.entries())[before:]]
    assert e.value.code == 401
    assert "no servers available" not in str(e.value)
    return e.value, rows


async def test_the_server_names_its_bus(bus: AuthBus) -> None:
    secrets_ = BusSecrets.load(Path(bus.server.config_path).parent.parent / "secrets")
    client = await conat.connect(bus.url, user="sys", password=secrets_.sys_password)
    try:
        assert client._core.transport.server_name == bus_server_name(BUS)
    finally:
        await client.aclose()


async def test_what_the_client_knows_it_says_before_sending_the_token(bus: AuthBus, mint: Mint) -> None:
    principal = account(1)
    cases = {
        "expired": mint.token(principal, ttl=60, now=time.time() - 3600),
        "not-yet-valid": mint.token(principal, nbf=time.time() + 3600),
        "too-large": "conat1." + "A" * 1_000_000 + "." + "A" * 86,  # a 1 MB token
        "malformed": "conat1.let-me-in",  # any other string is a token file's path (test_lifecycle.py)
    }
    for code, token in cases.items():
        error, rows = await _refusal(bus, token)
        assert error.refusal == code, (code, error)
        assert rows == [], f"{code}: the token was sent"  # checked locally: nothing reached the bus
    error, _ = await _refusal(bus, cases["expired"])
    assert "expired at" in error.reason
    error, _ = await _refusal(bus, cases["too-large"])
    assert "1000" in error.reason and "16384" in error.reason


async def test_a_token_for_another_bus_is_never_sent_to_it(bus: AuthBus, mint: Mint) -> None:
    """The server's INFO names its bus before the client says anything: the token is withheld."""
    error, rows = await _refusal(bus, mint.token(account(2), aud=MASTER_BUS))
    assert error.refusal == "wrong-bus"
    assert MASTER_BUS in error.reason and BUS in error.reason and "not sent" in error.reason
    assert rows == [("refuse", "no-credentials", "")]  # the bus saw a CONNECT without any token


async def test_no_credentials_and_refusals_by_the_bus_say_so(bus: AuthBus, mint: Mint) -> None:
    with pytest.raises(Unauthorized) as e:
        await conat.connect(bus.url, connect_attempts=1)
    assert (e.value.code, e.value.refusal) == (401, "no-credentials")
    assert "credentials=" in e.value.reason
    with pytest.raises(Unauthorized) as e:
        await conat.connect(bus.url, token="let-me-in")  # the low-level path: sent as given, retried
    assert e.value.refusal == "refused" and "no servers available" not in str(e.value)
    principal = account(3)
    token = mint.token(principal)
    await mint.revoke(bus, principal)
    error, rows = await _refusal(bus, token)
    assert error.refusal == "refused"
    assert principal in error.reason and "audit log" in error.reason
    assert "revoked" in error.reason  # named among the possible reasons, not as the reason
    assert rows == [("refuse", "revoked", principal)]


async def test_a_token_inside_the_leeway_is_granted_for_real_or_refused_as_expired(
    bus: AuthBus, mint: Mint
) -> None:
    """The bus accepts a token up to ``exp`` + leeway; the connection it grants must then really
    work (the user JWT outlives ``exp``), and one too close to the end is refused as expired."""
    principal = account(4)
    late = mint.token(principal, ttl=60, now=time.time() - 70)  # exp 10 s ago, leeway 30 s
    client = await connect_as(bus, late)
    try:
        got: list[object] = []
        await client.subscribe("public.late", dispatch=lambda m: got.append(m.data))
        await client.publish("public.late", "ok")
        await until(lambda: got == ["ok"])
        assert client.state is ClientState.CONNECTED
        assert [(e.result, e.reason) for e in await bus.audit.entries(principal)] == [("grant", "ok")]
    finally:
        await client.aclose()
    too_late = mint.token(principal, ttl=60, now=time.time() - 88.5)  # 1.5 s left in the window
    assert await refused_reason(bus, too_late) == "expired"
    error, rows = await _refusal(bus, mint.token(principal, ttl=60, now=time.time() - 88.5))
    assert error.refusal == "expired"
    assert rows == [("refuse", "expired", principal)]


async def test_a_static_token_that_expires_closes_the_client_saying_why(mint: Mint, tmp_path: Path) -> None:
    async with await AuthBus.start(
        bus=BUS, public_keys=mint.keyring.public_keys(), directory=tmp_path / "bus", leeway=0
    ) as strict:
        client = await conat.connect(strict.url, credentials=mint.token(account(5), ttl=6.0))
        try:
            await until(lambda: client.state is ClientState.CLOSED, timeout=15)
            assert isinstance(client.close_reason, Unauthorized)
            assert client.close_reason.refusal == "expired"
            assert "static token cannot be refreshed" in client.close_reason.reason
        finally:
            await client.aclose()


async def test_a_refresh_that_fails_closes_the_client_saying_why(mint: Mint, tmp_path: Path) -> None:
    """A provider that cannot give a fresh token in time: the client closes, expired, not silently."""
    async with await AuthBus.start(
        bus=BUS, public_keys=mint.keyring.public_keys(), directory=tmp_path / "bus", leeway=0
    ) as strict:
        first = mint.token(account(6), Scope(hosts=(H,)), ttl=6.0)

        async def provider() -> str:
            return first  # never a fresh one

        client = await conat.connect(strict.url, credentials=provider)
        try:
            await until(lambda: client.state is ClientState.CLOSED, timeout=15)
            assert isinstance(client.close_reason, Unauthorized)
            assert client.close_reason.refusal == "expired"
        finally:
            await client.aclose()
        await asyncio.sleep(0)
