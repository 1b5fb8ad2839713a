"""The list of benches and one run of them: a private nats-server, the selected rows, the table.

What each bus row measures is in :mod:`bench._bus`; the rows of the layers above it are in their
own modules (:mod:`bench._actors`, :mod:`bench._socket`, :mod:`bench._persist`...). How runs are
repeated and aggregated is :mod:`bench._harness`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import nats

from conat import NatsServer, ServerConfig

from ._actors import actor_benches
from ._auth import auth_benches
from ._bus import bus_benches
from ._cluster import cluster_benches
from ._fs import fs_benches
from ._harness import (
    Bench,
    Metric,
    Report,
    RowResult,
    SideRun,
    environment,
    format_resources,
    format_table,
    run_bench,
)
from ._host import host_benches
from ._persist import persist_benches
from ._persist_scale import persist_scale_benches
from ._persist_service import persist_service_benches
from ._socket import socket_benches

__all__ = ["BENCH_NAMES", "make_benches", "run"]


def make_benches(encoding: str = "raw") -> list[Bench]:
    """Every bench, in table order: the bus, then the layers above it, then the cluster rows.
    ``encoding``: the conat side's payload encoding on the bus rows.

    Every module's rows are listed here, and ``conat bench`` and ``conat bench report`` take every
    row from this list: a new bench module (master's large-deployment simulation, say) only
    returns its :class:`Bench` rows from a ``<x>_benches()`` function added here."""
    return [
        *bus_benches(encoding),
        *actor_benches(),
        *socket_benches(),
        *auth_benches(),
        *persist_benches(),
        *persist_service_benches(),
        *persist_scale_benches(),
        *fs_benches(),
        *host_benches(),
        *cluster_benches(),
    ]


BENCH_NAMES: Final = tuple(b.name for b in make_benches())


# -- the run -------------------------------------------------------------------------------------


async def _server_version(url: str) -> str:
    nc = await nats.connect(url, name="bench-version", allow_reconnect=False)
    try:
        return str((nc._server_info or {}).get("version", "?"))
    finally:
        await nc.close()


async def run(
    selected: Sequence[str],
    *,
    quick: bool,
    reps: int,
    scale: float,
    uvloop: bool,
    encoding: str,
    directory: Path,
) -> Report:
    """Start one private nats-server, run the selected benches in order, print the table."""
    benches = {b.name: b for b in make_benches(encoding)}
    config = ServerConfig(server_name="conat-bench")
    async with NatsServer(config, directory=directory / "nats-server") as server:
        url = server.url
        env = environment(uvloop=uvloop, nats_server=await _server_version(url))
        report = Report(
            environment=env,
            mode="quick" if quick else "full",
            reps=reps,
            encoding=encoding,
            method=f"best of {reps} per side (max throughput, min latency); sides alternate order each rep",
        )
        print(env.line())
        print(f"mode {report.mode}, {report.method}; conat encoding {encoding!r}; server {url}\n", flush=True)
        all_runs: dict[str, list[SideRun]] = {}
        for name in selected:
            bench = benches[name]
            count = max(1, round((bench.quick_count if quick else bench.count) * scale))
            rows, runs = await run_bench(bench, url, count=count, reps=reps, log=_log, judge=not quick)
            report.rows.extend(rows)
            all_runs[name] = runs
            report.params[name] = {
                "description": bench.description,
                "count": count,
                "baseline": bench.baseline,
                **bench.params,
            }
            report.runs[name] = [
                {
                    "side": r.side,
                    "rep": r.rep,
                    "value": r.sample.value,
                    "extra": r.sample.extra,
                    "count": r.sample.count,
                    "elapsed_s": r.sample.elapsed_s,
                    "rss_mb": r.resources.rss_mb,
                    "max_rss_mb": r.resources.max_rss_mb,
                    "tasks": r.resources.tasks,
                }
                for r in runs
            ]
    metrics = {m.name: m for b in benches.values() for m in b.metrics}
    print()
    print(format_table(report.rows, metrics))
    print()
    print(format_resources(all_runs, {name: b.baseline for name, b in benches.items()}))
    _print_verdict(report.rows, metrics)
    return report


def _log(line: str) -> None:
    print(line, flush=True)


def _print_verdict(rows: list[RowResult], metrics: dict[str, Metric]) -> None:
    print()
    if any(r.ok is None for r in rows):
        print("quick run: too few operations to judge, so no verdicts (run without --quick for them)")
        return
    failed = [r.name for r in rows if not r.ok]
    if failed:
        print(f"below target ({len(failed)} of {len(rows)}): {', '.join(failed)}")
    else:
        print(f"all {len(rows)} rows meet their targets")
    unstable = [r for r in rows if metrics[r.name].passes(r.ratio_paired) != r.ok]
    if unstable:
        listed = ", ".join(f"{r.name} (paired {r.ratio_paired:.2f})" for r in unstable)
        print(f"noisy: the median paired ratio gives the other verdict for {listed}")
