"""Placement as pure logic (hypothesis): the host chosen is usable, online, has room, and has the
most room; a refusal names the right reason."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from master import Candidate, HostOffline, NoCapacity, NoHost, UnknownHost, place
from master._placement import may_use

ME = str(uuid.UUID(int=1))
OTHER = str(uuid.UUID(int=2))

hosts = st.lists(
    st.builds(
        Candidate,
        host_id=st.uuids().map(str),
        owner=st.sampled_from([ME, OTHER]),
        status=st.sampled_from(["online", "offline", "new"]),
        capacity=st.integers(0, 20),
        assigned=st.integers(0, 25),
        shared=st.booleans(),
        collaborators=st.sampled_from([frozenset(), frozenset({ME})]),
    ),
    max_size=12,
    unique_by=lambda h: h.host_id,
)


@given(hosts, st.booleans())
def test_the_choice_is_usable_online_roomy_and_the_roomiest(candidates: list[Candidate], admin: bool) -> None:
    usable = [h for h in candidates if may_use(h, ME, admin)]
    roomy = [h for h in usable if h.status == "online" and h.assigned < h.capacity]
    try:
        chosen = place(candidates, ME, admin=admin)
    except NoHost:
        assert not usable
        return
    except NoCapacity as e:
        assert usable and not roomy
        assert "usable host" in e.detail
        return
    host = next(h for h in candidates if h.host_id == chosen.host_id)
    assert host in roomy
    best = max(h.free / h.capacity for h in roomy)
    assert host.free / host.capacity == best
    assert chosen.host_id[:8] in chosen.reason and "slots taken" in chosen.reason
    assert place(list(reversed(candidates)), ME, admin=admin) == chosen  # the order of hosts does not matter


@given(hosts)
def test_a_named_host_is_checked_the_same_way(candidates: list[Candidate]) -> None:
    for host in candidates:
        try:
            chosen = place(candidates, ME, host_id=host.host_id)
        except UnknownHost:
            assert not may_use(host, ME)
        except HostOffline as e:
            assert may_use(host, ME) and host.status != "online" and e.status == host.status
        except NoCapacity:
            assert may_use(host, ME) and host.status == "online" and host.free <= 0
        else:
            assert chosen.host_id == host.host_id and host.free > 0


def test_refusals_carry_stable_codes() -> None:
    full = Candidate(host_id=str(uuid.uuid4()), owner=ME, status="online", capacity=1, assigned=1)
    down = Candidate(host_id=str(uuid.uuid4()), owner=ME, status="offline", capacity=5, assigned=0)
    with pytest.raises(NoHost) as none:
        place([], ME)
    with pytest.raises(NoCapacity) as no_room:
        place([full, down], ME)
    assert (none.value.code, no_room.value.code) == ("no-host", "no-capacity")
    assert no_room.value.detail == "2 usable host(s): 1 not online, 1 full"
    with pytest.raises(HostOffline) as offline:
        place([full, down], ME, host_id=down.host_id)
    assert offline.value.code == "host-offline"
