"""A master for the master tests: real nats-server (its own bus with the callout), real SQLite.

``master`` runs in this process with no host provider; ``Platform`` helps make accounts and
hosts. A "host" here is a real client on master's bus using the host API with the host's own
credentials (join token, then its API key) — what an agent does, without the host server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import conat
from conat.platform import Keepalive, MasterHostApi, RegisterRequest
from master import ApiKeyFile, MasterApi, MasterConfig, MasterServer, connect
from subjects import master_host_api


@dataclass
class Platform:
    server: MasterServer
    admin: MasterApi
    admin_key: ApiKeyFile

    @property
    def url(self) -> str:
        return self.server.url

    async def account(self, name: str, admin: bool = False) -> MasterApi:
        made = await self.admin.accounts.create(name, admin)
        key = ApiKeyFile(master=self.url, account_id=made.account.account_id, api_key=made.api_key)
        return await connect(key)

    async def host(
        self, owner: MasterApi, name: str, **options: object
    ) -> tuple[str, conat.Client, MasterHostApi]:
        """A host that joined and sends keepalives by hand: (host id, its client, its host API)."""
        made = await owner.hosts.create(name, **options)  # type: ignore[arg-type]
        client = await conat.connect(self.url, credentials=made.join_token)
        api = client.service(MasterHostApi, master_host_api(made.host.host_id), timeout=10.0)
        await api.register(
            RegisterRequest(bus_url="nats://127.0.0.1:9", capacity=int(options.get("capacity", 100)))
        )
        await api.keepalive(Keepalive(capacity=int(options.get("capacity", 100))))
        return made.host.host_id, client, api


async def until(check: Callable[[], object], timeout: float = 10.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(step)


def master_config(path: Path, **options: object) -> MasterConfig:
    return MasterConfig(data_dir=str(path), keepalive_interval=0.3, offline_after=2, lease=2.0, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    server = await MasterServer(master_config(tmp_path_factory.mktemp("master")), providers=[]).start()
    try:
        key = await server.ensure_admin()
        admin = await connect(key)
        try:
            yield Platform(server, admin, key)
        finally:
            await admin.aclose()
    finally:
        await server.aclose()
