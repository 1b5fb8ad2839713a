"""What every part of master shares (:class:`MasterContext`), who is calling (:class:`Caller`), and
the checks every API method starts with.

Identity comes from the subject a request arrived on (``master.account-<a>.api``: nats-server only
lets account ``a`` publish there), never from the payload. An account that was deleted is refused
even while its last token is still valid (the revocation kicked it; this is the second line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import conat
from conat.auth import AuthBus
from conat.platform import Account, HostInfo, Project

from ._config import MasterConfig
from ._credentials import ApiKeyExchange, Issuer
from ._db import AccountRow, Database, HostRow, ProjectRow, Tx
from ._errors import NotAllowed, UnknownAccount, UnknownHost, UnknownProject
from ._links import HostLinks, Revoker
from ._liveness import HostLiveness
from ._placement import Candidate, may_use
from ._queue import WorkQueue

if TYPE_CHECKING:
    from ._moves import Moves
    from ._providers import Providers

__all__ = ["Caller", "MasterContext", "account_info", "host_info", "project_info"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal a request came from: an account (with its admin flag) or a host."""

    kind: Literal["account", "host"]
    id: str
    admin: bool = False

    @property
    def principal(self) -> str:
        return f"{self.kind}-{self.id}"


@dataclass
class MasterContext:
    """The parts of a running master (built by :class:`~master.MasterServer`)."""

    config: MasterConfig
    db: Database
    issuer: Issuer
    exchange: ApiKeyExchange
    bus: AuthBus
    client: conat.Client
    links: HostLinks
    revoker: Revoker
    liveness: HostLiveness
    queue: WorkQueue
    wall: Callable[[], float]
    moves: Moves | None = None
    providers: Providers | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """Projects assigned per host (placement's view), kept in step with the database."""

    @property
    def url(self) -> str:
        return self.bus.url

    # -- lookups that refuse ------------------------------------------------------------------------
    async def account(self, tx: Tx, account_id: str) -> AccountRow:
        row = await tx.account(account_id)
        if row is None or row.deleted is not None:
            raise UnknownAccount(account_id)
        return row

    async def project(self, tx: Tx, caller: Caller, project_id: str, *, manage: bool = False) -> ProjectRow:
        """The project, if ``caller`` may see it (a member, or an admin); with ``manage``, only its
        owner or an admin (collaborator lists, moves, deletion)."""
        row = await tx.project(project_id)
        if row is None or not (caller.admin or caller.id in row.members()):
            raise UnknownProject(project_id)
        if manage and not (caller.admin or caller.id == row.owner):
            raise NotAllowed(f"only the owner of project {project_id} (or an admin) may do that")
        return row

    async def host(self, tx: Tx, caller: Caller, host_id: str, *, manage: bool = False) -> HostRow:
        """The host, if ``caller`` may use it (owner, collaborator, shared, admin); with ``manage``
        only its owner or an admin."""
        row = await tx.host(host_id)
        if (
            row is None
            or row.status == "deleted"
            or not (caller.admin or may_use(_candidate(row, 0), caller.id))
        ):
            raise UnknownHost(host_id)
        if manage and not (caller.admin or caller.id == row.owner):
            raise NotAllowed(f"only the owner of host {host_id} (or an admin) may do that")
        return row

    async def candidates(self, tx: Tx) -> list[Candidate]:
        """Every live host as placement sees it (status from the keepalives)."""
        return [_candidate(h, self.counts.get(h.id, 0), self.liveness.status(h.id)) for h in await tx.hosts()]

    def assign(self, host_id: str | None, delta: int) -> None:
        if host_id is not None:
            self.counts[host_id] = self.counts.get(host_id, 0) + delta


def _candidate(row: HostRow, assigned: int, status: str | None = None) -> Candidate:
    return Candidate(
        host_id=row.id, owner=row.owner, status=status or row.status, capacity=row.capacity, assigned=assigned,
        shared=row.shared, collaborators=frozenset(row.collaborators), name=row.name,
    )  # fmt: skip


def account_info(row: AccountRow) -> Account:
    return Account(account_id=row.id, name=row.name, admin=row.admin, created=row.created)


def project_info(row: ProjectRow, *, state: str | None = None) -> Project:
    return Project(
        project_id=row.id, title=row.title, owner=row.owner, collaborators=list(row.collaborators),
        host_id=row.host_id, desired="running" if row.desired == "running" else "stopped",
        state=state or row.state, reason=row.reason, created=row.created, last_activity=row.last_activity,
    )  # fmt: skip


def host_info(row: HostRow, projects: int, status: str | None = None) -> HostInfo:
    return HostInfo(
        host_id=row.id, name=row.name, owner=row.owner, collaborators=list(row.collaborators), shared=row.shared,
        region=row.region, capacity=row.capacity, status=status or row.status, last_seen=row.last_seen,
        bus_url=row.bus_url, public_key=row.public_key, provider=row.provider, projects=projects,
    )  # fmt: skip
