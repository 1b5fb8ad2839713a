"""What the runner's actors share: the host's project records, running processes, and the steps of
starting, stopping, adopting and cleaning up a project (everything except the state machine, which
the per-project actor drives in :mod:`host._runner`).

Records live in the host's persist scope (the KV ``runner/projects`` of ``host-<h>``) through
:class:`persist.AKV`: every state change is committed before it is reported, so a host killed at any
point restarts from the last reported state. Processes live here, not in an actor activation, so
passivation or an actor restart never loses track of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

import conat
from conat.auth import TokenIssuer, peek_claims
from persist import AKV, bootlog
from subjects import Scope, host_scope, project_scope, project_subject

from ._activity import activity_pattern, project_of_activity
from ._btrfs_move import btrfs_homes, make_home
from ._cgroups import CONTROLLERS, Cgroups, available_controllers, host_parent
from ._config import HostConfig
from ._errors import BadArgument, LaunchFailed, NoCredentials
from ._isolation import Capabilities, bwrap_argv, project_env, project_python, rlimits
from ._netns import NetnsRelay, create_netns, remove_netns
from ._process import LogFiles, ProjectProcess, describe_status, process_alive
from ._wire import Isolation, Limits, ProjectRecord, ProjectStatus

__all__ = ["RECORDS_KV", "HostProjects"]

log = logging.getLogger("conat.host.projects")

RECORDS_KV: Final = "runner/projects"
_RECORD: Final = msgspec.json.Decoder(ProjectRecord)
_STATUS_CALL: Final = {"name": "project.status", "args": [], "kwargs": {}}


def now() -> float:
    return time.time()


class HostProjects:
    """The host's projects: records (persisted), processes (live), and the work on them."""

    def __init__(
        self,
        config: HostConfig,
        host_id: str,
        client: conat.Client,
        capabilities: Capabilities,
        bus: tuple[str, int],
        issuer: TokenIssuer | None,
    ) -> None:
        self.config = config
        self.host_id = host_id
        self.tag = host_id[:8]
        self.client = client
        self.capabilities = capabilities
        self.bus = bus
        self.issuer = issuer
        self.records = AKV(client, host_scope(host_id), RECORDS_KV, timeout=30.0)
        self.processes: dict[str, ProjectProcess] = {}
        self.relays: dict[str, NetnsRelay] = {}
        self.uids: dict[int, str] = {}
        self.activity: dict[str, float] = {}
        self._changed = asyncio.Event()
        self.on_exit: Callable[[str, ProjectProcess, int | None], None] | None = None
        self._starts = asyncio.Semaphore(config.max_parallel_starts)
        self._subscription: conat.Subscription | None = None

    # -- records ------------------------------------------------------------------------------------
    async def load(self, project_id: str) -> ProjectRecord | None:
        raw = await self.records.get(project_id)
        return None if raw is None else msgspec.convert(raw, ProjectRecord)

    async def save(self, record: ProjectRecord) -> None:
        record.changed = now()
        await self.records.set(record.project_id, msgspec.to_builtins(record))
        self._notify()

    async def forget(self, project_id: str) -> None:
        await self.records.delete(project_id)
        for uid, owner in list(self.uids.items()):
            if owner == project_id:
                del self.uids[uid]
        self.activity.pop(project_id, None)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def next_change(self) -> asyncio.Event:
        """An event set at the next committed change of any record (take it before reading)."""
        return self._changed

    async def all_records(self) -> list[ProjectRecord]:
        items = await self.records.items()
        return [msgspec.convert(v, ProjectRecord) for v in items.values()]

    async def start_activity(self) -> None:
        """Listen for activity reports (``activity.*``), and know every uid already given out."""
        for record in await self.all_records():
            if record.uid is not None:
                self.uids[record.uid] = record.project_id
        self._subscription = await self.client.subscribe(activity_pattern(), dispatch=self._on_activity)

    def _on_activity(self, msg: conat.Message) -> None:
        project = project_of_activity(msg.subject)
        if project is not None and project in self.processes:
            self.activity[project] = now()

    async def stop_activity(self) -> None:
        sub, self._subscription = self._subscription, None
        if sub is not None:
            with contextlib.suppress(conat.ConatError):
                await sub.unsubscribe()

    def allocate_uid(self, project_id: str) -> int | None:
        """A uid of the host's range for the project (None when the host is not root)."""
        if not self.capabilities.own_uid:
            return None
        for uid, owner in self.uids.items():
            if owner == project_id:
                return uid
        base, count = self.config.uid_base, self.config.uid_count
        start = int(project_id.replace("-", ""), 16) % count
        for offset in range(count):
            uid = base + (start + offset) % count
            if uid not in self.uids:
                self.uids[uid] = project_id
                return uid
        raise BadArgument("uid", "the host's uid range is exhausted")

    # -- paths --------------------------------------------------------------------------------------
    def home(self, project_id: str) -> Path:
        return self.config.projects / project_id

    def state_dir(self, project_id: str) -> Path:
        return self.config.data / "runner" / project_id

    def logs(self, project_id: str) -> LogFiles:
        return LogFiles(self.state_dir(project_id) / "logs", self.config.log_max_bytes, self.config.log_keep)

    def netns_name(self, project_id: str) -> str:
        return f"conat-{project_id}"

    @functools.cached_property
    def subvolume_homes(self) -> bool:
        """Whether homes are btrfs subvolumes here (the projects directory is on btrfs and the host
        runs as root): a move between two such hosts then sends a home with ``btrfs send``."""
        self.config.projects.mkdir(parents=True, exist_ok=True, mode=0o711)
        return btrfs_homes(self.config.projects)

    def prepare_home(self, record: ProjectRecord) -> None:
        """Create the home (0700, owned by the project's uid; a btrfs subvolume where
        :attr:`subvolume_homes`) and the host-side state directory."""
        home = self.home(record.project_id)
        if self.subvolume_homes and not home.exists():
            make_home(home)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if record.uid is not None:
            os.chown(home, record.uid, record.uid)
        state = self.state_dir(record.project_id)
        state.mkdir(parents=True, exist_ok=True, mode=0o711)
        state.chmod(0o711)  # the project may open its token file here, never list or change the dir

    # -- credentials --------------------------------------------------------------------------------
    def check_token(self, project_id: str, token: str | None) -> None:
        """Refuse a start whose credentials cannot work, before anything changes.

        Raises:
            BadArgument: ``token`` is not a token for this project on this host.
            NoCredentials: no token given and no key to mint one.
        """
        principal = project_scope(project_id)
        if token is not None:
            try:
                claims = peek_claims(token)
            except conat.ConatError as e:
                raise BadArgument("token", str(e)) from None
            if claims.sub != principal or claims.aud != host_scope(self.host_id):
                raise BadArgument("token", f"is for {claims.sub} on {claims.aud}, not {principal} here")
        elif self.issuer is None:
            raise NoCredentials(project_id)

    def write_credentials(self, record: ProjectRecord, token: str | None) -> Path:
        """The project's token file (0400, owned by the project), from ``token`` or minted here
        (after :meth:`check_token`)."""
        principal = project_scope(record.project_id)
        self.check_token(record.project_id, token)
        if token is None:
            assert self.issuer is not None
            token = self.issuer.issue(
                principal, host_scope(self.host_id), Scope(), self.config.project_token_ttl
            )
        path = self.state_dir(record.project_id) / "credentials"
        temp = path.with_name(f".credentials.{os.getpid()}.{time.monotonic_ns()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        try:
            os.write(fd, token.encode())
            if record.uid is not None:
                os.fchown(fd, record.uid, record.uid)
        finally:
            os.close(fd)
        os.replace(temp, path)
        return path

    def renew_credentials(self) -> None:
        """Re-mint the token files of running projects past half their lifetime (local keys only)."""
        if self.issuer is None:
            return
        for project_id in list(self.processes):
            path = self.state_dir(project_id) / "credentials"
            with contextlib.suppress(OSError):
                if now() - path.stat().st_mtime > self.config.project_token_ttl / 2:
                    uid = next((u for u, p in self.uids.items() if p == project_id), None)
                    self.write_credentials(ProjectRecord(project_id=project_id, uid=uid), None)

    # -- launch -------------------------------------------------------------------------------------
    async def launch(
        self, record: ProjectRecord, token: str | None, step: Callable[[str, str, float], Any]
    ) -> None:
        """Do every step of a start up to a process that answers on the bus; fill in ``record``.

        ``step(phase, message, progress)`` reports each step (the caller puts it on the bootlog).

        Raises:
            LaunchFailed, NoCredentials, BadArgument: the start cannot complete (nothing is left
                running: the caller cleans up with :meth:`cleanup`).
        """
        if self._starts.locked():
            await step("queued", "waiting for other starts to finish", 5)
        async with self._starts:
            await self._launch(record, token, step)

    async def _launch(
        self, record: ProjectRecord, token: str | None, step: Callable[[str, str, float], Any]
    ) -> None:
        p = record.project_id
        caps = self.capabilities
        await step("prepare", "preparing the home directory", 10)
        await asyncio.to_thread(self.prepare_home, record)
        credentials = self.write_credentials(record, token)
        await step("limits", "applying resource limits", 25)
        cgroups = (
            await asyncio.to_thread(Cgroups.create, self.tag, p, record.limits)
            if caps.controllers
            else Cgroups(())
        )
        record.cgroups = cgroups.paths
        url = f"nats://{self.bus[0]}:{self.bus[1]}"
        missing = dict(caps.missing)
        applied = ["env", "rlimits", *(f"cgroup-{c}" for c in cgroups.controllers if c in CONTROLLERS)]
        for controller in caps.controllers:
            if controller not in cgroups.controllers:
                missing[f"cgroup-{controller}"] = "the group could not be made (see the host log)"
        if record.uid is not None:
            applied.append("uid")
        netns: str | None = None
        if caps.netns:
            await step("network", "creating the network namespace", 40)
            name = self.netns_name(p)
            try:
                await asyncio.to_thread(create_netns, name)
                relay = NetnsRelay(name, *self.bus)
                await relay.start()
            except OSError as e:
                missing["netns"] = f"could not be made: {e}"
            else:
                self.relays[p] = relay
                netns = name
                url = relay.url_inside
                applied.append("netns")
        record.netns = netns
        home = str(self.home(p))
        python = project_python()
        argv = list(self.config.project_command or [python.executable, "-m", "host.project"])
        if caps.bwrap and record.uid is not None:
            argv = [*bwrap_argv(caps.bwrap, home, extra_ro=(str(self.state_dir(p)),)), *argv]
            applied.append("mountns")
        isolation = Isolation(applied=tuple(applied), missing=missing)
        record.isolation = isolation
        env = project_env(
            os.environ,
            project_id=p,
            home=home,
            url=url,
            credentials=str(credentials),
            extra={**python.env, "CONAT_ISOLATION": msgspec.json.encode(isolation).decode()},
        )
        limits = rlimits(
            record.limits, own_uid=record.uid is not None, memory_cgroup="memory" in cgroups.controllers
        )
        await step("launch", "starting the project process", 60)
        try:
            process = ProjectProcess.spawn(
                argv=argv,
                env=env,
                cwd=home,
                uid=record.uid,
                netns=None if netns is None else f"/run/netns/{netns}",
                cgroups=cgroups,
                rlimits=limits,
                logs=self.logs(p),
            )
        except OSError as e:
            raise LaunchFailed(p, f"cannot run the launcher: {e}") from None
        self.processes[p] = process
        self.activity[p] = now()
        record.pid, record.pid_started, record.started = process.pid, process.started, now()
        record.exit_status = None
        await self.save(record)  # the pid is on disk before anything can go wrong: no duplicate after a crash
        process.on_exit(lambda status: self._exited(p, process, status))
        await step("connect", "waiting for the project to answer on the bus", 80)
        await self._wait_ready(p, process)

    async def _wait_ready(self, project_id: str, process: ProjectProcess) -> None:
        subject = project_subject(project_id, "status")
        ask = asyncio.ensure_future(
            self.client.request(
                subject, _STATUS_CALL, timeout=self.config.start_timeout, wait_for_interest=True
            )
        )
        try:
            waiting: set[asyncio.Future[Any]] = {ask, process.exited}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ask.done():
                ask.cancel()
                with contextlib.suppress(BaseException):
                    await ask
        if ask.done() and not ask.cancelled() and ask.exception() is None:
            return
        if process.exited.done():
            tail = self.logs(project_id).tail()
            why = describe_status(process.exited.result())
            raise LaunchFailed(project_id, f"the process {why}" + (f": {tail[-500:]}" if tail else ""))
        error = ask.exception() if ask.done() and not ask.cancelled() else None
        raise LaunchFailed(
            project_id, f"no answer on the bus within {self.config.start_timeout:g} s ({error})"
        )

    def _exited(self, project_id: str, process: ProjectProcess, status: int | None) -> None:
        if self.processes.get(project_id) is process and self.on_exit is not None:
            self.on_exit(project_id, process, status)

    # -- stop, adopt, clean up ----------------------------------------------------------------------
    async def terminate(self, project_id: str) -> int | None:
        """Stop the project's process (SIGTERM, grace, SIGKILL of everything in its cgroups)."""
        process = self.processes.get(project_id)
        if process is None:
            return None
        return await process.stop(self.config.stop_grace)

    async def cleanup(self, record: ProjectRecord) -> None:
        """Remove what a start made (processes, cgroups, relay, namespace); keeps the home."""
        process = self.processes.pop(record.project_id, None)
        if process is not None and process.running:
            await process.stop(0.5)
        cgroups = Cgroups(record.cgroups)
        await asyncio.to_thread(cgroups.kill_all)
        await asyncio.to_thread(cgroups.remove)
        relay = self.relays.pop(record.project_id, None)
        if relay is not None:
            await relay.aclose()
        if record.netns:
            await asyncio.to_thread(remove_netns, record.netns)
        record.cgroups, record.netns, record.pid, record.pid_started = (), None, None, None
        self.activity.pop(record.project_id, None)

    async def adopt(self, record: ProjectRecord) -> bool:
        """Watch the project's process again after a host restart, if it is still running."""
        process = ProjectProcess.adopt(record.pid or 0, record.pid_started or 0.0, Cgroups(record.cgroups))
        if process is None:
            return False
        p = record.project_id
        self.processes[p] = process
        self.activity[p] = now()
        if record.netns:
            relay = NetnsRelay(record.netns, *self.bus)
            try:
                await relay.start()
            except OSError as e:
                log.warning("project %s: cannot re-create its bus relay: %s", p, e)
            else:
                self.relays[p] = relay
        process.on_exit(lambda status: self._exited(p, process, status))
        return True

    async def sweep_orphans(self) -> int:
        """Kill and remove project cgroups of this host that no running project owns (a process
        left behind by a crash between launch and record). Returns how many groups were swept."""
        swept = 0
        for controller, mount in available_controllers().items():
            parent = host_parent(controller, mount, self.tag)
            children = [c for c in parent.iterdir() if c.is_dir()] if parent.is_dir() else []
            for child in children:
                if child.name not in self.processes:
                    cgroups = Cgroups((str(child),))
                    await asyncio.to_thread(cgroups.kill_all)
                    await asyncio.to_thread(cgroups.remove)
                    swept += 1
        return swept

    def remove_host_groups(self) -> None:
        """Remove this host's (empty) parent cgroups at shutdown; busy ones (projects left running)
        stay for the next start."""
        for controller, mount in available_controllers().items():
            with contextlib.suppress(OSError):
                host_parent(controller, mount, self.tag).rmdir()

    def alive(self, record: ProjectRecord) -> bool:
        return process_alive(record.pid, record.pid_started)

    # -- status -------------------------------------------------------------------------------------
    def status(self, record: ProjectRecord) -> ProjectStatus:
        process = self.processes.get(record.project_id)
        return ProjectStatus(
            project_id=record.project_id,
            state=record.state,
            reason=record.reason,
            pid=record.pid,
            usage=process.usage() if process is not None and process.running else None,
            limits=record.limits,
            isolation=record.isolation,
            last_activity=self.activity.get(record.project_id),
        )

    def idle(self, record: ProjectRecord) -> bool:
        timeout = record.limits.idle_timeout
        last = self.activity.get(record.project_id)
        return timeout is not None and last is not None and now() - last > timeout

    def rotate_logs(self) -> None:
        for project_id in list(self.processes):
            with contextlib.suppress(OSError):
                self.logs(project_id).rotate()

    # -- bootlogs -----------------------------------------------------------------------------------
    async def bootlog(self, project_id: str | None, phase: str, message: str = "", progress: float | None = None,
                      error: str | None = None) -> None:  # fmt: skip
        """Append to the project's (or, with None, the host's) bootlog; a failure is only logged."""
        try:
            if project_id is None:
                await bootlog.publish(self.client, host_id=self.host_id, phase=phase, message=message,
                                      progress=progress, error=error)  # fmt: skip
            else:
                await bootlog.publish(self.client, project_id=project_id, phase=phase, message=message,
                                      progress=progress, error=error)  # fmt: skip
        except conat.ConatError as e:
            log.warning("bootlog %s %s not written: %s", project_id or "host", phase, e)

    # -- export / import ----------------------------------------------------------------------------
    def export_home(self, project_id: str) -> bytes:
        """The project's home as a gzipped tar (symlinks stored as links, never followed)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(self.home(project_id), arcname=".", recursive=True)
        return buffer.getvalue()

    def import_home(self, record: ProjectRecord, data: bytes) -> None:
        """Unpack an export into the (new) project's home; refuses anything unsafe: tarfile's
        ``tar`` filter (no absolute or ``..`` paths, nothing written through a link out of the home,
        no setuid bits) plus no device files. Symlinks are kept as links, even absolute ones: a
        project's own links are its business, and nothing is ever written through them here."""
        self.prepare_home(record)
        home = self.home(record.project_id)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(home, filter=_import_filter)
        except (tarfile.TarError, OSError, EOFError) as e:
            shutil.rmtree(home, ignore_errors=True)
            raise BadArgument("data", f"not a usable project export: {e}") from None
        if record.uid is not None:
            for path in [home, *home.rglob("*")]:
                with contextlib.suppress(OSError):
                    os.lchown(path, record.uid, record.uid)

    def remove_home(self, project_id: str) -> None:
        shutil.rmtree(self.home(project_id), ignore_errors=True)
        shutil.rmtree(self.state_dir(project_id), ignore_errors=True)


def _import_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    checked = tarfile.tar_filter(member, path)
    if checked.isdev():
        raise tarfile.FilterError(f"{member.name!r} is a device file")
    return checked


def default_limits(config: HostConfig, limits: Limits | None) -> Limits:
    return limits if limits is not None else config.limits
