"""``projects.*``: create, start, stop, exec, collaborators, snapshots, move and clone.

Who may: a project's members (owner and collaborators) may see, start, stop, exec and snapshot it;
its owner (or an admin) manages collaborators, deletes, moves and clones it. A project the caller
may not see is :class:`~master.UnknownProject`, like one that does not exist.

State: ``desired`` is what master drives the project towards (``running``/``stopped``), committed
before the host is asked; ``state`` is what its host last said (``opened``, ``starting``,
``running``, ``stopping``, ``error``), ``unknown`` while the host is offline, ``moving`` during a
move. Every check comes before the first write, so a refused call changes nothing.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

import msgspec

import conat
from conat.platform import (
    MAX_TITLE,
    BadArgument,
    ExecReply,
    Limits,
    MoveResult,
    Project,
    SnapshotInfo,
    check_id,
    check_text,
)

from ._context import Caller, MasterContext, project_info
from ._db import ProjectRow
from ._errors import AlreadyRunning, Busy, HostFailed, HostOffline, UnknownAccount, WrongState
from ._links import host_errors
from ._placement import place
from ._rpc import AfterReply

__all__ = ["ProjectsNamespace"]

_SNAPSHOT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EXEC_SLACK: Final = 10.0


class ProjectsNamespace:
    """``projects.*`` (see the module docstring)."""

    def __init__(self, ctx: MasterContext) -> None:
        self.ctx = ctx

    # -- create, read -------------------------------------------------------------------------------
    async def create(
        self, caller: Caller, title: str, host_id: str | None = None, limits: Limits | None = None
    ) -> Project:
        """A new project (id chosen by master) on ``host_id`` or the host placement picks; the
        decision and its reason go to the audit log."""
        check_text(title, "title", MAX_TITLE)
        if host_id is not None:
            check_id(host_id, "host_id")
        ctx = self.ctx
        now = ctx.wall()
        row = ProjectRow(
            id=str(uuid.uuid4()), title=title, owner=caller.id, host_id=None, desired="stopped",
            state="creating", reason="", limits=limits, revision=0, created=now, last_activity=None,
        )  # fmt: skip
        async with ctx.db.transaction() as tx:  # placement and insert at once: no slot given twice
            placement = place(await ctx.candidates(tx), caller.id, admin=caller.admin, host_id=host_id)
            row = _with(row, host_id=placement.host_id)
            await tx.insert_project(row)
            await tx.audit(now, caller.principal, "project.create", f"project-{row.id}", f"title={title!r}")
            await tx.audit(now, "master", "placement", f"project-{row.id}", placement.reason)
            ctx.assign(placement.host_id, 1)
        try:
            with host_errors(placement.host_id):
                status = await ctx.links.runner(placement.host_id).create(row.id, limits)
        except conat.ConatError as e:
            async with ctx.db.transaction() as tx:
                await tx.update_project(row.id, deleted=ctx.wall(), state="error", reason=str(e))
                await tx.audit(ctx.wall(), "master", "project.create-failed", f"project-{row.id}", str(e))
            ctx.assign(placement.host_id, -1)
            raise
        async with ctx.db.transaction() as tx:
            await tx.update_project(row.id, state=status.state)
        return project_info(row, state=status.state)

    async def get(self, caller: Caller, project_id: str) -> Project:
        check_id(project_id, "project_id")
        async with self.ctx.db.reading() as tx:
            return project_info(await self.ctx.project(tx, caller, project_id))

    async def status(self, caller: Caller, project_id: str) -> Project:
        """The project, with its state asked of its host now (``unknown`` if the host is offline)."""
        check_id(project_id, "project_id")
        ctx = self.ctx
        async with ctx.db.reading() as tx:
            row = await ctx.project(tx, caller, project_id)
        if row.state in ("moving", "creating") or row.host_id is None:
            return project_info(row)
        if ctx.liveness.status(row.host_id) != "online":
            return project_info(row, state="unknown")
        try:
            with host_errors(row.host_id):
                status = await ctx.links.runner(row.host_id, timeout=10.0).status(project_id)
        except HostOffline:
            return project_info(row, state="unknown")
        if (status.state, status.reason) != (row.state, row.reason):
            async with ctx.db.transaction() as tx:
                await tx.update_project(project_id, state=status.state, reason=status.reason,
                                        last_activity=status.last_activity or row.last_activity)  # fmt: skip
        return project_info(_with(row, reason=status.reason), state=status.state)

    async def _on_its_host(self, caller: Caller, project_id: str) -> tuple[ProjectRow, str]:
        """The project (if the caller may see it) and its host, which must be online; not moving."""
        ctx = self.ctx
        async with ctx.db.reading() as tx:
            row = await ctx.project(tx, caller, project_id)
        if row.state == "moving":
            raise Busy(project_id, "it is being moved")
        if row.host_id is None or ctx.liveness.status(row.host_id) != "online":
            raise HostOffline(row.host_id or "-", ctx.liveness.status(row.host_id or ""))
        return row, row.host_id

    # -- run ----------------------------------------------------------------------------------------
    async def _ready(self, caller: Caller, project_id: str, desired: str, action: str) -> ProjectRow:
        """Check and commit the new desired state; returns the row as it was."""
        check_id(project_id, "project_id")
        ctx = self.ctx
        async with ctx.db.transaction() as tx:
            row = await ctx.project(tx, caller, project_id)
            if row.state == "moving":
                raise Busy(project_id, "it is being moved")
            if row.state == "creating" or row.host_id is None:
                raise WrongState(row.state, "start", project_id, "it is not created yet")
            if action == "start" and row.desired == "running" and row.state in ("running", "starting"):
                raise AlreadyRunning(project_id, row.state)
            status = ctx.liveness.status(row.host_id)
            if status != "online":
                raise HostOffline(row.host_id, status)
            await tx.update_project(project_id, desired=desired)
            await tx.audit(ctx.wall(), caller.principal, f"project.{action}", f"project-{project_id}")
        return row

    async def _record(self, row: ProjectRow, state: str, reason: str) -> Project:
        async with self.ctx.db.transaction() as tx:
            await tx.update_project(row.id, state=state, reason=reason)
            fresh = await tx.project(row.id)
        return project_info(fresh or row)

    async def start(self, caller: Caller, project_id: str, wait: bool = False) -> Project:
        """Start; returns at once (``starting``), or with ``wait`` once ``running`` or ``error``.
        A second start is refused (``already-running``)."""
        row = await self._ready(caller, project_id, "running", "start")
        ctx = self.ctx
        assert row.host_id is not None
        token, _ = ctx.issuer.project(project_id, row.host_id, row.revision)
        timeout = ctx.config.start_timeout
        try:
            with host_errors(row.host_id):
                status = await ctx.links.runner(row.host_id, timeout=timeout + 10).start(
                    project_id, token, wait=timeout if wait else None
                )
        except HostFailed as e:
            if e.host_code == "wrong-state":
                raise AlreadyRunning(project_id, row.state) from None
            raise
        return await self._record(row, status.state, status.reason)

    async def stop(self, caller: Caller, project_id: str, wait: bool = False) -> Project:
        row = await self._ready(caller, project_id, "stopped", "stop")
        ctx = self.ctx
        assert row.host_id is not None
        timeout = ctx.config.start_timeout
        try:
            with host_errors(row.host_id):
                status = await ctx.links.runner(row.host_id, timeout=timeout + 10).stop(
                    project_id, wait=timeout if wait else None
                )
        except HostFailed as e:
            if e.host_code != "wrong-state":
                raise
            with host_errors(row.host_id):  # stopped already: say how it is
                status = await ctx.links.runner(row.host_id).status(project_id)
        return await self._record(row, status.state, status.reason)

    async def restart(self, caller: Caller, project_id: str, wait: bool = False) -> Project:
        row = await self._ready(caller, project_id, "running", "restart")
        ctx = self.ctx
        assert row.host_id is not None
        token, _ = ctx.issuer.project(project_id, row.host_id, row.revision)
        timeout = ctx.config.start_timeout
        with host_errors(row.host_id):
            status = await ctx.links.runner(row.host_id, timeout=2 * timeout + 10).restart(
                project_id, token, wait=timeout if wait else None
            )
        return await self._record(row, status.state, status.reason)

    async def exec(
        self, caller: Caller, project_id: str, command: list[str], timeout: float = 60.0, cwd: str = "",
        stdin: bytes | None = None,
    ) -> ExecReply:  # fmt: skip
        """Run ``command`` (an argv) in the running project; its output and exit come back."""
        check_id(project_id, "project_id")
        if not command or not all(isinstance(a, str) for a in command):
            raise BadArgument("command", "must be a non-empty list of strings")
        if not 0 < timeout <= 3600:
            raise BadArgument("timeout", "must be in (0, 3600] seconds")
        ctx = self.ctx
        row, host_id = await self._on_its_host(caller, project_id)
        if row.desired != "running":
            raise WrongState(row.state, "exec", project_id, "start it first")
        with host_errors(host_id):
            return await ctx.links.runner(host_id, timeout=timeout + _EXEC_SLACK).exec(
                project_id, command, timeout, cwd, stdin
            )

    # -- manage -------------------------------------------------------------------------------------
    async def delete(self, caller: Caller, project_id: str) -> None:
        """Delete: at once for master (the id is never reused); the host stops and removes it as a
        queued action, retried until the host has done it."""
        check_id(project_id, "project_id")
        ctx = self.ctx
        now = ctx.wall()
        async with ctx.db.transaction() as tx:
            row = await ctx.project(tx, caller, project_id, manage=True)
            if row.state == "moving":
                raise Busy(project_id, "it is being moved")
            await tx.update_project(project_id, deleted=now, desired="stopped")
            await tx.audit(now, caller.principal, "project.delete", f"project-{project_id}")
            if row.host_id is not None:
                await ctx.queue.enqueue(
                    tx, "project.purge", f"project-{project_id}", {"project_id": project_id, "host_id": row.host_id},
                    dedup=f"purge:{project_id}",
                )  # fmt: skip
        ctx.assign(row.host_id, -1)
        ctx.queue.wake()

    async def add_collaborator(self, caller: Caller, project_id: str, account_id: str) -> Project:
        check_id(project_id, "project_id")
        check_id(account_id, "account_id")
        ctx = self.ctx
        async with ctx.db.transaction() as tx:
            await ctx.project(tx, caller, project_id, manage=True)
            other = await tx.account(account_id)
            if other is None or other.deleted is not None:
                raise UnknownAccount(account_id)
            await tx.set_project_collaborator(project_id, account_id, True)
            await tx.audit(ctx.wall(), caller.principal, "collaborator.add", f"project-{project_id}",
                           f"account-{account_id}")  # fmt: skip
            row = await tx.project(project_id)
        assert row is not None
        return project_info(row)

    async def remove_collaborator(self, caller: Caller, project_id: str, account_id: str) -> Project:
        """Remove a collaborator; their connections to the project are cut on every host within a
        couple of seconds (their tokens are revoked; fresh ones no longer name the project)."""
        check_id(project_id, "project_id")
        check_id(account_id, "account_id")
        ctx = self.ctx
        async with ctx.db.transaction() as tx:
            row = await ctx.project(tx, caller, project_id, manage=True)
            if account_id not in row.collaborators:
                raise UnknownAccount(account_id)
            await tx.set_project_collaborator(project_id, account_id, False)
            await tx.audit(ctx.wall(), caller.principal, "collaborator.remove", f"project-{project_id}",
                           f"account-{account_id}")  # fmt: skip
            row = await tx.project(project_id) or row
        revoke = ctx.revoker.revoke("account", account_id, actor=caller.principal,
                                    why=f"no longer a collaborator of project {project_id}")  # fmt: skip
        if account_id == caller.id:  # an admin leaving: answer before its own connections are cut
            return AfterReply(project_info(row), lambda: revoke)  # type: ignore[return-value]
        await revoke
        return project_info(row)

    async def create_snapshot(self, caller: Caller, project_id: str, name: str | None = None) -> SnapshotInfo:
        """A snapshot of the project's files and persist stores, kept on its host."""
        check_id(project_id, "project_id")
        ctx = self.ctx
        name = name or f"snapshot-{int(ctx.wall())}"
        if not _SNAPSHOT_NAME.fullmatch(name):
            raise BadArgument("name", "1 to 64 of [A-Za-z0-9._-], starting with a letter or digit")
        _, host_id = await self._on_its_host(caller, project_id)
        with host_errors(host_id):
            info = await ctx.links.runner(host_id, timeout=600).snapshot(project_id, name)
        async with ctx.db.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO snapshots (project_id, name, host_id, created, bytes, sha256) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (project_id, info.name, host_id, info.created, info.bytes, info.sha256),
            )
            await tx.audit(
                ctx.wall(), caller.principal, "project.snapshot", f"project-{project_id}", info.name
            )
        return info

    async def move(self, caller: Caller, project_id: str, host_id: str, wait: bool = True) -> MoveResult:
        """Move the project to ``host_id`` (see :mod:`master._moves`)."""
        assert self.ctx.moves is not None
        return await self.ctx.moves.request(caller, project_id, host_id, wait=wait)

    async def clone(
        self, caller: Caller, project_id: str, title: str, host_id: str | None = None, wait: bool = True
    ) -> MoveResult:
        """A new project with a copy of this one's files and persist stores."""
        assert self.ctx.moves is not None
        return await self.ctx.moves.request(
            caller, project_id, host_id, wait=wait, clone_title=check_text(title, "title", MAX_TITLE)
        )

    async def list(self, caller: Caller) -> list[Project]:
        """The caller's projects (owned or collaborating; an admin: every project)."""
        async with self.ctx.db.reading() as tx:
            rows = await tx.projects(member=None if caller.admin else caller.id)
        return [project_info(r) for r in rows]


def _with(row: ProjectRow, **changes: object) -> ProjectRow:
    return msgspec.structs.replace(row, **changes)
