"""Replay protection for one-time tokens: the :class:`ReplayGuard` protocol a
:class:`~conat.auth.TokenVerifier` asks, and :class:`MemoryReplayGuard`, its in-memory form.

A bus does not use these: it checks one-time use itself, after its revocation check, against its
durable store shared by all of its callout responders (``auth.AuthStore``).
"""

from __future__ import annotations

import heapq
import threading
from typing import Protocol, final

__all__ = ["MemoryReplayGuard", "ReplayGuard"]


class ReplayGuard(Protocol):
    """Remembers which one-time tokens were used.

    A guard must remember a ``jti`` at least until ``expires`` (after that the token is refused as
    expired anyway), and :meth:`first_use` must be atomic: of two concurrent uses, one wins.
    """

    def first_use(self, jti: str, expires: float, now: float) -> bool:
        """Record ``jti`` as used; return whether this is its first use."""
        ...


@final
class MemoryReplayGuard:
    """A :class:`ReplayGuard` in process memory, pruned of expired entries as it goes.

    Memory holds one entry per one-time token verified and not yet expired. It forgets everything
    when the process restarts, so a one-time token could then be used again within its lifetime: it
    suits tests and a single verifier process. A bus keeps its one-time tokens durably instead, in
    its own store shared by all of its callout responders (``auth.AuthStore``).

    Thread-safe.
    """

    def __init__(self) -> None:
        self._used: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def first_use(self, jti: str, expires: float, now: float) -> bool:
        with self._lock:
            self._prune(now)
            if jti in self._used:
                return False
            self._used[jti] = expires
            heapq.heappush(self._expiries, (expires, jti))
            return True

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, jti = heapq.heappop(self._expiries)
            self._used.pop(jti, None)

    def __len__(self) -> int:
        return len(self._used)

    def __repr__(self) -> str:
        return f"MemoryReplayGuard(entries={len(self._used)})"
