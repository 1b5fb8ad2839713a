"""conat's benchmark harness: conat against raw nats-py, same server, same run.

``python -m bench`` (or ``conat bench``) prints a table of conat/nats-py ratios and writes the figures
as JSON. See :mod:`bench._harness` for how runs are repeated and aggregated, and :mod:`bench._bus` for
what each row measures.
"""

from collections.abc import Sequence

from ._bus import BENCH_NAMES as BENCH_NAMES
from ._bus import BenchError as BenchError
from ._bus import make_benches as make_benches
from ._bus import run as run
from ._harness import Bench as Bench
from ._harness import Metric as Metric
from ._harness import Report as Report
from ._harness import RowResult as RowResult
from ._harness import Sample as Sample
from ._harness import run_cli

__all__ = [
    # entry point
    "main",
    # benches
    "BENCH_NAMES",
    "BenchError",
    "make_benches",
    "run",
    # harness
    "Bench",
    "Metric",
    "Report",
    "RowResult",
    "Sample",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with command-line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Misses against targets are printed, not turned into a failing status: timing on a shared machine
    is not a test.
    """
    return run_cli(argv, BENCH_NAMES, run)
