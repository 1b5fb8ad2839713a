"""``conat bench report --quick`` with two rows writes report.md, its plots and the JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_report_quick_writes_markdown_with_plots_and_baselines(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "report", "--quick", "--no-uvloop", "--rows", "req_serial,cluster_req",
         "--out", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "## 1 vs 3 nodes" in text and "| cluster_req | req/s |" in text and "| 1 node |" in text
    assert "## Latency percentiles" in text and "req_serial_p99" in text
    for png in ("nodes.png", "latency.png", "throughput_vs_size.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in text
    assert (out / "results.json").exists()
