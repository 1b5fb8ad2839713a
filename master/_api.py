"""``master.*.api``: one actor type answering the account API and the host API.

The key of an activation is the scope token of the subject (``account-<a>`` or ``host-<h>``):
nats-server lets only that principal publish there, so the key *is* the caller. Accounts get the
``accounts``, ``projects``, ``hosts`` and ``tokens`` namespaces, hosts the ``host`` namespace
(:class:`~master._rpc.Router`); a method of the other table is a 404.

Each call runs in a task of its own (a ``projects.start(wait=True)`` or a move with ``wait``
holds up no other call of the same account), at most ``concurrency`` at once; beyond that calls
wait in the actor's bounded mailbox (429 when full).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from typing import Any

import conat
from actors import NO_REPLY, Actor
from conat import RpcRequest
from subjects import InvalidSubject, parse_scope

from ._context import Caller, MasterContext
from ._errors import UnknownAccount, UnknownHost
from ._rpc import AfterReply, Router

__all__ = ["MasterApi", "api_type"]

log = logging.getLogger("conat.master.api")


class MasterApi(Actor, subject="master.*.api", idle=600.0, max_buffer=10_000):
    """See the module docstring (build with :func:`api_type`)."""

    def __init__(self, ctx: MasterContext, accounts: Router, hosts: Router, limit: asyncio.Semaphore) -> None:
        self.ctx = ctx
        self.routers = {"account": accounts, "host": hosts}
        self.limit = limit
        self.tasks: set[asyncio.Task[None]] = set()
        self.kind = ""
        self.ident = ""

    async def on_activate(self) -> None:
        try:
            kind, ident = parse_scope(self.key)
        except InvalidSubject:
            kind, ident = "hub", None
        self.kind, self.ident = kind, ident or ""

    async def receive(self, msg: conat.Message) -> Any:
        task = asyncio.get_running_loop().create_task(self._answer(msg), context=contextvars.Context())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return NO_REPLY

    async def _caller(self) -> Caller:
        ctx = self.ctx
        if self.kind == "host" and ctx.liveness.status(self.ident) not in ("deleted", "unknown"):
            return Caller("host", self.ident)  # a host master tracks (keepalives: no database read)
        async with ctx.db.reading() as tx:
            if self.kind == "account":
                account = await tx.account(self.ident)
                if account is None or account.deleted is not None:
                    raise UnknownAccount(self.ident)
                return Caller("account", self.ident, account.admin)
            host = await tx.host(self.ident)
        if host is None or host.status == "deleted":
            raise UnknownHost(self.ident)
        return Caller("host", self.ident)

    async def _answer(self, msg: conat.Message) -> None:
        async with self.limit:
            try:
                router = self.routers.get(self.kind)
                if router is None:
                    raise conat.RemoteError(conat.NOT_FOUND, f"no API on {msg.subject}")
                try:
                    request = msg.decode(RpcRequest)
                except conat.PayloadError as e:
                    raise conat.RemoteError(conat.BAD_REQUEST, f"bad RPC request: {e.detail}") from None
                result = await router.call(await self._caller(), request)
            except Exception as e:
                if not isinstance(e, conat.ConatError):
                    log.exception("%s on %s failed", getattr(e, "__class__", type(e)).__name__, msg.subject)
                await conat.respond_error(msg, *conat.error_reply(e))  # a registered error with its fields
                return
        after = result if isinstance(result, AfterReply) else None
        if after is not None:
            result = after.value
        if msg.reply:
            try:
                await msg.respond(result, encoding=conat.reply_encoding(msg, result))  # the caller's own
            except conat.PayloadError as e:
                await conat.respond_error(msg, conat.INTERNAL, f"cannot encode the result: {e.detail}")
            except conat.ConatError:
                pass
        if after is not None:
            with contextlib.suppress(conat.ConatError):
                await self.ctx.client.flush()  # the reply is with the server before any kick
            try:
                await after.then()
            except Exception:
                log.exception("the work after answering %s failed", msg.subject)


def api_type() -> type[MasterApi]:
    """The API actor class (a fresh subclass per master, so two masters in one process, as in
    tests, never share class state)."""
    return type("MasterApi", (MasterApi,), {}, subject="master.*.api", name="MasterApi", idle=600.0,
                max_buffer=10_000)  # fmt: skip
