"""Host providers: where hosts come from. One interface; one module per kind of machine.

A provider creates, starts, stops, deletes and lists host machines (:class:`HostProvider`), and
says what it can do (:class:`ProviderCapabilities`). The ``local`` provider
(:mod:`master._local_provider`) runs ``conat host serve`` processes on this machine; a cloud is one
more module implementing the same six methods.

master never calls a provider from an API handler: ``hosts.create(provider=...)`` and
``hosts.delete`` queue ``provider.*`` actions (:mod:`master._queue`), retried with backoff, each
idempotent (creating a host that exists starts it; deleting one that is gone is done). A reconcile
loop (:meth:`Providers.reconcile`, every ``reconcile_interval``) brings the two sides together:
a host of the table that its provider reports stopped (or lost) is started (or created) again;
a machine the provider runs that the table does not know, or deleted, is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal, Protocol

import msgspec

from ._context import MasterContext
from ._queue import Action, Permanent

__all__ = ["HostProvider", "ProviderCapabilities", "ProviderHost", "Providers"]

log = logging.getLogger("conat.master.providers")


class ProviderCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider offers: its regions, whether its hosts can be stopped and started again
    (keeping their disks), and how many it may run."""

    name: str
    regions: tuple[str, ...] = ()
    can_stop: bool = True
    persistent_disks: bool = True
    max_hosts: int | None = None


class ProviderHost(msgspec.Struct, frozen=True, kw_only=True):
    host_id: str
    state: Literal["running", "stopped", "missing"]
    detail: str = ""


class HostProvider(Protocol):
    """A source of host machines (see the module docstring). Every method is idempotent."""

    name: str

    def capabilities(self) -> ProviderCapabilities: ...

    async def create(self, host_id: str, join_token: str, master_url: str, capacity: int) -> ProviderHost:
        """Make the machine and start ``conat host serve`` on it with this one-time join token."""
        ...

    async def start(self, host_id: str) -> ProviderHost: ...

    async def stop(self, host_id: str) -> ProviderHost: ...

    async def delete(self, host_id: str) -> None: ...

    async def status(self, host_id: str) -> ProviderHost: ...

    async def list(self) -> list[ProviderHost]: ...

    async def aclose(self) -> None: ...


class Providers:
    """The providers of one master, their queued actions and the reconcile loop."""

    def __init__(self, ctx: MasterContext, providers: list[HostProvider]) -> None:
        self.ctx = ctx
        self.providers = {p.name: p for p in providers}
        self._loop: asyncio.Task[None] | None = None
        for kind in ("create", "start", "stop", "delete"):
            ctx.queue.register(f"provider.{kind}", self._handler(kind))

    def names(self) -> list[str]:
        return sorted(self.providers)

    def capabilities(self) -> list[ProviderCapabilities]:
        return [p.capabilities() for _, p in sorted(self.providers.items())]

    async def _host(self, host_id: str) -> tuple[Any, HostProvider | None]:
        async with self.ctx.db.reading() as tx:
            row = await tx.host(host_id)
        provider = self.providers.get(row.provider) if row is not None else None
        return row, provider

    def _handler(self, kind: str) -> Any:
        async def handle(action: Action) -> Any:
            host_id = str(action.args["host_id"])
            row, provider = await self._host(host_id)
            if row is None or provider is None:
                raise Permanent(f"host {host_id} has no known provider")
            if kind == "delete" or row.status == "deleted":
                await provider.delete(host_id)
                return "deleted"
            if kind == "stop":
                return (await provider.stop(host_id)).state
            current = await provider.status(host_id)
            if current.state == "running":
                return "running"
            if current.state == "stopped":
                return (await provider.start(host_id)).state
            token, _ = self.ctx.issuer.join(host_id, row.revision)
            created = await provider.create(host_id, token, self.ctx.url, row.capacity)
            async with self.ctx.db.transaction() as tx:
                await tx.audit(self.ctx.wall(), "master", f"provider.{kind}", f"host-{host_id}",
                               f"{provider.name}: {created.state} {created.detail}")  # fmt: skip
            return created.state

        return handle

    async def reconcile(self) -> int:
        """Queue what brings the hosts table and the providers together; returns how many actions.

        The providers are asked before the transaction and unknown machines deleted after it: a
        provider is a remote system (a cloud API), and master's database waits for nobody's."""
        ctx = self.ctx
        lists: dict[str, dict[str, ProviderHost]] = {}
        for name, provider in self.providers.items():
            try:
                lists[name] = {h.host_id: h for h in await provider.list()}
            except Exception as e:  # noqa: BLE001 - a provider that cannot list is skipped this round
                log.warning("provider %s could not list its hosts: %s", name, e)
        async with ctx.db.reading() as tx:
            rows = await tx.hosts(include_deleted=True)
        queued = 0
        offline: list[tuple[str, str]] = []
        strangers: list[tuple[HostProvider, str]] = []
        async with ctx.db.transaction() as tx:
            for name, reported in lists.items():
                mine = {r.id: r for r in rows if r.provider == name}
                for host_id, row in mine.items():
                    seen = reported.get(host_id)
                    if row.status == "deleted":
                        kind = "delete" if seen is not None else None
                    elif seen is None or seen.state == "missing":
                        kind = "create"
                    elif seen.state == "stopped":
                        kind = "start"
                    else:
                        kind = None
                    if kind in ("create", "start"):  # its machine is down: it cannot be online
                        offline.append((host_id, f"provider {name}: {seen.state if seen else 'missing'}"))
                    if kind is not None:
                        await ctx.queue.enqueue(tx, f"provider.{kind}", f"host-{host_id}", {"host_id": host_id},
                                                dedup=f"provider:{host_id}")  # fmt: skip
                        queued += 1
                strangers += [(self.providers[name], host_id) for host_id in reported.keys() - mine.keys()]
        for provider, host_id in strangers:
            log.warning(
                "provider %s runs host %s that master does not know: deleting it", provider.name, host_id
            )
            with contextlib.suppress(Exception):
                await provider.delete(host_id)
        for host_id, why in offline:
            await ctx.liveness.mark_offline(host_id, why)
        if queued:
            ctx.queue.wake()
        return queued

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.config.reconcile_interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconciling the providers failed")

    def start(self) -> None:
        self._loop = asyncio.ensure_future(self._reconcile_loop())

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        for provider in self.providers.values():
            await provider.aclose()
