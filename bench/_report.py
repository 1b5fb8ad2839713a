"""``conat bench report``: run the rows, write one Markdown report with tables and PNG plots.

The report is built from a :class:`bench.Report` (the same figures ``conat bench`` writes as
JSON), so every row of every bench module appears in it with its baseline from the same run: a
new module only has to register its rows in :func:`bench._run.make_benches`. Plots are grouped by
what the rows' ``params`` say they sweep: payload ``size``, ``concurrency`` (clients), ``nodes``
(1 vs 3), latency percentiles (metrics named ``*_p50``/``*_p99``), and every row's ratio.

matplotlib is an optional dependency (``pip install 'conat[report]'``); it is imported only here,
when a report is drawn, and a missing one is said at once, before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._harness import Report, RowResult

__all__ = ["INSTALL_HINT", "have_matplotlib", "write_report"]

INSTALL_HINT = "conat bench report draws its plots with matplotlib: pip install 'conat[report]'"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _label(report: Report, row: RowResult) -> str:
    baselines = {name: p.get("baseline", "nats-py") for name, p in report.params.items()}
    return str(baselines.get(row.bench, "baseline"))


def _bars(
    path: Path, title: str, unit: str, rows: list[RowResult], labels: list[str], log: bool = False
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.6))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.conat for r in rows], 0.4, label="conat")
    ax.bar([x + 0.2 for x in xs], [r.nats_py for r in rows], 0.4, label="baseline")
    ax.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(report: Report, rows: list[RowResult]) -> list[str]:
    out = [
        "| row | unit | conat | baseline | baseline is | ratio | target | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "-" if r.ok is None else ("ok" if r.ok else "FAIL")
        out.append(
            f"| {r.name} | {r.unit} | {_num(r.conat)} | {_num(r.nats_py)} | {_label(report, r)} | "
            f"{r.ratio:.2f} | {r.target_op} {r.target:g} | {ok} |"
        )
    return out


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _param(report: Report, row: RowResult, key: str) -> Any:
    return report.params.get(row.bench, {}).get(key)


def write_report(report: Report, out: Path) -> Path:
    """Write ``out/report.md`` and its PNG plots; return the Markdown file's path."""
    out.mkdir(parents=True, exist_ok=True)
    env = report.environment
    md = [
        "# conat benchmark report",
        "",
        f"{env.line()}  ",
        f"mode {report.mode}, {report.method}; {report.elapsed_s:.0f} s.",
        "",
        (
            "Each row beside its baseline, measured in the same run (ratio = conat / baseline). "
            "Targets are reported, never asserted; a --quick run carries no verdicts."
        ),
        "",
    ]
    sections: list[tuple[str, str, list[RowResult], str]] = []
    rate_units = {"msgs/s", "req/s", "ops/s", "MB/s"}
    by_size = [
        r
        for r in report.rows
        if r.unit in rate_units
        and _param(report, r, "size") is not None
        and _param(report, r, "concurrency") in (None, 1)
        and _param(report, r, "nodes") is None
    ]
    by_size.sort(key=lambda r: (_param(report, r, "size"), r.name))
    sections.append(("Throughput vs payload size", "throughput_vs_size.png", by_size, "size"))
    by_clients = [
        r for r in report.rows if r.unit in rate_units and _param(report, r, "concurrency") is not None
    ]
    by_clients.sort(key=lambda r: (_param(report, r, "concurrency"), r.name))
    sections.append(
        ("Throughput vs clients (concurrency)", "throughput_vs_clients.png", by_clients, "concurrency")
    )
    by_scale = [
        r
        for r in report.rows
        if r.unit in rate_units
        and any(
            _param(report, r, k) is not None
            for k in ("keys", "scopes", "workers", "feeds", "projects", "hosts")
        )
    ]
    sections.append(("Throughput vs streams, actors, workers", "throughput_vs_scale.png", by_scale, ""))
    latency = [r for r in report.rows if r.name.endswith(("_p50", "_p99"))]
    sections.append(("Latency percentiles", "latency.png", latency, ""))
    nodes = [r for r in report.rows if _param(report, r, "nodes") is not None]
    sections.append(("1 vs 3 nodes", "nodes.png", nodes, ""))
    for title, png, rows, key in sections:
        md += [f"## {title}", ""]
        if not rows:
            md += ["(no row of this run measures it)", ""]
            continue
        labels = [f"{r.name} ({key} {_param(report, r, key)})" if key else r.name for r in rows]
        units = {r.unit for r in rows}
        _bars(
            out / png,
            title,
            "/".join(sorted(units)),
            rows,
            labels,
            log=len(units) > 1 or title.startswith("Lat"),
        )
        md += [f"![{title}]({png})", "", *_table(report, rows), ""]
    md += ["## Every row", "", *_table(report, report.rows), ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
