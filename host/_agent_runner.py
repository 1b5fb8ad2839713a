"""``runner.host-<h>`` on master's bus: what master asks of this host, served by its agent.

Only master may publish there and only this host may subscribe (``subjects.grant``), so every
call is master's. The project methods go to the host's own runner (``runner.host-<h>`` on the
host bus, :mod:`host._runner`) unchanged, with its errors and codes; the others are the agent's:
``exec`` (a command in a project, collected), ``bootlog``, ``revoke`` (applied to this bus's
callout: the principal's connections here are kicked), ``move_in``/``move_out``/``move_abort``
(:mod:`host._agent_move`) and ``snapshot``.

It is a typed service (``client.serve``) rather than an actor: an actor system also answers
``$SRV`` discovery, and a host's grant on master's bus lets it subscribe to its runner subject and
its inbox only. Each call runs in its own task (up to :data:`CONCURRENCY` at once), so a slow one
(a start with ``wait``, a transfer) holds up no other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import conat
from conat.platform import (
    ExecReply,
    HostStatus,
    Limits,
    ProjectStatus,
    SnapshotInfo,
    TransferResult,
    check_id,
)
from subjects import runner_host

from ._agent_move import Incoming, forget_streams, send_archive, snapshot, stream_names
from ._exec import exec_command
from ._runner import runner_proxy

if TYPE_CHECKING:
    from ._server import HostServer

__all__ = ["CONCURRENCY", "AgentRunner", "serve_agent_runner"]

_CALL_TIMEOUT = 120.0
CONCURRENCY = 64


class AgentRunner:
    """See the module docstring; serve with :func:`serve_agent_runner`."""

    def __init__(self, server: HostServer, incoming: Incoming) -> None:
        self.server = server
        self.incoming = incoming
        self.peer_timeout = incoming.peer_timeout

    @property
    def _local(self) -> Any:
        assert self.server.client is not None
        return runner_proxy(self.server.client, self.server.host_id, timeout=_CALL_TIMEOUT)

    # -- the host runner's methods, forwarded ----------------------------------------------------
    async def create(self, project_id: str, limits: Limits | None = None) -> ProjectStatus:
        return await self._local.create(project_id, limits)  # type: ignore[no-any-return]

    async def start(
        self, project_id: str, token: str | None = None, wait: float | None = None
    ) -> ProjectStatus:
        return await self._local.start(project_id, token, wait, timeout=_CALL_TIMEOUT + (wait or 0))  # type: ignore[no-any-return]

    async def stop(self, project_id: str, wait: float | None = None) -> ProjectStatus:
        return await self._local.stop(project_id, wait, timeout=_CALL_TIMEOUT + (wait or 0))  # type: ignore[no-any-return]

    async def restart(
        self, project_id: str, token: str | None = None, wait: float | None = None
    ) -> ProjectStatus:
        return await self._local.restart(project_id, token, wait, timeout=2 * _CALL_TIMEOUT + (wait or 0))  # type: ignore[no-any-return]

    async def status(self, project_id: str) -> ProjectStatus:
        return await self._local.status(project_id)  # type: ignore[no-any-return]

    async def host_status(self) -> HostStatus:
        return await self._local.host_status()  # type: ignore[no-any-return]

    async def delete(self, project_id: str) -> None:
        """Delete, and close the host's persist streams of the project (their files are gone: a
        project that comes back later must not find them open)."""
        assert self.server.projects is not None
        home = self.server.projects.home(project_id)
        names = stream_names(home)
        await self._local.delete(project_id)
        await forget_streams(self.server.persist, home, project_id, names)

    # -- the agent's own ----------------------------------------------------------------------------
    async def exec(
        self,
        project_id: str,
        command: list[str],
        timeout: float = 60.0,
        cwd: str = "",
        stdin: bytes | None = None,
    ) -> ExecReply:
        assert self.server.client is not None
        check_id(project_id, "project_id")
        result = await exec_command(
            self.server.client, project_id, command, cwd=cwd, stdin=stdin, timeout=timeout
        )
        end = result.exit
        return ExecReply(stdout=result.stdout, stderr=result.stderr, code=end.code, signal=end.signal,
                         timed_out=end.timed_out, error=end.error)  # fmt: skip

    async def bootlog(
        self,
        project_id: str,
        phase: str,
        message: str = "",
        progress: float | None = None,
        error: str | None = None,
    ) -> None:
        check_id(project_id, "project_id")
        assert self.server.projects is not None
        await self.server.projects.bootlog(project_id, phase, message, progress, error)

    async def revoke(self, principal: str, below: int) -> int:
        """Refuse ``principal``'s tokens below revision ``below`` on this bus; returns the kicks."""
        assert self.server.bus is not None
        return (await self.server.bus.revoke(principal, below=below)).kicked

    async def move_in(self, project_id: str, transfer_id: str, limits: Limits | None = None) -> None:
        check_id(project_id, "project_id")
        self.incoming.expect(project_id, transfer_id, limits)

    async def move_out(
        self, project_id: str, transfer_id: str, url: str, token: str, new_project_id: str | None = None
    ) -> TransferResult:
        check_id(project_id, "project_id")
        projects = self.server.projects
        assert projects is not None

        async def progress(message: str, percent: float) -> None:
            await projects.bootlog(project_id, "move-transfer", message, percent)

        return await send_archive(
            projects,
            project_id,
            transfer_id,
            url,
            token,
            new_project_id or project_id,
            progress,
            self.peer_timeout,
        )

    async def move_abort(self, project_id: str, transfer_id: str) -> None:
        await self.incoming.abort(project_id, transfer_id)

    async def snapshot(self, project_id: str, name: str) -> SnapshotInfo:
        check_id(project_id, "project_id")
        assert self.server.projects is not None
        return await snapshot(self.server.projects, project_id, name)

    async def list(self) -> list[ProjectStatus]:
        return await self._local.list()  # type: ignore[no-any-return]


async def serve_agent_runner(client: conat.Client, runner: AgentRunner) -> conat.Subscription:
    """Serve ``runner.host-<h>`` on master's bus (``client`` is the agent's connection there)."""
    return await client.serve(runner_host(runner.server.host_id), runner, concurrency=CONCURRENCY)
