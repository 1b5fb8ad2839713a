"""Credentials that are not conat tokens (master's API keys) are judged by the bus's exchange hook,
then go through the same decision as a token: grant, revocation floor, audit."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conat
from conat.auth import AuthBus, TokenClaims
from subjects import inbox_prefix, master_account_api

from .conftest import Mint, until

pytestmark = pytest.mark.anyio

ACCOUNT = f"account-{uuid.UUID(int=77)}"
SECRET = "key-that-is-not-a-token"


class Exchange:
    """Knows one key; stands for ``ACCOUNT`` at ``revision``."""

    def __init__(self) -> None:
        self.revision = 0
        self.seen: list[str] = []

    async def claims(self, credential: str, bus: str) -> TokenClaims | None:
        self.seen.append(credential)
        if credential != SECRET:
            return None
        now = time.time()
        return TokenClaims(
            kid="exchange", iss="hub", sub=ACCOUNT, aud=bus, iat=now, exp=now + 60, jti=uuid.uuid4().hex,
            rev=self.revision,
        )  # fmt: skip


@pytest.fixture
async def master_bus(mint: Mint, tmp_path: Path) -> AsyncIterator[tuple[AuthBus, Exchange]]:
    exchange = Exchange()
    bus = await AuthBus.start(
        bus="master", public_keys=mint.keyring.public_keys(), directory=tmp_path / "bus", exchange=exchange
    )
    async with bus:
        yield bus, exchange


async def test_an_exchanged_credential_gets_its_principals_grant(
    master_bus: tuple[AuthBus, Exchange], mint: Mint
) -> None:
    bus, exchange = master_bus
    api = master_account_api(ACCOUNT.removeprefix("account-"))
    served: list[bytes] = []
    async with await conat.connect(bus.url, credentials=mint.token("hub", aud="master")) as hub:
        await hub.subscribe(api, dispatch=lambda m: served.append(m.raw))
        async with await conat.connect(bus.url, token=SECRET, inbox_prefix=inbox_prefix(ACCOUNT)) as client:
            await client.publish(api, b"hello", encoding="raw")  # the account's own API: granted
            await until(lambda: served == [b"hello"])
    assert exchange.seen == [SECRET]
    assert [(e.result, e.reason) for e in await bus.audit.entries(ACCOUNT)] == [("grant", "ok")]


async def test_a_refused_or_revoked_credential_cannot_connect(master_bus: tuple[AuthBus, Exchange]) -> None:
    bus, exchange = master_bus
    with pytest.raises(conat.Unauthorized):
        await conat.connect(bus.url, token="some-other-key", connect_attempts=1)
    assert [e.reason for e in await bus.audit.entries() if e.result == "refuse"] == ["bad-credential"]
    await bus.revoke(ACCOUNT, below=1)  # the exchange still stands for revision 0
    with pytest.raises(conat.Unauthorized):
        await conat.connect(bus.url, token=SECRET, connect_attempts=1, inbox_prefix=inbox_prefix(ACCOUNT))
    assert (await bus.audit.entries(ACCOUNT))[-1].reason == "revoked"
    exchange.revision = 1  # the issuer moved on: the key works again at the new revision
    client = await conat.connect(bus.url, token=SECRET, inbox_prefix=inbox_prefix(ACCOUNT))
    await client.aclose()
