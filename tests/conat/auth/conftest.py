"""A host bus with the auth callout (one per test module), master's keyring and a token mint."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import conat
from conat import Unauthorized
from conat.auth import AuthBus, Keyring, Revocation, TokenIssuer
from subjects import Scope

P = str(uuid.UUID(int=1))  # project P
Q = str(uuid.UUID(int=2))  # another project
H = str(uuid.UUID(int=3))  # host H: the bus under test
H2 = str(uuid.UUID(int=4))  # another host
A = str(uuid.UUID(int=5))  # an account collaborating on P
B = str(uuid.UUID(int=6))  # an account not collaborating on P
O = str(uuid.UUID(int=7))  # an account owning host H
BUS = f"host-{H}"


@dataclass
class Mint:
    """Issues master-signed tokens for the bus under test, and revokes the way master does: it
    bumps the principal's revision (its own decision, no clock involved) and tells the bus."""

    keyring: Keyring
    issuer: TokenIssuer
    revisions: dict[str, int] = field(default_factory=dict)

    def token(
        self, principal: str, scope: Scope | None = None, ttl: float = 300.0, aud: str = BUS, **options: Any
    ) -> str:
        options.setdefault("revision", self.revisions.get(principal, 0))
        return self.issuer.issue(principal, aud, scope or Scope(), ttl, **options)

    async def revoke(self, bus: AuthBus, principal: str) -> Revocation:
        self.revisions[principal] = self.revisions.get(principal, 0) + 1
        return await bus.revoke(principal, below=self.revisions[principal])


@pytest.fixture(scope="module")
def mint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mint]:
    keyring = Keyring.open(tmp_path_factory.mktemp("master-keys"))
    yield Mint(keyring, TokenIssuer(keyring))


@pytest.fixture(scope="module")
async def bus(mint: Mint, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthBus]:
    directory: Path = tmp_path_factory.mktemp("host-bus")
    async with await AuthBus.start(bus=BUS, public_keys=mint.keyring.public_keys(), directory=directory) as b:
        yield b


async def connect_as(bus: AuthBus, token: str, **options: object) -> conat.Client:
    return await conat.connect(bus.url, credentials=token, **options)  # type: ignore[arg-type]


async def refused_reason(bus: AuthBus, token: str) -> str:
    """Connect with ``token`` (no local checks: a raw token); it must be refused. Returns the reason
    the audit log recorded for it."""
    before = len(await bus.audit.entries())
    with pytest.raises(Unauthorized):
        await conat.connect(bus.url, token=token, connect_attempts=1)
    entries = (await bus.audit.entries())[before:]
    assert entries, "the refusal was not audited"
    assert all(e.result == "refuse" for e in entries)
    return entries[-1].reason


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
