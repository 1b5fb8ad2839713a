"""The pure restart policy: backoff sequence, jitter bounds, intensity window, escalation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import Escalate, Restart, RestartPolicy, RestartTracker
from conat import BackoffSequence


def test_backoff_doubles_and_caps() -> None:
    policy = RestartPolicy(backoff_min=0.1, backoff_max=1.0, jitter=0.0)
    backoff = BackoffSequence(policy.backoff, rand=lambda: 0.5)
    delays = [backoff.next_delay(float(i)) for i in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_resets_after_quiet_period() -> None:
    policy = RestartPolicy(backoff_min=1.0, backoff_max=60.0, jitter=0.0, reset_after=30.0)
    backoff = BackoffSequence(policy.backoff)
    assert backoff.next_delay(0.0) == 1.0
    assert backoff.next_delay(1.0) == 2.0
    assert backoff.next_delay(100.0) == 1.0


@given(st.floats(0, 1), st.integers(1, 40))
def test_jitter_stays_within_its_fraction(r: float, attempts: int) -> None:
    policy = RestartPolicy(backoff_min=0.5, backoff_max=8.0, jitter=0.25)
    backoff = BackoffSequence(policy.backoff, rand=lambda: r)
    delay = 0.0
    for i in range(attempts):
        delay = backoff.next_delay(float(i))
    base = min(8.0, 0.5 * 2 ** (attempts - 1))
    assert base <= delay <= min(8.0, base * 1.25) + 1e-9


def test_intensity_escalates_on_the_n_plus_first_crash_in_the_window() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=3, within=10.0, jitter=0.0))
    decisions = [tracker.crashed(t) for t in (0.0, 1.0, 2.0)]
    assert all(isinstance(d, Restart) for d in decisions)
    assert [d.attempt for d in decisions if isinstance(d, Restart)] == [1, 2, 3]
    assert tracker.crashed(3.0) == Escalate(4, 10.0)
    # the window slides: a crash after the oldest left it is a restart again
    assert isinstance(tracker.crashed(10.5), Restart)


@given(st.lists(st.floats(0, 5), min_size=1, max_size=60), st.integers(0, 6), st.floats(1, 20))
def test_never_more_than_n_restarts_in_any_window(gaps: list[float], n: int, window: float) -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=n, within=window))
    now, restarts = 0.0, []
    for gap in gaps:
        now += gap
        decision = tracker.crashed(now)
        if isinstance(decision, Restart):
            restarts.append(now)
        else:
            assert len([t for t in restarts if now - t < window]) >= n
    for t in restarts:
        assert len([u for u in restarts if t <= u < t + window]) <= n


@pytest.mark.parametrize(
    "kwargs",
    [{"max_restarts": -1}, {"within": 0}, {"backoff_min": 2, "backoff_max": 1}, {"jitter": -0.1}],
)
def test_bad_policy_names_the_field(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]
