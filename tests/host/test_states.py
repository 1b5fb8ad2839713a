"""The project state machine (pure): the transition table, coded refusals, and properties over
random event sequences (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from host import EVENTS, STATES, TRANSITIONS, WrongState, transition
from host._states import QUIET, check_quiet

events = st.lists(st.sampled_from(EVENTS), max_size=60)


def test_the_documented_lifecycle() -> None:
    state = "opened"
    for event, expected in [
        ("start", "starting"), ("started", "running"), ("stop", "stopping"), ("stopped", "opened"),
        ("start", "starting"), ("fail", "error"), ("start", "starting"), ("started", "running"),
        ("crash", "error"), ("stop", "stopping"), ("stopped", "opened"),
    ]:  # fmt: skip
        state = transition(state, event)  # type: ignore[arg-type]
        assert state == expected


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", EVENTS)
def test_every_pair_is_either_in_the_table_or_refused_with_a_code(state: str, event: str) -> None:
    if (state, event) in TRANSITIONS:
        assert transition(state, event) == TRANSITIONS[(state, event)]  # type: ignore[arg-type]
    else:
        with pytest.raises(WrongState) as e:
            transition(state, event, "p")  # type: ignore[arg-type]
        assert e.value.code == "wrong-state" and e.value.state == state and e.value.event == event
        assert f"cannot {event} while {state}" in str(e.value)


@given(events)
def test_random_sequences_stay_in_known_states(sequence: list[str]) -> None:
    """Applying events, refusing illegal ones, never leaves the set of states, and a refusal
    leaves the state as it was (nothing changes)."""
    state = "opened"
    for event in sequence:
        try:
            after = transition(state, event)  # type: ignore[arg-type]
        except WrongState:
            continue
        assert after in STATES
        state = after


@given(st.sampled_from(STATES))
def test_from_every_state_a_stop_leads_back_to_opened(state: str) -> None:
    """Liveness of cleanup: whatever happened, stop (and the stop's report) brings a project home."""
    if state == "opened":
        return
    current = state
    for event in ("stop", "stopped"):
        try:
            current = transition(current, event)  # type: ignore[arg-type]
        except WrongState:
            assert current == "stopping" and event == "stop"
    assert current == "opened"


@given(st.sampled_from(STATES))
def test_every_state_is_reachable_from_opened(target: str) -> None:
    seen = {"opened"}
    frontier = ["opened"]
    while frontier:
        state = frontier.pop()
        for (source, _), after in TRANSITIONS.items():
            if source == state and after not in seen:
                seen.add(after)
                frontier.append(after)
    assert target in seen


def test_only_quiet_states_allow_delete_and_export() -> None:
    for state in STATES:
        if state in QUIET:
            check_quiet(state, "delete")  # type: ignore[arg-type]
        else:
            with pytest.raises(WrongState):
                check_quiet(state, "delete")  # type: ignore[arg-type]
    assert QUIET == {"opened", "error"}


def test_the_status_table_shows_every_project() -> None:
    from host import HostStatus, Isolation, ProjectStatus, ProjectUsage
    from host._cli import status_lines

    running = ProjectStatus(
        project_id="p1",
        state="running",
        pid=42,
        usage=ProjectUsage(cpu_seconds=1.5, memory_bytes=64 << 20, pids=3),
    )
    broken = ProjectStatus(project_id="p2", state="error", reason="the project process exited with code 3")
    lines = status_lines(
        HostStatus(host_id="h", url="nats://x:1", projects=[running, broken],
                   capabilities=Isolation(applied=("env",), missing={"netns": "not root"}))
    )  # fmt: skip
    assert lines[0] == "host h on nats://x:1: 2 projects"
    assert "  missing netns: not root" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("PROJECT"))
    assert lines[header + 1].split()[:6] == ["p1", "running", "42", "1.5", "64/1024", "3/256"]
    assert lines[header + 2].split()[:3] == ["p2", "error", "-"] and "exited with code 3" in lines[header + 2]
