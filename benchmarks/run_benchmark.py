"""Benchmark: the Prefect flow against a plain script doing the same work (the floor).

    python -m benchmarks.run_benchmark [--smoke] [--out-dir DIR]
    python benchmarks/run_benchmark.py [--smoke] [--out-dir DIR]     # the same

For each size (small: 50 rows per batch, large: 100,000 rows per batch; 30 features) it
builds fresh temporary projects with synthetic landing batches, then

* the **baseline** runs the plain functions the flow uses (read, validate, split, merge
  with every earlier accepted batch re-read from Parquet as the flow does, train, evaluate
  the new and the previous model, save the model and the data) in one Python process;
* the **pipeline** runs the real flow in-process, one call per batch, after a warm-up call
  on a throw-away project; its split by step comes from the task runs Prefect recorded;
* the **CLI** runs ``python flows/automated_training_flow.py --params P`` once per size;
* the **cold start** (small size) starts services of its own for a fresh project, as
  ``make start-services deploy start-worker-bg`` does but on free loopback ports and in the
  work folder (``benchmarks/cold_start.py``), and measures deployment runs through the
  worker, cron ticks to COMPLETED, the CLI with and without those services, the import of
  the flow module and a plain script doing one batch, each in a fresh process;

and writes ``benchmark.json`` (every raw number) and ``BENCHMARKS.md`` (tables, target
checks, where the time goes). Baseline and flow each run in a child process of this script
(hidden ``--worker`` flag) so their peak RSS can be read; the two never run at the same time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from benchmarks.cold_start import ColdStartError, flow_run_of_batch, own_services, project_env
from benchmarks.drift_check import drift_checks, measure_drift_check, render_drift_check
from benchmarks.peak_rss import peak_rss_bytes, proc_status_bytes
from retrain_pipeline.config import ModelConfig
from retrain_pipeline.errors import PipelineError

if TYPE_CHECKING:
    from benchmarks.cold_start import OwnServices
    from retrain_pipeline.config import Settings

logger = logging.getLogger("benchmarks.run_benchmark")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "benchmark.json"
DEFAULT_REPORT = REPO_ROOT / "BENCHMARKS.md"
SEED = 20_261_123
N_FEATURES = 30
ESTIMATOR = "hist_gradient_boosting"
HYPERPARAMETERS: dict[str, Any] = {"max_iter": 50}
PACKAGES = ("prefect", "mlflow", "dvc", "scikit-learn", "pandas")

# Targets (the acceptance criteria).
MAX_FLOW_TO_BASELINE = 1.15
MAX_FIXED_OVERHEAD_S = 2.0
MAX_RSS_TO_DATA = 3.0
MAX_WINDOW_GROWTH = 1.2  # "stays flat": t(late)/t(early) once the window is full
MAX_DEPLOYMENT_RUN_S = 6.0  # a deployment run's flow run, start to end, services up
MAX_TICK_TO_COMPLETED_S = 15.0  # a scheduled run: its tick (expected start) to its end, worker idle
MAX_CLI_WITH_SERVICES_S = 8.0  # the CLI process, one batch, the project's services running
MAX_CLI_WITHOUT_SERVICES_S = 15.0  # the CLI process, one batch, no services (ephemeral API)
MAX_IDLE_CLI_RSS_MIB = 300.0  # peak RSS of a CLI process with almost no data

Json = dict[str, Any]


@dataclass(frozen=True)
class SizeSpec:
    """One benchmark size: rows per batch, batches per repetition, repetitions."""

    name: str
    rows: int
    batches: int
    repetitions: int
    window: int | None = None  # data.window_batches


FULL_SIZES = (
    SizeSpec("small", 50, 10, 3),
    SizeSpec("large", 100_000, 10, 2),
    SizeSpec("large-window", 100_000, 10, 2, window=3),
)
SMOKE_SIZES = (
    SizeSpec("small", 50, 3, 1),
    SizeSpec("large", 2_000, 3, 1),
    SizeSpec("large-window", 2_000, 3, 1, window=1),
)


@dataclass(frozen=True)
class ColdStartSpec:
    """The cold-start section: repetitions of each fresh-process measurement, scheduled runs."""

    rows: int
    repetitions: int
    ticks: int  # scheduled runs to measure (0: do not wait for the cron)
    first_run: bool  # one deployment run first, reported apart (the fresh project's first batch)
    cron: str = "* * * * *"  # the project's schedule for the ticks (the product default is */2)

    @property
    def batches(self) -> int:
        """Landing batches: one per flow run; scheduled runs that do not count also train one."""
        return int(self.first_run) + 3 * self.repetitions + 2 * self.ticks + 2


FULL_COLD_START = ColdStartSpec(rows=50, repetitions=3, ticks=3, first_run=True)
SMOKE_COLD_START = ColdStartSpec(rows=50, repetitions=1, ticks=0, first_run=False)

# Prefect task name -> step. choose-batch also sets the project up (folders, DVC repo
# check): state; load-champion connects to MLflow and loads the champion from the registry:
# MLflow; save-and-version writes the model file (the baseline's "save model") and runs DVC.
TASK_STEPS = {
    "choose-batch": "state",
    "load-batch": "validate+merge",
    "validate-and-merge": "validate+merge",
    "quarantine-batch": "validate+merge",
    "load-champion": "MLflow",
    "train-model": "train",
    "evaluate-models": "evaluate",
    "save-and-version": "DVC",
    "log-to-mlflow": "MLflow",
    "record-batch": "state",
    "tag-and-promote": "MLflow",
    "pause-schedule": "state",
    "publish-reports": "reports",
    "check-drift": "drift check",
    "log-untrained-to-mlflow": "MLflow",
}
LAST_TASK = "publish-reports"  # the last task of a completed flow run
ORCHESTRATION = "other (orchestration)"
UNMAPPED = "unmapped tasks"
FLOW_STEPS = (
    "validate+merge",
    "drift check",
    "train",
    "evaluate",
    "save model",
    "MLflow",
    "DVC",
    "state",
    "reports",
    UNMAPPED,
    ORCHESTRATION,
)
# Baseline sub-steps -> the same steps as the flow.
BASELINE_STEPS = {
    "read": "validate+merge",
    "validate+merge": "validate+merge",
    "write data": "validate+merge",
    "drift check": "drift check",
    "train": "train",
    "evaluate": "evaluate",
    "save model": "save model",
}


METHOD = """\
Sizes: {sizes}. Synthetic, seeded data (`benchmarks/synthetic.py`: gaussian, log-normal, uniform,
count and correlated features; a noisy logistic target). Every repetition is a fresh temporary project
(landing source, MLflow on its own `sqlite:///mlflow.db`, DVC without Git) with the model
`{estimator}` and hyperparameters `{hp}` (fast and realistic).

- **Baseline (the floor)**: the plain functions the flow's tasks call, in one Python process,
  no Prefect/MLflow/DVC: `read_batch_file`, `validate_and_merge_batch` (the feature-kind check
  against the first batch, `validate_batch`, `split_batch`, the merge with the earlier accepted
  batches of the window (all by default) **re-read from their Parquet files, as the flow does**,
  `train_holdout`, `require_classes`), the batch's processed file (`write_processed_batch`), the
  monitoring step (`read_reference`, `detect_drift`, the champion scored on the batch),
  `train_model`, `evaluate_against_champion` (the previous champion kept in memory),
  `joblib.dump` of the model. One warm-up batch on a throw-away project first.
- **Flow**: `automated_training_flow(params_path=..., return_state=True)` in-process, once per
  batch, after one warm-up call on a throw-away project in the same process (reported under
  start-up). The split by step comes from the task runs Prefect recorded for each flow run
  (`end_time - start_time`); `other (orchestration)` is the flow's wall time minus the sum of its
  task runs. `load-champion` (connecting to MLflow, loading the champion from the registry)
  counts as MLflow, `choose-batch` (the state) as state, `check-drift` as drift check, `save-and-version`
  (model file + DVC) as DVC.
- **CLI**: `python flows/automated_training_flow.py --params P` for one more batch on a finished
  project: the whole process (interpreter, imports, ephemeral API start, the batch).
- Baseline and flow each run in a child process (one after the other, never at the same time)
  with a private `PREFECT_HOME` (so the flow's warm-up includes Prefect's database set-up), no
  `PREFECT_API_URL` and no `MLFLOW_TRACKING_URI`.
- **Cold start** (50 rows per batch, one fresh project): the benchmark starts the project's own
  Prefect and MLflow servers and a process worker with `retrain_pipeline.services` (what
  `make start-services deploy start-worker-bg` does, on free loopback ports, pid files in that
  project's `.services/`, Prefect's home in its `.prefect/`) and registers its deployment with
  `deployments/setup_deployment.py`'s functions; nothing of the repository's own project is read.
  Deployment runs are created with `create_flow_run_from_deployment` while the cron cannot fire;
  then the deployment is registered again with the project's cron (`* * * * *`) and the runs the
  scheduler creates are measured from their tick (`expected_start_time`) to their end, counting only
  runs that found the worker idle. The CLI runs once per repetition with the services up (it finds
  them through the project's `.services/`) and, after they stopped, without them (Prefect's
  temporary API on the project's `.prefect/` database, which the server had already migrated).
  The flow module's import is timed in a fresh `python` (`import prefect`, then the file loaded as
  `prefect.engine` loads it), and a fresh plain-script process runs one baseline batch. Prefect's
  timestamps (`created`, `expected_start_time`, `start_time`, `end_time`) give the run times.
"""


class BenchmarkError(RuntimeError):
    """The benchmark could not measure what it should (a batch failed, a worker died)."""


# --------------------------------------------------------------------------- timing helpers


class StepTimer:
    """Accumulates perf_counter seconds per named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live children (Linux ``/proc``; 0 elsewhere).

    For the flow worker that is Prefect's ephemeral API server, which shares the machine's
    cores with the flow while it records the run's states, events and logs.
    """
    me, total = os.getpid(), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def current_rss_bytes() -> int:
    """This process's resident set size now (VmRSS), 0 where /proc is absent."""
    return proc_status_bytes("VmRSS") or 0


# --------------------------------------------------------------------------- projects


def write_params(root: Path, max_batches: int, window: int | None = None, cron: str | None = None) -> Path:
    """A params.yaml for a landing-source project; MLflow stays at sqlite:///mlflow.db."""
    automation: Json = {"max_batches": max_batches}
    if cron is not None:
        automation["cron_schedule"] = cron
    params = {
        "data": {"source": "landing", "target_column": "target", "classes": [0, 1], "window_batches": window},
        "model": {"estimator": ESTIMATOR, "hyperparameters": dict(HYPERPARAMETERS)},
        "automation": automation,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def make_project(
    root: Path, batches: Sequence[Any], max_batches: int, window: int | None = None, cron: str | None = None
) -> Path:
    """A project folder with params.yaml and the batches in data/landing; returns params."""
    from benchmarks.synthetic import write_landing

    root.mkdir(parents=True)
    write_landing(root / "data" / "landing", batches)
    return write_params(root, max_batches, window, cron)


@dataclass(frozen=True)
class Run:
    """One repetition of one size: its project and where the baseline writes."""

    size: str
    rep: int
    params: Path
    baseline_out: Path
    batches: int

    def as_job(self) -> Json:
        return {
            "size": self.size,
            "rep": self.rep,
            "params": str(self.params),
            "baseline_out": str(self.baseline_out),
            "n_batches": self.batches,
        }


def build_runs(work: Path, sizes: Sequence[SizeSpec]) -> list[Run]:
    """Fresh projects for every repetition; extra landing batches for the CLI and deployment runs."""
    from benchmarks.synthetic import make_batches

    runs: list[Run] = []
    for spec in sizes:
        batches = make_batches(spec.batches + 2, spec.rows, N_FEATURES, seed=SEED)
        for rep in range(1, spec.repetitions + 1):
            folder = work / f"{spec.name}-rep{rep}"
            params = make_project(folder / "project", batches, spec.batches + 2, spec.window)
            runs.append(Run(spec.name, rep, params, folder / "baseline", spec.batches))
        logger.info("Wrote %d project(s) for size %s (%d rows/batch)", spec.repetitions, spec.name, spec.rows)
    return runs


def build_warmup(work: Path) -> Run:
    """A throw-away project with one small batch, for the warm-up calls."""
    from benchmarks.synthetic import make_batches

    folder = work / "warmup"
    params = make_project(folder / "project", make_batches(1, 50, N_FEATURES, seed=SEED + 1), 1)
    return Run("warmup", 0, params, folder / "baseline", 1)


# --------------------------------------------------------------------------- the baseline


@dataclass
class BaselineRun:
    """A plain-script run over one project: what it keeps between batches."""

    settings: Settings
    out: Path
    features: list[str] | None = None
    accepted: list[int] = field(default_factory=list)
    champion: Any = None
    champion_batch: int | None = None

    def batch_file(self, batch_number: int) -> Path:
        return self.out / "batches" / f"batch_{batch_number}.parquet"


def baseline_batch(run: BaselineRun, batch_number: int) -> Json:
    """One batch through the plain functions, timed per step."""
    timer = StepTimer()
    start, cpu = time.perf_counter(), time.process_time()
    parts = _baseline_data(run, batch_number, timer)
    _baseline_model(run, parts, batch_number, timer)
    wall = time.perf_counter() - start
    run.accepted.append(batch_number)
    return {
        "batch": batch_number,
        "wall_s": wall,
        "process_cpu_s": time.process_time() - cpu,
        "rows_accumulated": parts.summary.rows,
        "substeps": timer.seconds,
        "steps": _group(timer.seconds, BASELINE_STEPS),
    }


def _baseline_data(run: BaselineRun, n: int, timer: StepTimer) -> Any:
    """Read, validate, split, merge with the earlier batches (re-read), write the batch: the
    same plain functions the flow's validate-and-merge task calls."""
    from retrain_pipeline import data

    cfg = run.settings.data
    with timer.step("read"):
        path = data.find_landing_file(cfg.landing_dir, n)
        if path is None:
            raise BenchmarkError(f"landing batch {n} is missing in {cfg.landing_dir}")
        frame = data.read_batch_file(path, n)
    with timer.step("validate+merge"):
        first = (
            data.read_first_batch(run.batch_file(run.accepted[0]), run.accepted[0]) if run.accepted else None
        )
        window = data.training_window(run.accepted, cfg.window_batches)
        merged = data.validate_and_merge_batch(
            frame,
            config=cfg,
            evaluation=run.settings.evaluation,
            batch_number=n,
            source=str(path),
            first=first,
            earlier={k: run.batch_file(k) for k in window},
        )
        run.features = [str(c) for c in merged.parts.train_features.columns]
    with timer.step("write data"):
        data.write_processed_batch(merged.split, run.batch_file(n), merged.kinds)
    with timer.step("drift check"):
        _baseline_drift_check(run, merged.valid, n)
    return merged.parts


def _baseline_drift_check(run: BaselineRun, batch: Any, n: int) -> None:
    """The flow's monitoring step, through the same plain functions: the batch against the
    champion's training data, and the champion's score on the batch."""
    from retrain_pipeline import data, monitoring

    if run.champion is None or run.champion_batch is None or run.features is None:
        return
    cfg, config = run.settings.data, run.settings.monitoring
    earlier = [k for k in run.accepted if k < run.champion_batch]
    reference = [*data.training_window(earlier, cfg.window_batches), run.champion_batch]
    seed = run.settings.evaluation.split_seed + n
    files = [run.batch_file(k) for k in reference]
    monitoring.drift_against(files, batch, run.features, config, seed)
    monitoring.score_on_batch(
        run.champion,
        batch,
        features=run.features,
        target_column=cfg.target_column,
        positive_label=cfg.classes[1],
        metric=run.settings.evaluation.primary_metric,
        sample_rows=config.sample_rows,
        seed=seed,
    )


def _baseline_model(run: BaselineRun, parts: Any, n: int, timer: StepTimer) -> None:
    """Train, score the new and the previous model on the holdout, save the model."""
    import joblib

    from retrain_pipeline import model

    with timer.step("train"):
        trained = model.train_model(
            run.settings.model,
            parts.train_features,
            parts.train_target,
            impute=run.settings.data.allow_missing_values,
        )
    with timer.step("evaluate"):
        cfg = run.settings.evaluation
        evaluation = model.evaluate_against_champion(
            trained,
            run.champion,
            None,
            parts.holdout_features,
            parts.holdout_target,
            positive_label=run.settings.data.classes[1],
            metric=cfg.primary_metric,
            tolerance=cfg.promotion_tolerance,
        )
    with timer.step("save model"):
        path = run.out / "models" / f"batch_{n}.joblib"
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(trained, path)
    if evaluation.decision.promote:
        run.champion, run.champion_batch = trained, n


def run_baseline(job: Json) -> Json:
    """The baseline over one project's batches 1..N."""
    from retrain_pipeline.config import load_settings

    run = BaselineRun(load_settings(Path(job["params"])), Path(job["baseline_out"]))
    batches = []
    for n in range(1, job["n_batches"] + 1):
        batches.append(baseline_batch(run, n))
        logger.info("baseline %s rep %s batch %d: %.2f s", job["size"], job["rep"], n, batches[-1]["wall_s"])
    return {"batches": batches}


# --------------------------------------------------------------------------- the flow


def task_name(task_run_name: str) -> str:
    """The task's name from its task run's name ('<task name>-<3 hex digits>')."""
    return task_run_name.rsplit("-", 1)[0]


def read_task_durations(flow_run_id: str, timeout_s: float = 15.0) -> list[Json]:
    """The flow run's task runs as {name, seconds}, once Prefect has recorded all of them.

    Waits until every task run has ended and the flow's last task is there (or two reads
    0.2 s apart agree), or until ``timeout_s``: task run states reach the API as events.
    """
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
    deadline = time.monotonic() + timeout_s
    previous = -1
    while True:
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(flow_run_filter=run_filter)
        ended = all(r.start_time is not None and r.end_time is not None for r in task_runs)
        has_last = LAST_TASK in {task_name(r.name) for r in task_runs}
        if (ended and (has_last or len(task_runs) == previous)) or time.monotonic() > deadline:
            break
        previous = len(task_runs) if ended else -1
        time.sleep(0.2)
    return [{"name": task_name(r.name), "seconds": _task_seconds(r)} for r in task_runs]


def _task_seconds(task_run: Any) -> float:
    if task_run.start_time is not None and task_run.end_time is not None:
        return float((task_run.end_time - task_run.start_time).total_seconds())
    return float(task_run.total_run_time.total_seconds())


def flow_steps(wall_s: float, tasks: Sequence[Json]) -> dict[str, float]:
    """Seconds per step; the remainder of the wall time is Prefect's orchestration."""
    steps = dict.fromkeys(FLOW_STEPS, 0.0)
    for task in tasks:
        steps[TASK_STEPS.get(task["name"], UNMAPPED)] += task["seconds"]
    steps[ORCHESTRATION] = wall_s - sum(task["seconds"] for task in tasks)
    return steps


def run_flow_batch(flow_fn: Callable[..., Any], params: Path) -> Json:
    """One flow call (it takes the next batch); fails unless the batch completed."""
    start, cpu, server_cpu = time.perf_counter(), time.process_time(), children_cpu_seconds()
    state = flow_fn(params_path=str(params), return_state=True)
    wall = time.perf_counter() - start
    cpu, server_cpu = time.process_time() - cpu, children_cpu_seconds() - server_cpu
    outcome = state.result(raise_on_failure=False)
    status = outcome.get("status") if isinstance(outcome, dict) else f"{state.type}: {outcome!r}"
    if status != "completed":
        raise BenchmarkError(f"flow run on {params} ended with {status!r}: {outcome!r}")
    flow_run_id = str(state.state_details.flow_run_id)
    tasks = read_task_durations(flow_run_id)
    return {
        "batch": outcome["batch_number"],
        "wall_s": wall,
        "process_cpu_s": cpu,
        "api_server_cpu_s": server_cpu,
        "status": status,
        "flow_run_id": flow_run_id,
        "tasks": tasks,
        "steps": flow_steps(wall, tasks),
    }


def run_flow(flow_fn: Callable[..., Any], job: Json) -> Json:
    """The flow over one project's batches 1..N, one call each.

    ``mlflow.set_tracking_uri`` (called by the flow) also exports ``MLFLOW_TRACKING_URI``,
    which the pipeline's settings then prefer over the params file: without removing it, a
    second project in the same process would log to the first project's store. Removing it
    before each project gives what a fresh process would see.
    """
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    batches = []
    for _ in range(job["n_batches"]):
        batches.append(run_flow_batch(flow_fn, Path(job["params"])))
        last = batches[-1]
        logger.info("flow %s rep %s batch %s: %.2f s", job["size"], job["rep"], last["batch"], last["wall_s"])
    return {"batches": batches}


# --------------------------------------------------------------------------- workers


def baseline_worker(job: Json) -> Json:
    """Child process: imports, a warm-up batch, then every run's baseline."""
    started = time.perf_counter()
    import joblib  # noqa: F401  (timed: the baseline's imports)

    from retrain_pipeline import data, model  # noqa: F401

    imported = time.perf_counter()
    warmup = run_baseline(job["warmup"])
    result: Json = {
        "import_s": imported - started,
        "warmup_s": time.perf_counter() - imported,
        "warmup": warmup,
        "rss_after_warmup_bytes": current_rss_bytes(),
        "runs": [],
    }
    for run in job["runs"]:
        result["runs"].append({**run, **run_baseline(run), "peak_rss_bytes": peak_rss_bytes()})
    return result


def flow_worker(job: Json) -> Json:
    """Child process: import the flow, one warm-up call (starts the ephemeral API), the runs.

    The runs use the command line's Prefect settings (``one_off_run_settings``).
    """
    started = time.perf_counter()
    from flows.automated_training_flow import automated_training_flow
    from retrain_pipeline.prefect_runtime import one_off_run_settings

    imported = time.perf_counter()
    with one_off_run_settings():
        return _flow_runs(automated_training_flow, job, imported - started)


def _flow_runs(flow_fn: Callable[..., Any], job: Json, import_s: float) -> Json:
    started = time.perf_counter()
    warmup = run_flow_batch(flow_fn, Path(job["warmup"]["params"]))
    result: Json = {
        "import_s": import_s,
        "warmup_s": time.perf_counter() - started,
        "warmup": warmup,
        "rss_after_warmup_bytes": current_rss_bytes(),
        "runs": [],
    }
    for run in job["runs"]:
        result["runs"].append({**run, **run_flow(flow_fn, run), "peak_rss_bytes": peak_rss_bytes()})
    return result


def plain_worker(job: Json) -> Json:
    """Child process: a plain script doing one batch's ML work, as a fresh process would."""
    started = time.perf_counter()
    import joblib  # noqa: F401  (timed: the plain script's imports)

    from retrain_pipeline import config, data, model  # noqa: F401

    imported = time.perf_counter()
    batches = run_baseline(job)["batches"]
    return {"import_s": imported - started, "work_s": time.perf_counter() - imported, "batches": batches}


WORKERS: dict[str, Callable[[Json], Json]] = {
    "baseline": baseline_worker,
    "flow": flow_worker,
    "plain": plain_worker,
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


def run_worker(kind: str, job: Json, work: Path, env: dict[str, str]) -> Json:
    """Run a worker as a child process of this script; returns its result."""
    job_file, result_file, log_file = (
        work / f"{kind}-{name}" for name in ("job.json", "result.json", "log.txt")
    )
    job_file.write_text(json.dumps(job), encoding="utf-8")
    command = [sys.executable, "-m", "benchmarks.run_benchmark", "--worker", kind]
    command += ["--job", str(job_file), "--result", str(result_file)]
    logger.info("Running the %s worker (its log: %s)", kind, log_file)
    start = time.perf_counter()
    with log_file.open("w", encoding="utf-8") as log:
        process = subprocess.run(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if process.returncode != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise BenchmarkError(f"the {kind} worker failed (exit {process.returncode}); log tail:\n{tail}")
    result: Json = json.loads(result_file.read_text(encoding="utf-8"))
    result["process_wall_s"] = time.perf_counter() - start
    logger.info("The %s worker finished in %.1f s", kind, result["process_wall_s"])
    return result


def run_cli(params: Path, env: dict[str, str]) -> Json:
    """``python flows/automated_training_flow.py --params P`` as a user runs it: one batch."""
    out_file, err_file = params.parent / "cli-stdout.txt", params.parent / "cli-stderr.txt"
    peak_file = params.parent / "cli-peak-rss.txt"
    # The CLI script runs as __main__ under benchmarks.peak_rss, which records the peak RSS
    # of this process alone (not of Prefect's ephemeral API server subprocess).
    command = [sys.executable, "-m", "benchmarks.peak_rss", str(peak_file)]
    command += ["flows/automated_training_flow.py", "--params", str(params)]
    start = time.perf_counter()
    with out_file.open("wb") as out, err_file.open("wb") as err:
        process = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, check=False)
    wall = time.perf_counter() - start
    exit_code = process.returncode
    peak_rss = int(peak_file.read_text(encoding="utf-8"))
    lines = out_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if exit_code != 0 or not last.startswith("completed:"):
        stderr = err_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise BenchmarkError(f"CLI run failed (exit {exit_code}): {last}\n{stderr}")
    logger.info("CLI one batch: %.2f s, peak RSS %s (%s)", wall, _mib(peak_rss), last)
    shown = ["python", "flows/automated_training_flow.py", "--params", str(params)]
    found = re.search(r"batch (\d+)", last)
    return {
        "command": shlex.join(shown),
        "wall_s": wall,
        "exit_code": exit_code,
        "last_line": last,
        "batch": int(found.group(1)) if found else None,
        "peak_rss_bytes": peak_rss,
        "data_bytes": merged_table_bytes(params),
    }


# --------------------------------------------------------------------------- cold start

# A fresh interpreter imports the flow module the way `python -m prefect.engine` loads a
# deployment's entrypoint: Prefect first, then the file as a module registered in sys.modules
# before it runs (its dataclasses need that), with its folder on sys.path.
IMPORT_PROBE = """\
import importlib.util, json, sys, time
from pathlib import Path
started = time.perf_counter()
import prefect
prefect_done = time.perf_counter()
path = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(path.parent))
spec = importlib.util.spec_from_file_location(path.stem, path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
done = time.perf_counter()
if not hasattr(module, "automated_training_flow"):
    raise SystemExit("the flow module has no automated_training_flow")
times = {"prefect_s": prefect_done - started, "flow_module_s": done - prefect_done}
print(json.dumps({**times, "import_s": done - started}))
"""
FLOW_FILE = "flows/automated_training_flow.py"


def run_import_probe(env: dict[str, str]) -> Json:
    """The flow module's import time in a fresh ``python`` (and that whole process's wall time)."""
    command = [sys.executable, "-c", IMPORT_PROBE, FLOW_FILE]
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise BenchmarkError(
            f"importing {FLOW_FILE} failed (exit {process.returncode}):\n{process.stderr[-3000:]}"
        )
    result: Json = json.loads(process.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    logger.info(
        "Import of the flow module in a fresh process: %.2f s (%.2f s of it Prefect)",
        wall,
        result["prefect_s"],
    )
    return result


def run_plain_script(params: Path, folder: Path, env: dict[str, str]) -> Json:
    """A fresh plain-script process doing one batch's ML work (the floor for a fresh process)."""
    folder.mkdir(parents=True)
    job = {
        "size": "cold-start",
        "rep": folder.name,
        "params": str(params),
        "baseline_out": str(folder / "out"),
    }
    result = run_worker("plain", {**job, "n_batches": 1}, folder, env)
    logger.info("Plain script, one batch in a fresh process: %.2f s", result["process_wall_s"])
    return result


def run_cli_with_services(own: OwnServices, params: Path, env: dict[str, str]) -> Json:
    """The CLI while the project's services run; its flow run must be on their Prefect server."""
    cli = run_cli(params, env)
    flow_run_id = flow_run_of_batch(own.settings, cli["batch"]) if cli["batch"] is not None else None
    if flow_run_id is None or not own.knows_flow_run(flow_run_id):
        raise BenchmarkError(f"the CLI run ({cli['last_line']}) did not use {own.endpoints.prefect_api}")
    return {**cli, "flow_run_id": flow_run_id, "prefect_api": own.endpoints.prefect_api}


def measure_cold_start(spec: ColdStartSpec, work: Path, env: dict[str, str]) -> Json:
    """Fresh processes and runs through the benchmark's own services, on one fresh small project.

    ``env`` is the children's environment of the in-process workers (for the import probe and
    the plain script); the CLI runs get the environment of a user's shell in the project.
    """
    from benchmarks.synthetic import make_batches

    started = time.perf_counter()
    folder = work / "cold-start"
    batches = make_batches(spec.batches, spec.rows, N_FEATURES, seed=SEED + 2)
    params = make_project(folder / "project", batches, spec.batches, cron=spec.cron)
    logger.info("Cold start: project %s with %d batches of %d rows", params.parent, spec.batches, spec.rows)
    reps = range(1, spec.repetitions + 1)
    imports = [run_import_probe(env) for _ in reps]
    plain = [run_plain_script(params, folder / f"plain-{i}", env) for i in reps]
    cli_env = project_env(params)
    first: Json | None = None
    scheduled: Json = {
        "wanted": 0,
        "runs": [],
        "not_counted": [],
        "skipped": "the smoke variant does not wait",
    }
    with own_services(params) as own:
        if spec.first_run:
            first = own.deployment_run()
        deployment_runs = [own.deployment_run() for _ in reps]
        with_services = [run_cli_with_services(own, params, cli_env) for _ in reps]
        if spec.ticks:
            scheduled = own.scheduled_runs(spec.ticks)
    without_services = [run_cli(params, cli_env) for _ in reps]
    section_s = time.perf_counter() - started
    logger.info("Cold start measured in %.0f s", section_s)
    return {
        "section_s": section_s,
        "rows_per_batch": spec.rows,
        "repetitions": spec.repetitions,
        "project": str(params.parent),
        "services": own.as_json(),
        "import_flow_module": imports,
        "plain_script": plain,
        "deployment_first_run": first,
        "deployment_runs": deployment_runs,
        "scheduled_runs": scheduled,
        "cli_with_services": with_services,
        "cli_without_services": without_services,
    }


def merged_table_bytes(params: Path) -> int:
    """In-memory size of the flow's final merged table (the batch files its manifest lists)."""
    import pandas as pd

    from retrain_pipeline.data import merge_batches, parse_training_manifest

    processed = params.parent / "data" / "processed"
    files = parse_training_manifest((processed / "training_data.json").read_text(encoding="utf-8"))
    frame = merge_batches([pd.read_parquet(processed / f.file) for f in files])
    return int(frame.memory_usage(deep=True).sum())


# --------------------------------------------------------------------------- analysis


def _group(seconds: dict[str, float], mapping: dict[str, str]) -> dict[str, float]:
    grouped: dict[str, float] = {}
    for name, value in seconds.items():
        grouped[mapping[name]] = grouped.get(mapping[name], 0.0) + value
    return grouped


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Json:
    """Least squares ``y = a + b*x`` with R²."""
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if np.ptp(x) == 0:  # every batch had the same rows (a full window): no slope to fit
        return {"intercept_s": float(y.mean()), "slope_s_per_row": 0.0, "r2": 0.0}
    b, a = np.polyfit(x, y, 1)
    residual = float(((y - (a + b * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return {
        "intercept_s": float(a),
        "slope_s_per_row": float(b),
        "r2": 1 - residual / total if total else 1.0,
    }


def per_batch_table(spec: SizeSpec, flow_runs: Sequence[Json], base_runs: Sequence[Json]) -> list[Json]:
    """Per batch: medians over repetitions of flow and baseline wall time."""
    rows = []
    for i in range(spec.batches):
        flow_s = _median([run["batches"][i]["wall_s"] for run in flow_runs])
        base_s = _median([run["batches"][i]["wall_s"] for run in base_runs])
        rows.append(
            {
                "batch": i + 1,
                "rows_accumulated": min(i + 1, spec.window or spec.batches) * spec.rows,
                "flow_s": flow_s,
                "baseline_s": base_s,
                "difference_s": flow_s - base_s,
                "ratio": flow_s / base_s,
            }
        )
    return rows


def step_split(runs: Sequence[Json], steps: Sequence[str]) -> dict[str, float]:
    """Median over repetitions of the seconds per step summed over batches."""
    return {
        step: _median([sum(b["steps"].get(step, 0.0) for b in run["batches"]) for run in runs])
        for step in steps
    }


def task_split(runs: Sequence[Json]) -> dict[str, float]:
    """Median over repetitions of the seconds per Prefect task summed over batches."""
    names = sorted({t["name"] for run in runs for b in run["batches"] for t in b["tasks"]})
    return {
        name: _median(
            [
                sum(t["seconds"] for b in run["batches"] for t in b["tasks"] if t["name"] == name)
                for run in runs
            ]
        )
        for name in names
    }


def growth(table: Sequence[Json], key: str) -> Json:
    """Linear fit of per-batch time over accumulated rows and t(N)/t(N/2) vs the rows ratio."""
    last, middle = table[-1], table[max(0, len(table) // 2 - 1)]
    fit = linear_fit([r["rows_accumulated"] for r in table], [r[key] for r in table])
    return {
        **fit,
        "late_batch": last["batch"],
        "early_batch": middle["batch"],
        "time_ratio": last[key] / middle[key],
        "rows_ratio": last["rows_accumulated"] / middle["rows_accumulated"],
    }


def _mean_per_batch(runs: Sequence[Json], key: str) -> float:
    """Median over repetitions of the mean per batch of ``key`` (0 when not recorded)."""
    return _median([statistics.fmean(b.get(key, 0.0) for b in run["batches"]) for run in runs])


def summarize_size(spec: SizeSpec, flow_runs: list[Json], base_runs: list[Json]) -> Json:
    """Totals, per-batch table, ratios, overhead, growth and step split of one size."""
    flow_totals = [sum(b["wall_s"] for b in run["batches"]) for run in flow_runs]
    base_totals = [sum(b["wall_s"] for b in run["batches"]) for run in base_runs]
    table = per_batch_table(spec, flow_runs, base_runs)
    later = [row["ratio"] for row in table[1:]] or [table[0]["ratio"]]
    return {
        "rows_per_batch": spec.rows,
        "batches": spec.batches,
        "repetitions": spec.repetitions,
        "window_batches": spec.window,
        "flow_total_s": {"median": _median(flow_totals), "min": min(flow_totals), "all": flow_totals},
        "baseline_total_s": {"median": _median(base_totals), "min": min(base_totals), "all": base_totals},
        "ratio_total_medians": _median(flow_totals) / _median(base_totals),
        "ratio_last_batch": table[-1]["ratio"],
        "ratio_mean_batches_2_to_n": statistics.fmean(later),
        "fixed_overhead_s": _median([row["difference_s"] for row in table]),
        "per_batch": table,
        "growth": {"flow": growth(table, "flow_s"), "baseline": growth(table, "baseline_s")},
        "flow_steps_s": step_split(flow_runs, FLOW_STEPS),
        "baseline_steps_s": step_split(base_runs, tuple(dict.fromkeys(BASELINE_STEPS.values()))),
        "flow_tasks_s": task_split(flow_runs),
        "cpu_per_batch_s": {
            "baseline process": _mean_per_batch(base_runs, "process_cpu_s"),
            "flow process": _mean_per_batch(flow_runs, "process_cpu_s"),
            "Prefect API server": _mean_per_batch(flow_runs, "api_server_cpu_s"),
        },
    }


def memory_summary(size: str, flow: Json, baseline: Json, merged_bytes: int, cli: Json) -> Json:
    """Peak RSS of the processes after this size, against the data size.

    ``cli`` maps sizes to their CLI runs; the smallest size's CLI process is the reference
    for a CLI process that holds (almost) no data.
    """
    flow_peak = max(r["peak_rss_bytes"] for r in flow["runs"] if r["size"] == size)
    base_peak = max(r["peak_rss_bytes"] for r in baseline["runs"] if r["size"] == size)
    idle_cli = min(run["peak_rss_bytes"] for run in cli.values())
    this_cli = cli[size]
    return {
        "cli_peak_rss_bytes": this_cli["peak_rss_bytes"],
        "cli_data_bytes": this_cli["data_bytes"],
        "cli_idle_peak_rss_bytes": idle_cli,
        "cli_ratio": this_cli["peak_rss_bytes"] / this_cli["data_bytes"],
        "cli_ratio_above_idle": (this_cli["peak_rss_bytes"] - idle_cli) / this_cli["data_bytes"],
        "merged_bytes": merged_bytes,
        "flow_peak_rss_bytes": flow_peak,
        "flow_rss_after_warmup_bytes": flow["rss_after_warmup_bytes"],
        "baseline_peak_rss_bytes": base_peak,
        "baseline_rss_after_warmup_bytes": baseline["rss_after_warmup_bytes"],
        "flow_ratio": flow_peak / merged_bytes,
        "flow_ratio_above_warmup": (flow_peak - flow["rss_after_warmup_bytes"]) / merged_bytes,
        "baseline_ratio": base_peak / merged_bytes,
    }


def _check(name: str, measured: float, limit: float, unit: str, detail: str = "") -> Json:
    return {
        "target": name,
        "measured": measured,
        "limit": limit,
        "unit": unit,
        "passed": measured <= limit,
        "detail": detail,
    }


def _stats(values: Sequence[float | None]) -> Json | None:
    """Median, min, max and every value (None when nothing was measured)."""
    measured = [float(v) for v in values if v is not None]
    if not measured:
        return None
    return {"median": _median(measured), "min": min(measured), "max": max(measured), "all": measured}


def summarize_cold_start(cold: Json) -> Json:
    """Medians of the cold-start measurements."""
    imports, plain = cold["import_flow_module"], cold["plain_script"]
    runs, ticks = cold["deployment_runs"], cold["scheduled_runs"]["runs"]
    return {
        "import_flow_module_s": _stats([p["import_s"] for p in imports]),
        "import_prefect_s": _stats([p["prefect_s"] for p in imports]),
        "import_process_s": _stats([p["process_wall_s"] for p in imports]),
        "plain_process_s": _stats([p["process_wall_s"] for p in plain]),
        "plain_import_s": _stats([p["import_s"] for p in plain]),
        "plain_batch_s": _stats([p["batches"][0]["wall_s"] for p in plain]),
        "deployment_flow_run_s": _stats([r["flow_run_s"] for r in runs]),
        "deployment_trigger_to_final_s": _stats([r["trigger_to_final_s"] for r in runs]),
        "deployment_trigger_to_start_s": _stats([r["trigger_to_start_s"] for r in runs]),
        "tick_to_completed_s": _stats([r["tick_to_final_s"] for r in ticks]),
        "tick_to_start_s": _stats([r["tick_to_start_s"] for r in ticks]),
        "tick_flow_run_s": _stats([r["flow_run_s"] for r in ticks]),
        "cli_with_services_s": _stats([c["wall_s"] for c in cold["cli_with_services"]]),
        "cli_without_services_s": _stats([c["wall_s"] for c in cold["cli_without_services"]]),
    }


def _runs(stats: Json) -> str:
    return ", ".join(f"{v:.2f}" for v in stats["all"])


def cold_start_checks(cold: Json, summary: Json, memory: dict[str, Json]) -> list[Json]:
    """The start-up targets: a deployment run, a cron tick, the CLI with and without services, idle RSS."""
    rows = cold["rows_per_batch"]
    checks = []
    run = summary["deployment_flow_run_s"]
    checks.append(
        _check(
            f"deployment run of a {rows}-row batch through the worker (services up): the flow run's "
            f"start → end, median of {len(run['all'])}",
            run["median"],
            MAX_DEPLOYMENT_RUN_S,
            "s",
            f"runs {_runs(run)} s; trigger → final state "
            f"{summary['deployment_trigger_to_final_s']['median']:.2f} s (median)",
        )
    )
    tick = summary["tick_to_completed_s"]
    if tick is not None:
        checks.append(
            _check(
                f"cron tick → COMPLETED of a scheduled run (expected start → end), worker idle, median of "
                f"{len(tick['all'])}",
                tick["median"],
                MAX_TICK_TO_COMPLETED_S,
                "s",
                f"runs {_runs(tick)} s; tick → start {summary['tick_to_start_s']['median']:.2f} s (median); "
                f"{len(cold['scheduled_runs']['not_counted'])} scheduled run(s) not counted (see the JSON)",
            )
        )
    for key, limit, label in (
        ("cli_with_services_s", MAX_CLI_WITH_SERVICES_S, "with the project's services up"),
        ("cli_without_services_s", MAX_CLI_WITHOUT_SERVICES_S, "without services"),
    ):
        cli = summary[key]
        checks.append(
            _check(
                f"CLI one {rows}-row batch (whole process) {label}, median of {len(cli['all'])}",
                cli["median"],
                limit,
                "s",
                f"runs {_runs(cli)} s",
            )
        )
    idle = min(m["cli_idle_peak_rss_bytes"] for m in memory.values())
    checks.append(
        _check(
            "peak RSS of a CLI run with almost no data (the small size's CLI process)",
            idle / 2**20,
            MAX_IDLE_CLI_RSS_MIB,
            "MiB",
            "Python, Prefect, MLflow, DVC, scikit-learn and one 50-row batch",
        )
    )
    return checks


def target_checks(sizes: dict[str, Json], memory: dict[str, Json]) -> list[Json]:
    """The issue's targets, PASS/FAIL on the measured numbers."""
    small, large = sizes["small"], sizes["large"]
    rows = f"{large['rows_per_batch']:,} rows/batch"
    flow_growth = large["growth"]["flow"]
    large_memory = memory["large"]
    return [
        _check(
            f"flow/baseline at {rows}, per-batch ratio averaged over batches 2..{large['batches']}",
            large["ratio_mean_batches_2_to_n"],
            MAX_FLOW_TO_BASELINE,
            "x",
        ),
        _check(
            f"flow/baseline at {rows}, total (medians)",
            large["ratio_total_medians"],
            MAX_FLOW_TO_BASELINE,
            "x",
        ),
        _check(
            f"fixed overhead per run at {small['rows_per_batch']} rows/batch (median of flow - baseline)",
            small["fixed_overhead_s"],
            MAX_FIXED_OVERHEAD_S,
            "s",
        ),
        _check(
            f"growth at {rows}: t(batch {flow_growth['late_batch']})/t(batch {flow_growth['early_batch']}) "
            "<= accumulated-rows ratio",
            flow_growth["time_ratio"],
            flow_growth["rows_ratio"],
            "x",
            f"fit t = {flow_growth['intercept_s']:.2f} s + {flow_growth['slope_s_per_row'] * 1e5:.3f} s "
            f"per 100k rows (R² {flow_growth['r2']:.3f})",
        ),
        _check(
            f"peak RSS of the flow process (the CLI, one batch) <= {MAX_RSS_TO_DATA:g}x the accumulated "
            f"training data at {rows}",
            large_memory["cli_ratio"],
            MAX_RSS_TO_DATA,
            "x",
            f"{_mib(large_memory['cli_peak_rss_bytes'])} peak vs {_mib(large_memory['cli_data_bytes'])} "
            f"data; a CLI process with almost no data (small size) already peaks at "
            f"{_mib(large_memory['cli_idle_peak_rss_bytes'])} (Python, Prefect, MLflow, DVC, scikit-learn)",
        ),
        _check(
            f"the same, counting what the data adds: CLI peak minus the small-size CLI peak at {rows}",
            large_memory["cli_ratio_above_idle"],
            MAX_RSS_TO_DATA,
            "x",
            f"{_mib(large_memory['cli_peak_rss_bytes'] - large_memory['cli_idle_peak_rss_bytes'])} "
            f"above that vs {_mib(large_memory['cli_data_bytes'])} data",
        ),
        *_window_checks(sizes),
    ]


def _window_checks(sizes: dict[str, Json]) -> list[Json]:
    """Per-batch time stays flat once a sliding window (data.window_batches) is full."""
    checks = []
    for name, size in sizes.items():
        window = size.get("window_batches")
        if window is None or size["batches"] < 2 * window:
            continue
        full = size["per_batch"][window:]  # batches whose window is full: same rows each
        fit = linear_fit([row["batch"] for row in full], [row["flow_s"] for row in full])
        first, last = full[0]["batch"], full[-1]["batch"]
        at_first = fit["intercept_s"] + fit["slope_s_per_row"] * first  # the x here is the batch
        at_last = fit["intercept_s"] + fit["slope_s_per_row"] * last
        checks.append(
            _check(
                f"flat with data.window_batches={window} ({name}, {size['rows_per_batch']:,} rows/batch): "
                f"fitted t(batch {last})/t(batch {first})",
                at_last / at_first,
                MAX_WINDOW_GROWTH,
                "x",
                f"least-squares line over batches {first}..{last}: {at_first:.2f} s -> {at_last:.2f} s "
                f"({fit['slope_s_per_row']:+.3f} s per batch); without a window the rows grow "
                f"{last / first:.1f}x over these batches",
            )
        )
    return checks


# --------------------------------------------------------------------------- machine and report


def machine_info() -> Json:
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_kib * 1024,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def render_targets(checks: Sequence[Json]) -> list[str]:
    rows = [
        (
            c["target"],
            f"{c['measured']:.2f} {c['unit']}",
            f"<= {c['limit']:.2f} {c['unit']}",
            "**PASS**" if c["passed"] else "**FAIL**",
            c["detail"],
        )
        for c in checks
    ]
    return ["## Targets", "", *_table(("target", "measured", "limit", "result", "detail"), rows)]


def render_totals(sizes: dict[str, Json]) -> list[str]:
    rows = [
        (
            name,
            f"{s['rows_per_batch']:,}",
            s["batches"],
            s["repetitions"],
            f"{s['flow_total_s']['median']:.2f}",
            f"{s['flow_total_s']['min']:.2f}",
            f"{s['baseline_total_s']['median']:.2f}",
            f"{s['baseline_total_s']['min']:.2f}",
            f"{s['ratio_total_medians']:.2f}",
            f"{s['ratio_last_batch']:.2f}",
            f"{s['fixed_overhead_s']:.2f}",
        )
        for name, s in sizes.items()
    ]
    header = (
        "size",
        "rows/batch",
        "batches",
        "reps",
        "flow total s (median)",
        "flow total s (min)",
        "baseline total s (median)",
        "baseline total s (min)",
        "flow/baseline (medians)",
        "flow/baseline last batch",
        "flow - baseline per batch s (median)",
    )
    return ["## Totals", "", *_table(header, rows)]


def render_startup(flow: Json, baseline: Json, cli: dict[str, Json]) -> list[str]:
    rows = [
        ("flow process: import the flow module", f"{flow['import_s']:.2f}"),
        (
            "flow process: warm-up flow call (ephemeral API start, first imports, Prefect DB set-up)",
            f"{flow['warmup_s']:.2f}",
        ),
        ("baseline process: imports", f"{baseline['import_s']:.2f}"),
        ("baseline process: warm-up batch", f"{baseline['warmup_s']:.2f}"),
    ]
    rows += [
        (f"CLI process, one batch ({name}: batch {c['batch']})", f"{c['wall_s']:.2f}")
        for name, c in cli.items()
    ]
    return ["## Start-up and the CLI (no services)", "", *_table(("what", "seconds"), rows)]


def _verdict(value: float, limit: float | None) -> tuple[str, str]:
    if limit is None:
        return "-", "-"
    return f"<= {limit:.2f} s", "**PASS**" if value <= limit else "**FAIL**"


PROFILE_FILE = Path(__file__).with_name("cold_start_profile.md")
HISTORY_FILE = Path(__file__).with_name("performance_history.md")  # what changed and why


def render_profile() -> list[str]:
    """Where a cold run's seconds go: a profile measured by hand (py-spy, ``-X importtime``),
    kept in :data:`PROFILE_FILE` and copied into every report."""
    if not PROFILE_FILE.is_file():
        return []
    return [*PROFILE_FILE.read_text(encoding="utf-8").rstrip().splitlines(), ""]


def render_history() -> list[str]:
    """What changed the numbers, release by release: kept in :data:`HISTORY_FILE` and copied
    into every report."""
    if not HISTORY_FILE.is_file():
        return []
    return [*HISTORY_FILE.read_text(encoding="utf-8").rstrip().splitlines(), ""]


def render_cold_start(cold: Json, summary: Json) -> list[str]:
    """The cold-start table: fresh processes and runs through the benchmark's own services."""
    rows_per_batch = cold["rows_per_batch"]
    lines: list[tuple[str, str, str, str, str]] = []

    def add(label: str, key: str, limit: float | None = None) -> None:
        stats = summary[key]
        if stats is None:
            lines.append((label, "not measured", "-", f"<= {limit:.2f} s" if limit else "-", "-"))
            return
        lines.append((label, f"{stats['median']:.2f}", _runs(stats), *_verdict(stats["median"], limit)))

    add(
        "plain script: a fresh `python` process doing one batch (interpreter, imports, the ML work)",
        "plain_process_s",
    )
    add("plain script: its imports (joblib, retrain_pipeline config/data/model)", "plain_import_s")
    add("plain script: the batch itself", "plain_batch_s")
    add(
        "import of the flow module in a fresh process (`import prefect`, then the flow file as "
        "`prefect.engine` loads it)",
        "import_flow_module_s",
    )
    add("of which `import prefect`", "import_prefect_s")
    add("that import process, whole (interpreter start included)", "import_process_s")
    first = cold["deployment_first_run"]
    if first is not None:
        lines.append(
            (
                "first deployment run of the fresh project (batch 1, not in the medians): start → end",
                f"{first['flow_run_s']:.2f}",
                f"trigger → final {first['trigger_to_final_s']:.2f}",
                "-",
                "-",
            )
        )
    add(
        "deployment run through the worker (services up): the flow run's start → end",
        "deployment_flow_run_s",
        MAX_DEPLOYMENT_RUN_S,
    )
    add(
        "deployment run: trigger (`create_flow_run_from_deployment`) → final state",
        "deployment_trigger_to_final_s",
    )
    add(
        "deployment run: trigger → the flow run starts (worker poll, `prefect.engine` start)",
        "deployment_trigger_to_start_s",
    )
    lines += _scheduled_rows(cold, summary, add)
    add(
        f"CLI, one {rows_per_batch}-row batch, the project's services up (whole process)",
        "cli_with_services_s",
        MAX_CLI_WITH_SERVICES_S,
    )
    add(
        f"CLI, one {rows_per_batch}-row batch, no services (whole process)",
        "cli_without_services_s",
        MAX_CLI_WITHOUT_SERVICES_S,
    )
    return [
        f"## Cold start ({rows_per_batch} rows per batch; fresh processes, the benchmark's own services)",
        "",
        f"This section took {cold['section_s']:.0f} s.",
        "",
        *_table(("what", "seconds (median)", "each run", "target", "result"), lines),
        _services_note(cold["services"]),
        "",
    ]


def _scheduled_rows(
    cold: Json, summary: Json, add: Callable[..., None]
) -> list[tuple[str, str, str, str, str]]:
    """The scheduled runs' rows, added through ``add``; or, when none counted, the one row
    saying why (returned)."""
    scheduled = cold["scheduled_runs"]
    if summary["tick_to_completed_s"] is None:
        reason = scheduled.get("skipped") or f"none of {scheduled['wanted']} scheduled runs counted"
        return [
            (
                "cron tick → COMPLETED of a scheduled run, worker idle",
                f"not measured: {reason}",
                "-",
                f"<= {MAX_TICK_TO_COMPLETED_S:.2f} s",
                "-",
            )
        ]
    add(
        "cron tick → COMPLETED of a scheduled run (expected start → end), worker idle",
        "tick_to_completed_s",
        MAX_TICK_TO_COMPLETED_S,
    )
    add("cron tick → the scheduled run starts", "tick_to_start_s")
    add("scheduled run: the flow run's start → end", "tick_flow_run_s")
    return []


def _services_note(services: Json) -> str:
    """Which services the cold-start section ran, how long they took to start and stop."""
    started = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in services["start_s"].items())
    deployed = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in services["deploy_s"].items())
    left = services["leftover_processes"]
    return (
        f"The benchmark's own services for the project `{services['project']}`: Prefect API "
        f"{services['prefect_api']}, MLflow {services['mlflow_uri']}, pid and log files in "
        f"`{services['services_folder']}`, Prefect's home `{services['prefect_home']}`. Started in: "
        f"{started}; deployment `{services['deployment']}` registered in: {deployed} (cron "
        f"`{services['cron_while_manual_runs']}` while manual runs were measured, then the project's "
        f"`{services['cron']}` for the scheduled runs). Stopped after the runs: "
        + "; ".join(services["stopped"])
        + ". Processes of theirs left afterwards: "
        + (", ".join(f"{p['pid']} ({p['command']})" for p in left) + " (ended)" if left else "none")
        + "."
    )


def render_per_batch(sizes: dict[str, Json]) -> list[str]:
    lines = ["## Per-batch wall time (median over repetitions)", ""]
    for name, s in sizes.items():
        rows = [
            (
                r["batch"],
                f"{r['rows_accumulated']:,}",
                f"{r['flow_s']:.2f}",
                f"{r['baseline_s']:.2f}",
                f"{r['difference_s']:+.2f}",
                f"{r['ratio']:.2f}",
            )
            for r in s["per_batch"]
        ]
        header = ("batch", "accumulated rows", "flow s", "baseline s", "flow - baseline s", "flow/baseline")
        lines += [f"### {name} ({s['rows_per_batch']:,} rows per batch)", "", *_table(header, rows)]
    return lines


def render_growth(sizes: dict[str, Json]) -> list[str]:
    rows = []
    for name, s in sizes.items():
        for series in ("flow", "baseline"):
            g = s["growth"][series]
            rows.append(
                (
                    name,
                    series,
                    f"{g['intercept_s']:.3f}",
                    f"{g['slope_s_per_row'] * 1e5:.4f}",
                    f"{g['r2']:.3f}",
                    f"{g['time_ratio']:.2f} (batch {g['late_batch']}/{g['early_batch']})",
                    f"{g['rows_ratio']:.2f}",
                )
            )
    header = (
        "size",
        "series",
        "a: intercept s",
        "b: s per 100k rows",
        "R²",
        "t(late)/t(early)",
        "rows ratio",
    )
    return [
        "## Growth with accumulated rows (fit t = a + b·rows over all batches)",
        "",
        *_table(header, rows),
    ]


def render_steps(sizes: dict[str, Json]) -> list[str]:
    lines = ["## Step split (seconds summed over the batches, median over repetitions)", ""]
    for name, s in sizes.items():
        flow_total = s["flow_total_s"]["median"]
        rows = [
            (
                step,
                f"{s['flow_steps_s'][step]:.2f}",
                f"{100 * s['flow_steps_s'][step] / flow_total:.0f}%",
                f"{s['baseline_steps_s'][step]:.2f}" if step in s["baseline_steps_s"] else "-",
            )
            for step in FLOW_STEPS
            if step != UNMAPPED or s["flow_steps_s"][step]
        ]
        lines += [f"### {name}", "", *_table(("step", "flow s", "share of flow", "baseline s"), rows)]
        tasks = sorted(s["flow_tasks_s"].items(), key=lambda item: -item[1])
        lines += _table(("Prefect task", "seconds"), [(t, f"{v:.2f}") for t, v in tasks])
    cpu_rows = [
        (name, *(f"{s['cpu_per_batch_s'][k]:.2f}" for k in CPU_COLUMNS), f"{s['fixed_overhead_s']:.2f}")
        for name, s in sizes.items()
    ]
    lines += [
        "### CPU per batch (seconds, mean over batches, median over repetitions)",
        "",
        "The machine has few cores; the flow shares them with Prefect's API server, which records every "
        "task run's states, events and logs while the flow computes.",
        "",
        *_table(("size", *CPU_COLUMNS, "wall: flow - baseline (median)"), cpu_rows),
    ]
    return lines


CPU_COLUMNS = ("baseline process", "flow process", "Prefect API server")


def where_the_time_goes(sizes: dict[str, Json]) -> list[str]:
    """A short paragraph generated from the step split."""
    sentences = []
    for name, s in sizes.items():
        steps = {k: v for k, v in s["flow_steps_s"].items() if v > 0}
        total = s["flow_total_s"]["median"]
        ranked = sorted(steps.items(), key=lambda item: -item[1])
        top = ", ".join(f"{step} {100 * value / total:.0f}%" for step, value in ranked[:3])
        extra = total - s["baseline_total_s"]["median"]
        added = {k: steps.get(k, 0.0) for k in ("MLflow", "DVC", "state", "reports", ORCHESTRATION)}
        added_text = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(added.items(), key=lambda i: -i[1]))
        sentences.append(
            f"At the {name} size ({s['rows_per_batch']:,} rows per batch) **{ranked[0][0]}** dominates the "
            f"flow's time (top steps: {top}). The flow needs {extra:.1f} s more than the plain script over "
            f"{s['batches']} batches; the steps the script does not have account for {added_text}."
        )
    return ["## Where the time goes", "", " ".join(sentences), ""]


def _cli_memory_table(memory: dict[str, Json]) -> list[str]:
    """The CLI process's peak per size, against the training data of its batch."""
    rows = [
        (
            name,
            _mib(m["cli_data_bytes"]),
            _mib(m["cli_peak_rss_bytes"]),
            f"{m['cli_ratio']:.2f}",
            f"{m['cli_ratio_above_idle']:.2f}",
        )
        for name, m in memory.items()
    ]
    header = (
        "size",
        "training data of the CLI's batch",
        "CLI process peak RSS",
        "peak/data",
        "(peak - small-size CLI peak)/data",
    )
    return _table(header, rows)


def render_memory(memory: dict[str, Json]) -> list[str]:
    rows = [
        (
            name,
            _mib(m["merged_bytes"]),
            _mib(m["flow_peak_rss_bytes"]),
            f"{m['flow_ratio']:.2f}",
            _mib(m["flow_rss_after_warmup_bytes"]),
            f"{m['flow_ratio_above_warmup']:.2f}",
            _mib(m["baseline_peak_rss_bytes"]),
            f"{m['baseline_ratio']:.2f}",
        )
        for name, m in memory.items()
    ]
    header = (
        "size",
        "accumulated data in memory",
        "flow process peak RSS",
        "peak/data",
        "flow RSS after warm-up",
        "(peak - warm-up)/data",
        "baseline process peak RSS",
        "baseline peak/data",
    )
    notes = (
        "The CLI process runs one batch (batch 11) on a finished project, as a user or the worker "
        "does; its peak is its own `VmHWM` (`benchmarks/peak_rss.py` runs the script as "
        "`__main__` and reads it at exit; `ru_maxrss` would carry the benchmark's own size over "
        "`exec`). The in-process rows are the `VmHWM` of the "
        "benchmark's worker processes after the size's last repetition; they ran every batch of "
        "every size one after another (small first), so they also carry what earlier runs left "
        "in the allocators. The data size is `memory_usage(deep=True).sum()` of the merged table "
        "(the batch files the manifest lists). Prefect's ephemeral API server runs in its own "
        "subprocess and is not included."
    )
    return [
        "## Memory",
        "",
        "### The CLI process (one batch, as users run it)",
        "",
        *_cli_memory_table(memory),
        "### The benchmark's in-process workers (every batch of every size in one process)",
        "",
        *_table(header, rows),
        notes,
        "",
    ]


def render_report(results: Json) -> str:
    """BENCHMARKS.md."""
    m = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        "# Benchmark: the retraining flow against a plain script",
        "",
        f"- Date: {results['date']}; total benchmark time {results['total_runtime_s']:.0f} s",
        f"- Command: `{results['command']}`"
        + (" (smoke variant: tiny sizes, not for conclusions)" if results["smoke"] else ""),
        f"- Machine: {m['cpu_count']} cores, {m['memory_bytes'] / 2**30:.1f} GiB memory, "
        f"Python {m['python']}, {m['platform']}",
        f"- Packages: {packages}",
        "- The numbers come from **one run on a shared 2-core machine**; other processes may have used the "
        "CPU now and then, so single batches can be noisy (medians over repetitions are used).",
        "",
        *_method(results),
        *render_targets(results["checks"]),
        *render_totals(results["sizes"]),
        *render_cold_start(results["cold_start"], results["cold_start_summary"]),
        *render_profile(),
        *render_startup(results["flow_worker"], results["baseline_worker"], results["cli"]),
        *render_per_batch(results["sizes"]),
        *render_growth(results["sizes"]),
        *where_the_time_goes(results["sizes"]),
        *render_steps(results["sizes"]),
        *render_drift_check(results["drift_check"]),
        *render_memory(results["memory"]),
        *render_history(),
    ]
    return "\n".join(lines)


def _method(results: Json) -> list[str]:
    sizes = ", ".join(
        f"{name}: {s['rows_per_batch']:,} rows x {N_FEATURES} features per batch, {s['batches']} batches, "
        f"{s['repetitions']} repetition(s)"
        for name, s in results["sizes"].items()
    )
    return ["## What is measured", "", METHOD.format(sizes=sizes, estimator=ESTIMATOR, hp=HYPERPARAMETERS)]


def print_summary(results: Json) -> None:
    """The targets, totals and the cold start on stdout."""
    cold = render_cold_start(results["cold_start"], results["cold_start_summary"])
    for line in render_targets(results["checks"]) + render_totals(results["sizes"]) + cold:
        print(line)  # noqa: T201


# --------------------------------------------------------------------------- main


def measure(sizes: Sequence[SizeSpec], cold: ColdStartSpec, work: Path, smoke: bool) -> Json:
    """Build the projects, run both workers, the CLI and the cold start; the raw results."""
    env = child_env(work / "prefect-home")
    runs = build_runs(work, sizes)
    job = {"warmup": build_warmup(work).as_job(), "runs": [run.as_job() for run in runs]}
    baseline = run_worker("baseline", job, work, env)
    flow = run_worker("flow", job, work, env)
    # Memory and the CLI run for the sizes without a window (the peak RSS is the process's).
    first = {s.name: next(r for r in runs if r.size == s.name) for s in sizes if s.window is None}
    merged = {name: merged_table_bytes(run.params) for name, run in first.items()}
    cli = {name: run_cli(run.params, env) for name, run in first.items()}
    cold_start = measure_cold_start(cold, work, env)
    return {
        "baseline_worker": baseline,
        "flow_worker": flow,
        "merged_bytes": merged,
        "cli": cli,
        "cold_start": cold_start,
        "drift_check": measure_drift_check(
            work, smoke, ModelConfig(estimator=ESTIMATOR, hyperparameters=HYPERPARAMETERS)
        ),
    }


def analyse(sizes: Sequence[SizeSpec], raw: Json) -> Json:
    """Summaries per size, memory and the target checks."""
    flow, baseline = raw["flow_worker"], raw["baseline_worker"]
    summaries = {
        spec.name: summarize_size(
            spec,
            [r for r in flow["runs"] if r["size"] == spec.name],
            [r for r in baseline["runs"] if r["size"] == spec.name],
        )
        for spec in sizes
    }
    memory = {
        name: memory_summary(name, flow, baseline, merged_bytes, raw["cli"])
        for name, merged_bytes in raw["merged_bytes"].items()
    }
    cold = summarize_cold_start(raw["cold_start"])
    checks = (
        target_checks(summaries, memory)
        + cold_start_checks(raw["cold_start"], cold, memory)
        + drift_checks(raw["drift_check"])
    )
    return {"sizes": summaries, "memory": memory, "cold_start_summary": cold, "checks": checks}


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Where benchmark.json and BENCHMARKS.md go; --smoke never writes into the repository."""
    if args.out_dir is not None:
        out = Path(args.out_dir).resolve()
        return out / "benchmark.json", out / "BENCHMARKS.md"
    if args.smoke:
        out = Path(tempfile.mkdtemp(prefix="retrain-bench-smoke-"))
        return out / "benchmark.json", out / "BENCHMARKS.md"
    return DEFAULT_JSON, DEFAULT_REPORT


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the retraining flow against a plain script.")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one repetition, no cron wait (about 4 minutes)"
    )
    parser.add_argument("--out-dir", help="write benchmark.json and BENCHMARKS.md here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker_main(args: argparse.Namespace) -> int:
    job = json.loads(Path(args.job).read_text(encoding="utf-8"))
    result = WORKERS[args.worker](job)
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API request
    if args.worker:
        return worker_main(args)
    json_path, report_path = output_paths(args)
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    cold = SMOKE_COLD_START if args.smoke else FULL_COLD_START
    started = time.perf_counter()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    try:
        raw = measure(sizes, cold, work, args.smoke)
    except (BenchmarkError, ColdStartError, PipelineError):  # PipelineError: a service or the deployment
        logger.error("Benchmark failed; the temporary projects are kept in %s", work)
        raise
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    results: Json = {
        "date": date,
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "smoke": args.smoke,
        "machine": machine_info(),
        "config": {"estimator": ESTIMATOR, "hyperparameters": HYPERPARAMETERS, "seed": SEED},
        **raw,
        **analyse(sizes, raw),
        "total_runtime_s": time.perf_counter() - started,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report_path.write_text(render_report(results), encoding="utf-8")
    print_summary(results)
    print(f"wrote {json_path} and {report_path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
