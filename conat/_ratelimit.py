"""Rate limiting, once for the whole project: a token bucket on the caller's clock (sans-IO).

Everything that admits or refuses work by rate uses :class:`TokenBucket`: a persisted stream's
``max_msgs_per_second``/``max_bytes_per_second``, the auth callout's connect attempts per address and
per principal, the file server's requests per project. It is pure: every call takes ``now`` (seconds
on whatever scale the owner's clock keeps), so a stream's admission model stays deterministic under a
fake clock and the same bucket serves asyncio code that reads ``clock.now()``. Nothing here waits:
a refused caller answers "busy" (429) at once instead of queueing, which is what every user wants
(a waiting limiter would hold a request, and its memory, for as long as the flood lasts).
"""

from __future__ import annotations

from typing import final

__all__ = ["TokenBucket"]


@final
class TokenBucket:
    """A token bucket: at most ``capacity`` tokens, refilled at ``rate`` per second, full at first use.

    It refills continuously from the ``now`` of the last :meth:`take`; time going backwards refills
    nothing (the stamp never moves back).

    Args:
        rate: tokens per second.
        capacity: the most tokens it holds (the largest burst); default one second of ``rate``.

    Raises:
        ValueError: a negative ``rate`` or ``capacity``.
    """

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        if not rate >= 0:
            raise ValueError(f"rate must be >= 0, not {rate}")
        if capacity is not None and not capacity >= 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.rate = rate
        self.capacity = rate if capacity is None else capacity
        self.tokens = self.capacity
        self.stamp: float | None = None

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, capacity={self.capacity}, tokens={self.tokens})"

    def available(self, now: float) -> float:
        """The tokens there are at ``now`` (may be negative after a take larger than what was there)."""
        if self.stamp is None:
            return self.tokens
        return min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)

    def take(self, now: float, cost: float = 1.0) -> None:
        """Take ``cost`` tokens at ``now`` (no check: call :meth:`available` first)."""
        self.tokens = self.available(now) - cost
        self.stamp = now if self.stamp is None else max(self.stamp, now)

    def try_take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at ``now`` if there are that many; False (and nothing taken) if not."""
        if self.available(now) < cost:
            return False
        self.take(now, cost)
        return True

    def full(self, now: float) -> bool:
        """Whether the bucket is back at capacity (forgetting it would change nothing)."""
        return self.available(now) >= self.capacity

    def copy(self) -> TokenBucket:
        """An independent bucket in the same state."""
        other = TokenBucket(self.rate, self.capacity)
        other.tokens, other.stamp = self.tokens, self.stamp
        return other
