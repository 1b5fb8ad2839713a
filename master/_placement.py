"""Placement: which host a new (or moving) project goes to, and why. Pure: no I/O, no clock.

A host is *usable* by an account when the account owns it, collaborates on it, or it is shared;
an admin may use every host. Among usable hosts, placement takes those that are online and have
room (projects assigned < capacity), and picks the one with the largest share of free capacity
(ties: more free slots, then the smaller host id, so equal inputs give equal answers). The
decision carries a sentence saying why, for the audit log.

Refusals, most specific first: :class:`~master.NoHost` (the account may use no host at all),
:class:`~master.NoCapacity` (usable hosts exist, but none is online with room; the message says
how many were offline and how many full). A named host is checked the same way and refused with
:class:`~master.UnknownHost` (not usable: indistinguishable from not existing),
:class:`~master.HostOffline` or :class:`~master.NoCapacity`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import final

from ._errors import HostOffline, NoCapacity, NoHost, UnknownHost

__all__ = ["Candidate", "Placement", "may_use", "place"]


@final
@dataclass(frozen=True, slots=True)
class Candidate:
    """What placement knows of a host."""

    host_id: str
    owner: str
    status: str
    capacity: int
    assigned: int
    shared: bool = False
    collaborators: frozenset[str] = frozenset()
    name: str = ""

    @property
    def free(self) -> int:
        return self.capacity - self.assigned


@final
@dataclass(frozen=True, slots=True)
class Placement:
    host_id: str
    reason: str


def may_use(host: Candidate, account: str, admin: bool = False) -> bool:
    """Whether ``account`` may place projects on ``host``."""
    return admin or host.shared or host.owner == account or account in host.collaborators


def _label(host: Candidate) -> str:
    return f"{host.name or 'host'} {host.host_id[:8]}"


def _rank(host: Candidate) -> tuple[float, int, str]:
    """Smallest first: the largest free share, then the most free slots, then the smaller id."""
    return (-host.free / host.capacity, -host.free, host.host_id)


def place(
    hosts: Iterable[Candidate], account: str, *, admin: bool = False, host_id: str | None = None
) -> Placement:
    """Choose a host for a project of ``account`` (or check the named ``host_id``).

    Raises:
        NoHost, NoCapacity, UnknownHost, HostOffline: see the module docstring.
    """
    usable = [h for h in hosts if may_use(h, account, admin)]
    if host_id is not None:
        named = next((h for h in usable if h.host_id == host_id), None)
        if named is None:
            raise UnknownHost(host_id)
        if named.status != "online":
            raise HostOffline(host_id, named.status)
        if named.free <= 0:
            raise NoCapacity(f"{_label(named)} has {named.assigned} of {named.capacity} slots taken")
        return Placement(host_id, f"{_label(named)} as asked: {named.assigned}/{named.capacity} slots taken")
    if not usable:
        raise NoHost("the account owns, collaborates on or shares no host")
    online = [h for h in usable if h.status == "online"]
    roomy = [h for h in online if h.free > 0]
    if not roomy:
        raise NoCapacity(_why_none(usable, online))
    best = min(roomy, key=_rank)
    return Placement(
        best.host_id,
        f"{_label(best)}: {best.assigned}/{best.capacity} slots taken, the most room among "
        f"{len(roomy)} usable online host(s){_skipped(usable, online, roomy)}",
    )


def _why_none(usable: Sequence[Candidate], online: Sequence[Candidate]) -> str:
    offline = len(usable) - len(online)
    return f"{len(usable)} usable host(s): {offline} not online, {len(online)} full"


def _skipped(usable: Sequence[Candidate], online: Sequence[Candidate], roomy: Sequence[Candidate]) -> str:
    offline, full = len(usable) - len(online), len(online) - len(roomy)
    parts = [f"{offline} not online"] if offline else []
    parts += [f"{full} full"] if full else []
    return f" (skipped: {', '.join(parts)})" if parts else ""
