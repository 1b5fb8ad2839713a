"""Restart policy: exponential backoff with jitter, and restart intensity (N restarts in T seconds).

Pure logic with time and randomness passed in, so supervision is tested without waiting. The two
halves follow Akka's ``restartWithBackoff`` (min, max, random factor, reset after a quiet period)
for *when* to restart, which is conat's one backoff policy (:class:`conat.Backoff`, see
:attr:`RestartPolicy.backoff`), and OTP's supervisor intensity (``intensity``/``period``) for
*whether* to restart or escalate to the parent.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

from conat import Backoff, BackoffSequence

__all__ = ["Escalate", "Restart", "RestartPolicy", "RestartTracker"]


@final
@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a supervisor treats crashes of what it supervises.

    Attributes:
        max_restarts: restarts allowed within ``within`` seconds; one more escalates.
        within: the intensity window in seconds.
        backoff_min: delay before the first restart after a quiet period.
        backoff_max: cap on the delay.
        jitter: random extra delay as a fraction of the delay (0.2 = up to +20 %), so a crowd of
            crashed activations does not restart in lockstep.
        reset_after: seconds without a crash after which backoff starts from ``backoff_min`` again.
    """

    max_restarts: int = 10
    within: float = 60.0
    backoff_min: float = 0.1
    backoff_max: float = 10.0
    jitter: float = 0.2
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, not {self.max_restarts}")
        if self.within <= 0:
            raise ValueError(f"within must be > 0, not {self.within}")
        if not 0 <= self.backoff_min <= self.backoff_max:
            raise ValueError(
                f"need 0 <= backoff_min <= backoff_max, got {self.backoff_min}, {self.backoff_max}"
            )
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0, not {self.jitter}")
        if self.reset_after < 0:
            raise ValueError(f"reset_after must be >= 0, not {self.reset_after}")

    @property
    def backoff(self) -> Backoff:
        """The delays between restarts, as conat's backoff policy."""
        return Backoff(
            initial=self.backoff_min,
            maximum=self.backoff_max,
            jitter=self.jitter,
            reset_after=self.reset_after,
        )


@final
@dataclass(frozen=True, slots=True)
class Restart:
    """Decision: restart after ``delay`` seconds; this is restart number ``attempt`` in a row."""

    delay: float
    attempt: int


@final
@dataclass(frozen=True, slots=True)
class Escalate:
    """Decision: too many restarts (``restarts`` within ``within`` s); the parent must act."""

    restarts: int
    within: float


@final
class RestartTracker:
    """Counts restarts in a sliding window and decides restart-with-delay or escalate."""

    def __init__(self, policy: RestartPolicy, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.backoff = BackoffSequence(policy.backoff, rand)
        self._times: deque[float] = deque()
        self.total = 0

    def crashed(self, now: float) -> Restart | Escalate:
        """Record a crash at ``now`` and decide what to do about it."""
        p = self.policy
        while self._times and now - self._times[0] >= p.within:
            self._times.popleft()
        if len(self._times) >= p.max_restarts:
            return Escalate(len(self._times) + 1, p.within)
        self._times.append(now)
        self.total += 1
        return Restart(self.backoff.next_delay(now), self.backoff.attempt)

    def recent(self, now: float) -> int:
        """Restarts inside the window ending at ``now``."""
        return sum(1 for t in self._times if now - t < self.policy.within)
