"""The benchmark's records: what it measured, what it concluded, and the shape of ``benchmark.json``.

Every record is a frozen dataclass; ``dataclasses.asdict`` gives its JSON form (the keys and
their order are those of ``benchmark.json``) and :func:`from_dict` reads that form back, for
the worker processes' job and result files and for a stored ``benchmark.json``. Where a JSON
object carries a few more keys in some cases (a CLI run with services, skipped scheduled
runs), the record is a subclass that adds those fields, so both forms stay exactly as written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter

Json = dict[str, Any]
T = TypeVar("T")
B = TypeVar("B")  # the batch record of a run (flow or baseline)
W = TypeVar("W")  # a worker's warm-up record
R = TypeVar("R")  # a worker's run record


# --------------------------------------------------------------------------- the workers' jobs


@dataclass(frozen=True)
class RunJob:
    """One repetition of one size, as a worker gets it: its project and where the baseline writes."""

    size: str
    rep: int | str
    params: str
    baseline_out: str
    n_batches: int

    @property
    def params_file(self) -> Path:
        return Path(self.params)


@dataclass(frozen=True)
class WorkerJob:
    """The baseline or flow worker's job: a warm-up project, then every repetition of every size."""

    warmup: RunJob
    runs: list[RunJob]


# --------------------------------------------------------------------------- batches and runs


@dataclass(frozen=True)
class BaselineBatch:
    """One batch of the plain-script baseline, timed per sub-step and per flow step."""

    batch: int
    wall_s: float
    process_cpu_s: float
    rows_accumulated: int
    substeps: dict[str, float]
    steps: dict[str, float]


@dataclass(frozen=True)
class TaskDuration:
    """A task run of a flow run: its task's name and how long it ran."""

    name: str
    seconds: float


@dataclass(frozen=True)
class FlowBatch:
    """One in-process flow call (one batch), with the task runs Prefect recorded for it."""

    batch: int
    wall_s: float
    process_cpu_s: float
    api_server_cpu_s: float
    status: str
    flow_run_id: str
    tasks: list[TaskDuration]
    steps: dict[str, float]


@dataclass(frozen=True)
class BaselineBatches:
    """The baseline over one project (its warm-up): the batches in order."""

    batches: list[BaselineBatch]


@dataclass(frozen=True)
class RunResult(RunJob, Generic[B]):
    """A repetition's job with its batches (flow or baseline) and the worker's peak RSS after it."""

    batches: list[B]
    peak_rss_bytes: int


BaselineRunResult = RunResult[BaselineBatch]
FlowRunResult = RunResult[FlowBatch]


@dataclass(frozen=True)
class WorkerOutput(Generic[W, R]):
    """What the baseline or flow worker process writes: its imports, its warm-up (one batch on a
    throw-away project), then every repetition of every size."""

    import_s: float
    warmup_s: float
    warmup: W
    rss_after_warmup_bytes: int
    runs: list[R]


@dataclass(frozen=True)
class WorkerResult(WorkerOutput[W, R]):
    """A worker's output and the wall time of its process (measured by the parent)."""

    process_wall_s: float


BaselineWorkerOutput = WorkerOutput[BaselineBatches, BaselineRunResult]
BaselineWorkerResult = WorkerResult[BaselineBatches, BaselineRunResult]
FlowWorkerOutput = WorkerOutput[FlowBatch, FlowRunResult]
FlowWorkerResult = WorkerResult[FlowBatch, FlowRunResult]


@dataclass(frozen=True)
class PlainScriptOutput:
    """What the plain-script worker writes: its imports, then one batch's ML work."""

    import_s: float
    work_s: float
    batches: list[BaselineBatch]


@dataclass(frozen=True)
class PlainScriptResult(PlainScriptOutput):
    """The plain-script worker's output and the wall time of its process."""

    process_wall_s: float


@dataclass(frozen=True)
class CliRun:
    """``python flows/automated_training_flow.py --params P`` for one batch, as a user runs it."""

    command: str
    wall_s: float
    exit_code: int
    last_line: str
    batch: int | None
    peak_rss_bytes: int
    data_bytes: int


@dataclass(frozen=True)
class CliRunWithServices(CliRun):
    """A CLI run while the project's services ran, and the flow run it recorded on their server."""

    flow_run_id: str
    prefect_api: str


# --------------------------------------------------------------------------- the cold start


@dataclass(frozen=True)
class ImportProbe:
    """The flow module's import in a fresh ``python``, and that whole process's wall time."""

    prefect_s: float
    flow_module_s: float
    import_s: float
    process_wall_s: float


@dataclass(frozen=True)
class FlowRunTimes:
    """A finished flow run's timestamps and duration (the API server's clock)."""

    flow_run: str
    flow_run_id: str
    state: str | None
    auto_scheduled: bool
    created: str | None
    expected_start_time: str | None
    start_time: str | None
    end_time: str | None
    flow_run_s: float | None


@dataclass(frozen=True)
class DeploymentRun(FlowRunTimes):
    """A run created from the deployment, waited for, and the batch it trained."""

    trigger_to_final_s: float | None
    trigger_to_start_s: float | None
    polled_wall_s: float
    prefect_api: str
    batch: int | None


@dataclass(frozen=True)
class TriggerCommandRun(DeploymentRun):
    """``make trigger`` as a user runs it (register the deployment again, start one run, wait for
    it): the command's whole wall time, and the run it started."""

    command: str
    wall_s: float


@dataclass(frozen=True)
class ScheduledRun(FlowRunTimes):
    """A run the scheduler created, timed from its tick; ``reason`` says why it does not count."""

    tick_to_final_s: float | None
    tick_to_start_s: float | None
    scheduled_ahead_s: float | None
    worker_idle_for_s: float | None
    batch: int | None
    reason: str


@dataclass(frozen=True)
class ScheduledRuns:
    """The scheduled runs wanted, those that counted and those that did not."""

    wanted: int
    runs: list[ScheduledRun]
    not_counted: list[ScheduledRun]

    @property
    def skip_reason(self) -> str | None:
        """Why the scheduled runs were not waited for (None: they were)."""
        return None


@dataclass(frozen=True)
class SkippedScheduledRuns(ScheduledRuns):
    """No scheduled run was waited for, and why."""

    skipped: str

    @property
    def skip_reason(self) -> str | None:
        return self.skipped


@dataclass(frozen=True)
class LeftoverProcess:
    """A live process of the benchmark's services (found by its project's folder)."""

    pid: int
    command: str


@dataclass(frozen=True)
class ServicesInfo:
    """The benchmark's own services for the cold-start project, their start, deployment and stop."""

    prefect_api: str
    mlflow_uri: str
    services_folder: str
    prefect_home: str
    project: str
    deployment: str
    deployment_id: str | None
    cron: str
    cron_while_manual_runs: str
    start_s: dict[str, float]
    deploy_s: dict[str, float]
    stopped: list[str]
    leftover_processes: list[LeftoverProcess]


@dataclass(frozen=True)
class ColdStart:
    """The cold-start section's raw measurements: fresh processes and runs through own services."""

    section_s: float
    rows_per_batch: int
    repetitions: int
    project: str
    services: ServicesInfo
    import_flow_module: list[ImportProbe]
    plain_script: list[PlainScriptResult]
    deployment_first_run: DeploymentRun | None
    deployment_runs: list[DeploymentRun]
    scheduled_runs: SkippedScheduledRuns | ScheduledRuns  # a JSON object with "skipped": the first
    cli_with_services: list[CliRunWithServices]
    cli_without_services: list[CliRun]
    make_trigger: list[TriggerCommandRun] = field(default_factory=list)


# --------------------------------------------------------------------------- the monitoring step


@dataclass(frozen=True)
class DriftCase:
    """One size of the monitoring step: the batch, its reference files and the target."""

    name: str
    batch_rows: int
    reference_files: int
    reference_rows_per_file: int
    target_s: float


@dataclass(frozen=True)
class DriftTiming:
    """The monitoring step's medians for one case (and every repetition's total)."""

    case: DriftCase
    read_s: float
    detect_s: float
    champion_s: float
    total_s: float
    each_total_s: list[float]
    reference_rows: int
    sampled_rows: int
    method: str


@dataclass(frozen=True)
class Measurements:
    """Everything measured: both workers, the CLI per size, the cold start, the monitoring step."""

    baseline_worker: BaselineWorkerResult
    flow_worker: FlowWorkerResult
    merged_bytes: dict[str, int]
    cli: dict[str, CliRun]
    cold_start: ColdStart
    drift_check: list[DriftTiming]


# --------------------------------------------------------------------------- the analysis


@dataclass(frozen=True)
class Totals:
    """A total over the batches: median and minimum over repetitions, and every repetition's."""

    median: float
    min: float
    all: list[float]


@dataclass(frozen=True)
class Stats:
    """Median, minimum, maximum and every value of a repeated measurement."""

    median: float
    min: float
    max: float
    all: list[float]


@dataclass(frozen=True)
class PerBatchRow:
    """One batch of one size: medians over repetitions of the flow's and the baseline's wall time."""

    batch: int
    rows_accumulated: int
    flow_s: float
    baseline_s: float
    difference_s: float
    ratio: float


@dataclass(frozen=True)
class Fit:
    """Least squares ``y = intercept + slope * x`` and its R²."""

    intercept_s: float
    slope_s_per_row: float
    r2: float


@dataclass(frozen=True)
class Growth(Fit):
    """The fit of per-batch time over accumulated rows, and t(late)/t(early) against the rows ratio."""

    late_batch: int
    early_batch: int
    time_ratio: float
    rows_ratio: float


@dataclass(frozen=True)
class SeriesGrowth:
    """The growth of the flow's and of the baseline's per-batch time."""

    flow: Growth
    baseline: Growth


@dataclass(frozen=True)
class SizeSummary:
    """One size: totals, the per-batch table, ratios, overhead, growth and where the time goes."""

    rows_per_batch: int
    batches: int
    repetitions: int
    window_batches: int | None
    training: str
    flow_total_s: Totals
    baseline_total_s: Totals
    ratio_total_medians: float
    ratio_last_batch: float
    ratio_mean_batches_2_to_n: float
    fixed_overhead_s: float
    per_batch: list[PerBatchRow]
    growth: SeriesGrowth
    flow_steps_s: dict[str, float]
    baseline_steps_s: dict[str, float]
    flow_tasks_s: dict[str, float]
    cpu_per_batch_s: dict[str, float]


@dataclass(frozen=True)
class MemorySummary:
    """Peak RSS of the CLI and of the workers after one size, against the data size."""

    cli_peak_rss_bytes: int
    cli_data_bytes: int
    cli_idle_peak_rss_bytes: int
    cli_ratio: float
    cli_ratio_above_idle: float
    merged_bytes: int
    flow_peak_rss_bytes: int
    flow_rss_after_warmup_bytes: int
    baseline_peak_rss_bytes: int
    baseline_rss_after_warmup_bytes: int
    flow_ratio: float
    flow_ratio_above_warmup: float
    baseline_ratio: float


@dataclass(frozen=True)
class ColdStartSummary:
    """The cold start's statistics (None where nothing was measured)."""

    import_flow_module_s: Stats | None
    import_prefect_s: Stats | None
    import_process_s: Stats | None
    plain_process_s: Stats | None
    plain_import_s: Stats | None
    plain_batch_s: Stats | None
    deployment_flow_run_s: Stats | None
    deployment_trigger_to_final_s: Stats | None
    deployment_trigger_to_start_s: Stats | None
    tick_to_completed_s: Stats | None
    tick_to_start_s: Stats | None
    tick_flow_run_s: Stats | None
    cli_with_services_s: Stats | None
    cli_without_services_s: Stats | None
    make_trigger_wall_s: Stats | None = None
    make_trigger_to_final_s: Stats | None = None
    make_trigger_flow_run_s: Stats | None = None


@dataclass(frozen=True)
class TargetCheck:
    """One target of the report's target table: measured against its limit."""

    target: str
    measured: float
    limit: float
    unit: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Analysis:
    """Summaries per size, memory per size, the cold start's summary and every target check."""

    sizes: dict[str, SizeSummary]
    memory: dict[str, MemorySummary]
    cold_start_summary: ColdStartSummary
    checks: list[TargetCheck]


# --------------------------------------------------------------------------- benchmark.json


@dataclass(frozen=True)
class Machine:
    """The machine and the package versions the numbers come from."""

    cpu_count: int | None
    memory_bytes: int
    python: str
    platform: str
    packages: dict[str, str]


@dataclass(frozen=True)
class BenchmarkConfig:
    """The model every project trains and the data seed."""

    estimator: str
    hyperparameters: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class RunContext:
    """When and how the benchmark ran, on what machine, with what model."""

    date: str
    command: str
    smoke: bool
    machine: Machine
    config: BenchmarkConfig


@dataclass(frozen=True)
class Results(Analysis, Measurements, RunContext):
    """``benchmark.json``: the context, every measurement, the analysis and the total run time.

    One flat record: its fields are those of :class:`RunContext`, :class:`Measurements` and
    :class:`Analysis`, in that order (the dataclass fields of the bases, the last base first),
    then ``total_runtime_s``.
    """

    total_runtime_s: float

    @classmethod
    def of(
        cls, context: RunContext, measured: Measurements, analysis: Analysis, total_runtime_s: float
    ) -> Results:
        """The three parts as one record."""
        parts = (context, measured, analysis)
        fields = {f.name: getattr(part, f.name) for part in parts for f in dataclasses.fields(part)}
        return cls(**fields, total_runtime_s=total_runtime_s)


# --------------------------------------------------------------------------- reading JSON back


def from_dict(cls: type[T], data: Any) -> T:
    """The record of type ``cls`` from its JSON form (what ``dataclasses.asdict`` gave):
    pydantic validates it against the field types, nested and generic records included."""
    return TypeAdapter(cls).validate_python(data)
