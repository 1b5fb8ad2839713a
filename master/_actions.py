"""The queued host actions that are not moves: purge, ensure-running, abort a transfer.

Each handler is idempotent (it looks at what the host has and does only what is missing) and
raises to be retried (a host that is offline), or :class:`~master._queue.Permanent` when retrying
cannot help.
"""

from __future__ import annotations

from typing import Any

import conat

from ._context import MasterContext
from ._errors import HostFailed
from ._links import host_errors
from ._queue import Action

__all__ = ["register_actions"]


def register_actions(ctx: MasterContext) -> None:
    queue = ctx.queue

    async def purge(action: Action) -> Any:
        """Stop and delete a project on a host, unless master (now) places it there."""
        project_id, host_id = str(action.args["project_id"]), str(action.args["host_id"])
        async with ctx.db.reading() as tx:
            row = await tx.project(project_id)
        if row is not None and row.host_id == host_id:
            return "kept: the project lives on that host"
        runner = ctx.links.runner(host_id, timeout=ctx.config.start_timeout + 10)
        try:
            with host_errors(host_id):
                status = await runner.status(project_id)
                if status.state in ("running", "starting", "stopping"):
                    await runner.stop(project_id, wait=ctx.config.start_timeout)
                await runner.delete(project_id)
        except HostFailed as e:
            if e.host_code == "unknown-project":
                return "gone already"
            raise
        async with ctx.db.transaction() as tx:
            await tx.audit(
                ctx.wall(), "master", "project.purged", f"project-{project_id}", f"from host {host_id}"
            )
        return "purged"

    async def ensure_running(action: Action) -> Any:
        """Start a project that should run but does not (after its host restarted)."""
        project_id = str(action.args["project_id"])
        async with ctx.db.reading() as tx:
            row = await tx.project(project_id)
        if row is None or row.desired != "running" or row.state == "moving" or row.host_id is None:
            return "nothing to do"
        runner = ctx.links.runner(row.host_id, timeout=ctx.config.start_timeout + 10)
        with host_errors(row.host_id):
            status = await runner.status(project_id)
            if status.state in ("running", "starting"):
                return "running"
            if status.state == "stopping":
                raise conat.ConatError("still stopping")
            token, _ = ctx.issuer.project(project_id, row.host_id, row.revision)
            status = await runner.start(project_id, token, wait=None)
        async with ctx.db.transaction() as tx:
            await tx.update_project(project_id, state=status.state, reason=status.reason)
        return status.state

    async def abort_transfer(action: Action) -> Any:
        with host_errors(str(action.args["host_id"])):
            await ctx.links.runner(str(action.args["host_id"]), timeout=60).move_abort(
                str(action.args["project_id"]), str(action.args["move_id"])
            )
        return "aborted"

    queue.register("project.purge", purge)
    queue.register("project.ensure_running", ensure_running)
    queue.register("move.abort", abort_transfer)
