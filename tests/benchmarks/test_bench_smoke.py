"""The benchmark's smoke variant runs end to end and writes complete results.

It checks the machinery (every batch measured, every flow run completed, the report has
its target table), never the speed. Its cold-start section starts services of its own: the
test checks that they were not the user's (the repository's ``.services/``) and that none of
their processes is left once the benchmark finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from benchmarks.cold_start import leftover_processes
from benchmarks.records import ColdStart, ColdStartSummary, Results, from_dict
from benchmarks.report import render_cold_start
from benchmarks.spec import MAX_DEPLOYMENT_RUN_S, MAX_TICK_TO_COMPLETED_S

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
    "cold_start",
    "cold_start_summary",
    "drift_check",
    "sizes",
    "memory",
    "checks",
    "total_runtime_s",
}
SIZES = ("small", "large", "large-window", "large-incremental")
UNWINDOWED = ("small", "large")  # memory and the CLI run are measured for these
# 7 of the sizes; deployment run, CLI with and without services, the three against a cold plain
# process (make trigger's run and wall, the CLI with services), idle CLI RSS (no tick); the
# monitoring step at two sizes
CHECKS = 16
REPO_SERVICES = REPO_ROOT / ".services"


@dataclass(frozen=True)
class Smoke:
    results: dict[str, Any]
    out_dir: Path
    repo_services_before: dict[str, tuple[int, int]]


def repo_services_files() -> dict[str, tuple[int, int]]:
    """The repository's own ``.services/`` files (the user's services) with mtime and size."""
    if not REPO_SERVICES.is_dir():
        return {}
    return {f.name: (f.stat().st_mtime_ns, f.stat().st_size) for f in REPO_SERVICES.iterdir() if f.is_file()}


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    before = repo_services_files()
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
        timeout=840,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    results_file = out_dir / "benchmark.json"
    assert results_file.is_file()
    return Smoke(json.loads(results_file.read_text(encoding="utf-8")), out_dir, before)


def test_results_have_the_expected_keys(smoke_results: Smoke) -> None:
    results = smoke_results.results
    assert set(results) >= TOP_LEVEL_KEYS
    assert results["smoke"] is True
    assert set(results["sizes"]) == set(SIZES)
    assert set(results["memory"]) == set(UNWINDOWED) == set(results["cli"])
    assert results["sizes"]["large-window"]["window_batches"] == 1
    assert results["sizes"]["large-incremental"]["training"] == "incremental"
    for size in results["sizes"].values():
        assert {"flow_total_s", "baseline_total_s", "per_batch", "growth", "flow_steps_s"} <= set(size)


def test_every_batch_of_both_sizes_has_positive_times(smoke_results: Smoke) -> None:
    results = smoke_results.results
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


def test_every_flow_batch_completed(smoke_results: Smoke) -> None:
    results = smoke_results.results
    for run in results["flow_worker"]["runs"]:
        for batch in run["batches"]:
            assert batch["status"] == "completed"
            assert batch["tasks"], "the flow run's task runs were read from Prefect"
    assert results["flow_worker"]["warmup"]["status"] == "completed"
    for cli in results["cli"].values():
        assert cli["exit_code"] == 0
        assert cli["last_line"].startswith("completed:")


def test_cold_start_measured_every_run(smoke_results: Smoke) -> None:
    cold = smoke_results.results["cold_start"]
    assert cold["rows_per_batch"] == 50 and cold["repetitions"] == 1 and cold["section_s"] > 0
    assert cold["deployment_first_run"] is None  # the smoke variant measures the first run
    for run in cold["deployment_runs"]:
        assert run["state"] == "Completed" and not run["auto_scheduled"], run
        assert run["batch"] is not None
        assert run["flow_run_s"] > 0 and run["trigger_to_final_s"] >= run["flow_run_s"], run
    assert cold["scheduled_runs"]["skipped"] and cold["scheduled_runs"]["runs"] == []
    for key in ("cli_with_services", "cli_without_services"):
        assert len(cold[key]) == 1, key
        for cli in cold[key]:
            assert cli["exit_code"] == 0 and cli["last_line"].startswith("completed:"), cli
            assert cli["wall_s"] > 0 and cli["peak_rss_bytes"] > 0
    assert len(cold["make_trigger"]) == 1
    for trigger in cold["make_trigger"]:
        assert trigger["state"] == "Completed" and trigger["batch"] is not None, trigger
        assert trigger["wall_s"] > trigger["trigger_to_final_s"] >= trigger["flow_run_s"] > 0, trigger
    batches = [r["batch"] for r in cold["deployment_runs"] + cold["make_trigger"]]
    batches += [c["batch"] for c in cold["cli_with_services"] + cold["cli_without_services"]]
    assert batches == list(range(1, len(batches) + 1)), "each run trained the next batch"
    for probe in cold["import_flow_module"]:
        assert 0 < probe["prefect_s"] < probe["import_s"] < probe["process_wall_s"], probe
    for plain in cold["plain_script"]:
        assert 0 < plain["import_s"] < plain["process_wall_s"]
        assert [b["batch"] for b in plain["batches"]] == [1]
    summary = smoke_results.results["cold_start_summary"]
    assert summary["tick_to_completed_s"] is None
    for key, stats in summary.items():
        assert key.startswith("tick_") or stats["median"] > 0, key


def test_cold_start_used_its_own_services(smoke_results: Smoke) -> None:
    cold = smoke_results.results["cold_start"]
    services = cold["services"]
    project = Path(services["project"])
    assert project == Path(cold["project"])
    assert not project.is_relative_to(REPO_ROOT)
    assert Path(services["services_folder"]) == project / ".services"
    assert Path(services["prefect_home"]) == project / ".prefect"
    own_api = services["prefect_api"]
    assert own_api.startswith("http://127.0.0.1:")
    assert all(run["prefect_api"] == own_api for run in cold["deployment_runs"])
    assert all(cli["prefect_api"] == own_api for cli in cold["cli_with_services"])
    # The user's services (if any run) are recorded in the repository's .services/: the benchmark
    # neither used their URLs nor wrote there.
    user_urls = set()
    for pid_file in REPO_SERVICES.glob("*.pid") if REPO_SERVICES.is_dir() else []:
        try:
            user_urls.add(json.loads(pid_file.read_text(encoding="utf-8"))["url"])
        except (OSError, ValueError, KeyError):
            continue
    assert own_api not in user_urls and services["mlflow_uri"] not in user_urls
    assert repo_services_files() == smoke_results.repo_services_before


def test_no_process_of_the_services_is_left(smoke_results: Smoke) -> None:
    services = smoke_results.results["cold_start"]["services"]
    assert [line.split(":")[0] for line in services["stopped"]] == ["worker", "mlflow", "prefect"]
    assert all("stopped" in line for line in services["stopped"]), services["stopped"]
    assert services["leftover_processes"] == []
    assert leftover_processes(services["project"]) == []


def test_report_has_the_target_table(smoke_results: Smoke) -> None:
    results, out_dir = smoke_results.results, smoke_results.out_dir
    report = (out_dir / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "## Targets" in report
    assert "| target | measured | limit | result | detail |" in report
    assert len(results["checks"]) == CHECKS
    assert any("window_batches=1" in check["target"] for check in results["checks"])
    for check in results["checks"]:
        assert check["target"] in report
        assert ("PASS" if check["passed"] else "FAIL") in report
    targets = " ".join(check["target"] for check in results["checks"])
    for needle in (
        "deployment run of a 50-row batch",
        "CLI one 50-row batch",
        "peak RSS of a CLI run",
        "a run started by `make trigger`: created → COMPLETED / a cold plain-script process",
        "`make trigger`, its whole wall time / a cold plain-script process",
        "the CLI (what `make run` runs), services up, whole process / a cold plain-script process",
    ):
        assert needle in targets, needle


def test_report_times_the_monitoring_step(smoke_results: Smoke) -> None:
    results, out_dir = smoke_results.results, smoke_results.out_dir
    report = (out_dir / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "## The monitoring step (`check-drift`)" in report
    timings = results["drift_check"]
    assert [t["case"]["batch_rows"] for t in timings] == [50, 10_000]
    for timing in timings:
        parts = (timing["read_s"], timing["detect_s"], timing["champion_s"])
        assert min(parts) > 0 and max(parts) < timing["total_s"]  # medians of each part and of the total
        assert timing["case"]["name"] in report
    assert timings[1]["reference_rows"] == 100_000 and timings[1]["sampled_rows"] == 50_000
    # The flow's per-step split has the step, and so does the plain baseline.
    for size in results["sizes"].values():
        assert "drift check" in size["flow_steps_s"] and "drift check" in size["baseline_steps_s"]


def test_report_has_the_cold_start_rows(smoke_results: Smoke) -> None:
    report = (smoke_results.out_dir / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "## Cold start (50 rows per batch" in report
    for row in (
        "| plain script: a fresh `python` process doing one batch",
        "| import of the flow module in a fresh process",
        "| deployment run through the worker (services up): the flow run's start → end | ",
        "| cron tick → COMPLETED of a scheduled run, worker idle | not measured",
        "| CLI, one 50-row batch, the project's services up (whole process) | ",
        "| CLI, one 50-row batch, no services (whole process) | ",
        "| `make trigger` (register the deployment again, start a run, wait for it): whole wall time | ",
        "| the run `make trigger` started: created → final state | ",
    ):
        assert row in report, row
    assert smoke_results.results["cold_start"]["services"]["prefect_api"] in report


def test_the_results_read_back_to_the_same_json(smoke_results: Smoke) -> None:
    """Every top-level part of the written benchmark.json becomes its record and back, keys in order."""
    data = smoke_results.results
    hints = typing.get_type_hints(Results)
    assert set(data) <= set(hints)
    for key, value in data.items():
        assert json.dumps(_as_json(from_dict(hints[key], value))) == json.dumps(value), key


def _as_json(value: object) -> object:
    """``asdict`` of a record, also of the records in a dict or list (``merged_bytes``, ``cli``, ...)."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def test_report_says_what_the_cold_start_did_not_measure(smoke_results: Smoke) -> None:
    sample = smoke_results.results["cold_start"]
    cold = from_dict(
        ColdStart,
        {**sample, "scheduled_runs": {"wanted": 0, "runs": [], "not_counted": [], "skipped": "no wait"}},
    )
    report = render_cold_start(cold, ColdStartSummary(*[None] * 14))
    assert (
        "| cron tick → COMPLETED of a scheduled run, worker idle | not measured: no wait | - "
        f"| <= {MAX_TICK_TO_COMPLETED_S:.2f} s | - |"
    ) in report
    assert (
        "| deployment run through the worker (services up): the flow run's start → end | not measured | - "
        f"| <= {MAX_DEPLOYMENT_RUN_S:.2f} s | - |"
    ) in report
    assert report[0] == "## Cold start (50 rows per batch; fresh processes, the benchmark's own services)"
