"""``conat bench`` (a ``conat.commands`` plugin, like ``conat run``) and ``python -m bench``: one command.

conat's command line never names this package: ``pyproject.toml`` registers :data:`bench` in the
``conat.commands`` entry point group, and the command uses :mod:`conat.cli.plugin` only.

Output: progress lines and the table on stdout, then the path of the results file; with ``--json``
the progress and the table go to stderr and stdout carries one JSON object, the whole report (the
same as the results file). Exit code 0 whether or not rows meet their targets: timing on a shared
machine is a report, not a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import click

from conat.cli.plugin import Options, data_dir, json_option, to_json

from ._harness import DEFAULT_REPS, QUICK_REPS, write_json
from ._run import BENCH_NAMES
from ._run import run as run_benches

__all__ = ["bench", "default_results_path", "main"]

ENCODINGS: Final = ("raw", "msgpack")


def default_results_path() -> Path:
    """``<data dir>/bench/results.json``: never the current directory (a checkout, a project)."""
    return data_dir() / "bench" / "results.json"


def _rows(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    if value is None:
        return list(BENCH_NAMES)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCH_NAMES]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown row(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(BENCH_NAMES)}"
        )
    return names


def _loop_factory(uvloop: bool) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, bool]:
    if not uvloop:
        return None, False
    try:
        import uvloop as uv
    except ImportError:
        print("conat bench: uvloop is not installed; running on plain asyncio", file=sys.stderr)
        return None, False
    return uv.new_event_loop, True


@click.group(
    "bench",
    invoke_without_command=True,
    short_help="Benchmark conat against baselines measured in the same run.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Small counts and one repetition: a smoke run. Prints the figures without verdicts "
    "(too few operations to judge).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Where to write the results (JSON). Default: <data dir>/bench/results.json.",
)
@click.option("--rows", callback=_rows, metavar="NAME,...", help="Only these benches (default: all).")
@click.option(
    "--reps",
    type=click.IntRange(min=1),
    help=f"Repetitions per side (default {DEFAULT_REPS}; --quick {QUICK_REPS}).",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiply every operation count by this factor.",
)
@click.option("--uvloop/--no-uvloop", default=True, show_default=True, help="Run on uvloop.")
@click.option(
    "--encoding",
    type=click.Choice(ENCODINGS),
    default="raw",
    show_default=True,
    help="conat's payload encoding (raw: the same payload bytes as nats-py; publishes go unlabelled to a subscription that declared raw, requests carry a Conat-Encoding header).",
)
@json_option
@click.pass_context
def bench(
    ctx: click.Context,
    quick: bool,
    out: Path | None,
    rows: list[str],
    reps: int | None,
    scale: float,
    uvloop: bool,
    encoding: str,
) -> None:
    """Measure conat against a baseline doing the same thing, on one private nats-server, in one run.

    \b
    The table, one row per figure:
      conat, baseline  the figure of each side (best of the repetitions), in the row's unit
      ratio            conat / baseline
      target           what the ratio should be: >= for throughput, <= for latency and costs
      ok               whether the ratio meets the target (FAIL: it does not); '-' for a figure
                       without a target, and for every row of a --quick run (too short to judge)

    Baselines: raw nats-py, a plain subscription handler, a bus without auth, raw sqlite3,
    JetStream. Missed targets are reported, not an error: the exit code is 0.

    `conat bench report` runs the rows and writes a Markdown report with plots.
    """
    if ctx.invoked_subcommand is not None:
        return
    opts = ctx.ensure_object(Options)
    path = out if out is not None else default_results_path()
    factory, use_uvloop = _loop_factory(uvloop)
    to_stderr = contextlib.redirect_stdout(sys.stderr) if opts.json else contextlib.nullcontext()
    started = time.perf_counter()
    with (
        to_stderr,
        tempfile.TemporaryDirectory(prefix="conat-bench-") as tmp,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        report = runner.run(
            run_benches(
                rows,
                quick=quick,
                reps=reps if reps is not None else (QUICK_REPS if quick else DEFAULT_REPS),
                scale=scale,
                uvloop=use_uvloop,
                encoding=encoding,
                directory=Path(tmp),
            )
        )
    report.elapsed_s = time.perf_counter() - started
    write_json(report, path)
    if opts.json:
        click.echo(to_json(report.to_json()))
    else:
        click.echo(f"\nwrote {path} ({report.elapsed_s:.1f}s)")


@bench.command("report", short_help="Run the rows and write a Markdown report with PNG plots.")
@click.option("--quick", is_flag=True, help="Small counts and one repetition (no verdicts).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where to write report.md, its plots and results.json. Default: <data dir>/bench/report.",
)
@click.option("--rows", callback=_rows, metavar="NAME,...", help="Only these benches (default: all).")
@click.option("--reps", type=click.IntRange(min=1), help="Repetitions per side.")
@click.option("--uvloop/--no-uvloop", default=True, show_default=True, help="Run on uvloop.")
def report_cmd(quick: bool, out: Path | None, rows: list[str], reps: int | None, uvloop: bool) -> None:
    """Run every row (or --rows) and write DIR/report.md: tables and PNG plots of throughput vs
    payload size, vs clients, vs streams/actors/workers, latency percentiles and 1 vs 3 nodes,
    each row beside its baseline from the same run. Needs matplotlib (pip install 'conat[report]')."""
    from ._report import INSTALL_HINT, have_matplotlib, write_report

    if not have_matplotlib():
        raise click.ClickException(INSTALL_HINT)
    directory = out if out is not None else data_dir() / "bench" / "report"
    factory, use_uvloop = _loop_factory(uvloop)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="conat-bench-") as tmp,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        report = runner.run(
            run_benches(
                rows, quick=quick, reps=reps if reps is not None else (QUICK_REPS if quick else DEFAULT_REPS),
                scale=1.0, uvloop=use_uvloop, encoding="raw", directory=Path(tmp),
            )
        )  # fmt: skip
    report.elapsed_s = time.perf_counter() - started
    write_json(report, directory / "results.json")
    click.echo(f"\nwrote {write_report(report, directory)} ({report.elapsed_s:.1f}s)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench ARGS``: the same command outside ``conat``; returns the exit status."""
    try:
        bench.main(args=None if argv is None else list(argv), prog_name="python -m bench")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return 0
