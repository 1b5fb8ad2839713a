"""A host bus with the auth callout (one per test module), master's keyring and a token mint."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import conat
from auth import AuthBus
from conat.auth import Keyring, TokenIssuer
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
    """Issues master-signed tokens for the bus under test."""

    keyring: Keyring
    issuer: TokenIssuer

    def token(self, principal: str, scope: Scope | None = None, ttl: float = 300.0, aud: str = BUS) -> str:
        return self.issuer.issue(principal, aud, scope or Scope(), ttl)


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
