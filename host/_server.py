"""``conat host serve``: a complete project host on its own bus.

Start-up, in order (each step on the host's bootlog ``bootlog.host.<h>`` once the bus is up):

1. a stale bus of a previous run that died without stopping it (its pid file) is killed;
2. the host bus: a managed nats-server with the auth callout (:class:`conat.auth.AuthBus`), trusting
   master's pinned public keys, on the configured (or last used) port;
3. the host's own connection (principal ``host-<h>``: everything on its own bus);
4. persist: the host's stores under ``<data_dir>/sync``, each project's under its home
   (``<projects_dir>/<p>/.local/share/conat/persist``), with the bootlogs;
5. the runner (:mod:`host._runner`) and every service in :data:`HOST_SERVICES` (the file server);
6. reconcile: every project record is matched with the processes actually running (adopted or
   cleaned up), and cgroups no project owns are swept;
7. housekeeping every ``idle_check`` seconds: idle projects are stopped, logs rotated, tokens renewed.

Shutdown (SIGTERM, Ctrl-C, :meth:`HostServer.aclose`): with ``stop_projects_on_shutdown`` every
project is stopped first; otherwise projects keep running (their records say so, and the next start
adopts them). Then the actors drain, persist commits and closes, and the bus stops. Nothing
acknowledged is lost: every state change was committed before it was reported.

How many may run: exactly one host server per host id and data dir. It holds an exclusive lock on
``<data_dir>/host.lock`` while it runs; a second one on the same data dir fails at once with
:class:`~host.HostError` (and never touches the first one's bus). Its actors are unkeyed/keyed without queue groups:
the runner and the per-project actors must have exactly one owner, this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import psutil

import conat
from actors import ActorSystem, actor_proxy
from conat import ServerConfig, try_lock_file
from conat.auth import AuthBus, Keyring, PublicKeys, TokenIssuer, write_private_file
from persist import PersistServer, Placement, PlacementConfig
from subjects import HUB, Scope, host_scope

from ._activity import report_activity
from ._config import HostConfig
from ._errors import HostError
from ._fs_config import FileServerConfig
from ._fs_server import FileServer
from ._isolation import probe
from ._projects import HostProjects
from ._runner import ProjectActor, project_actor_type, runner_type, watch_exits

__all__ = ["HOST_SERVICES", "HostContext", "HostServer", "HostService", "read_host_state"]

log = logging.getLogger("conat.host.server")

STATE_FILE: Final = "host.json"
LOCK_FILE: Final = "host.lock"
ADMIN_TOKEN: Final = "admin.token"
BUS_PID: Final = "bus.pid"
_HOST_TOKEN_TTL: Final = 3600.0
_ADMIN_TOKEN_TTL: Final = 24 * 3600.0
_RECONCILE_CONCURRENCY: Final = 16


@dataclass(frozen=True, slots=True)
class HostContext:
    """What a host service gets to start itself: the host's connection and actor system (actors
    started on ``system`` stop with the host), its id and config, and the activity reporter."""

    client: conat.Client
    system: ActorSystem
    host_id: str
    config: HostConfig
    projects_dir: Path


HostService = Callable[[HostContext], Awaitable[object]]
"""A service of the host: called once at start-up, after the runner, to start itself (its actors on
``ctx.system``). What it returns, if it has an ``aclose()``, is closed at shutdown (newest first,
before the actors stop)."""

async def start_file_server(ctx: HostContext) -> FileServer:
    """The file server (``fs.project-<p>``) of every project under the host's projects directory;
    file work reports activity, so a project in use is never stopped as idle."""
    config = FileServerConfig(projects=str(ctx.projects_dir / "[project_id]"))

    async def activity(project_id: str) -> None:
        await report_activity(ctx.client, project_id)

    return await FileServer(ctx.client, config, system=ctx.system, on_activity=activity).start()


HOST_SERVICES: list[HostService] = [start_file_server]
"""The host's services besides persist and the runner, started in order after the runner."""


def read_host_state(data_dir: str | Path) -> dict[str, Any] | None:
    """The running host's ``host.json`` (url, host id, pid), or None."""
    try:
        state: dict[str, Any] = json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def _kill_stale_bus(data: Path) -> None:
    """Kill the nats-server a previous run left behind (the host was killed without stopping it)."""
    try:
        pid, started = json.loads((data / BUS_PID).read_text())
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(started)) < 0.01:
            proc.kill()
            proc.wait(10)
            log.warning("killed the bus of a previous run (pid %s)", pid)
    except (OSError, ValueError, TypeError, psutil.Error):
        pass


class HostServer:
    """A running host. ``await HostServer(config).start()``, then :meth:`aclose` (or ``async with``)."""

    def __init__(self, config: HostConfig, *, services: list[HostService] | None = None) -> None:
        self.config = config
        self.host_id = config.resolved_host_id()
        self.services = HOST_SERVICES if services is None else services
        self.bus: AuthBus | None = None
        self.client: conat.Client | None = None
        self.persist: PersistServer | None = None
        self.system: ActorSystem | None = None
        self.projects: HostProjects | None = None
        self.project_type: type[ProjectActor] = project_actor_type(self.host_id)
        self.reconciled: dict[str, str] = {}
        self.reconcile_seconds = 0.0
        self._issuer: TokenIssuer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._handles: list[Any] = []

    @property
    def url(self) -> str:
        assert self.bus is not None
        return self.bus.url

    @property
    def scope(self) -> str:
        return host_scope(self.host_id)

    def _keys(self) -> tuple[dict[str, bytes], TokenIssuer | None]:
        config = self.config
        if config.signing_keys is not None:
            keyring = Keyring.open(config.signing_keys)
            return dict(keyring.public_keys()), TokenIssuer(keyring)
        assert config.public_keys is not None
        return dict(PublicKeys.load(config.public_keys).public_keys()), None

    def mint(self, principal: str, ttl: float, scope: Scope | None = None) -> str:
        """A token for this host's bus (local key setups only)."""
        if self._issuer is None:
            raise conat.ConatError("this host holds no signing key")
        return self._issuer.issue(principal, self.scope, scope or Scope(), ttl)

    async def start(self) -> Self:
        config = self.config
        data = config.data
        # 0711: a project (another uid) may reach its own token file under runner/<p>/ by name,
        # never list anything; everything else beneath is 0700 or 0600
        data.mkdir(parents=True, exist_ok=True, mode=0o711)
        data.chmod(0o711)
        for private in ("sync", "bus"):
            (data / private).mkdir(exist_ok=True, mode=0o700)
            (data / private).chmod(0o700)
        (data / "runner").mkdir(exist_ok=True, mode=0o711)
        config.projects.mkdir(parents=True, exist_ok=True, mode=0o711)
        try:
            await self._start(data)
        except BaseException:
            await self.aclose()
            raise
        return self

    def _lock(self, data: Path) -> None:
        """One host per data dir: an exclusive lock held while this server runs (released by the
        kernel if the process dies, so a killed host never blocks its restart)."""
        fd = try_lock_file(data / LOCK_FILE)
        if fd is None:
            state = read_host_state(data) or {}
            raise HostError(f"another host runs on {data} (pid {state.get('pid', '?')})")
        self._lock_fd = fd

    async def _start(self, data: Path) -> None:
        config = self.config
        started = time.monotonic()
        self._lock(data)  # before anything: the stale-bus cleanup below must never hit a live host
        await asyncio.to_thread(_kill_stale_bus, data)
        public_keys, self._issuer = self._keys()
        state = read_host_state(data) or {}
        port = config.port or int(state.get("port", 0))
        server_config = ServerConfig(port=port, server_name=f"conat-{self.scope}")
        try:
            self.bus = await AuthBus.start(
                bus=self.scope, public_keys=public_keys, directory=data / "bus", config=server_config
            )
        except conat.PortInUse:
            if config.port:
                raise
            self.bus = await AuthBus.start(  # the remembered port was taken meanwhile: a new one
                bus=self.scope, public_keys=public_keys, directory=data / "bus",
                config=dataclasses.replace(server_config, port=0),
            )  # fmt: skip
        server_pid = self.bus.server.pid
        if server_pid is not None:
            write_private_file(
                data / BUS_PID, json.dumps([server_pid, psutil.Process(server_pid).create_time()]).encode()
            )
        self.client = await conat.connect(
            self.bus.url, name=f"conat-{self.scope}", credentials=self._credentials()
        )
        placement = Placement(
            PlacementConfig(
                root=str(data / "sync"),
                projects=str(config.projects / "[project_id]" / ".local/share/conat/persist"),
            )
        )
        self.persist = await PersistServer(self.client, placement).start()
        capabilities = await asyncio.to_thread(
            probe,
            want_netns=config.netns,
            want_mountns=config.mountns,
            want_cgroups=config.cgroups,
            reachable=(config.projects, data / "runner"),
        )
        host, port_now = _host_port(self.bus.url)
        self.projects = HostProjects(
            config, self.host_id, self.client, capabilities, (host, port_now), self._issuer
        )
        await self._bootlog("bus", f"bus up at {self.bus.url}", 20)
        self.system = ActorSystem(self.client)
        projects = self.projects
        project_type = self.project_type
        runner = runner_type(self.host_id)
        await self.system.start(project_type, factory=lambda: project_type(projects))
        await self.system.start(runner, factory=lambda: runner(projects, project_type))
        watch_exits(projects, project_type, self._tasks)
        context = HostContext(self.client, self.system, self.host_id, config, config.projects)
        for service in self.services:
            handle = await service(context)
            if callable(getattr(handle, "aclose", None)):
                self._handles.append(handle)
        await projects.start_activity()
        await self._bootlog("reconcile", "matching project records with running processes", 60)
        began = time.monotonic()
        await self.reconcile()
        self.reconcile_seconds = time.monotonic() - began
        self._write_state()
        self._housekeeping = asyncio.ensure_future(self._housekeep())
        missing = capabilities.report().missing
        note = f"; missing isolation: {', '.join(sorted(missing))}" if missing else ""
        await self._bootlog("ready", f"host ready in {time.monotonic() - started:.2f} s{note}", 100)

    def _credentials(self) -> Any:
        if self._issuer is not None:
            issuer, scope = self._issuer, self.scope

            async def mint() -> str:
                return issuer.issue(scope, scope, Scope(), _HOST_TOKEN_TTL)

            return mint
        assert self.config.credentials is not None
        return Path(self.config.credentials)

    def _write_state(self) -> None:
        data = self.config.data
        assert self.bus is not None
        _host, port = _host_port(self.bus.url)
        state = {"url": self.bus.url, "host_id": self.host_id, "pid": os.getpid(), "port": port}
        write_private_file(data / STATE_FILE, json.dumps(state).encode())
        if self._issuer is not None:  # the local admin's credentials (conat host status)
            write_private_file(data / ADMIN_TOKEN, self.mint(HUB, _ADMIN_TOKEN_TTL).encode())

    async def _bootlog(self, phase: str, message: str, progress: float | None = None) -> None:
        if self.projects is not None:
            await self.projects.bootlog(None, phase, message, progress)

    async def reconcile(self) -> dict[str, str]:
        """Match every project record with what runs; returns ``{project: what was done}``."""
        assert self.projects is not None and self.client is not None
        records = await self.projects.all_records()
        limit = asyncio.Semaphore(_RECONCILE_CONCURRENCY)
        project_type = self.project_type
        client = self.client

        async def one(project_id: str) -> tuple[str, str]:
            async with limit:
                proxy = actor_proxy(client, project_type, project_id, timeout=60.0)
                try:
                    return project_id, await proxy.reconcile()
                except conat.ConatError as e:
                    log.error("project %s: reconcile failed: %s", project_id, e)
                    return project_id, f"failed: {e}"

        done = dict(await asyncio.gather(*(one(r.project_id) for r in records)))
        swept = await self.projects.sweep_orphans()
        counts: dict[str, int] = {}
        for outcome in done.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "no projects"
        await self._bootlog("reconcile", f"{summary}; {swept} orphaned cgroups swept")
        self.reconciled = done
        return done

    async def _housekeep(self) -> None:
        assert self.projects is not None and self.client is not None
        projects = self.projects
        while True:
            await asyncio.sleep(self.config.idle_check)
            try:
                await self.check_idle()
                await asyncio.to_thread(projects.rotate_logs)
                projects.renew_credentials()
            except Exception:
                log.exception("host housekeeping failed")

    async def check_idle(self) -> list[str]:
        """Stop every running project idle past its ``idle_timeout``; returns their ids."""
        assert self.projects is not None and self.client is not None
        stopped: list[str] = []
        for record in await self.projects.all_records():
            if record.state == "running" and self.projects.idle(record):
                proxy = actor_proxy(self.client, self.project_type, record.project_id, timeout=60.0)
                with contextlib.suppress(conat.ConatError):
                    await proxy.stop("idle")
                    stopped.append(record.project_id)
        return stopped

    async def aclose(self, timeout: float = 30.0) -> None:
        """Stop the host (see the module docstring for what happens to the projects)."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
            self._housekeeping = None
        projects = self.projects
        if projects is not None and self.client is not None:
            if self.config.stop_projects_on_shutdown:
                await self._stop_all(timeout)
            projects.on_exit = None
            for process in projects.processes.values():
                process.detach()
            for relay in list(projects.relays.values()):
                await relay.aclose()
            projects.relays.clear()
            await projects.stop_activity()
            await asyncio.to_thread(projects.remove_host_groups)
        for handle in reversed(self._handles):
            try:
                await handle.aclose()
            except Exception:
                log.exception("a host service failed to close")
        self._handles.clear()
        if self.system is not None:
            await self.system.stop(timeout)
            self.system = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.persist is not None:
            await self.persist.aclose()
            self.persist = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.bus is not None:
            await self.bus.aclose()
            self.bus = None
            with contextlib.suppress(OSError):
                (self.config.data / BUS_PID).unlink()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                state = read_host_state(self.config.data)
                if state is not None and state.get("pid") == os.getpid():
                    stopped = json.dumps({**state, "pid": None}).encode()
                    write_private_file(self.config.data / STATE_FILE, stopped)
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    async def _stop_all(self, timeout: float) -> None:
        assert self.projects is not None and self.client is not None
        runner = runner_type(self.host_id)
        proxy = self.client.service(runner, runner.spec().subject, timeout=timeout)
        running = [
            r.project_id for r in await self.projects.all_records() if r.state not in ("opened", "error")
        ]
        await asyncio.gather(*(proxy.stop(p, wait=timeout) for p in running), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].rsplit("@", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host, int(port)


async def serve_until_signalled(
    config: HostConfig, on_ready: Callable[[HostServer], object] | None = None
) -> None:
    """Run a host until SIGTERM/SIGINT (``conat host serve``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    async with HostServer(config) as server:
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
