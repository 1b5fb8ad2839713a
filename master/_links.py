"""master's side of talking to hosts: their runners over master's bus, and revocations.

**Runners.** Each host's agent serves ``runner.host-<h>`` on master's bus (only master may
publish there, only host ``h`` may subscribe: ``subjects.grant``). :meth:`HostLinks.runner` is a
typed client (:class:`conat.platform.HostRunner`); :func:`host_errors` turns what can go wrong on
the way into master's errors: nobody answering is :class:`~master.HostOffline`, an error the
host answered is :class:`~master.HostFailed` keeping the host's code and text.

**Revocations** (:class:`Revoker`). Revoking a principal (an account whose collaborator rights or
API key went, a deleted project or host) bumps its revision in master's database and records the
revocation in order (``revocations.seq``), in one transaction with its audit entry; then master
pushes ``revoke(principal, below)`` to its own bus's callout and, concurrently, to every online
host's agent, which applies it to the host bus's callout (kicking the principal's connections
there). Tokens master mints afterwards carry the new revision and pass. A host that was offline, or
missed the push, catches up before it is counted online again: every keepalive answer carries
the newest ``seq``, and the agent fetches what it lacks (``host.revocations(since)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import conat
from conat.auth import AuthBus
from conat.platform import HostRunner
from subjects import runner_host

from ._db import Database
from ._errors import HostFailed, HostOffline

__all__ = ["HostLinks", "Revoker", "host_errors"]

log = logging.getLogger("conat.master.links")

PUSH_TIMEOUT: Final = 1.5
_TABLES: Final = {"account": "accounts", "host": "hosts", "project": "projects"}


@contextlib.contextmanager
def host_errors(host_id: str) -> Iterator[None]:
    """Map a failed call to host ``host_id`` to master's errors (see the module docstring)."""
    try:
        yield
    except conat.NoResponders:
        raise HostOffline(host_id, "not answering") from None
    except conat.RemoteError as e:
        raise HostFailed(host_id, e.code, e.remote_message) from None
    except conat.Timeout as e:
        raise HostFailed(host_id, e.code, f"no answer within {e.elapsed:.1f}s") from None


class HostLinks:
    """Typed clients of the hosts' runners on master's connection."""

    def __init__(self, client: conat.Client) -> None:
        self.client = client

    def runner(self, host_id: str, timeout: float = 30.0) -> HostRunner:
        return self.client.service(HostRunner, runner_host(host_id), timeout=timeout)


class Revoker:
    """Revokes principals everywhere (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        links: HostLinks,
        bus: AuthBus,
        online: Callable[[], Iterable[str]],
        wall: Callable[[], float],
    ) -> None:
        self.db = db
        self.links = links
        self.bus = bus
        self._online = online
        self._wall = wall
        self.latest = 0

    async def load(self) -> None:
        async with self.db.reading() as tx:
            row = await tx.fetch_one("SELECT coalesce(max(seq), 0) FROM revocations")
        self.latest = int(row[0]) if row else 0

    async def revoke(self, kind: str, ident: str, *, actor: str, why: str) -> int:
        """Refuse every token of ``<kind>-<ident>`` minted so far, on every bus; returns the new
        revision (tokens minted from now on carry it)."""
        principal = f"{kind}-{ident}"
        async with self.db.transaction() as tx:
            below = await tx.bump_revision(_TABLES[kind], ident)
            seq = await tx.add_revocation(principal, below, self._wall())
            await tx.audit(self._wall(), actor, "revoke", principal, why)
        self.latest = max(self.latest, seq)
        await self.push(principal, below)
        return below

    async def revoke_on(self, kind: str, ident: str, hosts: Iterable[str], *, actor: str, why: str) -> int:
        """Refuse ``<kind>-<ident>``'s tokens minted so far on ``hosts``' buses only (not on master's,
        not recorded for catch-up): what a move does to block a project's members on its source
        host without cutting their connections to master or to other hosts. Tokens minted from now
        on carry the new revision, which every bus accepts."""
        principal = f"{kind}-{ident}"
        async with self.db.transaction() as tx:
            below = await tx.bump_revision(_TABLES[kind], ident)
            await tx.audit(self._wall(), actor, "revoke", principal, f"{why} (on {', '.join(hosts)})")
        targets = list(hosts)
        await asyncio.gather(*(self._tell(h, principal, below) for h in targets))
        return below

    async def _tell(self, host_id: str, principal: str, below: int) -> bool:
        try:
            await self.links.runner(host_id, timeout=PUSH_TIMEOUT).revoke(principal, below)
        except conat.ConatError as e:
            log.warning("host %s did not take the revocation of %s yet: %s", host_id, principal, e)
            return False
        return True

    async def push(self, principal: str, below: int, hosts: Iterable[str] | None = None) -> int:
        """Tell master's bus and the hosts (default: every online one); returns how many hosts
        confirmed. A host that did not is caught up later (see the module docstring)."""
        targets = list(self._online() if hosts is None else hosts)
        own = self.bus.revoke(principal, below=below)
        results = await asyncio.gather(
            own, *(self._tell(h, principal, below) for h in targets), return_exceptions=True
        )
        if isinstance(results[0], BaseException):
            log.error("master's bus did not take the revocation of %s: %s", principal, results[0])
        return sum(1 for r in results[1:] if r is True)
