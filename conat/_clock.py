"""Injectable time for everything that waits: socket keepalives, actor passivation, backoff.

Code that schedules reads a :class:`Clock` instead of calling ``asyncio.sleep``, so a test can
swap in :class:`FakeClock` and move time forward by minutes in microseconds of real time
(trio's ``MockClock`` is the model). Both clocks are monotonic seconds; only their origin differs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Final, Protocol, final

__all__ = ["Clock", "FakeClock", "SystemClock"]

_SETTLE_ROUNDS: Final = 32


class Clock(Protocol):
    """A monotonic clock that can also put the current task to sleep."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean something)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (for times that must survive a restart, like reminders)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`now` is at or past ``deadline`` (at once if it already is)."""
        ...


@final
class SystemClock:
    """Real time: the event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.now()))

    def __repr__(self) -> str:
        return "SystemClock()"


@final
class FakeClock:
    """Time that moves only when a test calls :meth:`advance`.

    ``advance(dt)`` wakes sleepers in deadline order, setting :meth:`now` to each one's deadline
    and letting the woken tasks run before it moves on, so a task that sleeps again within the
    window (a periodic timer) wakes again within the same call.
    """

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._start = start
        self._wall_start = wall_start
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_start + (self._now - self._start)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks wait on this clock (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def settle(self) -> None:
        """Let every task that can run without time passing run."""
        for _ in range(_SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline falls inside."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        target = self._now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._now = max(self._now, deadline)
            future.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"
