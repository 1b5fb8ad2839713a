"""conat's benchmark harness: conat against raw nats-py, same server, same run.

``conat bench`` (or ``python -m bench``) prints a table of conat/baseline ratios and writes the figures
as JSON (by default to ``<data dir>/bench/results.json``). See :mod:`bench._cli` for the command,
:mod:`bench._harness` for how runs are repeated and aggregated, :mod:`bench._run` for the list of
benches and a run of them, and :mod:`bench._bus` for what each bus row measures.
"""

from ._bus import BenchError as BenchError
from ._cli import main as main
from ._harness import Bench as Bench
from ._harness import Metric as Metric
from ._harness import Report as Report
from ._harness import RowResult as RowResult
from ._harness import Sample as Sample
from ._run import BENCH_NAMES as BENCH_NAMES
from ._run import make_benches as make_benches
from ._run import run as run

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
