"""Smoke test of the benchmark harness (bench/): it runs, and reports every row. No speed assertions.

Quick runs are too short to judge, so they report figures without verdicts (``ok`` is ``None``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import bench
from conat.cli import cli

EXPECTED_ROWS = [m.name for b in bench.make_benches() for m in b.metrics]


def _load(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _check_rows(rows: list[dict], expected: list[str]) -> None:
    assert [r["name"] for r in rows] == expected
    for row in rows:
        if row["informational"]:  # a printed figure (e.g. memory growth) with no target
            assert row["conat"] >= 0 and row["nats_py"] >= 0 and row["ok"] is None
            continue
        for key in ("conat", "nats_py", "ratio", "target"):
            value = row[key]
            assert isinstance(value, float | int) and math.isfinite(value) and value > 0, (
                row["name"],
                key,
                value,
            )
        assert row["ratio"] == pytest.approx(row["conat"] / row["nats_py"])
        assert row["target_op"] in (">=", "<=")
        assert row["ok"] is None  # a quick run: no verdict
        assert row["samples"]["conat"] and row["samples"]["nats_py"]


@pytest.mark.slow  # every row once, hosts, master and clusters included: ~2 min, a third of the suite
@pytest.mark.timeout(300)
def test_quick_run_reports_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0

    data = _load(out)
    assert data["mode"] == "quick"
    assert data["encoding"] == "raw"
    env = data["environment"]
    assert env["uvloop"] is True and env["nats_server"] not in ("", "?") and env["cores"] >= 1
    _check_rows(data["rows"], EXPECTED_ROWS)
    assert set(data["runs"]) == set(bench.BENCH_NAMES)
    for runs in data["runs"].values():
        assert {r["side"] for r in runs} == {"conat", "nats_py"}
        # Every side closes what it opened: only the harness's own task is left.
        assert all(r["tasks"] == 1 for r in runs), runs

    printed = capsys.readouterr().out
    assert "row" in printed and "baseline" in printed and "nats-py" in printed and "ratio" in printed
    for name in EXPECTED_ROWS:
        assert name in printed
    assert "FAIL" not in printed and "below target" not in printed
    assert "quick run: too few operations to judge, so no verdicts" in printed


SAMPLE = ["publish", "persist_kv", "actor_rpc", "auth_request"]
"""One bench of each kind (bus, storage engine, actors, auth) for the default run; every row runs
with ``--run-slow``."""


def test_a_quick_run_of_one_bench_per_kind_reports_its_rows(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--rows", ",".join(SAMPLE), "--out", str(out)]) == 0
    data = _load(out)
    benches = {b.name: b for b in bench.make_benches()}
    expected = [m.name for name in SAMPLE if name in benches for m in benches[name].metrics]
    assert expected, "the sample names no bench: the sample itself is broken"
    _check_rows(data["rows"], expected)
    assert set(data["runs"]) == set(SAMPLE)
    for runs in data["runs"].values():
        assert all(r["tasks"] == 1 for r in runs), runs


def test_row_selection_and_plain_asyncio(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--no-uvloop", "--rows", "req_serial", "--out", str(out)]) == 0
    data = _load(out)
    assert data["environment"]["uvloop"] is False
    _check_rows(data["rows"], ["req_serial", "req_serial_p50", "req_serial_p99"])


def test_unknown_row_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert bench.main(["--rows", "nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    assert not out.exists()


def test_conat_bench_is_a_plugin_writing_to_the_data_dir(
    conat_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``conat bench`` comes from the bench package's entry point; results never land in the cwd."""
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--quick", "--rows", "req_serial", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json: stdout is the report alone; the progress went to stderr
    assert "req_serial" in result.stderr and "quick run: too few operations to judge" in result.stderr
    assert report["mode"] == "quick"
    _check_rows(report["rows"], ["req_serial", "req_serial_p50", "req_serial_p99"])
    saved = _load(conat_data_dir / "bench" / "results.json")
    assert [r["conat"] for r in saved["rows"]] == [r["conat"] for r in report["rows"]]
    assert list(tmp_path.iterdir()) == []


def test_bench_usage_errors_exit_1_under_conat() -> None:
    result = CliRunner().invoke(cli, ["bench", "--rows", "nope"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "unknown row(s) nope" in result.stderr
