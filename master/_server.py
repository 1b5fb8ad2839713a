"""``conat master serve``: the control plane on its own bus.

Start-up, in order:

1. an exclusive lock on ``<data_dir>/master.lock`` (see "How many" below);
2. the database (``master.sqlite``, migrated to the newest schema) and the key ring (``keys/``:
   master's token signing keys, 0600; they never leave this directory);
3. master's bus: nats-server with the auth callout (``conat.auth.AuthBus``, bus ``master``), whose
   callout also takes API keys (:class:`~master._credentials.ApiKeyExchange`), on the configured
   (or last used) port;
4. master's own connection (the ``hub`` principal, tokens minted here);
5. the API actor (``master.*.api``), the work queue's workers, the keepalive sweep, the providers
   and their reconcile loop; ``master.json`` (url, pid) says where master is.

Shutdown (:meth:`MasterServer.aclose`) stops them in reverse. Provider hosts are stopped with
master (their processes die with it anyway). Everything master acknowledged was committed first,
so a kill -9 loses nothing acknowledged: queued actions run again after their lease, a move that
had not switched is rolled back.

How many may run: **one master per data directory**. The lock is held while master runs and
released by the kernel if it dies, so a killed master never blocks its own restart; a second
master on the same directory fails at once (:class:`~master.MasterLocked`) and touches nothing.
Two masters on two directories are two separate platforms (their own keys, bus and hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Self

import conat
from actors import ActorSystem
from conat import ServerConfig, try_lock_file
from conat.auth import AuthBus, Keyring, write_private_file
from conat.platform import NewApiKey
from subjects import MASTER_BUS

from ._actions import register_actions
from ._api import api_type
from ._api_accounts import AccountsNamespace, TokensNamespace, create_account
from ._api_hosts import HostNamespace, HostsNamespace
from ._api_projects import ProjectsNamespace
from ._client import ApiKeyFile
from ._config import MasterConfig
from ._context import MasterContext
from ._credentials import ApiKeyExchange, Issuer, TokenPolicy
from ._db import Database
from ._errors import MasterLocked
from ._links import HostLinks, Revoker
from ._liveness import HostLiveness
from ._local_provider import LocalProvider
from ._moves import Moves
from ._providers import HostProvider, Providers
from ._queue import WorkQueue
from ._rpc import Router

__all__ = ["ADMIN_KEY", "STATE_FILE", "MasterServer", "read_master_state"]

log = logging.getLogger("conat.master.server")

STATE_FILE: Final = "master.json"
LOCK_FILE: Final = "master.lock"
ADMIN_KEY: Final = "admin.key"
_FLUSH_EVERY: Final = 5.0
_API_CONCURRENCY: Final = 256


def read_master_state(data_dir: str | Path) -> dict[str, Any] | None:
    """The running master's ``master.json`` (url, pid, port), or None."""
    try:
        state: dict[str, Any] = json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


class MasterServer:
    """A running master. ``await MasterServer(config).start()``, then :meth:`aclose` (or ``async with``).

    ``providers``: the host providers (default: the ``local`` one under ``config.hosts_dir``).
    ``clock``: whose :meth:`~conat.Clock.wall` times tokens, audit entries and keepalives
    (default: :class:`conat.SystemClock`; tests pass a ``conat.testing.FakeClock``).
    """

    def __init__(
        self,
        config: MasterConfig,
        *,
        providers: list[HostProvider] | None = None,
        clock: conat.Clock | None = None,
    ) -> None:
        self.config = config
        self.wall: Callable[[], float] = (clock or conat.SystemClock()).wall
        self._providers = providers
        self.ctx: MasterContext | None = None
        self.system: ActorSystem | None = None
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        assert self.ctx is not None
        return self.ctx.url

    @property
    def context(self) -> MasterContext:
        assert self.ctx is not None, "the master is not running"
        return self.ctx

    def local_provider(self) -> LocalProvider | None:
        providers = self.ctx.providers if self.ctx is not None else None
        found = providers.providers.get("local") if providers is not None else None
        return found if isinstance(found, LocalProvider) else None

    async def start(self) -> Self:
        data = self.config.data
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        data.chmod(0o700)
        try:
            await self._start(data)
        except BaseException:
            await self.aclose()
            raise
        return self

    def _lock(self, data: Path) -> None:
        fd = try_lock_file(data / LOCK_FILE)
        if fd is None:
            raise MasterLocked(str(data), (read_master_state(data) or {}).get("pid", "?"))
        self._lock_fd = fd

    async def _start(self, data: Path) -> None:
        config, wall, stack = self.config, self.wall, self._stack
        self._lock(data)
        db = await Database.open(data / "master.sqlite")
        stack.push_async_callback(db.aclose)
        keyring = Keyring.open(data / "keys")
        issuer = Issuer(keyring, TokenPolicy(config.token_ttl, config.host_token_ttl, config.join_ttl,
                                             config.project_token_ttl), wall)  # fmt: skip
        exchange = ApiKeyExchange(db, wall)
        port = config.port or int((read_master_state(data) or {}).get("port", 0))
        server_config = ServerConfig(host=config.host, port=port, allow_remote=config.allow_remote)
        try:
            bus = await AuthBus.start(bus=MASTER_BUS, public_keys=keyring, directory=data / "bus",
                                      config=server_config, exchange=exchange)  # fmt: skip
        except conat.PortInUse:
            if config.port:
                raise
            bus = await AuthBus.start(bus=MASTER_BUS, public_keys=keyring, directory=data / "bus",
                                      config=dataclasses.replace(server_config, port=0), exchange=exchange)  # fmt: skip
        stack.push_async_callback(bus.aclose)

        async def hub_token() -> str:
            return issuer.hub(MASTER_BUS)

        client = await conat.connect(bus.url, credentials=hub_token, name="conat-master")
        stack.push_async_callback(client.aclose)
        liveness = HostLiveness(db, wall, config.offline_seconds)
        await liveness.load()
        links = HostLinks(client)
        revoker = Revoker(db, links, bus, liveness.online, wall)
        await revoker.load()
        queue = WorkQueue(db, wall, lease=config.lease, workers=config.workers)
        ctx = MasterContext(config=config, db=db, issuer=issuer, exchange=exchange, bus=bus, client=client,
                            links=links, revoker=revoker, liveness=liveness, queue=queue, wall=wall)  # fmt: skip
        async with db.reading() as tx:
            ctx.counts = await tx.project_counts()
        ctx.moves = Moves(ctx)
        register_actions(ctx)
        providers: list[HostProvider] = (
            self._providers if self._providers is not None
            else [LocalProvider(config.hosts_dir, options=config.local_host_options)]
        )  # fmt: skip
        ctx.providers = Providers(ctx, providers)
        stack.push_async_callback(ctx.providers.aclose)
        self.ctx = ctx
        accounts = Router({"accounts": AccountsNamespace(ctx), "projects": ProjectsNamespace(ctx),
                           "hosts": HostsNamespace(ctx), "tokens": TokensNamespace(ctx)})  # fmt: skip
        hosts = Router({"host": HostNamespace(ctx)})
        self.system = ActorSystem(client)
        api = api_type()
        limit = asyncio.Semaphore(_API_CONCURRENCY)
        await self.system.start(api, factory=lambda: api(ctx, accounts, hosts, limit))
        queue.start()
        stack.push_async_callback(queue.aclose)
        await ctx.providers.reconcile()  # hosts of an earlier run: started again
        ctx.providers.start()
        self._tasks.append(asyncio.ensure_future(self._keep_time()))
        write_private_file(
            data / STATE_FILE,
            json.dumps({"url": bus.url, "pid": os.getpid(), "port": _port(bus.url)}).encode(),
        )

    async def _keep_time(self) -> None:
        """The keepalive sweep (every half interval) and the write-back of ``last_seen``."""
        ctx = self.context
        flushed = time.monotonic()
        while True:
            await asyncio.sleep(self.config.keepalive_interval / 2)
            try:
                await ctx.liveness.sweep()
                if time.monotonic() - flushed >= _FLUSH_EVERY:
                    flushed = time.monotonic()
                    await ctx.liveness.flush()
            except Exception:
                log.exception("the keepalive sweep failed")

    async def ensure_admin(self, path: Path | None = None, name: str = "admin") -> ApiKeyFile:
        """The admin's API key file (default ``<data_dir>/admin.key``, 0600): kept if it still
        names a live admin account of this master, else a new admin account and key are made."""
        ctx = self.context
        path = path or self.config.data / ADMIN_KEY
        with contextlib.suppress(conat.ConatError, OSError):
            existing = ApiKeyFile.load(path)
            async with ctx.db.reading() as tx:
                account = await tx.account(existing.account_id)
            if account is not None and account.deleted is None and account.admin:
                if existing.master != self.url:
                    existing = ApiKeyFile(
                        master=self.url, account_id=existing.account_id, api_key=existing.api_key
                    )
                    existing.save(path)
                return existing
        made = await create_account(ctx, name, admin=True, actor="master")
        keyfile = ApiKeyFile(master=self.url, account_id=made.account.account_id, api_key=made.api_key)
        keyfile.save(path)
        return keyfile

    async def new_key(self, account_id: str, name: str = "") -> NewApiKey:
        """A new API key of ``account_id`` (for a local admin, from the command line)."""
        from ._context import Caller

        return await AccountsNamespace(self.context).create_api_key(Caller("account", account_id), name)

    async def aclose(self, timeout: float = 30.0) -> None:
        """Stop (see the module docstring)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.system is not None:
            await self.system.stop(timeout)
            self.system = None
        await self._stack.aclose()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                state = read_master_state(self.config.data)
                if state is not None and state.get("pid") == os.getpid():
                    write_private_file(
                        self.config.data / STATE_FILE, json.dumps({**state, "pid": None}).encode()
                    )
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[-1])
