"""The benchmark's worker processes: what each does, and how the benchmark runs one and reads it.

Baseline and flow each run in a child process (``python -m benchmarks.run_benchmark --worker
KIND --job FILE --result FILE``) so that their peak RSS is their own; the plain-script worker
is a fresh process doing one batch (:mod:`benchmarks.plain_script`). Job and result cross the
process boundary as JSON files (``dataclasses.asdict`` of the records, read back with
:func:`benchmarks.records.from_dict`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.baseline import run_baseline
from benchmarks.flow_run import run_flow, run_flow_batch
from benchmarks.peak_rss import peak_rss_bytes, proc_status_bytes
from benchmarks.records import (
    BaselineBatches,
    BaselineRunResult,
    BaselineWorkerOutput,
    FlowRunResult,
    FlowWorkerOutput,
    Json,
    RunJob,
    WorkerJob,
    from_dict,
)
from benchmarks.spec import REPO_ROOT, BenchmarkError

logger = logging.getLogger(__name__)

R = TypeVar("R")


def current_rss_bytes() -> int:
    """This process's resident set size now (VmRSS), 0 where /proc is absent."""
    return proc_status_bytes("VmRSS") or 0


def baseline_worker(job: WorkerJob) -> BaselineWorkerOutput:
    """Child process: imports, a warm-up batch, then every run's baseline."""
    started = time.perf_counter()
    import joblib  # noqa: F401  (timed: the baseline's imports)

    from retrain_pipeline import data, model, sources  # noqa: F401

    imported = time.perf_counter()
    warmup = BaselineBatches(run_baseline(job.warmup))
    warmup_s = time.perf_counter() - imported
    rss_after_warmup = current_rss_bytes()
    runs = [
        BaselineRunResult(**asdict(run), batches=run_baseline(run), peak_rss_bytes=peak_rss_bytes())
        for run in job.runs
    ]
    return BaselineWorkerOutput(imported - started, warmup_s, warmup, rss_after_warmup, runs)


def flow_worker(job: WorkerJob) -> FlowWorkerOutput:
    """Child process: import the flow, one warm-up call (starts the ephemeral API), the runs.

    The runs use the command line's Prefect settings (``one_off_run_settings``).
    """
    started = time.perf_counter()
    from flows.automated_training_flow import automated_training_flow
    from retrain_pipeline.prefect_runtime import one_off_run_settings

    imported = time.perf_counter()
    with one_off_run_settings():
        return _flow_runs(automated_training_flow, job, imported - started)


def _flow_runs(flow_fn: Callable[..., Any], job: WorkerJob, import_s: float) -> FlowWorkerOutput:
    started = time.perf_counter()
    warmup = run_flow_batch(flow_fn, job.warmup.params_file)
    warmup_s = time.perf_counter() - started
    rss_after_warmup = current_rss_bytes()
    runs = [
        FlowRunResult(**asdict(run), batches=run_flow(flow_fn, run), peak_rss_bytes=peak_rss_bytes())
        for run in job.runs
    ]
    return FlowWorkerOutput(import_s, warmup_s, warmup, rss_after_warmup, runs)


WORKERS: dict[str, Callable[[Json], Json]] = {
    "baseline": lambda job: asdict(baseline_worker(from_dict(WorkerJob, job))),
    "flow": lambda job: asdict(flow_worker(from_dict(WorkerJob, job))),
}


def child_env(prefect_home: Path) -> dict[str, str]:
    """The children's environment: ephemeral Prefect API in a private PREFECT_HOME, local MLflow."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_worker(
    kind: str, job: WorkerJob | RunJob, result_type: type[R], work: Path, env: dict[str, str]
) -> R:
    """Run a worker as a child process of this script; its result with the process's wall time."""
    job_file, result_file, log_file = (
        work / f"{kind}-{name}" for name in ("job.json", "result.json", "log.txt")
    )
    job_file.write_text(json.dumps(asdict(job)), encoding="utf-8")
    # The plain script is its own small module: a fresh process importing only what its work needs.
    module = (
        ["benchmarks.plain_script"] if kind == "plain" else ["benchmarks.run_benchmark", "--worker", kind]
    )
    command = [sys.executable, "-m", *module, "--job", str(job_file), "--result", str(result_file)]
    logger.info("Running the %s worker (its log: %s)", kind, log_file)
    start = time.perf_counter()
    with log_file.open("w", encoding="utf-8") as log:
        process = subprocess.run(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if process.returncode != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise BenchmarkError(f"the {kind} worker failed (exit {process.returncode}); log tail:\n{tail}")
    output: Json = json.loads(result_file.read_text(encoding="utf-8"))
    wall = time.perf_counter() - start
    logger.info("The %s worker finished in %.1f s", kind, wall)
    return from_dict(result_type, {**output, "process_wall_s": wall})
