"""Moving a project to another host, and cloning one: a queued action with a rollback at every step.

Theory of operation
-------------------
``projects.move(host_id)`` checks everything (owner or admin, the destination usable, online and
with room, the source online, no other move), then in one transaction records the move, marks
the project ``moving`` (which refuses start, stop, exec, snapshot and delete, and keeps it out of
new host tokens) and queues a ``project.move`` action. The action runs these phases, each written
to the ``moves`` row and to the project's bootlog:

1. **block**: every member's token revision is bumped and revoked on the source host's bus, so
   their open connections there (file server, persist, the project's subjects) are cut, and the
   tokens they get meanwhile do not name the project (their connections to master and to other
   hosts are left alone: the caller waiting for the move keeps its answer);
2. **stop** the project on the source, if it runs (downtime starts);
3. **prepare** the destination (``move_in``: it expects one transfer id, and nothing else);
4. **transfer**: the source's agent builds one archive of the home (files, and the persist stores
   as consistent SQLite backups) and streams it over a conat socket on the destination's bus, with
   a project token master minted for that bus; the destination checks the SHA-256 of what arrived
   against the sender's before it unpacks anything, then creates the project;
5. **verify**: the destination has the project, in state ``opened``;
6. **switch** the map (``projects.host_id``), committed: from here on the move is done;
7. **start** on the destination if it was running (downtime ends);
8. **clean** the source (delete the project there; queued for later if that host is down).

Any failure before the switch rolls back: the destination drops what it received (``move_abort``
names the transfer id, so a late abort never touches a later transfer), the project starts again
on the source if it was running, and the move ends ``failed`` with the reason, which the caller
gets as :class:`~master.MoveFailed`. The source's copy is never touched before the switch, so it
is intact. If master dies mid-move, the action runs again after its lease: a move that had not
switched is rolled back and failed; one that had finishes its remaining (idempotent) steps.

A **clone** is the same transfer to a new project id (the source keeps running; each SQLite file
is copied with SQLite's backup API, so every store is consistent on its own) and nothing is
blocked, stopped or cleaned.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Final

import msgspec

import conat
from conat.platform import MoveResult, TransferResult, check_id

from ._context import Caller, MasterContext
from ._db import ProjectRow
from ._errors import BadArgument, Busy, HostOffline, MoveFailed, WrongState
from ._links import host_errors
from ._placement import place
from ._queue import Action, Permanent

__all__ = ["MOVE_KIND", "Moves"]

log = logging.getLogger("conat.master.moves")

MOVE_KIND: Final = "project.move"
WAIT_LIMIT: Final = 6 * 3600.0
_TRANSFER_TIMEOUT: Final = 6 * 3600.0
_AFTER_SWITCH: Final = ("switched", "started", "cleaned")


class _MoveRow(msgspec.Struct, kw_only=True):
    id: str
    kind: str
    project_id: str
    new_project_id: str | None
    source: str
    destination: str
    state: str
    phase: str
    reason: str
    was_running: bool
    bytes: int | None
    sha256: str | None
    started: float
    finished: float | None
    downtime: float


_COLUMNS: Final = (
    "id, kind, project_id, new_project_id, source, destination, state, phase, reason, was_running, bytes, "
    "sha256, started, finished, downtime"
)


class Moves:
    """Requests and runs moves and clones (see the module docstring)."""

    def __init__(self, ctx: MasterContext) -> None:
        self.ctx = ctx
        ctx.queue.register(MOVE_KIND, self.run)

    async def _row(self, move_id: str) -> _MoveRow:
        async with self.ctx.db.reading() as tx:
            row = await tx.fetch_one(f"SELECT {_COLUMNS} FROM moves WHERE id = ?", (move_id,))
        if row is None:
            raise Permanent(f"no move {move_id}")
        return _MoveRow(**dict(zip(_COLUMNS.split(", "), row, strict=True)))

    async def _set(self, move_id: str, **fields: Any) -> None:
        names = sorted(fields)
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                f"UPDATE moves SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
                (*(fields[n] for n in names), move_id),
            )

    def result(self, row: _MoveRow) -> MoveResult:
        transfer = TransferResult(bytes=row.bytes, sha256=row.sha256 or "") if row.bytes is not None else None
        end = row.finished or self.ctx.wall()
        return MoveResult(
            move_id=row.id, project_id=row.project_id, source=row.source, destination=row.destination,
            state=row.state if row.state in ("queued", "running", "done", "failed") else "running",  # type: ignore[arg-type]
            reason=row.reason, new_project_id=row.new_project_id, transfer=transfer, seconds=end - row.started,
            downtime=row.downtime,
        )  # fmt: skip

    # -- request ------------------------------------------------------------------------------------
    async def request(
        self,
        caller: Caller,
        project_id: str,
        host_id: str | None,
        *,
        wait: bool,
        clone_title: str | None = None,
    ) -> MoveResult:
        """Check and queue a move (or, with ``clone_title``, a clone); with ``wait``, its outcome."""
        check_id(project_id, "project_id")
        if host_id is not None:
            check_id(host_id, "host_id")
        clone = clone_title is not None
        ctx = self.ctx
        now = ctx.wall()
        move_id = str(uuid.uuid4())
        new_id = str(uuid.uuid4()) if clone else None
        async with ctx.db.transaction() as tx:
            row = await ctx.project(tx, caller, project_id, manage=not clone)
            if row.state == "moving":
                raise Busy(project_id, "another move is in progress")
            if row.state == "creating" or row.host_id is None:
                raise WrongState(row.state, "clone" if clone else "move", project_id, "it is not created yet")
            source = row.host_id
            if not clone and host_id == source:
                raise BadArgument("host_id", "the project is on that host already")
            candidates = [c for c in await ctx.candidates(tx) if clone or host_id or c.host_id != source]
            destination = place(candidates, caller.id, admin=caller.admin, host_id=host_id).host_id
            if ctx.liveness.status(source) != "online":
                raise HostOffline(source, ctx.liveness.status(source))
            was_running = not clone and row.desired == "running" and row.state in ("running", "starting")
            await tx.execute(
                f"INSERT INTO moves ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'queued', '', '', ?, NULL, NULL, ?, NULL, 0)",
                (
                    move_id,
                    "clone" if clone else "move",
                    project_id,
                    new_id,
                    source,
                    destination,
                    int(was_running),
                    now,
                ),
            )
            if clone:
                assert new_id is not None and clone_title is not None
                await tx.insert_project(ProjectRow(
                    id=new_id, title=clone_title, owner=caller.id, host_id=destination, desired="stopped",
                    state="creating", reason=f"a clone of {project_id}", limits=row.limits, revision=0, created=now,
                    last_activity=None,
                ))  # fmt: skip
            else:
                await tx.update_project(project_id, state="moving", reason=f"moving to host {destination}")
            action = await ctx.queue.enqueue(tx, MOVE_KIND, f"project-{project_id}", {"move_id": move_id},
                                             dedup=f"move:{project_id}", max_attempts=3)  # fmt: skip
            await tx.audit(now, caller.principal, "project.clone" if clone else "project.move", f"project-{project_id}",
                           f"move {move_id}: host {source} -> {destination}" + (f" as {new_id}" if clone else ""))  # fmt: skip
        ctx.assign(destination, 1)
        ctx.queue.wake()
        if wait:
            await ctx.queue.wait(action, WAIT_LIMIT)
        final = self.result(await self._row(move_id))
        if final.state == "failed":
            raise MoveFailed(project_id, final.reason)
        return final

    # -- the action ---------------------------------------------------------------------------------
    async def _bootlog(self, host_id: str, project_id: str, phase: str, message: str,
                       progress: float | None = None, error: str | None = None) -> None:  # fmt: skip
        try:
            await self.ctx.links.runner(host_id, timeout=5.0).bootlog(
                project_id, phase, message, progress, error
            )
        except conat.ConatError as e:
            log.info("bootlog of %s on %s not written: %s", project_id, host_id, e)

    async def _phase(self, move: _MoveRow, phase: str, message: str, progress: float) -> None:
        """Record the phase (the project's ``reason`` shows it while its members are blocked out
        of the host bus, bootlog included), and write it to the project's bootlog."""
        async with self.ctx.db.transaction() as tx:
            await tx.execute("UPDATE moves SET phase = ? WHERE id = ?", (phase, move.id))
            if move.kind == "move":
                await tx.execute(
                    "UPDATE projects SET reason = ? WHERE id = ? AND state = 'moving'",
                    (f"moving to host {move.destination}: {phase} ({progress:.0f}%)", move.project_id),
                )
        host = move.destination if phase in _AFTER_SWITCH else move.source
        await self._bootlog(host, move.project_id, f"move-{phase}", message, progress)

    async def run(self, action: Action) -> Any:
        move = await self._row(str(action.args["move_id"]))
        if move.state in ("done", "failed"):
            return move.state
        if move.state == "running" and move.phase not in _AFTER_SWITCH:
            await self._rollback(move, "master restarted during the move")
            return "failed"
        if move.phase in _AFTER_SWITCH:
            await self._finish(move, time.monotonic())
            return "done"
        await self._set(move.id, state="running")
        began = time.monotonic()
        try:
            stopped_at = await self._copy(move)
        except (conat.ConatError, Permanent) as e:
            await self._rollback(move, str(e))
            return "failed"
        await self._switch(move)
        await self._finish(await self._row(move.id), stopped_at or began)
        return "done"

    async def _copy(self, move: _MoveRow) -> float | None:
        """Phases 1 to 5; returns when the project was stopped (None if it was not running)."""
        ctx = self.ctx
        clone = move.kind == "clone"
        target = move.new_project_id or move.project_id
        async with ctx.db.reading() as tx:
            project = await tx.project(move.project_id)
        if project is None:
            raise Permanent(f"project {move.project_id} was deleted")
        if not clone:
            await self._phase(move, "block", f"blocking writes: moving to host {move.destination}", 5)
            for member in project.members():  # on the source host only: their master connections stay
                await ctx.revoker.revoke_on(
                    "account",
                    member,
                    [move.source],
                    actor="master",
                    why=f"project {move.project_id} is moving",
                )
        stopped_at = None
        if move.was_running:
            await self._phase(move, "stop", "stopping the project on the source", 10)
            stopped_at = time.monotonic()
            with host_errors(move.source):
                status = await ctx.links.runner(move.source, timeout=ctx.config.start_timeout + 10).stop(
                    move.project_id, wait=ctx.config.start_timeout
                )
            if status.state not in ("opened", "error"):
                raise WrongState(status.state, "move", move.project_id, "it did not stop on the source")
        await self._phase(move, "prepare", f"preparing host {move.destination}", 15)
        with host_errors(move.destination):
            await ctx.links.runner(move.destination).move_in(target, move.id, project.limits)
        async with ctx.db.reading() as tx:
            destination = await tx.host(move.destination)
        if destination is None or not destination.bus_url:
            raise HostOffline(move.destination, "not registered")
        token, _ = ctx.issuer.project(target, move.destination, 0)
        await self._phase(move, "transfer", "sending files and persist stores", 20)
        with host_errors(move.source):
            sent = await ctx.links.runner(move.source, timeout=_TRANSFER_TIMEOUT).move_out(
                move.project_id, move.id, destination.bus_url, token, move.new_project_id
            )
        await self._set(move.id, bytes=sent.bytes, sha256=sent.sha256)
        await self._phase(
            move, "verify", f"{sent.bytes} bytes ({sent.format}), sha256 {sent.sha256[:16]}..., checking the copy", 80
        )
        with host_errors(move.destination):
            arrived = await ctx.links.runner(move.destination).status(target)
        if arrived.state != "opened":
            raise WrongState(arrived.state, "move", target, f"expected opened on host {move.destination}")
        return stopped_at

    async def _switch(self, move: _MoveRow) -> None:
        ctx = self.ctx
        now = ctx.wall()
        async with ctx.db.transaction() as tx:
            if move.kind == "clone":
                assert move.new_project_id is not None
                await tx.update_project(move.new_project_id, state="opened", reason="")
            else:
                await tx.update_project(move.project_id, host_id=move.destination, state="opened", reason="")
            await tx.execute("UPDATE moves SET phase = 'switched' WHERE id = ?", (move.id,))
            await tx.audit(now, "master", "move.switch", f"project-{move.project_id}",
                           f"move {move.id}: now on host {move.destination}")  # fmt: skip
        if move.kind != "clone":
            ctx.assign(move.source, -1)

    async def _finish(self, move: _MoveRow, stopped_at: float) -> None:
        """Phases 7 and 8 (after the switch: idempotent, never rolled back)."""
        ctx = self.ctx
        target = move.new_project_id or move.project_id
        downtime = 0.0
        reason = ""
        if move.was_running and move.phase != "started" and move.phase != "cleaned":
            await self._phase(move, "started", "starting the project on its new host", 90)
            async with ctx.db.reading() as tx:
                project = await tx.project(target)
            try:
                assert project is not None
                token, _ = ctx.issuer.project(target, move.destination, project.revision)
                with host_errors(move.destination):
                    status = await ctx.links.runner(
                        move.destination, timeout=ctx.config.start_timeout + 10
                    ).start(target, token, wait=ctx.config.start_timeout)
                async with ctx.db.transaction() as tx:
                    await tx.update_project(target, state=status.state, reason=status.reason)
                downtime = time.monotonic() - stopped_at
            except conat.ConatError as e:
                reason = f"moved, but it did not start on the new host: {e}"
        if move.kind != "clone" and move.phase != "cleaned":
            await self._phase(move, "cleaned", "removing the project from its old host", 95)
            try:
                with host_errors(move.source):
                    await ctx.links.runner(move.source, timeout=120).delete(move.project_id)
            except conat.ConatError as e:
                if getattr(e, "host_code", None) != "unknown-project":
                    async with ctx.db.transaction() as tx:
                        await ctx.queue.enqueue(tx, "project.purge", f"project-{move.project_id}",
                                                {"project_id": move.project_id, "host_id": move.source,
                                                 "unless_on": move.source},
                                                dedup=f"purge:{move.project_id}:{move.source}")  # fmt: skip
                    ctx.queue.wake()
        await self._set(
            move.id, state="done", phase="cleaned", reason=reason, finished=ctx.wall(), downtime=downtime
        )
        await self._bootlog(move.destination, target, "move-done",
                            f"moved from host {move.source}" + (f" ({reason})" if reason else ""), 100)  # fmt: skip

    async def _rollback(self, move: _MoveRow, reason: str) -> None:
        ctx = self.ctx
        target = move.new_project_id or move.project_id
        log.warning("move %s of %s failed, rolling back: %s", move.id, move.project_id, reason)
        try:
            with host_errors(move.destination):
                await ctx.links.runner(move.destination, timeout=60).move_abort(target, move.id)
        except conat.ConatError as e:
            log.warning("host %s could not drop transfer %s yet (%s): queued", move.destination, move.id, e)
            async with ctx.db.transaction() as tx:
                await ctx.queue.enqueue(tx, "move.abort", f"project-{target}",
                                        {"project_id": target, "host_id": move.destination, "move_id": move.id},
                                        dedup=f"abort:{move.id}")  # fmt: skip
            ctx.queue.wake()
        restarted = ""
        if move.was_running:
            async with ctx.db.reading() as tx:
                project = await tx.project(move.project_id)
            try:
                assert project is not None
                token, _ = ctx.issuer.project(move.project_id, move.source, project.revision)
                with host_errors(move.source):
                    await ctx.links.runner(move.source, timeout=ctx.config.start_timeout + 10).start(
                        move.project_id, token, wait=ctx.config.start_timeout
                    )
            except conat.ConatError as e:
                restarted = f"; it did not start again on the source: {e}"
        async with ctx.db.transaction() as tx:
            if move.kind == "clone":
                assert move.new_project_id is not None
                await tx.update_project(move.new_project_id, deleted=ctx.wall(), state="error", reason=reason)
            else:
                await tx.update_project(move.project_id, state="opened" if not move.was_running else "starting",
                                        reason=f"a move failed: {reason}")  # fmt: skip
            await tx.execute(
                "UPDATE moves SET state = 'failed', reason = ?, finished = ? WHERE id = ?",
                (reason + restarted, ctx.wall(), move.id),
            )
            await tx.audit(ctx.wall(), "master", "move.rollback", f"project-{move.project_id}",
                           f"move {move.id}: {reason}{restarted}")  # fmt: skip
        ctx.assign(move.destination, -1)
        await self._bootlog(move.source, move.project_id, "move-failed",
                            f"the move to host {move.destination} failed; the project stays here", error=reason)  # fmt: skip
        if move.kind != "clone":  # members got tokens without the project meanwhile: let them refresh
            async with ctx.db.reading() as tx:
                project = await tx.project(move.project_id)
            for member in project.members() if project else ():
                await ctx.revoker.revoke_on(
                    "account", member, [move.source], actor="master", why="a move was rolled back"
                )
