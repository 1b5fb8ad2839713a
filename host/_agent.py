"""The host agent: a host that belongs to a master (``conat host serve --master URL --join-token-file F``).

Theory of operation
-------------------
**Joining.** A new host has only a one-time join token from ``hosts.create`` (its subject names
the host id). The agent connects to master's bus with it, calls ``host.register`` and gets
master's public token keys, which it pins (``master.pub``), and the host's own API key
(``master.key``, 0600): never one of master's secrets. The join token is then used up.

**Credentials.** From then on the agent reaches master's bus by exchanging its API key for
short-lived tokens (master's callout accepts the key itself on a short connection; the agent asks
``host.master_token`` there). ``host.tokens`` gives the host's token for its *own* bus
(``host.token``, 0600, renewed at half its lifetime; the host server re-reads it at every refresh)
and fresh tokens for its running projects (their token files are renewed the same way).

**Serving.** The host server (:class:`~host.HostServer`) runs on its own bus trusting the pinned
keys, so it verifies every token locally and keeps serving its projects and their users when
master is unreachable, for as long as their tokens last. On master's bus the agent serves
``runner.host-<h>`` (:mod:`host._agent_runner`), sends a keepalive every interval (capacity, load,
health), reports project states (a complete report on every (re)connection and every few
keepalives, so master reconciles), and applies revocations: pushed ones at once, and any it
missed (the keepalive answer names the newest) before it reports itself healthy again.

**Restarts.** Everything the agent needs is in the data dir, so a restarted host registers again
with its own key (no join token), reconciles with master, and catches up on revocations *before*
its bus serves anyone: the revocations it missed are written into the bus's store (which the
callout reads at every connect) before the bus starts. If master is down at start-up, the host
server starts with the credentials and revocations it has, and the agent keeps trying to reach
master in the background (and catches up as soon as it does).

How many may run: one agent per host data dir (an exclusive lock on ``agent.lock``, besides the
host server's own); a second one fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import tomllib
from pathlib import Path
from typing import Any, Final, Self

import msgspec
import psutil

import conat
from conat.auth import AuthStore, PublicKeys, peek_claims, read_private_file, write_private_file
from conat.cli.plugin import Printer, stop_on_signals
from conat.platform import (
    BadArgument,
    HostLoad,
    Keepalive,
    MasterHostApi,
    ProjectReport,
    ProjectState,
    RegisterRequest,
    Registration,
    StateReport,
)
from subjects import host_scope, inbox_prefix, master_host_api, parse_scope

from ._agent_move import Incoming
from ._agent_runner import AgentRunner, serve_agent_runner
from ._config import HostConfig
from ._errors import HostError
from ._server import HostServer

__all__ = ["AgentConfig", "HostAgent", "agent_setup", "load_agent_config"]

log = logging.getLogger("conat.host.agent")

PINNED_KEYS: Final = "master.pub"
HOST_KEY: Final = "master.key"
HOST_TOKEN: Final = "host.token"
AGENT_STATE: Final = "agent.json"
AGENT_LOCK: Final = "agent.lock"
_FULL_REPORT_EVERY: Final = 10
_CALL_TIMEOUT: Final = 30.0
_LINK_BACKOFF: Final = conat.Backoff(initial=0.5, maximum=10.0, jitter=0.5)
"""Between attempts to reach master: a crowd of hosts coming back after master restarts spreads out."""


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[agent]`` table: where master is and how to join it.

    Attributes:
        master: master's bus URL.
        join_token_file: the one-time join token (0600), needed until the host has registered.
        capacity: projects this host offers (placement counts against it).
        region: free-form, for people and placement.
        transfer_timeout: seconds a move's transfer waits for a silent (or unreachable) other
            host before it fails (and the move rolls back).
    """

    master: str
    join_token_file: str | None = None
    capacity: int = 100
    region: str = ""
    transfer_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.capacity <= 1_000_000:
            raise BadArgument("agent.capacity", "must be 0..1000000")
        if not 1.0 <= self.transfer_timeout <= 3600.0:
            raise BadArgument("agent.transfer_timeout", "must be 1..3600 seconds")


class _HostKey(msgspec.Struct, frozen=True, kw_only=True):
    master: str
    host_id: str
    api_key: str


def load_agent_config(text: str) -> AgentConfig | None:
    """The ``[agent]`` table of a host's TOML config, or None if it has none."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadArgument("config", f"not TOML: {e}") from None
    table = doc.get("agent")
    if table is None:
        return None
    try:
        return msgspec.convert(table, AgentConfig)
    except msgspec.ValidationError as e:
        raise BadArgument("agent", str(e)) from None


class _KeyExchange:
    """The host's credentials on master's bus: its API key exchanged for tokens (see above)."""

    def __init__(self, url: str, host_id: str, api_key: str) -> None:
        self.url, self.host_id, self._key = url, host_id, api_key

    async def fetch(self) -> str:
        async with await conat.connect(
            self.url, token=self._key, inbox_prefix=inbox_prefix(host_scope(self.host_id)),
            name="conat-agent-exchange", connect_attempts=2,
        ) as client:  # fmt: skip
            api = client.service(MasterHostApi, master_host_api(self.host_id), timeout=_CALL_TIMEOUT)
            return await api.master_token()


class HostAgent:
    """A host server plus its link to master (see the module docstring)."""

    def __init__(self, config: HostConfig, agent: AgentConfig, *, join_token: str | None = None) -> None:
        self.base = config
        self.agent = agent
        self._join_token = join_token
        self.data = config.data
        self.host_id: str | None = config.host_id
        self.server: HostServer | None = None
        self.master: conat.Client | None = None
        self.runner: conat.Subscription | None = None
        self.incoming: Incoming | None = None
        self.registration: Registration | None = None
        self.revocation_seq = 0
        self.interval = 2.0
        self.healthy = False
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._token_renew_at = 0.0
        self._reported: dict[str, tuple[ProjectState, str]] = {}
        self._ticks = 0
        self.connected = asyncio.Event()

    # -- files ----------------------------------------------------------------------------------------
    def _lock(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True, mode=0o711)
        fd = conat.try_lock_file(self.data / AGENT_LOCK)
        if fd is None:
            raise HostError(f"another host agent runs on {self.data}")
        self._lock_fd = fd

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.data / AGENT_STATE).read_text())
        except (OSError, ValueError):
            return {}
        return state

    def _save_state(self) -> None:
        write_private_file(
            self.data / AGENT_STATE, json.dumps({"revocation_seq": self.revocation_seq}).encode()
        )

    def _key(self) -> _HostKey | None:
        try:
            raw = read_private_file(self.data / HOST_KEY, what="host key", max_size=64 * 1024)
        except conat.ConatError:
            return None
        return msgspec.json.decode(raw, type=_HostKey)

    def _join_token_value(self) -> str:
        if self._join_token:
            return self._join_token
        if self.agent.join_token_file is None:
            raise HostError("this host has not registered with master yet: give it a join token")
        raw = read_private_file(Path(self.agent.join_token_file), what="join token", max_size=64 * 1024)
        return raw.decode("ascii", errors="replace").strip()

    # -- start ----------------------------------------------------------------------------------------
    async def start(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _start(self) -> None:
        self._lock()
        self.revocation_seq = int(self._state().get("revocation_seq", 0))
        key = self._key()
        if key is None:
            key = await self._join()
        self.host_id = key.host_id
        (self.data / "host-id").write_text(key.host_id + "\n")
        try:
            await asyncio.wait_for(self._renew_tokens(key, catch_up=True), _CALL_TIMEOUT)
        except (conat.ConatError, TimeoutError) as e:
            if not (self.data / HOST_TOKEN).exists():
                raise HostError(
                    f"master is unreachable and this host has no token for its bus yet: {e}"
                ) from None
            log.warning("master is unreachable (%s): starting with the credentials this host has", e)
        config = msgspec.structs.replace(
            self.base, host_id=key.host_id, public_keys=str(self.data / PINNED_KEYS),
            credentials=str(self.data / HOST_TOKEN), signing_keys=None,
        )  # fmt: skip
        self.server = await HostServer(config).start()
        assert self.server.client is not None and self.server.projects is not None
        self.incoming = Incoming(
            self.server.projects, self.server.client, self.server.persist, self.agent.transfer_timeout
        )
        await self.incoming.start()
        self._tasks.append(asyncio.ensure_future(self._link(key)))

    async def _join(self) -> _HostKey:
        token = self._join_token_value()
        try:
            kind, host_id = parse_scope(peek_claims(token).sub)
        except (conat.ConatError, ValueError) as e:
            raise HostError(f"the join token is not a conat token: {e}") from None
        if kind != "host" or host_id is None:
            raise HostError(f"the join token is for {kind}, not for a host")
        async with await conat.connect(
            self.agent.master, credentials=token, name="conat-agent-join"
        ) as client:
            api = client.service(MasterHostApi, master_host_api(host_id), timeout=_CALL_TIMEOUT)
            registration = await api.register(RegisterRequest(bus_url="", capacity=self.agent.capacity,
                                                              region=self.agent.region, renew_key=True))  # fmt: skip
        if registration.api_key is None:
            raise HostError("master registered the host but gave it no key")
        PublicKeys(registration.public_keys).save(self.data / PINNED_KEYS)
        key = _HostKey(master=self.agent.master, host_id=host_id, api_key=registration.api_key)
        write_private_file(self.data / HOST_KEY, msgspec.json.encode(key))
        self.revocation_seq = 0
        self._save_state()
        log.info("host %s joined master at %s", host_id, self.agent.master)
        return key

    async def _renew_tokens(
        self, key: _HostKey, projects: list[str] | None = None, *, catch_up: bool = False
    ) -> None:
        async with await conat.connect(
            key.master, credentials=_KeyExchange(key.master, key.host_id, key.api_key), name="conat-agent-tokens",
            connect_attempts=2,
        ) as client:  # fmt: skip
            api = client.service(MasterHostApi, master_host_api(key.host_id), timeout=_CALL_TIMEOUT)
            tokens = await api.tokens(projects)
            if catch_up:  # before the bus serves anyone: into its store, which the callout reads
                await self._catch_up_store(api)
        write_private_file(self.data / HOST_TOKEN, tokens.host_token.encode())
        self._token_renew_at = time.time() + (tokens.expires - time.time()) / 2
        if tokens.projects and self.server is not None and self.server.projects is not None:
            for project_id, token in tokens.projects.items():
                record = await self.server.projects.load(project_id)
                if record is not None and record.state in ("running", "starting"):
                    with contextlib.suppress(conat.ConatError, OSError):
                        self.server.projects.write_credentials(record, token)

    # -- the link to master ---------------------------------------------------------------------------
    async def _link(self, key: _HostKey) -> None:
        """Connect to master (retrying forever), then serve it until closed."""
        await conat.retry(
            lambda: self._connect(key),
            backoff=_LINK_BACKOFF,
            retry_if=lambda e: isinstance(e, conat.ConatError | OSError | TimeoutError),
            on_retry=lambda e, delay: log.warning("cannot reach master yet (again in %.1f s): %s", delay, e),
        )
        await self._serve(key)

    async def _connect(self, key: _HostKey) -> None:
        server = self.server
        assert server is not None and server.bus is not None
        client = await conat.connect(
            key.master, credentials=_KeyExchange(key.master, key.host_id, key.api_key), name=f"conat-agent-{key.host_id}"
        )  # fmt: skip
        try:
            assert self.incoming is not None  # serving first: once master sees the host online, it answers
            self.runner = await serve_agent_runner(client, AgentRunner(server, self.incoming))
            api = client.service(MasterHostApi, master_host_api(key.host_id), timeout=_CALL_TIMEOUT)
            self.registration = await api.register(
                RegisterRequest(
                    bus_url=server.url,
                    capacity=self.agent.capacity,
                    region=self.agent.region,
                    public_key=server.bus.decider.issuer.public_key,
                )
            )
            self.interval = self.registration.keepalive_interval
            await self._catch_up(api, self.registration.revocation_seq)
        except BaseException:
            self.runner = None
            await client.aclose()
            raise
        self.master = client
        client.on_state_change(self._on_state)
        self._reported.clear()
        await self._report(api, complete=True)
        self.healthy = True
        self.connected.set()

    def _on_state(self, state: conat.ClientState) -> None:
        if state is conat.ClientState.CONNECTED:
            self._reported.clear()  # master may have restarted: the next report is a complete one

    async def _catch_up_store(self, api: MasterHostApi) -> None:
        """Apply the revocations missed while this host was down to its bus's store, before the
        bus starts (its callout reads the floors from there at every connect)."""
        entries = await api.revocations(self.revocation_seq)
        if not entries:
            return
        (self.data / "bus").mkdir(parents=True, exist_ok=True, mode=0o700)
        store = await AuthStore.open(self.data / "bus" / "auth.sqlite")
        try:
            while entries:
                for entry in entries:
                    await store.raise_floor(entry.principal, entry.below)
                    self.revocation_seq = entry.seq
                self._save_state()
                entries = await api.revocations(self.revocation_seq)
        finally:
            await store.aclose()

    async def _catch_up(self, api: MasterHostApi, newest: int) -> None:
        """Apply the revocations this host has not seen (up to ``newest``)."""
        server = self.server
        assert server is not None and server.bus is not None
        while self.revocation_seq < newest:
            entries = await api.revocations(self.revocation_seq)
            if not entries:
                break
            for entry in entries:
                await server.bus.revoke(entry.principal, below=entry.below)
                self.revocation_seq = entry.seq
            self._save_state()

    async def _report(self, api: MasterHostApi, *, complete: bool = False) -> None:
        server = self.server
        assert server is not None and server.projects is not None
        records = await server.projects.all_records()
        states = {r.project_id: (r.state, r.reason) for r in records}
        full = complete or not self._reported or self._ticks % _FULL_REPORT_EVERY == 0
        changed = [p for p, s in states.items() if self._reported.get(p) != s]
        if not full and not changed:
            return
        chosen = records if full else [r for r in records if r.project_id in changed]
        reports = [
            ProjectReport(
                project_id=r.project_id,
                state=r.state,
                reason=r.reason[:4000],
                last_activity=server.projects.activity.get(r.project_id),
            )
            for r in chosen
        ]
        await api.report(StateReport(projects=reports, complete=full))
        self._reported = states

    def _load(self) -> HostLoad:
        server = self.server
        records = len(server.projects.processes) if server is not None and server.projects is not None else 0
        memory = psutil.virtual_memory().percent
        cpu = psutil.cpu_percent(interval=None)
        projects = len(self._reported)
        return HostLoad(
            projects=projects, running=records, cpu_percent=cpu, memory_percent=memory, healthy=True
        )

    async def _serve(self, key: _HostKey) -> None:
        assert self.master is not None
        api = self.master.service(MasterHostApi, master_host_api(key.host_id), timeout=_CALL_TIMEOUT)
        while True:
            await asyncio.sleep(self.interval)
            self._ticks += 1
            try:
                reply = await api.keepalive(Keepalive(capacity=self.agent.capacity, load=self._load()))
                if reply.revocation_seq > self.revocation_seq:
                    await self._catch_up(api, reply.revocation_seq)
                self.interval = reply.interval
                await self._report(api)
                if time.time() >= self._token_renew_at:
                    running = [p for p, (s, _) in self._reported.items() if s in ("running", "starting")]
                    await self._renew_tokens(key, running)
            except conat.ConatError as e:
                log.warning("keepalive to master failed: %s", e)

    # -- stop -----------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.runner is not None:
            with contextlib.suppress(conat.ConatError):
                await self.runner.unsubscribe()
            self.runner = None
        if self.master is not None:
            await self.master.aclose()
            self.master = None
        if self.incoming is not None:
            await self.incoming.aclose()
            self.incoming = None
        if self.server is not None:
            await self.server.aclose()
            self.server = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def agent_setup(
    config_file: Path | None,
    master: str | None,
    join_token_file: Path | None,
    join_token: str | None,
    data_dir: Path | None,
) -> tuple[HostConfig, AgentConfig, str | None] | None:
    """``conat host serve``'s options for a host that belongs to a master, or None for a host on
    its own: ``--master`` (or an ``[agent]`` table in ``--config``) makes it an agent."""
    text = config_file.read_text() if config_file is not None else None
    agent = load_agent_config(text) if text is not None else None
    if master is not None or join_token_file is not None:
        fields: dict[str, Any] = msgspec.to_builtins(agent) if agent is not None else {}
        if master is not None:
            fields["master"] = master
        if join_token_file is not None:
            fields["join_token_file"] = str(join_token_file.absolute())
        if "master" not in fields:
            raise BadArgument("--master", "name master's bus URL (or an [agent] table in --config)")
        agent = msgspec.convert(fields, AgentConfig)
    if agent is None:
        return None
    if text is not None:
        host = HostConfig.from_toml(text)
    else:
        data = (data_dir or conat.data_dir() / "host").absolute()
        host = HostConfig(
            data_dir=str(data), public_keys=str(data / PINNED_KEYS), credentials=str(data / HOST_TOKEN)
        )
    return host, agent, join_token


async def serve_agent(config: HostConfig, agent: AgentConfig, join_token: str | None, out: Printer) -> None:
    """Run a host agent until SIGTERM/SIGINT (``conat host serve --master ...``)."""
    with stop_on_signals() as stop:
        started = time.monotonic()
        async with HostAgent(config, agent, join_token=join_token) as running:
            server = running.server
            assert server is not None
            out.event(
                f"host {running.host_id} ready on {server.url} in {time.monotonic() - started:.2f} s, "
                f"registered with master at {agent.master}\nPress Ctrl-C to stop.",
                event="ready", host_id=running.host_id, url=server.url, master=agent.master,
            )  # fmt: skip
            await stop.wait()
