"""Steady-state cost of the persist engine: CPU per write at the start of a long run vs at its end.

Why: a cost that grows with what a stream remembers only shows once the remembering is full. Every
write carries a msg-id kept for the stream's ``duplicate_window``, and every message lives
``max_age``; each write transaction first sweeps what aged out. A sweep that scans what it keeps
instead of what it removes costs nothing at first and then grows until the window is full (the
soak that found it: 47 % -> 95 % of a core after two minutes at 500 writes/s, with the default
120 s window). So this row runs a constant load for longer than two windows, with the window made
short so the run stays short, and compares the CPU per write of its last seconds with that of its
first seconds.

Row
---
* ``persist_steady_cpu`` (us of CPU per write, lower is better): :data:`RATE` acknowledged
  ``StreamFile.set`` per second, each with a msg-id, paced in ticks of :data:`TICK` s, on a stream
  with ``duplicate_window = max_age = W`` and ``sync="normal"`` (the figure is CPU, not fsyncs).
  A run of N writes lasts ``D = N / RATE`` s and ``W = D / WINDOWS``; full mode: N = 12,500, so
  25 s with a 10 s window. The conat column is the CPU per write over the last :data:`MEASURED` of
  the run (the dedup table and the stream each hold ``RATE x W`` rows, and as many age out as come
  in); the baseline column is the same load measured over its first :data:`MEASURED` (a separate,
  short run, in which nothing has aged out yet). The target is ``end / start <= 1.25``: the steady
  state costs what the start does. CPU is this process's (the SQLite threads included).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Final

from persist import StreamConfig, StreamFile

from ._harness import CPU_KEY, Bench, Metric, Sample

__all__ = ["persist_steady_bench"]

RATE: Final = 500
"""Writes per second."""
TICK: Final = 0.01
"""Seconds between two bursts of writes (``RATE * TICK`` writes each)."""
WINDOWS: Final = 2.5
"""The run lasts this many duplicate windows (so the last part of it is in the steady state)."""
MEASURED: Final = 0.4
"""Fraction of a window measured, at the end of the run (conat) or at its start (baseline)."""
TARGET: Final = 1.25

_Open = Callable[[StreamConfig], contextlib.AbstractAsyncContextManager[StreamFile]]
"""Opens a fresh stream file with a config (in a temporary directory), and closes it."""


class SteadyBenchError(RuntimeError):
    """A run did not do what it was timed for (a refused or lost write)."""


async def _paced(s: StreamFile, duration: float, measure_from: float, measure_to: float) -> Sample:
    """Write at :data:`RATE` for ``duration`` s; CPU per write between the two marks (s from start)."""
    loop = asyncio.get_running_loop()
    per_tick = max(1, round(RATE * TICK))
    start = loop.time()
    ticks = round(duration / TICK)
    pending: set[asyncio.Task[object]] = set()
    marks: list[tuple[float, int]] = []  # (CPU seconds, writes issued) at each mark
    pending_marks = [measure_from, measure_to]
    written = 0
    for tick in range(ticks + 1):
        if tick * TICK >= pending_marks[0]:
            marks.append((time.process_time(), written))
            del pending_marks[0]
            if not pending_marks:
                break
        delay = start + tick * TICK - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(per_tick):
            written += 1
            task = loop.create_task(s.set(b"x" * 128, msg_id=f"w-{written}"))
            pending.add(task)
            task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    if len(marks) != 2:
        raise SteadyBenchError(f"the run ended before its measured part ({marks})")
    (cpu0, n0), (cpu1, n1) = marks
    writes = n1 - n0
    us = (cpu1 - cpu0) / writes * 1e6
    return Sample(
        us, {CPU_KEY: us, "window_s": duration / WINDOWS}, count=writes, elapsed_s=loop.time() - start
    )


def _side(open_stream: _Open, *, at_end: bool) -> Callable[[str, int], Awaitable[Sample]]:
    async def measure(url: str, count: int) -> Sample:
        duration = count / RATE
        window = duration / WINDOWS
        config = StreamConfig(duplicate_window=window, max_age=window, sync="normal")
        async with open_stream(config) as s:
            if at_end:
                sample = await _paced(s, duration, duration - MEASURED * window, duration)
            else:
                sample = await _paced(s, MEASURED * window, 0.0, MEASURED * window)
            stats = s.statistics()
        if stats.writes < sample.count:
            raise SteadyBenchError(f"{stats.writes} writes committed, {sample.count} measured")
        return sample

    return measure


def persist_steady_bench(open_stream: _Open) -> Bench:
    """The row (module docstring)."""
    return Bench(
        "persist_steady_cpu",
        f"engine: {RATE} writes/s with msg-ids for {WINDOWS:g} duplicate windows (window = max_age);"
        f" CPU per write over the last {MEASURED:g} window vs the first",
        _side(open_stream, at_end=True),
        _side(open_stream, at_end=False),
        (Metric("persist_steady_cpu", "us/write", TARGET, higher_is_better=False),),
        12_500,
        1_250,
        {"rate": RATE, "windows": WINDOWS, "measured": MEASURED, "sync": "normal"},
        baseline="first s",
    )
