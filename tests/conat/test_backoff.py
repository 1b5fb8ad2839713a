"""The one backoff policy (pure: delays, sequences) and the retry loop, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conat import Backoff, BackoffSequence, NoResponders, Timeout, retry
from conat.testing import FakeClock

pytestmark = pytest.mark.anyio


# ---- the policy and its sequences (pure) ------------------------------------------------------


@given(
    st.floats(0, 10),
    st.floats(0, 100),
    st.floats(1, 4),
    st.floats(0, 2),
    st.integers(1, 5000),
    st.floats(0, 1, exclude_max=True),
)
def test_a_delay_stays_between_initial_and_maximum(
    initial: float, extra: float, factor: float, jitter: float, attempt: int, rand: float
) -> None:
    policy = Backoff(initial=initial, maximum=initial + extra, factor=factor, jitter=jitter)
    delay = policy.delay(attempt, rand)
    assert initial <= delay <= initial + extra
    assert delay <= policy.delay(attempt + 1, rand) or delay == policy.maximum


def test_delays_grow_by_the_factor_then_cap() -> None:
    sequence = Backoff(initial=0.1, maximum=1.0).sequence(rand=lambda: 0.5)
    assert [sequence.next_delay(float(i)) for i in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert sequence.attempt == 6


def test_jitter_adds_at_most_its_fraction() -> None:
    policy = Backoff(initial=1.0, maximum=100.0, jitter=0.5)
    assert policy.delay(3, 0.0) == 4.0
    assert policy.delay(3, 0.999) == pytest.approx(4.0 * 1.4995)


def test_a_sequence_starts_over_after_reset_or_a_quiet_period() -> None:
    sequence = BackoffSequence(Backoff(initial=1.0, maximum=60.0, reset_after=30.0))
    assert sequence.expired(0.0)
    assert [sequence.next_delay(t) for t in (0.0, 1.0, 2.0)] == [1.0, 2.0, 4.0]
    assert not sequence.expired(31.0)
    assert sequence.expired(32.0)
    assert sequence.next_delay(100.0) == 1.0
    sequence.reset()
    assert sequence.next_delay(101.0) == 1.0


def test_without_reset_after_only_reset_starts_over() -> None:
    sequence = Backoff(initial=1.0, maximum=60.0).sequence()
    sequence.next_delay(0.0)
    assert sequence.next_delay(1e9) == 2.0


@pytest.mark.parametrize(
    "fields",
    [{"initial": -1}, {"initial": 2, "maximum": 1}, {"factor": 0.5}, {"jitter": -0.1}, {"reset_after": -1}],
)
def test_a_bad_policy_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**fields)


# ---- retry, on a fake clock -----------------------------------------------------------------------


class Flaky:
    """Fails with ``error`` ``failures`` times, then returns ``"ok"``; records when it was called."""

    def __init__(self, clock: FakeClock, failures: int, error: Exception) -> None:
        self.clock = clock
        self.failures = failures
        self.error = error
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock.now())
        if len(self.calls) <= self.failures:
            raise self.error
        return "ok"


async def _drive(clock: FakeClock, task: asyncio.Task[str], step: float = 0.05) -> None:
    """Advance the fake clock until ``task`` is done (bounded: a bug must not hang the test)."""
    for _ in range(10_000):
        if task.done():
            return
        await clock.advance(step)
    raise AssertionError("the retry never finished")


async def test_retry_waits_the_delays_on_the_clock_and_returns() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, 3, NoResponders("svc"))
    retried: list[float] = []
    task = asyncio.ensure_future(
        retry(
            flaky,
            backoff=Backoff(initial=1.0, maximum=10.0),
            retry_if=lambda e: isinstance(e, NoResponders),
            clock=clock,
            on_retry=lambda _e, delay: retried.append(delay),
        )
    )
    await _drive(clock, task)
    assert task.result() == "ok"
    assert flaky.calls == pytest.approx([0.0, 1.0, 3.0, 7.0])
    assert retried == [1.0, 2.0, 4.0]


async def test_retry_raises_an_error_it_must_not_retry_at_once() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, 5, ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        await retry(flaky, backoff=Backoff(), retry_if=lambda e: isinstance(e, NoResponders), clock=clock)
    assert flaky.calls == [0.0]


async def test_retry_gives_up_at_the_deadline_with_the_last_error_and_no_late_attempt() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, 100, Timeout("svc", 1.0))
    task = asyncio.ensure_future(
        retry(
            flaky,
            backoff=Backoff(initial=1.0, maximum=4.0),
            retry_if=lambda e: True,
            deadline=10.0,
            clock=clock,
        )
    )
    await _drive(clock, task)
    with pytest.raises(Timeout):
        task.result()
    assert flaky.calls == pytest.approx([0.0, 1.0, 3.0, 7.0])  # the next one would start at 10.0
    assert clock.now() == pytest.approx(10.0, abs=0.05)


async def test_cancelling_a_retry_stops_its_delay() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, 100, NoResponders("svc"))
    task = asyncio.ensure_future(
        retry(flaky, backoff=Backoff(initial=5.0), retry_if=lambda e: True, clock=clock)
    )
    await clock.advance(1.0)
    assert clock.sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    assert len(flaky.calls) == 1
