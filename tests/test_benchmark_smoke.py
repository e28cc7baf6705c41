"""The benchmark command runs end to end at a tiny size and writes its three result files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run_writes_results(dsn: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--rows", "2000", "--repeats", "1",
         "--epochs", "2", "--e2e-epochs", "3", "--drop", "--dsn", dsn, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    files = {p.suffix for p in tmp_path.iterdir()}
    assert {".json", ".md", ".png"} <= files, files
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    text = json.dumps(data)
    for path in ("packed", "row", "export", "numpy"):
        assert path in text, path
    assert "ratio" in (REPO / "benchmarks" / "README.md").read_text().lower()
    # issue 11: the defaults' end to end, timed to lbfgs's validation loss
    e2e = data["end_to_end"]
    assert e2e["quality_goal"]["value"] == pytest.approx(
        e2e["export+lbfgs"]["best_validation_loss"] * 1.01)
    assert e2e["in-database"]["label"] == "in-database, defaults"
    assert e2e["in-database"]["resolved_params"]["batch_size"] >= 1
    assert {t["key"] for t in data["targets"]} >= {"e2e_quality", "preparation"}
    # the export paths validate on the rows the in-database run held out, no others
    assert e2e["validation_rows"]["export"] == e2e["validation_rows"]["in_database"] > 0


@pytest.mark.slow
def test_benchmark_medium_run_measures_every_path(dsn: str, tmp_path: Path) -> None:
    """200k rows: every path runs and reports (timings are the benchmark's business, not ours)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--rows", "200000", "--repeats",
         "1", "--epochs", "2", "--e2e-epochs", "5", "--drop", "--no-chart", "--dsn", dsn,
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = next(tmp_path.glob("*.md")).read_text()
    for row in ("row path", "packed path", "parallel", "packing", "binary COPY", "SGDClassifier",
                "numpy mini-batch floor", "end to end"):
        assert row in report, row


def _compare_averaging(dsn: str, out: Path, *extra: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare_averaging.py"), "--rows", "1500",
         "--holdout", "300", "--epochs", "2", "--hidden", "4", "--dsn", dsn, "--out", str(out),
         *extra], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert {p.suffix for p in out.iterdir()} >= {".json", ".md", ".png"}
    return json.loads(next(out.glob("*.json")).read_text())


def test_compare_averaging_smoke_scores_every_run_on_the_same_rows(dsn: str,
                                                                    tmp_path: Path) -> None:
    """Serial, 2 workers averaged and shared, 2 and 4 partitions; GLM and MLP; tiny sizes."""
    data = _compare_averaging(dsn, tmp_path, "--no-shards")
    runs = {(r["kind"], r["run"]) for r in data["runs"]}
    assert runs == {(k, r) for k in ("glm", "mlp")
                    for r in ("serial", "avg-2w", "shared-2w", "part-2", "part-4")}
    for r in data["runs"]:
        assert [c["epoch"] for c in r["curve"]] == [1, 2], r["run"]
        assert all(0 < c["heldout_loss"] < 5 for c in r["curve"]), r["run"]
    # the partitions really were averaged: 2 and 4 models merged per epoch
    parts = {r["run"]: r["curve"][0]["workers"] for r in data["runs"] if r["kind"] == "glm"}
    assert parts["part-2"] == 2 and parts["part-4"] == 4 and parts["serial"] == 0
    for kind in ("glm", "mlp"):
        s = data["summary"][kind]
        serial = next(r for r in data["runs"] if r["kind"] == kind and r["run"] == "serial")
        assert s["serial_best"] == min(c["heldout_loss"] for c in serial["curve"])
        assert s["target"] == pytest.approx(s["serial_best"] * 1.01)
    report = next(tmp_path.glob("*.md")).read_text()
    assert "load average" in report and "## MLP" in report and "## GLM" in report


@pytest.mark.slow  # starts three shard clusters
def test_compare_averaging_smoke_with_shards(dsn: str, tmp_path: Path) -> None:
    data = _compare_averaging(dsn, tmp_path, "--kinds", "glm")
    shard_run = next(r for r in data["runs"] if r["run"] == "shards-3")
    assert [c["workers"] for c in shard_run["curve"]] == [3, 3]
