"""The fault suite: real nats-servers, real processes, real SQLite files, and real faults (kill -9,
SIGSTOP, a network namespace whose link goes down, a full or read-only file system, a corrupted
file). Each case prints its figures (``pytest -s`` shows them) and asserts its rule.

Cases that take long (a 10 s freeze, a partition longer than the reconnect budget, the soak) are
marked ``slow`` (``--run-slow``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

import conat
from conat.testing import LocalCluster


def report(case: str, **figures: object) -> None:
    """Print one case's figures on one line (shown with ``pytest -s``)."""
    shown = ", ".join(f"{name}={_fmt(value)}" for name, value in figures.items())
    print(f"\n[fault] {case}: {shown}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default), in MiB."""
    return float(psutil.Process(pid or os.getpid()).memory_info().rss) / (1024 * 1024)


def open_fds(pid: int | None = None) -> int:
    return psutil.Process(pid or os.getpid()).num_fds()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Three nats-servers in one cluster on loopback."""
    async with LocalCluster(tmp_path / "cluster", 3) as c:
        yield c


Outcome = tuple[float, float, int | None]
"""A request: when it started (``perf_counter``), how long it took, its error code (None: served)."""


class Requests:
    """Requests to ``subject`` in a loop until ``stop`` is set, each outcome recorded."""

    def __init__(self, client: conat.Client, subject: str, timeout: float) -> None:
        self.client, self.subject, self.timeout = client, subject, timeout
        self.outcomes: list[Outcome] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            code: int | None = None
            try:
                await self.client.request(self.subject, b"x", encoding="raw", timeout=self.timeout)
            except conat.ConatError as e:
                raw = getattr(e, "code", None)
                code = raw if isinstance(raw, int) else -1
            self.outcomes.append((started, time.perf_counter() - started, code))
            if code is not None:
                await asyncio.sleep(0.05)  # no busy loop while the link is down

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o[0] < end]

    def served_after(self, when: float) -> bool:
        return any(code is None for _, _, code in self.between(when))


def failures(outcomes: list[Outcome]) -> dict[int, int]:
    """Error codes of ``outcomes`` and how often each came."""
    codes = [code for _, _, code in outcomes if code is not None]
    return {code: codes.count(code) for code in sorted(set(codes))}


def longest(outcomes: list[Outcome]) -> float:
    return max((took for _, took, _ in outcomes), default=0.0)
