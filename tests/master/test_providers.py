"""Host providers and the reconcile loop on a real master (its bus, its database), with a provider
that keeps its "machines" in a dict: what master queues when a machine stops, vanishes, or runs
unknown to it, and that a slow provider never holds up master's database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from master import MasterServer, ProviderCapabilities, ProviderHost, connect

from .conftest import master_config, until

pytestmark = pytest.mark.anyio


class DictProvider:
    """Machines in a dict; every call recorded; ``list`` waits while ``listing`` is clear."""

    name = "dict"

    def __init__(self) -> None:
        self.machines: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.listing = asyncio.Event()
        self.listing.set()

    def capabilities(self) -> ProviderCapabilities:
        return ProviderCapabilities(name=self.name)

    def _host(self, host_id: str) -> ProviderHost:
        return ProviderHost(host_id=host_id, state=self.machines.get(host_id, "missing"))  # type: ignore[arg-type]

    async def create(self, host_id: str, join_token: str, master_url: str, capacity: int) -> ProviderHost:
        assert join_token and master_url.startswith("nats://")
        self.calls.append(("create", host_id))
        self.machines[host_id] = "running"
        return self._host(host_id)

    async def start(self, host_id: str) -> ProviderHost:
        self.calls.append(("start", host_id))
        self.machines[host_id] = "running"
        return self._host(host_id)

    async def stop(self, host_id: str) -> ProviderHost:
        self.calls.append(("stop", host_id))
        self.machines[host_id] = "stopped"
        return self._host(host_id)

    async def delete(self, host_id: str) -> None:
        self.calls.append(("delete", host_id))
        self.machines.pop(host_id, None)

    async def status(self, host_id: str) -> ProviderHost:
        return self._host(host_id)

    async def list(self) -> list[ProviderHost]:
        await self.listing.wait()
        return [self._host(h) for h in self.machines]

    async def aclose(self) -> None:
        pass


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[tuple[MasterServer, DictProvider]]:
    provider = DictProvider()
    config = master_config(tmp_path / "master", reconcile_interval=3600.0)  # reconciled by the test
    async with MasterServer(config, providers=[provider]) as server:
        yield server, provider


async def test_reconcile_starts_recreates_and_deletes(master: tuple[MasterServer, DictProvider]) -> None:
    server, provider = master
    assert server.ctx is not None and server.ctx.providers is not None
    providers = server.ctx.providers
    async with await connect(await server.ensure_admin()) as admin:
        host_id = (await admin.hosts.create("h", provider="dict")).host.host_id
        await until(lambda: ("create", host_id) in provider.calls)  # queued by hosts.create

        provider.machines[host_id] = "stopped"  # the machine went down
        assert await providers.reconcile() == 1
        await until(lambda: ("start", host_id) in provider.calls)

        del provider.machines[host_id]  # the machine is gone
        assert await providers.reconcile() == 1
        await until(lambda: provider.calls.count(("create", host_id)) == 2)

        provider.machines["stranger"] = "running"  # a machine master does not know
        assert await providers.reconcile() == 0
        assert ("delete", "stranger") in provider.calls and "stranger" not in provider.machines

        provider.listing.clear()  # a provider that takes its time to answer...
        slow = asyncio.ensure_future(providers.reconcile())
        try:
            await asyncio.sleep(0.1)
            listed = await asyncio.wait_for(admin.hosts.list(), 5)  # ...holds up no API call
            assert [h.host_id for h in listed] == [host_id]
        finally:
            provider.listing.set()
            assert await slow == 0
