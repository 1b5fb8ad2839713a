"""Measurement plumbing: run both sides of a benchmark, aggregate, print the table, write JSON.

Theory of operation
-------------------
A :class:`Bench` is one measurement done two ways, ``conat`` and ``nats_py``: two coroutine functions
with the same signature ``(url, count) -> Sample``. Each opens its own fresh connections, warms up,
times ``count`` operations with :func:`time.perf_counter`, closes its connections and returns a
:class:`Sample` (the headline figure plus named extras such as latency percentiles).

:func:`run_bench` runs ``reps`` repetitions. Repetition *i* runs conat first when *i* is even and
nats-py first when it is odd, so slow drift (CPU frequency, the server's heap, the page cache) does
not favour one side. Everything runs sequentially in one process on one event loop: the machine
this is meant for has two cores, shared with nats-server, so concurrency inside the harness would
only measure contention. Between runs the harness collects garbage (untimed) so one side does not
pay for the other's garbage.

Aggregation is **best of reps**: the highest throughput, the lowest latency. Interference on a
shared machine only ever slows a run down, so the best run is the closest estimate of what the code
itself costs. Every repetition's figure is kept in the JSON, with two cross-checks for a noisy
machine: ``ratio_paired``, the median over reps of the ratio of the two runs of one rep (which ran
back to back, so slow drift cancels), and each run's CPU time per operation (``cpu_us_per_op``:
this process only, i.e. the client side's own cost, which other processes' load disturbs less
than wall time). The table flags a row whose paired ratio would flip its verdict.

A :class:`Metric` turns the samples into one table row: ``ratio = conat / nats_py``, compared with
the row's target (``>=`` for throughput, ``<=`` for latency). Targets are reported, never asserted.
A quick run (small counts, one repetition) is too short to judge: its rows carry no verdict
(``ok`` is ``None``, the table shows ``-``).

The command line (``conat bench``, ``python -m bench``) is :mod:`bench._cli`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal, final

__all__ = [
    "CPU_KEY",
    "SIDES",
    "Bench",
    "Environment",
    "Measure",
    "Metric",
    "Report",
    "Resources",
    "RowResult",
    "Sample",
    "SideRun",
    "Stamp",
    "environment",
    "format_resources",
    "format_table",
    "percentile",
    "resources",
    "run_bench",
    "write_json",
]

Side = Literal["conat", "nats_py"]
SIDES: Final[tuple[Side, Side]] = ("conat", "nats_py")
SIDE_LABEL: Final[dict[Side, str]] = {"conat": "conat", "nats_py": "nats-py"}
DEFAULT_REPS: Final = 5
CPU_KEY: Final = "cpu_us_per_op"
"""Sample extra: this process's CPU time per operation (the client side's own cost)."""
QUICK_REPS: Final = 1


@final
class Stamp:
    """Wall time (perf_counter) and this process's CPU time (process_time), read together: the one
    stopwatch of every bench.

    CPU time is the client side's cost alone (nats-server is another process; every thread of this
    one counts, SQLite's included); on a shared machine it is steadier than wall time, which other
    processes' load inflates.
    """

    __slots__ = ("cpu", "wall")

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def since(self, start: Stamp) -> tuple[float, float]:
        """``(wall, cpu)`` seconds from ``start`` to this stamp."""
        return self.wall - start.wall, self.cpu - start.cpu


@final
@dataclass(frozen=True, slots=True)
class Sample:
    """One timed run of one side: the headline ``value`` and named extras (e.g. ``p50_us``)."""

    value: float
    extra: dict[str, float] = field(default_factory=dict)
    count: int = 0
    elapsed_s: float = 0.0


Measure = Callable[[str, int], Awaitable[Sample]]
"""``measure(url, count)``: open fresh connections, warm up, time ``count`` operations, close."""


@final
@dataclass(frozen=True, slots=True)
class Metric:
    """One table row taken from a bench's samples: ``key`` None is the headline value."""

    name: str
    unit: str
    target: float
    key: str | None = None
    higher_is_better: bool = True
    informational: bool = False
    """A figure to print (e.g. memory), with no target to pass."""

    def of(self, sample: Sample) -> float:
        return sample.value if self.key is None else sample.extra[self.key]

    def best(self, values: Sequence[float]) -> float:
        return max(values) if self.higher_is_better else min(values)

    def passes(self, ratio: float) -> bool:
        if self.informational:
            return True
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    @property
    def target_text(self) -> str:
        if self.informational:
            return "-"
        return f"{'>=' if self.higher_is_better else '<='} {self.target:.2f}"


@final
@dataclass(frozen=True, slots=True)
class Bench:
    """A measurement done by conat and by raw nats-py. ``count``/``quick_count``: operations per run."""

    name: str
    description: str
    conat: Measure
    nats_py: Measure
    metrics: tuple[Metric, ...]
    count: int
    quick_count: int
    params: dict[str, Any] = field(default_factory=dict)
    baseline: str = "nats-py"
    """What the second side is (the table's baseline column)."""

    def side(self, side: Side) -> Measure:
        return self.conat if side == "conat" else self.nats_py


@final
@dataclass(frozen=True, slots=True)
class Resources:
    """Process figures right after one side's run (its connections already closed)."""

    rss_mb: float
    max_rss_mb: float
    tasks: int


@final
@dataclass(frozen=True, slots=True)
class SideRun:
    side: Side
    rep: int
    sample: Sample
    resources: Resources


@final
@dataclass(frozen=True, slots=True)
class RowResult:
    """One row of the table, as written to JSON."""

    name: str
    bench: str
    unit: str
    conat: float
    nats_py: float
    ratio: float
    target: float
    target_op: str
    ok: bool | None
    """Whether the ratio meets the target; ``None``: not judged (a quick run)."""
    ratio_paired: float
    """Median over reps of conat/nats-py within one rep (the two ran back to back): drift-proof."""
    samples: dict[str, list[float]]
    informational: bool = False
    """A printed figure with no target (its ratio is 0 and means nothing)."""


@final
@dataclass(frozen=True, slots=True)
class Environment:
    python: str
    implementation: str
    nats_py: str
    nats_server: str
    conat: str
    uvloop: bool
    loop: str
    cores: int
    usable_cores: int
    platform: str

    def line(self) -> str:
        return (
            f"python {self.python} ({self.implementation}) | nats-py {self.nats_py} | "
            f"nats-server {self.nats_server} | conat {self.conat} | "
            f"uvloop {'on' if self.uvloop else 'off'} ({self.loop}) | "
            f"cores {self.usable_cores}/{self.cores} | {self.platform}"
        )


@final
@dataclass(slots=True)
class Report:
    environment: Environment
    mode: str
    reps: int
    encoding: str
    method: str
    rows: list[RowResult] = field(default_factory=list)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": asdict(self.environment),
            "mode": self.mode,
            "reps": self.reps,
            "encoding": self.encoding,
            "method": self.method,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows": [asdict(r) for r in self.rows],
            "params": self.params,
            "runs": self.runs,
        }


# -- measuring -----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, by nearest rank (no interpolation)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def resources() -> Resources:
    """Current and peak RSS (MB) and the number of live asyncio tasks (the caller's included)."""
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform != "darwin":  # KiB on Linux, bytes on macOS
        max_rss *= 1024
    rss_mb = 0.0
    try:
        with open("/proc/self/statm", "rb") as f:
            rss_mb = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:  # pragma: no cover - not Linux
        pass
    return Resources(round(rss_mb, 1), round(max_rss / 1e6, 1), len(asyncio.all_tasks()))


async def run_bench(
    bench: Bench, url: str, *, count: int, reps: int, log: Callable[[str], None], judge: bool = True
) -> tuple[list[RowResult], list[SideRun]]:
    """Run both sides ``reps`` times, alternating which goes first; return the rows and every run.

    ``judge=False`` (a quick run) leaves every row's ``ok`` at ``None``.
    """
    runs: list[SideRun] = []
    for rep in range(reps):
        order = SIDES if rep % 2 == 0 else SIDES[::-1]
        for side in order:
            gc.collect()
            sample = await bench.side(side)(url, count)
            gc.collect()
            res = resources()
            runs.append(SideRun(side, rep, sample, res))
            figures = "  ".join(f"{m.name}={_fmt(m.of(sample))} {m.unit}" for m in bench.metrics)
            cpu = sample.extra.get(CPU_KEY)
            cpu_text = "" if cpu is None else f"cpu {_fmt(cpu)} us/op, "
            log(
                f"  {bench.name:<14} {_label(side, bench.baseline):<8} rep {rep + 1}/{reps}: {figures}"
                f"  [{sample.elapsed_s:.2f}s; {cpu_text}rss {res.rss_mb:.0f} MB,"
                f" max rss {res.max_rss_mb:.0f} MB, tasks {res.tasks}]"
            )
    rows = []
    for metric in bench.metrics:
        samples: dict[str, list[float]] = {
            side: [metric.of(r.sample) for r in runs if r.side == side] for side in SIDES
        }
        c, n = metric.best(samples["conat"]), metric.best(samples["nats_py"])
        if metric.informational:  # a figure to print, not a ratio to judge (the baseline may be 0)
            ratio = paired = 0.0
        else:
            ratio = c / n if n else float("inf")
            paired = statistics.median(
                a / b if b else float("inf")
                for a, b in zip(samples["conat"], samples["nats_py"], strict=True)
            )
        rows.append(
            RowResult(
                name=metric.name,
                bench=bench.name,
                unit=metric.unit,
                conat=c,
                nats_py=n,
                ratio=ratio,
                target=metric.target,
                target_op=">=" if metric.higher_is_better else "<=",
                ok=metric.passes(ratio) if judge else None,
                ratio_paired=paired,
                samples=samples,
                informational=metric.informational,
            )
        )
    return rows, runs


# -- output --------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[RowResult], metrics: dict[str, Metric]) -> str:
    """Fixed-width ``row | unit | conat | baseline | ratio | target | ok`` (``-``: no verdict)."""
    header = ("row", "unit", "conat", "baseline", "ratio", "target", "ok")
    body = [
        (
            r.name,
            r.unit,
            _fmt(r.conat),
            _fmt(r.nats_py),
            "-" if r.informational else f"{r.ratio:.2f}",
            metrics[r.name].target_text,
            "-" if metrics[r.name].informational or r.ok is None else "ok" if r.ok else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {2, 3, 4}

    def render(line: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return " | ".join(cells).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def _label(side: Side, baseline: str) -> str:
    return SIDE_LABEL["conat"] if side == "conat" else baseline


def format_resources(runs: dict[str, list[SideRun]], baselines: dict[str, str] | None = None) -> str:
    """Per bench and side: best CPU us/op, then RSS and task count after its last run.

    ``tasks`` counts live asyncio tasks with the side's connections closed: 1 is the harness's own
    task, anything more was left behind. CPU is this process's time per operation (per MB for a
    transfer), the lowest over the reps: the client side's own cost, steadier than wall time on a
    shared machine.
    """
    head = (
        f"{'bench':<14} | {'side':<8} | {'cpu us/op':>9} | {'rss MB':>6} | {'max rss MB':>10} | {'tasks':>5}"
    )
    lines = [head, "-" * len(head)]
    for name, bench_runs in runs.items():
        for side in SIDES:
            mine = [r for r in bench_runs if r.side == side]
            cpus = [r.sample.extra[CPU_KEY] for r in mine if CPU_KEY in r.sample.extra]
            cpu = _fmt(min(cpus)) if cpus else "-"
            res = mine[-1].resources
            lines.append(
                f"{name:<14} | {_label(side, (baselines or {}).get(name, 'nats-py')):<8} | {cpu:>9} | {res.rss_mb:>6.0f} | {res.max_rss_mb:>10.0f}"
                f" | {res.tasks:>5}"
            )
    return "\n".join(lines)


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    tmp.replace(path)


# -- environment ---------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def environment(*, uvloop: bool, nats_server: str) -> Environment:
    loop = asyncio.get_running_loop()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return Environment(
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        nats_py=_version("nats-py"),
        nats_server=nats_server,
        conat=_version("conat"),
        uvloop=uvloop,
        loop=f"{type(loop).__module__}.{type(loop).__name__}",
        cores=os.cpu_count() or 1,
        usable_cores=usable,
        platform=platform.platform(terse=True),
    )
