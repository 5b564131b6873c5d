"""The benchmark's smoke variant runs end to end and writes complete results.

It checks the machinery (every batch measured, every flow run completed, the report has
its target table), never the speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL_KEYS = {
    "date",
    "command",
    "smoke",
    "machine",
    "config",
    "baseline_worker",
    "flow_worker",
    "merged_bytes",
    "cli",
    "deployment_run",
    "sizes",
    "memory",
    "checks",
    "total_runtime_s",
}
SIZES = ("small", "large", "large-window")
UNWINDOWED = ("small", "large")  # memory and the CLI run are measured for these
Results = tuple[dict[str, Any], Path]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    out_dir = tmp_path_factory.mktemp("bench-out")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env.update(
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_benchmark", "--smoke", "--out-dir", str(out_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    results_file = out_dir / "benchmark.json"
    assert results_file.is_file()
    return json.loads(results_file.read_text(encoding="utf-8")), out_dir


def test_results_have_the_expected_keys(smoke_results: Results) -> None:
    results, _ = smoke_results
    assert set(results) >= TOP_LEVEL_KEYS
    assert results["smoke"] is True
    assert set(results["sizes"]) == set(SIZES)
    assert set(results["memory"]) == set(UNWINDOWED) == set(results["cli"])
    assert results["sizes"]["large-window"]["window_batches"] == 1
    for size in results["sizes"].values():
        assert {"flow_total_s", "baseline_total_s", "per_batch", "growth", "flow_steps_s"} <= set(size)


def test_every_batch_of_both_sizes_has_positive_times(smoke_results: Results) -> None:
    results, _ = smoke_results
    for worker in ("flow_worker", "baseline_worker"):
        runs = results[worker]["runs"]
        assert {run["size"] for run in runs} == set(SIZES)
        for run in runs:
            assert len(run["batches"]) == run["n_batches"] > 0
            assert [b["batch"] for b in run["batches"]] == list(range(1, len(run["batches"]) + 1))
            assert all(b["wall_s"] > 0 for b in run["batches"]), (worker, run["size"])
            assert run["peak_rss_bytes"] > 0
    for name, size in results["sizes"].items():
        assert len(size["per_batch"]) == size["batches"] > 0, name
        assert all(row["flow_s"] > 0 and row["baseline_s"] > 0 for row in size["per_batch"]), name
    for name in UNWINDOWED:
        assert results["cli"][name]["wall_s"] > 0


def test_every_flow_batch_completed(smoke_results: Results) -> None:
    results, _ = smoke_results
    for run in results["flow_worker"]["runs"]:
        for batch in run["batches"]:
            assert batch["status"] == "completed"
            assert batch["tasks"], "the flow run's task runs were read from Prefect"
    assert results["flow_worker"]["warmup"]["status"] == "completed"
    for cli in results["cli"].values():
        assert cli["exit_code"] == 0
        assert cli["last_line"].startswith("completed:")
    deployment = results["deployment_run"]  # measured only when the services and a worker run
    assert "skipped" in deployment or deployment["state"] == "Completed", deployment


def test_report_has_the_target_table(smoke_results: Results) -> None:
    results, out_dir = smoke_results
    report = (out_dir / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "## Targets" in report
    assert "| target | measured | limit | result | detail |" in report
    assert len(results["checks"]) == 7
    assert any("window_batches=1" in check["target"] for check in results["checks"])
    for check in results["checks"]:
        assert check["target"] in report
        assert ("PASS" if check["passed"] else "FAIL") in report
