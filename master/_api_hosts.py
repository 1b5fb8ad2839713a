"""``hosts.*`` (accounts manage hosts) and ``host.*`` (what a host tells and asks master).

A host belongs to the account that created it; its owner may share it (every account may then
place projects there) or add collaborators. ``hosts.create`` returns a one-time join token that
``conat host serve --master URL --join-token-file F`` uses to register; with ``provider=``, master
starts the host itself through that provider (:mod:`master._providers`), minting the join token
in the queued action, so no token is shown.

``host.register``: a host (connected with its join token the first time, with its own API key
afterwards) gets master's public token keys to pin, and its own API key (the first time, or when
it asks): never one of master's secrets. ``host.report`` carries project states; a *complete*
report (after the host (re)started or reconnected) reconciles: projects master deleted are purged
from the host, projects that should run but do not are started again (queued), projects master
placed there but the host lacks are marked ``error``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final

from conat.auth import new_api_key
from conat.platform import (
    MAX_NAME,
    BadArgument,
    HostInfo,
    HostTokens,
    Keepalive,
    KeepaliveReply,
    NewHost,
    RegisterRequest,
    Registration,
    RevocationEntry,
    StateReport,
    check_id,
    check_text,
)

from ._context import Caller, MasterContext, host_info
from ._db import HostRow
from ._errors import UnknownAccount, UnknownHost, WrongState
from ._rpc import AfterReply

__all__ = ["HostNamespace", "HostsNamespace"]

_QUIET: Final = frozenset({"moving", "creating"})


class HostsNamespace:
    """``hosts.*`` (see the module docstring)."""

    def __init__(self, ctx: MasterContext) -> None:
        self.ctx = ctx

    async def _info(self, row: HostRow) -> HostInfo:
        return host_info(row, self.ctx.counts.get(row.id, 0), self.ctx.liveness.status(row.id))

    async def list(self, caller: Caller) -> list[HostInfo]:
        """Hosts the caller owns, collaborates on, or that are shared; an admin sees all."""
        async with self.ctx.db.reading() as tx:
            rows = await tx.hosts()
        visible = [
            r
            for r in rows
            if caller.admin or r.shared or r.owner == caller.id or caller.id in r.collaborators
        ]
        return [await self._info(r) for r in visible]

    async def get(self, caller: Caller, host_id: str) -> HostInfo:
        check_id(host_id, "host_id")
        async with self.ctx.db.reading() as tx:
            return await self._info(await self.ctx.host(tx, caller, host_id))

    async def create(
        self, caller: Caller, name: str, region: str = "", capacity: int = 100, shared: bool = False,
        provider: str | None = None,
    ) -> NewHost:  # fmt: skip
        """A new host owned by the caller, and its one-time join token (none with ``provider``:
        master starts it)."""
        check_text(name, "name", MAX_NAME)
        check_text(region, "region", MAX_NAME, empty=True)
        if not isinstance(capacity, int) or not 0 <= capacity <= 1_000_000:
            raise BadArgument("capacity", "must be 0..1000000")
        ctx = self.ctx
        if provider is not None and (ctx.providers is None or provider not in ctx.providers.names()):
            raise BadArgument("provider", f"unknown provider {provider!r}")
        now = ctx.wall()
        row = HostRow(
            id=str(uuid.uuid4()), name=name, owner=caller.id, shared=shared, region=region, capacity=capacity,
            status="new", last_seen=None, bus_url="", public_key="", provider=provider or "", revision=0,
            created=now,
        )  # fmt: skip
        async with ctx.db.transaction() as tx:
            await tx.insert_host(row)
            await tx.audit(now, caller.principal, "host.create", f"host-{row.id}",
                           f"name={name!r} provider={provider or 'none'} capacity={capacity}")  # fmt: skip
            if provider is not None:
                await ctx.queue.enqueue(tx, "provider.create", f"host-{row.id}", {"host_id": row.id},
                                        dedup=f"provider:{row.id}")  # fmt: skip
        ctx.liveness.track(row.id, "new")
        if provider is not None:
            ctx.queue.wake()
            return NewHost(host=await self._info(row), join_token="", expires=0.0)
        token, expires = ctx.issuer.join(row.id, row.revision)
        return NewHost(host=await self._info(row), join_token=token, expires=expires)

    async def delete(self, caller: Caller, host_id: str) -> None:
        """Delete a host that has no projects: its credentials are revoked at once, and a provider
        host is stopped and removed (queued)."""
        check_id(host_id, "host_id")
        ctx = self.ctx
        now = ctx.wall()
        async with ctx.db.transaction() as tx:
            row = await ctx.host(tx, caller, host_id, manage=True)
            count = ctx.counts.get(host_id, 0)
            if count:
                raise WrongState(f"holding {count} project(s)", "delete", detail="move or delete them first",
                                 host_id=host_id)  # fmt: skip
            keys = await tx.keys_of(host_id=host_id)
            await tx.update_host(host_id, status="deleted")
            await tx.execute("DELETE FROM api_keys WHERE host_id = ?", (host_id,))
            await tx.audit(now, caller.principal, "host.delete", f"host-{host_id}")
            if row.provider:
                await ctx.queue.enqueue(tx, "provider.delete", f"host-{host_id}", {"host_id": host_id},
                                        dedup=f"provider:{host_id}")  # fmt: skip
        for key_id, _, _ in keys:
            ctx.exchange.forget(key_id)
        ctx.liveness.track(host_id, "deleted")
        ctx.queue.wake()
        await ctx.revoker.revoke("host", host_id, actor=caller.principal, why="host deleted")

    async def set_shared(self, caller: Caller, host_id: str, shared: bool) -> HostInfo:
        check_id(host_id, "host_id")
        async with self.ctx.db.transaction() as tx:
            await self.ctx.host(tx, caller, host_id, manage=True)
            await tx.update_host(host_id, shared=bool(shared))
            await tx.audit(
                self.ctx.wall(), caller.principal, "host.share", f"host-{host_id}", f"shared={shared}"
            )
            row = await tx.host(host_id)
        assert row is not None
        return await self._info(row)

    async def _collaborator(self, caller: Caller, host_id: str, account_id: str, present: bool) -> HostInfo:
        check_id(host_id, "host_id")
        check_id(account_id, "account_id")
        ctx = self.ctx
        async with ctx.db.transaction() as tx:
            await ctx.host(tx, caller, host_id, manage=True)
            other = await tx.account(account_id)
            if other is None or other.deleted is not None:
                raise UnknownAccount(account_id)
            await tx.set_host_collaborator(host_id, account_id, present)
            await tx.audit(ctx.wall(), caller.principal, f"host.collaborator.{'add' if present else 'remove'}",
                           f"host-{host_id}", f"account-{account_id}")  # fmt: skip
            row = await tx.host(host_id)
        assert row is not None
        info = await self._info(row)
        if not present:
            revoke = ctx.revoker.revoke("account", account_id, actor=caller.principal,
                                        why=f"no longer a collaborator of host {host_id}")  # fmt: skip
            if account_id == caller.id:  # answer before the caller's own connections are cut
                return AfterReply(info, lambda: revoke)  # type: ignore[return-value]
            await revoke
        return info

    async def add_collaborator(self, caller: Caller, host_id: str, account_id: str) -> HostInfo:
        return await self._collaborator(caller, host_id, account_id, True)

    async def remove_collaborator(self, caller: Caller, host_id: str, account_id: str) -> HostInfo:
        return await self._collaborator(caller, host_id, account_id, False)


class HostNamespace:
    """``host.*`` on ``master.host-<h>.api`` (the caller is host ``h``)."""

    def __init__(self, ctx: MasterContext) -> None:
        self.ctx = ctx

    async def _row(self, caller: Caller) -> HostRow:
        async with self.ctx.db.reading() as tx:
            row = await tx.host(caller.id)
        if row is None or row.status == "deleted":
            raise UnknownHost(caller.id)
        return row

    async def register(self, caller: Caller, request: RegisterRequest) -> Registration:
        """Pin master's keys; get the host's own API key the first time (or when asked)."""
        ctx = self.ctx
        row = await self._row(caller)
        now = ctx.wall()
        fresh_key: str | None = None
        async with ctx.db.transaction() as tx:
            keys = await tx.keys_of(host_id=caller.id)
        if request.renew_key or not keys:
            _key_id, fresh_key, record = await asyncio.to_thread(new_api_key)
        async with ctx.db.transaction() as tx:
            if fresh_key is not None:
                await tx.execute("DELETE FROM api_keys WHERE host_id = ?", (caller.id,))
                await tx.insert_key(record, now, host_id=caller.id, name="host key")
            serving = bool(request.bus_url)  # a joining host has no bus yet: online once it has
            await tx.update_host(
                caller.id, bus_url=request.bus_url or row.bus_url, capacity=request.capacity,
                region=request.region or row.region, public_key=request.public_key or row.public_key,
                status="online" if serving else row.status, last_seen=now,
            )  # fmt: skip
            await tx.audit(now, caller.principal, "host.register", f"host-{caller.id}",
                           f"bus {request.bus_url}" + (", new key" if fresh_key else ""))  # fmt: skip
        if fresh_key is not None:
            for old, _, _ in keys:
                ctx.exchange.forget(old)
        if serving:
            was = ctx.liveness.status(caller.id)
            ctx.liveness.track(caller.id, "online")
            if was != "online" and ctx.liveness.on_online is not None:
                await ctx.liveness.on_online(caller.id)
        return Registration(
            host_id=caller.id, public_keys=ctx.issuer.public_keys(), api_key=fresh_key,
            revocation_seq=ctx.revoker.latest, keepalive_interval=ctx.config.keepalive_interval,
        )  # fmt: skip

    async def keepalive(self, caller: Caller, keepalive: Keepalive) -> KeepaliveReply:
        await self.ctx.liveness.seen(caller.id, keepalive.capacity, keepalive.load)
        return KeepaliveReply(
            revocation_seq=self.ctx.revoker.latest, interval=self.ctx.config.keepalive_interval
        )

    async def revocations(self, caller: Caller, since: int) -> list[RevocationEntry]:
        """Revocations after ``since`` (at most 10000 at a time, in order)."""
        async with self.ctx.db.reading() as tx:
            rows = await tx.fetch(
                "SELECT seq, principal, below FROM revocations WHERE seq > ? ORDER BY seq LIMIT 10000",
                (since,),
            )
        return [RevocationEntry(seq=r[0], principal=r[1], below=r[2]) for r in rows]

    async def master_token(self, caller: Caller) -> str:
        row = await self._row(caller)
        token, _ = self.ctx.issuer.host_master(caller.id, row.revision)
        return token

    async def tokens(self, caller: Caller, projects: list[str] | None = None) -> HostTokens:
        """The host's token for its own bus, and fresh tokens for those of ``projects`` that are
        on this host (a project's token file is renewed before it expires)."""
        ctx = self.ctx
        row = await self._row(caller)
        token, expires = ctx.issuer.host_own(caller.id, row.revision)
        fresh: dict[str, str] = {}
        if projects:
            if len(projects) > 10_000:
                raise BadArgument("projects", "at most 10000")
            async with ctx.db.reading() as tx:
                mine = {p.id: p for p in await tx.projects(host_id=caller.id)}
            for project_id in projects:
                project = mine.get(project_id)
                if project is not None:
                    fresh[project_id] = ctx.issuer.project(project_id, caller.id, project.revision)[0]
        return HostTokens(host_token=token, expires=expires, projects=fresh)

    async def report(self, caller: Caller, report: StateReport) -> None:
        """Project states from the host (see the module docstring for complete reports)."""
        ctx = self.ctx
        now = ctx.wall()
        reported = {r.project_id: r for r in report.projects}
        restart: list[str] = []
        purge: list[str] = []
        async with ctx.db.transaction() as tx:
            placed = {p.id: p for p in await tx.projects(host_id=caller.id)}
            for project_id, r in reported.items():
                row = placed.get(project_id)
                if row is None:
                    gone = await tx.fetch_one(
                        "SELECT 1 FROM projects WHERE id = ? AND deleted IS NOT NULL AND host_id = ?",
                        (project_id, caller.id),
                    )
                    if gone is not None and report.complete:
                        purge.append(project_id)
                    continue
                if row.state in _QUIET:
                    continue
                if (row.state, row.reason, row.last_activity) != (
                    r.state,
                    r.reason,
                    r.last_activity or row.last_activity,
                ):
                    await tx.update_project(project_id, state=r.state, reason=r.reason,
                                            last_activity=r.last_activity or row.last_activity)  # fmt: skip
                if report.complete and row.desired == "running" and r.state in ("opened", "error"):
                    restart.append(project_id)
            if report.complete:
                for project_id, row in placed.items():
                    if project_id not in reported and row.state not in _QUIET:
                        await tx.update_project(project_id, state="error", reason="its host does not have it")
                        await tx.audit(
                            now, "master", "reconcile", f"project-{project_id}", "missing on its host"
                        )
            for project_id in restart:
                await ctx.queue.enqueue(tx, "project.ensure_running", f"project-{project_id}",
                                        {"project_id": project_id}, dedup=f"ensure:{project_id}")  # fmt: skip
                await tx.audit(
                    now, "master", "reconcile", f"project-{project_id}", "should run: starting it again"
                )
            for project_id in purge:
                await ctx.queue.enqueue(tx, "project.purge", f"project-{project_id}",
                                        {"project_id": project_id, "host_id": caller.id},
                                        dedup=f"purge:{project_id}")  # fmt: skip
        if restart or purge:
            ctx.queue.wake()
