"""The one token bucket (pure, clock-fed): refill, caps, time going backwards, and a property
bound on what it lets through."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conat import TokenBucket


def test_bucket_starts_full_and_refills_continuously_up_to_its_rate() -> None:
    b = TokenBucket(10)
    assert b.available(123.0) == 10  # full at first use, whatever the time
    b.take(100.0, 4)
    assert (b.tokens, b.stamp) == (6, 100.0)
    assert b.available(100.0) == 6
    assert b.available(100.2) == pytest.approx(8)
    assert b.available(100.4) == 10  # capped at one second of rate
    assert b.available(1000.0) == 10


def test_bucket_may_go_negative_and_take_does_not_check() -> None:
    b = TokenBucket(10)
    b.take(0.0, 25)
    assert b.available(0.0) == -15
    assert b.available(1.0) == pytest.approx(-5)
    assert b.available(2.5) == 10


def test_bucket_time_going_backwards_refills_nothing() -> None:
    b = TokenBucket(10)
    b.take(50.0, 10)
    assert b.available(40.0) == 0
    b.take(40.0, 0)
    assert b.stamp == 50.0  # the stamp never moves back
    assert b.available(50.5) == pytest.approx(5)


def test_bucket_copy_is_independent() -> None:
    b = TokenBucket(5)
    b.take(1.0, 2)
    c = b.copy()
    assert (c.rate, c.tokens, c.stamp) == (5, 3, 1.0)
    c.take(1.0, 3)
    assert (b.tokens, c.tokens) == (3, 0)


@given(
    rate=st.integers(1, 1000),
    steps=st.lists(
        st.tuples(st.floats(-2.0, 3.0, allow_nan=False), st.floats(0.0, 2.0, allow_nan=False)),
        max_size=60,
    ),
)
@settings(max_examples=300)
def test_bucket_never_allows_more_than_rate_times_elapsed_plus_capacity(
    rate: int, steps: list[tuple[float, float]]
) -> None:
    """Whatever the times (even going backwards) and costs, what is taken in any window of the bucket's
    time (the latest ``now`` seen) is at most rate * elapsed + capacity (one second of rate)."""
    b = TokenBucket(rate)
    now = 0.0
    taken: list[tuple[float, float]] = []  # (bucket time, cost) of each allowed take
    for dt, fraction in steps:
        now += dt
        cost = fraction * rate
        if b.available(now) >= cost:
            b.take(now, cost)
            assert b.stamp is not None
            taken.append((b.stamp, cost))
    for i in range(len(taken)):
        total = 0.0
        for j in range(i, len(taken)):
            total += taken[j][1]
            bound = rate * (taken[j][0] - taken[i][0]) + rate
            assert total <= bound + 1e-9 * max(1.0, bound)


def test_capacity_and_rate_are_separate() -> None:
    """The callout's shape: a burst of ``capacity``, refilled at ``rate`` (here 20 per 10 s)."""
    b = TokenBucket(2.0, capacity=20)
    assert all(b.try_take(0.0) for _ in range(20))
    assert not b.try_take(0.0)
    assert not b.try_take(0.4)
    assert b.try_take(0.5)
    assert not b.full(5.0)
    assert b.full(10.5)


def test_try_take_takes_nothing_when_refused() -> None:
    b = TokenBucket(10)
    assert b.try_take(0.0, 8)
    assert not b.try_take(0.0, 3)
    assert b.available(0.0) == 2


@pytest.mark.parametrize("args", [(-1.0,), (1.0, -1.0), (float("nan"),)])
def test_bad_rates_are_refused(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        TokenBucket(*args)
