"""``accounts.*`` and ``tokens.*``: who you are, your API keys, other accounts (admins), and
credentials for the buses.

Revocation is immediate and global: deleting an API key or an account bumps the account's token
revision and pushes it to every bus (:class:`~master._links.Revoker`), so the account's open
connections everywhere are cut within a second or two; programs holding another of its keys
reconnect with fresh tokens at the new revision.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final

from conat.auth import new_api_key
from conat.platform import (
    MAX_NAME,
    Account,
    ApiKeyInfo,
    BadArgument,
    Connection,
    NewAccount,
    NewApiKey,
    check_id,
    check_text,
)

from ._context import Caller, MasterContext, account_info
from ._db import AccountRow
from ._errors import HostOffline, NotAllowed, UnknownApiKey, UnknownHost, UnknownProject
from ._rpc import AfterReply

__all__ = ["AccountsNamespace", "TokensNamespace", "create_account"]

MAX_SCOPE_PROJECTS: Final = 300
"""Projects one host-bus token may name (a token stays well under conat's 16 KiB cap)."""


async def create_account(ctx: MasterContext, name: str, *, admin: bool, actor: str) -> NewAccount:
    """A new account and its first API key (the key is shown once, only its hash is kept)."""
    check_text(name, "name", MAX_NAME)
    key_id, key, record = await asyncio.to_thread(new_api_key)
    now = ctx.wall()
    row = AccountRow(id=str(uuid.uuid4()), name=name, admin=admin, revision=0, created=now)
    async with ctx.db.transaction() as tx:
        await tx.insert_account(row)
        await tx.insert_key(record, now, account_id=row.id, name="first key")
        await tx.audit(now, actor, "account.create", f"account-{row.id}", f"name={name!r} admin={admin}")
    return NewAccount(account=account_info(row), api_key=key, key_id=key_id)


class AccountsNamespace:
    """``accounts.*`` (see the module docstring)."""

    def __init__(self, ctx: MasterContext) -> None:
        self.ctx = ctx

    async def whoami(self, caller: Caller) -> Account:
        async with self.ctx.db.reading() as tx:
            return account_info(await self.ctx.account(tx, caller.id))

    async def create(self, caller: Caller, name: str, admin: bool = False) -> NewAccount:
        """A new account (admins only) and its first API key."""
        if not caller.admin:
            raise NotAllowed("only an admin may create accounts")
        return await create_account(self.ctx, name, admin=admin, actor=caller.principal)

    async def delete(self, caller: Caller, account_id: str) -> None:
        """Delete an account (yourself, or anyone as an admin): its keys stop working and its
        connections are cut on every bus."""
        check_id(account_id, "account_id")
        if not (caller.admin or caller.id == account_id):
            raise NotAllowed("only an admin may delete another account")
        ctx = self.ctx
        now = ctx.wall()
        async with ctx.db.transaction() as tx:
            await ctx.account(tx, account_id)
            keys = await tx.keys_of(account_id=account_id)
            await tx.execute("UPDATE accounts SET deleted = ? WHERE id = ?", (now, account_id))
            await tx.execute("DELETE FROM api_keys WHERE account_id = ?", (account_id,))
            await tx.audit(now, caller.principal, "account.delete", f"account-{account_id}")
        for key_id, _, _ in keys:
            ctx.exchange.forget(key_id)

        async def revoke() -> None:
            await ctx.revoker.revoke("account", account_id, actor=caller.principal, why="account deleted")

        if account_id != caller.id:
            await revoke()
            return None
        return AfterReply(None, revoke)  # type: ignore[return-value]  # deleting yourself: answer first

    async def create_api_key(self, caller: Caller, name: str = "") -> NewApiKey:
        """A new API key of the calling account, shown once."""
        if name:
            check_text(name, "name", MAX_NAME)
        key_id, key, record = await asyncio.to_thread(new_api_key)
        now = self.ctx.wall()
        async with self.ctx.db.transaction() as tx:
            await self.ctx.account(tx, caller.id)
            await tx.insert_key(record, now, account_id=caller.id, name=name)
            await tx.audit(now, caller.principal, "api_key.create", f"key-{key_id}", name)
        return NewApiKey(key_id=key_id, api_key=key, account_id=caller.id)

    async def list_api_keys(self, caller: Caller) -> list[ApiKeyInfo]:
        async with self.ctx.db.reading() as tx:
            keys = await tx.keys_of(account_id=caller.id)
        return [ApiKeyInfo(key_id=k, name=n, created=c) for k, n, c in keys]

    async def delete_api_key(self, caller: Caller, key_id: str) -> None:
        """Delete one of the account's keys; tokens minted through any key of the account so far
        are revoked (holders of its other keys get fresh ones at once)."""
        ctx = self.ctx
        now = ctx.wall()
        async with ctx.db.transaction() as tx:
            found = await tx.key(key_id) if isinstance(key_id, str) else None
            if found is None or found[1] != caller.id:
                raise UnknownApiKey(str(key_id))
            await tx.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,))
            await tx.audit(now, caller.principal, "api_key.delete", f"key-{key_id}")
        ctx.exchange.forget(key_id)

        async def revoke() -> None:  # after the answer: the caller's own connections are cut too
            await ctx.revoker.revoke(
                "account", caller.id, actor=caller.principal, why=f"API key {key_id} deleted"
            )

        return AfterReply(None, revoke)  # type: ignore[return-value]


class TokensNamespace:
    """``tokens.*``: short-lived tokens for master's bus and for one host's bus."""

    def __init__(self, ctx: MasterContext) -> None:
        self.ctx = ctx

    async def master(self, caller: Caller) -> str:
        """A token for master's bus (what a program's API key connection is exchanged for)."""
        async with self.ctx.db.reading() as tx:
            account = await self.ctx.account(tx, caller.id)
        token, _expires = self.ctx.issuer.account_master(account.id, account.revision)
        return token

    async def connect(self, caller: Caller, host_id: str, projects: list[str] | None = None) -> Connection:
        """Credentials for host ``host_id``'s bus, scoped to the projects the account may open
        there: ``projects`` (each must be one of its projects on that host), or all of them (up to
        300; name them beyond that). A project being moved is never in scope."""
        check_id(host_id, "host_id")
        ctx = self.ctx
        async with ctx.db.reading() as tx:
            account = await ctx.account(tx, caller.id)
            host = await tx.host(host_id)
            if host is None or host.status == "deleted":
                raise UnknownHost(host_id)
            on_host = await tx.projects(
                member=None if caller.admin and projects else caller.id, host_id=host_id
            )
        openable = {
            p.id for p in on_host if p.state != "moving" and (caller.admin or caller.id in p.members())
        }
        if projects is None:
            chosen = sorted(openable)
            if len(chosen) > MAX_SCOPE_PROJECTS:
                raise BadArgument(
                    "projects", f"{len(chosen)} projects on that host: name at most {MAX_SCOPE_PROJECTS}"
                )
        else:
            if len(projects) > MAX_SCOPE_PROJECTS:
                raise BadArgument("projects", f"at most {MAX_SCOPE_PROJECTS}")
            for project_id in projects:
                check_id(project_id, "projects")
                if project_id not in openable:
                    raise UnknownProject(project_id)
            chosen = sorted(set(projects))
        if not host.bus_url:
            raise HostOffline(host_id, "not registered yet")
        member = caller.admin or caller.id == host.owner or caller.id in host.collaborators
        token, expires = ctx.issuer.account_host(
            account.id, account.revision, host_id, chosen, [host_id] if member else [], account.admin
        )
        return Connection(url=host.bus_url, token=token, expires=expires, host_id=host_id, projects=chosen)
