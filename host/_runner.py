"""The runner: ``runner.host-<h>`` (master's API for the projects of this host) and one keyed actor
per project that owns its state machine.

Theory of operation
-------------------
**Who may call.** ``runner.host-<h>`` and ``runner.host-<h>.<p>`` are outside every grant but the
hub's (master) and the host's own (``subjects.grant``): nats-server refuses anyone else, so the
runner trusts its callers. Project ids come from the caller; the runner never invents one.

**Two actors.** :class:`Runner` (unkeyed) is the entry point; each call runs in its own task, so a
caller waiting for a project to come up never holds up calls about other projects. It forwards
to :class:`ProjectActor` at ``runner.host-<h>.<p>``, a keyed actor: one activation per project,
whose turns run one at a time, so operations on one project are ordered and never interleave.

**Turns stay short.** A turn checks the transition (:mod:`host._states`), commits the new state
to the host's persist scope, writes the bootlog, and hands the slow work (launching, stopping) to a
task. The task reports back as a turn of the same actor (``launched``, ``stopped``, ``exited``),
tagged with the attempt it belongs to, so a report from a superseded attempt (a start overtaken by
a stop) is ignored. ``start`` therefore returns at once; :meth:`Runner.start` with ``wait=`` then
follows the state until ``running``, ``error`` or the deadline.

**Restarts of the host.** At start-up the server calls :meth:`ProjectActor.reconcile` for every
record: a project whose process still runs (same pid *and* start time) is adopted, one whose
process is gone is cleaned up and marked ``error`` (or ``opened`` if it was being stopped). No
project is started twice: a process's pid is committed before the start can report anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import conat
from actors import NO_REPLY, Actor, actor_proxy
from subjects import runner_host

from ._errors import BadArgument, ProjectExists, UnknownProject
from ._process import ProjectProcess, describe_status
from ._projects import HostProjects, now
from ._states import ProjectState, check_quiet, transition
from ._wire import HostStatus, Limits, ProjectRecord, ProjectStatus

__all__ = ["ProjectActor", "Runner", "project_actor_type", "runner_proxy", "runner_type"]

log = logging.getLogger("conat.host.runner")

_CALL_TIMEOUT: Final = 60.0
_REPORT_PATIENCE: Final = 300.0
REPORT_BACKOFF: Final = conat.Backoff(initial=0.2, maximum=5.0, jitter=1.0)
"""Between the tries of a state report the project's actor could not take (busy, restarting)."""


def _is_conat_error(error: Exception) -> bool:
    return isinstance(error, conat.ConatError)


async def deliver(call: Callable[[], Awaitable[None]], project_id: str) -> None:
    """Deliver a task's report to a project's actor, retrying while the host is too busy to commit
    it (a report is idempotent: one for a superseded attempt or another pid is ignored)."""
    try:
        await conat.retry(
            call,
            backoff=REPORT_BACKOFF,
            retry_if=_is_conat_error,
            deadline=asyncio.get_running_loop().time() + _REPORT_PATIENCE,
        )
    except Exception:
        log.exception("project %s: a state report was lost; a host restart reconciles it", project_id)


def check_project_id(project_id: object) -> str:
    """A canonical project UUID, else :class:`BadArgument`."""
    if isinstance(project_id, str) and len(project_id) == 36:
        with contextlib.suppress(ValueError):
            if str(uuid.UUID(project_id)) == project_id:
                return project_id
    raise BadArgument("project_id", f"must be a canonical UUID, not {project_id!r}")


def _detached(coro: Coroutine[Any, Any, Any], tasks: set[asyncio.Task[Any]]) -> asyncio.Task[Any]:
    """Run ``coro`` outside the current turn's context (its calls back into the actor are new
    calls, not reentrant ones), keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


class ProjectActor(Actor, subject="runner.host-00000000-0000-0000-0000-000000000000.*", idle=None):
    """One project's state machine (key: the project id). Subclassed per host by :func:`project_actor_type`."""

    def __init__(self, projects: HostProjects) -> None:
        self.projects = projects
        self.record: ProjectRecord | None = None
        self.attempt = 0
        self.work: asyncio.Task[Any] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def on_activate(self) -> None:
        self.record = await self.projects.load(self.key)

    def _self(self) -> ProjectActor:
        return actor_proxy(self.client, type(self), self.key, timeout=_CALL_TIMEOUT)

    def _require(self) -> ProjectRecord:
        if self.record is None:
            raise UnknownProject(self.key, "this host")
        return self.record

    async def _move(self, record: ProjectRecord, event: Any, reason: str = "") -> ProjectState:
        """Transition, commit, and note it on the host's bootlog (every project operation is there)."""
        before, before_reason = record.state, record.reason
        record.state = transition(record.state, event, record.project_id)
        record.reason = reason
        try:
            await self.projects.save(record)
        except BaseException:  # not committed: not done (the caller sees the error)
            record.state, record.reason = before, before_reason
            raise
        note = f"project {self.key}: {before} -> {record.state}" + (f" ({reason})" if reason else "")
        await self.projects.bootlog(None, "project", note)
        return record.state

    def _status(self) -> ProjectStatus:
        return self.projects.status(self._require())

    # -- master's operations ----------------------------------------------------------------------
    async def create(self, limits: Limits | None = None) -> ProjectStatus:
        if self.record is not None:
            raise ProjectExists(self.key)
        record = ProjectRecord(
            project_id=self.key, limits=limits or self.projects.config.limits, created=now()
        )
        record.uid = self.projects.allocate_uid(self.key)
        await asyncio.to_thread(self.projects.prepare_home, record)
        await self.projects.save(record)
        self.record = record
        await self.projects.bootlog(self.key, "create", "project created on this host")
        return self._status()

    async def start(self, token: str | None = None) -> ProjectStatus:
        record = self._require()
        transition(record.state, "start", self.key)  # checked first: a refused start changes nothing
        self.projects.check_token(self.key, token)
        await self._move(record, "start")
        self.attempt += 1
        await self.projects.bootlog(self.key, "start", "starting", 0)
        self.work = _detached(self._boot(self.attempt, token), self.tasks)
        return self._status()

    async def _boot(self, attempt: int, token: str | None) -> None:
        record = self._require()

        async def step(phase: str, message: str, progress: float) -> None:
            await self.projects.bootlog(self.key, phase, message, progress)

        try:
            await self.projects.launch(record, token, step)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is reported, whatever it is
            reason = str(e) if isinstance(e, conat.ConatError) else f"{type(e).__name__}: {e}"
            await self._report(lambda: self._self().launched(attempt, reason))
            return
        await self._report(lambda: self._self().launched(attempt, ""))

    async def _report(self, call: Callable[[], Awaitable[None]]) -> None:
        await deliver(call, self.key)

    async def launched(self, attempt: int, error: str) -> None:
        """The launch task's report (internal)."""
        record = self._require()
        if attempt != self.attempt or record.state != "starting":
            return
        if error:
            await self.projects.cleanup(record)
            await self._move(record, "fail", error)
            await self.projects.bootlog(self.key, "error", "the start failed", error=error)
            return
        await self._move(record, "started")
        await self.projects.bootlog(self.key, "ready", f"running (pid {record.pid})", 100)

    async def stop(self, reason: str = "") -> ProjectStatus:
        record = self._require()
        await self._move(record, "stop", reason)
        self.attempt += 1
        await self.projects.bootlog(self.key, "stop", f"stopping{f' ({reason})' if reason else ''}")
        work, self.work = self.work, None
        self.work = _detached(self._halt(self.attempt, work), self.tasks)
        return self._status()

    async def _halt(self, attempt: int, boot: asyncio.Task[Any] | None) -> None:
        record = self._require()
        if boot is not None and not boot.done():
            boot.cancel()
            with contextlib.suppress(BaseException):
                await boot
        status = await self.projects.terminate(self.key)
        await self.projects.cleanup(record)
        how = describe_status(status) if status is not None else ""
        await self._report(lambda: self._self().stopped(attempt, how))

    async def stopped(self, attempt: int, how: str) -> None:
        """The stop task's report (internal)."""
        record = self._require()
        if attempt != self.attempt or record.state != "stopping":
            return
        record.exit_status = None
        await self._move(record, "stopped", record.reason)
        await self.projects.bootlog(self.key, "stopped", f"stopped{f': {how}' if how else ''}", 100)

    async def exited(self, pid: int, status: int | None) -> None:
        """The process ended (internal; from the host's pidfd watch)."""
        record = self._require()
        if record.pid != pid or record.state not in ("running", "starting"):
            return
        why = f"the project process {describe_status(status)}"
        tail = self.projects.logs(self.key).tail(max_bytes=400)
        if tail:
            why += f"; its last output: {tail}"
        self.attempt += 1
        work, self.work = self.work, None
        if work is not None and not work.done():
            work.cancel()
        await self.projects.cleanup(record)
        record.exit_status = status
        await self._move(record, "crash", why)
        await self.projects.bootlog(self.key, "crash", why, error=why)

    async def status(self) -> ProjectStatus:
        return self._status()

    async def delete(self) -> None:
        record = self._require()
        check_quiet(record.state, "delete", self.key)
        await self.projects.cleanup(record)
        await asyncio.to_thread(self.projects.remove_home, self.key)
        await self.projects.forget(self.key)
        self.record = None
        await self.projects.bootlog(self.key, "delete", "project deleted from this host")

    async def export_project(self) -> bytes:
        record = self._require()
        check_quiet(record.state, "export", self.key)
        return await asyncio.to_thread(self.projects.export_home, self.key)

    async def import_project(self, data: bytes, limits: Limits | None = None) -> ProjectStatus:
        if self.record is not None:
            raise ProjectExists(self.key)
        record = ProjectRecord(
            project_id=self.key, limits=limits or self.projects.config.limits, created=now()
        )
        record.uid = self.projects.allocate_uid(self.key)
        await asyncio.to_thread(self.projects.import_home, record, data)
        await self.projects.save(record)
        self.record = record
        await self.projects.bootlog(self.key, "import", f"project imported ({len(data)} bytes)")
        return self._status()

    async def reconcile(self) -> str:
        """After a host restart: adopt the running process, or clean up after the one that is gone."""
        record = self._require()
        if record.state == "opened" or (record.state == "error" and not record.pid):
            return "unchanged"
        if record.state in ("running", "starting") and await self.projects.adopt(record):
            self.attempt += 1
            if record.state == "starting":
                await self._move(record, "started", "")
            await self.projects.bootlog(
                self.key, "adopt", f"host restarted: still running (pid {record.pid})"
            )
            return "adopted"
        was = record.state
        await self.projects.cleanup(record)
        if was == "stopping":
            await self._move(record, "stopped")
            await self.projects.bootlog(self.key, "stopped", "stopped while the host was down")
            return "stopped"
        if was in ("running", "starting"):
            why = "the project process ended while the host was down"
            await self._move(record, "crash", why)
            await self.projects.bootlog(self.key, "crash", why, error=why)
            return "lost"
        await self.projects.save(record)
        return "cleaned"


class Runner(Actor, subject="runner.host-00000000-0000-0000-0000-000000000000", idle=None, max_buffer=10_000):
    """``runner.host-<h>``: master's API for this host's projects (subclassed per host by
    :func:`runner_type`). Every method names the project; see the module docstring."""

    def __init__(self, projects: HostProjects, project_type: type[ProjectActor]) -> None:
        self.projects = projects
        self.project_type = project_type
        self.tasks: set[asyncio.Task[Any]] = set()

    async def receive(self, msg: conat.Message) -> Any:
        """Each call in its own task: a slow one (a start with ``wait``) holds up no other."""
        _detached(self._answer(msg), self.tasks)
        return NO_REPLY

    async def _answer(self, msg: conat.Message) -> None:
        try:
            result = await Actor.receive(self, msg)
        except Exception as e:  # noqa: BLE001 - answered with its code and fields, like the runtime does
            await conat.respond_error(msg, *conat.error_reply(e))
            return
        if msg.reply:
            with contextlib.suppress(conat.ConatError):
                await msg.respond(result)

    def _project(self, project_id: object) -> ProjectActor:
        return actor_proxy(
            self.client, self.project_type, check_project_id(project_id), timeout=_CALL_TIMEOUT
        )

    async def _wait(self, project_id: str, until: frozenset[str], wait: float) -> ProjectStatus:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        proxy = self._project(project_id)
        while True:
            changed = self.projects.next_change()
            status = await proxy.status()
            left = deadline - loop.time()
            if status.state in until or left <= 0:
                return status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    async def create(self, project_id: str, limits: Limits | None = None) -> ProjectStatus:
        return await self._project(project_id).create(limits)

    async def start(
        self, project_id: str, token: str | None = None, wait: float | None = None
    ) -> ProjectStatus:
        """Start; with ``wait`` (seconds), answer once ``running`` or ``error``, or at the deadline."""
        status = await self._project(project_id).start(token)
        if wait:
            return await self._wait(project_id, frozenset({"running", "error", "opened"}), wait)
        return status

    async def stop(self, project_id: str, wait: float | None = None) -> ProjectStatus:
        status = await self._project(project_id).stop("stopped by master")
        if wait:
            return await self._wait(project_id, frozenset({"opened", "error"}), wait)
        return status

    async def restart(
        self, project_id: str, token: str | None = None, wait: float | None = None
    ) -> ProjectStatus:
        """Stop (if not already stopped), wait for it, then start."""
        proxy = self._project(project_id)
        status = await proxy.status()
        if status.state not in ("opened", "error"):
            await proxy.stop("restart")
            status = await self._wait(
                project_id, frozenset({"opened", "error"}), self.projects.config.stop_grace + 30
            )
        return await self.start(project_id, token, wait)

    async def status(self, project_id: str) -> ProjectStatus:
        return await self._project(project_id).status()

    async def list(self) -> list[ProjectStatus]:
        records = await self.projects.all_records()
        return [self.projects.status(r) for r in sorted(records, key=lambda r: r.project_id)]

    async def host_status(self) -> HostStatus:
        return HostStatus(
            host_id=self.projects.host_id,
            url=f"nats://{self.projects.bus[0]}:{self.projects.bus[1]}",
            projects=await self.list(),
            capabilities=self.projects.capabilities.report(),
        )

    async def delete(self, project_id: str) -> None:
        await self._project(project_id).delete()

    async def export_project(self, project_id: str) -> bytes:
        return await self._project(project_id).export_project()

    async def import_project(
        self, project_id: str, data: bytes, limits: Limits | None = None
    ) -> ProjectStatus:
        return await self._project(project_id).import_project(data, limits)


def project_actor_type(host_id: str) -> type[ProjectActor]:
    """The per-project actor class of host ``host_id`` (listening on ``runner.host-<h>.*``)."""
    subject = runner_host(host_id) + ".*"
    return type("ProjectActor", (ProjectActor,), {}, subject=subject, name="ProjectActor", idle=None)


def runner_type(host_id: str) -> type[Runner]:
    """The runner class of host ``host_id`` (listening on ``runner.host-<h>``)."""
    return type(
        "Runner", (Runner,), {}, subject=runner_host(host_id), name="Runner", idle=None, max_buffer=10_000
    )


def runner_proxy(client: conat.Client, host_id: str, *, timeout: float = 60.0) -> Runner:
    """A typed client of host ``host_id``'s runner (only master's principal may use it)."""
    return client.service(Runner, runner_host(host_id), timeout=timeout)


def watch_exits(
    projects: HostProjects, project_type: type[ProjectActor], tasks: set[asyncio.Task[Any]]
) -> None:
    """Route the exit of any project process to its actor (as an ``exited`` turn)."""

    def on_exit(project_id: str, process: ProjectProcess, status: int | None) -> None:
        proxy = actor_proxy(projects.client, project_type, project_id, timeout=_CALL_TIMEOUT)
        projects.processes.pop(project_id, None)

        _detached(deliver(lambda: proxy.exited(process.pid, status), project_id), tasks)

    projects.on_exit = on_exit
