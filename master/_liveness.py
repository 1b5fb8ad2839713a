"""Which hosts are online: keepalives in memory, status changes committed.

Theory of operation
-------------------
A host's agent sends a keepalive every ``interval`` seconds (capacity, load, health). Each one
updates memory only (:meth:`HostLiveness.seen`): with many hosts, a database commit per keepalive
would cost more than everything else master does. What must survive a crash goes to the database
when it changes: a host becoming **online** (its first keepalive after registering, or after being
offline) and becoming **offline** (no keepalive for ``offline_seconds``, checked by
:meth:`sweep`), each with an audit entry; going offline also marks the actual state of the host's
projects ``unknown`` (their desired state stays, and the host reconciles when it is back).
``last_seen`` is written back in batches (:meth:`flush`), for people; nothing decides on it after
a restart: master gives every host it believed online a fresh grace period, so a restart of master
alone never marks hosts offline.

States::

    new --keepalive--> online --silence--> offline --keepalive--> online
                          \\--(hosts.delete)--> deleted
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import conat
from conat.platform import HostLoad

from ._db import Database

__all__ = ["HostLiveness", "Liveness"]

log = logging.getLogger("conat.master.liveness")


@dataclass(slots=True)
class Liveness:
    """One host as the keepalives show it."""

    status: str
    last_seen: float
    capacity: int = 0
    load: HostLoad = field(default_factory=HostLoad)
    dirty: bool = False


class HostLiveness:
    """See the module docstring. ``on_online(host_id)`` runs after a host comes (back) online."""

    def __init__(
        self,
        db: Database,
        wall: Callable[[], float],
        offline_seconds: float,
        on_online: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self._wall = wall
        self.offline_seconds = offline_seconds
        self.on_online = on_online
        self.hosts: dict[str, Liveness] = {}
        self._pending: list[tuple[str, int, str, float, asyncio.Future[None]]] = []
        self._flushing = False
        self._flusher: asyncio.Future[None] | None = None

    async def load(self) -> None:
        """Take the hosts table as it is; hosts believed online get a fresh grace period."""
        now = self._wall()
        async with self.db.reading() as tx:
            hosts = await tx.hosts()
        self.hosts = {
            h.id: Liveness(status=h.status, last_seen=now if h.status == "online" else (h.last_seen or 0.0),
                           capacity=h.capacity)
            for h in hosts
        }  # fmt: skip

    def online(self) -> list[str]:
        return [h for h, live in self.hosts.items() if live.status == "online"]

    def status(self, host_id: str) -> str:
        live = self.hosts.get(host_id)
        return live.status if live is not None else "unknown"

    def track(self, host_id: str, status: str) -> None:
        """A host created, deleted or re-registered by the API (already committed)."""
        live = self.hosts.get(host_id)
        if live is None:
            self.hosts[host_id] = Liveness(status=status, last_seen=self._wall())
        else:
            live.status = status
            live.last_seen = self._wall()

    async def seen(self, host_id: str, capacity: int, load: HostLoad) -> bool:
        """A keepalive from ``host_id``; returns whether the host just came online (then only
        once that is committed: group-committed with the other hosts coming online meanwhile, so
        a thousand hosts reconnecting at once cost a few commits, not a thousand)."""
        now = self._wall()
        live = self.hosts.get(host_id)
        if live is None or live.status == "deleted":
            return False
        live.last_seen, live.capacity, live.load, live.dirty = now, capacity, load, True
        if live.status == "online":
            return False
        was, live.status = live.status, "online"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((host_id, capacity, was, now, future))
        if not self._flushing:
            self._flushing = True
            self._flusher = asyncio.ensure_future(self._commit_online())
        await future
        live.dirty = False
        if self.on_online is not None:
            await self.on_online(host_id)
        return True

    async def _commit_online(self) -> None:
        """Commit every pending "online" in one transaction, until none is left (group commit)."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with self.db.transaction() as tx:
                        for host_id, capacity, was, when, _ in batch:
                            await tx.update_host(host_id, status="online", last_seen=when, capacity=capacity)
                            await tx.audit(when, f"host-{host_id}", "online", f"host-{host_id}", f"was {was}")
                except BaseException as e:
                    for host_id, _, was, _, future in batch:
                        if self.hosts[host_id].status == "online":
                            self.hosts[host_id].status = was
                        if not future.done():
                            future.set_exception(
                                e if isinstance(e, Exception) else conat.ClosedError("master")
                            )
                    if not isinstance(e, Exception):
                        raise
                    continue
                for *_, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._flushing = False

    async def sweep(self) -> list[str]:
        """Mark hosts silent for ``offline_seconds`` offline; returns them."""
        now = self._wall()
        silent = [
            h for h, live in self.hosts.items()
            if live.status == "online" and now - live.last_seen > self.offline_seconds
        ]  # fmt: skip
        for host_id in silent:
            quiet = now - self.hosts[host_id].last_seen
            if await self.mark_offline(
                host_id,
                f"no keepalive for {quiet:.1f}s (limit {self.offline_seconds:.1f}s)",
                unless_seen_after=now,
            ):
                log.warning("host %s is offline (silent for %.1fs)", host_id, quiet)
        return silent

    async def mark_offline(self, host_id: str, why: str, *, unless_seen_after: float | None = None) -> bool:
        """Mark an online host offline now (silent, or its provider says its machine is down);
        returns whether it was. The status changes in memory before the commit, so a keepalive
        that arrives meanwhile brings the host back online (committed after this) rather than
        being overwritten by it; one that arrived since ``unless_seen_after - offline_seconds``
        keeps it online."""
        live = self.hosts.get(host_id)
        if live is None or live.status != "online":
            return False
        if unless_seen_after is not None and unless_seen_after - live.last_seen <= self.offline_seconds:
            return False
        live.status = "offline"
        now = self._wall()
        async with self.db.transaction() as tx:
            await tx.update_host(host_id, status="offline", last_seen=live.last_seen)
            await tx.execute(
                "UPDATE projects SET state = 'unknown', reason = 'its host is offline' "
                "WHERE host_id = ? AND deleted IS NULL AND state != 'moving'",
                (host_id,),
            )
            await tx.audit(now, "master", "offline", f"host-{host_id}", why)
        live.dirty = False
        return True

    async def flush(self) -> int:
        """Write back ``last_seen`` (and capacity) of hosts heard from since the last flush."""
        dirty = [(h, live) for h, live in self.hosts.items() if live.dirty]
        if not dirty:
            return 0
        async with self.db.transaction() as tx:
            for host_id, live in dirty:
                await tx.update_host(host_id, last_seen=live.last_seen, capacity=live.capacity)
        for _, live in dirty:
            live.dirty = False
        return len(dirty)
