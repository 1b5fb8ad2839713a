"""The fault suite: real nats-servers, real processes, real SQLite files, and real faults (kill -9,
SIGSTOP, a network namespace whose link goes down, a full or read-only file system, a corrupted
file). Each case prints its figures (``pytest -s`` shows them) and asserts its rule.

Cases that take long (a 10 s freeze, a partition longer than the reconnect budget, the soak) are
marked ``slow`` (``--run-slow``).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

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
