"""Retry and backoff, once for the whole project: a policy, its delay sequence, and a retry loop.

Every wait between two attempts in conat and in the packages above it comes from here: a request
waiting for a responder to appear, a credential refresh, a follower's feed and saver, the persist
clients' calls, a host's state reports, actor restarts. One policy type says how delays grow;
time comes from a :class:`~conat.Clock`, so a test drives any of them with a ``FakeClock`` instead
of sleeping.

- :class:`Backoff` is the policy (frozen, validated): ``initial · factor^(n-1)``, capped at
  ``maximum``, plus up to ``jitter`` of itself at random, so a crowd of retrying callers does not
  retry in lockstep; a sequence left alone for ``reset_after`` seconds starts over.
- :class:`BackoffSequence` is one run of delays under a policy (pure: ``now`` and the random numbers
  are passed in); :meth:`BackoffSequence.sleep` waits out the next delay on a clock.
- :func:`retry` calls an attempt until it succeeds, its error is not worth retrying, or the deadline
  comes; then it raises the attempt's last error. No attempt starts at or past the deadline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, final

from ._clock import Clock, SystemClock

__all__ = ["Backoff", "BackoffSequence", "retry"]

T = TypeVar("T")

_MAX_EXPONENT = 1000
"""Attempts beyond this grow no further (the cap is reached long before; this bounds the power)."""


@final
@dataclass(frozen=True, slots=True)
class Backoff:
    """How the delays between attempts grow.

    Attributes:
        initial: the first delay, in seconds.
        maximum: the cap on every delay (jitter included).
        factor: how much each delay grows over the one before (at least 1).
        jitter: random extra delay as a fraction of the delay (0.2: up to +20 %).
        reset_after: seconds without an attempt after which a sequence starts again from
            ``initial``; ``None``: never (a sequence is reset explicitly, after a success).

    Raises:
        ValueError: naming the field, for a negative delay, ``initial`` over ``maximum``, a
            ``factor`` under 1, a negative ``jitter`` or ``reset_after``.
    """

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.0
    reset_after: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum or math.isinf(self.maximum):
            raise ValueError(f"need 0 <= initial <= maximum < inf, got {self.initial}, {self.maximum}")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, not {self.factor}")
        if not self.jitter >= 0:
            raise ValueError(f"jitter must be >= 0, not {self.jitter}")
        if self.reset_after is not None and not self.reset_after >= 0:
            raise ValueError(f"reset_after must be >= 0, not {self.reset_after}")

    def delay(self, attempt: int, rand: float = 0.0) -> float:
        """The delay after failed attempt number ``attempt`` (1 for the first), with ``rand`` in
        [0, 1) the random draw for the jitter: never below ``initial`` nor above ``maximum``."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        try:
            base = min(self.maximum, self.initial * self.factor**exponent)
        except OverflowError:
            base = self.maximum
        return min(self.maximum, base * (1.0 + self.jitter * rand))

    def sequence(self, rand: Callable[[], float] = random.random) -> BackoffSequence:
        """A new run of delays under this policy."""
        return BackoffSequence(self, rand)


@final
class BackoffSequence:
    """One run of delays under a :class:`Backoff`: the state of one retrying thing.

    Pure: :meth:`next_delay` takes the time (any monotonic scale, the caller's clock) and the
    jitter comes from ``rand``; :meth:`sleep` is the one method that waits.
    """

    __slots__ = ("_last", "_rand", "attempt", "policy")

    def __init__(self, policy: Backoff, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rand = rand
        self.attempt = 0
        """Delays handed out since the sequence (re)started."""
        self._last: float | None = None

    def __repr__(self) -> str:
        return f"BackoffSequence(attempt={self.attempt}, {self.policy!r})"

    def next_delay(self, now: float) -> float:
        """The delay before the next attempt, after a failure at ``now``.

        A sequence idle for the policy's ``reset_after`` seconds starts again from ``initial``.
        """
        if self.expired(now) and self.policy.reset_after is not None:
            self.attempt = 0
        self._last = now
        self.attempt += 1
        return self.policy.delay(self.attempt, self._rand())

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self.attempt = 0
        self._last = None

    def expired(self, now: float) -> bool:
        """Whether the next delay would start from ``initial`` again: never used, reset, or idle
        for ``reset_after`` seconds. Until then the sequence is state worth keeping."""
        reset_after = self.policy.reset_after
        return self._last is None or (reset_after is not None and now - self._last >= reset_after)

    async def sleep(self, clock: Clock, deadline: float | None = None) -> float:
        """Wait out the next delay on ``clock`` (no later than ``deadline``, on the clock's
        ``now`` scale); returns the delay that was chosen."""
        now = clock.now()
        delay = self.next_delay(now)
        await clock.sleep_until(now + delay if deadline is None else min(now + delay, deadline))
        return delay


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retry_if: Callable[[Exception], bool],
    deadline: float | None = None,
    clock: Clock | None = None,
    on_retry: Callable[[Exception, float], object] | None = None,
    rand: Callable[[], float] = random.random,
) -> T:
    """Call ``attempt()`` until it returns, with delays under ``backoff`` between failures.

    An error for which ``retry_if`` is false is raised at once. Once ``deadline`` (on ``clock``'s
    ``now`` scale) has come, the last error is raised: the last delay is cut short to end at the
    deadline, and no attempt starts at or past it. ``on_retry(error, delay)`` is called before
    each delay (to log it). Cancelling the caller cancels the attempt or the delay under way.

    Args:
        attempt: makes one attempt (a new awaitable each call).
        backoff: how the delays grow.
        retry_if: whether an attempt's error is worth another attempt.
        deadline: when to give up; ``None``: never (until success or a non-retried error).
        clock: the time source (default: the event loop's, :class:`~conat.SystemClock`).
        on_retry: told of each retried error and the delay before the next attempt.
        rand: the jitter's random numbers in [0, 1).
    """
    delays: BackoffSequence | None = None  # made at the first failure: most calls never fail
    time = clock
    while True:
        try:
            return await attempt()
        except Exception as e:
            if not retry_if(e):
                raise
            if time is None:
                time = SystemClock()
            if delays is None:
                delays = BackoffSequence(backoff, rand)
            now = time.now()
            if deadline is not None and now >= deadline:
                raise
            delay = delays.next_delay(now)
            if on_retry is not None:
                on_retry(e, delay)
            wake = now + delay if deadline is None else min(now + delay, deadline)
            await time.sleep_until(wake)
            if deadline is not None and wake >= deadline:
                raise  # slept until the deadline: no attempt starts at it
