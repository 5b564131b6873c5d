"""BENCHMARKS.md from the results: the method, the target table, every section's tables and notes.

:func:`render_report` is a function of a :class:`~benchmarks.records.Results` alone (and of
the hand-kept profile and history files it copies), so the same measurements always give the
same text; :func:`print_summary` shows the targets, totals and cold start on stdout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.analysis import runs_text
from benchmarks.records import (
    BaselineWorkerResult,
    CliRun,
    ColdStart,
    ColdStartSummary,
    DriftTiming,
    FlowWorkerResult,
    MemorySummary,
    Results,
    ServicesInfo,
    SizeSummary,
    Stats,
    TargetCheck,
)
from benchmarks.spec import (
    ESTIMATOR,
    FLOW_STEPS,
    HYPERPARAMETERS,
    MAX_CLI_WITH_SERVICES_S,
    MAX_CLI_WITHOUT_SERVICES_S,
    MAX_DEPLOYMENT_RUN_S,
    MAX_TICK_TO_COMPLETED_S,
    N_FEATURES,
    ORCHESTRATION,
    UNMAPPED,
    mib,
)

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
  Deployment runs are created with `create_flow_run_from_deployment` while the cron cannot fire,
  then `make trigger PARAMS=<the project's params>` runs once per repetition as a user runs it
  (make, `services env`, `setup_deployment.py --run-now --wait`: the deployment registered
  again, one run, waited for); then the deployment is registered again with a cron of every
  minute (`* * * * *`) and the runs the
  scheduler creates are measured from their tick (`expected_start_time`) to their end, counting only
  runs that found the worker idle. The CLI runs once per repetition with the services up (it finds
  them through the project's `.services/`) and, after they stopped, without them (Prefect's
  temporary API on the project's `.prefect/` database, which the server had already migrated).
  The flow module's import is timed in a fresh `python` (`import prefect`, then the file loaded as
  `prefect.engine` loads it), and a fresh plain-script process (`benchmarks/plain_script.py`,
  importing only what its work needs) runs one baseline batch: the denominator of the rows
  "/ a cold plain-script process". Prefect's timestamps (`created`, `expected_start_time`,
  `start_time`, `end_time`) give the run times.
"""
CPU_COLUMNS = ("baseline process", "flow process", "Prefect API server")
PROFILE_FILE = Path(__file__).with_name("cold_start_profile.md")
HISTORY_FILE = Path(__file__).with_name("performance_history.md")  # what changed and why

Row = tuple[str, str, str, str, str]  # a cold-start row: what, median, each run, target, result


def render_report(results: Results) -> str:
    """BENCHMARKS.md."""
    m = results.machine
    packages = ", ".join(f"{k} {v}" for k, v in m.packages.items())
    lines = [
        "# Benchmark: the retraining flow against a plain script",
        "",
        f"- Date: {results.date}; total benchmark time {results.total_runtime_s:.0f} s",
        f"- Command: `{results.command}`"
        + (" (smoke variant: tiny sizes, not for conclusions)" if results.smoke else ""),
        f"- Machine: {m.cpu_count} cores, {m.memory_bytes / 2**30:.1f} GiB memory, "
        f"Python {m.python}, {m.platform}",
        f"- Packages: {packages}",
        "- The numbers come from **one run on a shared 2-core machine**; other processes may have used the "
        "CPU now and then, so single batches can be noisy (medians over repetitions are used).",
        "",
        *_method(results.sizes),
        *render_targets(results.checks),
        *render_totals(results.sizes),
        *render_cold_start(results.cold_start, results.cold_start_summary),
        *_copied(PROFILE_FILE),
        *render_startup(results.flow_worker, results.baseline_worker, results.cli),
        *render_per_batch(results.sizes),
        *render_growth(results.sizes),
        *where_the_time_goes(results.sizes),
        *render_steps(results.sizes),
        *render_drift_check(results.drift_check),
        *render_memory(results.memory),
        *_copied(HISTORY_FILE),
    ]
    return "\n".join(lines)


def print_summary(results: Results) -> None:
    """The targets, totals and the cold start on stdout."""
    cold = render_cold_start(results.cold_start, results.cold_start_summary)
    for line in render_targets(results.checks) + render_totals(results.sizes) + cold:
        print(line)  # noqa: T201


def _method(sizes: dict[str, SizeSummary]) -> list[str]:
    text = ", ".join(
        f"{name}: {s.rows_per_batch:,} rows x {N_FEATURES} features per batch, {s.batches} batches, "
        f"{s.repetitions} repetition(s)"
        + (f", data.window_batches={s.window_batches}" if s.window_batches else "")
        + (f", model.training={s.training}" if s.training != "full" else "")
        for name, s in sizes.items()
    )
    return ["## What is measured", "", METHOD.format(sizes=text, estimator=ESTIMATOR, hp=HYPERPARAMETERS)]


def _copied(path: Path) -> list[str]:
    """A hand-kept section copied into every report: where a cold run's seconds go
    (:data:`PROFILE_FILE`, measured with py-spy and ``-X importtime``) and what changed the
    numbers, release by release (:data:`HISTORY_FILE`); nothing when the file is absent."""
    if not path.is_file():
        return []
    return [*path.read_text(encoding="utf-8").rstrip().splitlines(), ""]


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def render_targets(checks: Sequence[TargetCheck]) -> list[str]:
    rows = [
        (
            c.target,
            f"{c.measured:.2f} {c.unit}",
            f"<= {c.limit:.2f} {c.unit}",
            "**PASS**" if c.passed else "**FAIL**",
            c.detail,
        )
        for c in checks
    ]
    return ["## Targets", "", *_table(("target", "measured", "limit", "result", "detail"), rows)]


def render_totals(sizes: dict[str, SizeSummary]) -> list[str]:
    rows = [
        (
            name,
            f"{s.rows_per_batch:,}",
            s.batches,
            s.repetitions,
            f"{s.flow_total_s.median:.2f}",
            f"{s.flow_total_s.min:.2f}",
            f"{s.baseline_total_s.median:.2f}",
            f"{s.baseline_total_s.min:.2f}",
            f"{s.ratio_total_medians:.2f}",
            f"{s.ratio_last_batch:.2f}",
            f"{s.fixed_overhead_s:.2f}",
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


def render_startup(
    flow: FlowWorkerResult, baseline: BaselineWorkerResult, cli: dict[str, CliRun]
) -> list[str]:
    rows = [
        ("flow process: import the flow module", f"{flow.import_s:.2f}"),
        (
            "flow process: warm-up flow call (ephemeral API start, first imports, Prefect DB set-up)",
            f"{flow.warmup_s:.2f}",
        ),
        ("baseline process: imports", f"{baseline.import_s:.2f}"),
        ("baseline process: warm-up batch", f"{baseline.warmup_s:.2f}"),
    ]
    rows += [
        (f"CLI process, one batch ({name}: batch {c.batch})", f"{c.wall_s:.2f}") for name, c in cli.items()
    ]
    return ["## Start-up and the CLI (no services)", "", *_table(("what", "seconds"), rows)]


# --------------------------------------------------------------------------- the cold start


def render_cold_start(cold: ColdStart, summary: ColdStartSummary) -> list[str]:
    """The cold-start table: fresh processes and runs through the benchmark's own services."""
    rows = [
        *_fresh_process_rows(summary),
        *_deployment_rows(cold, summary),
        *_scheduled_rows(cold, summary),
        *_cli_rows(cold.rows_per_batch, summary),
    ]
    return [
        f"## Cold start ({cold.rows_per_batch} rows per batch; fresh processes, "
        "the benchmark's own services)",
        "",
        f"This section took {cold.section_s:.0f} s.",
        "",
        *_table(("what", "seconds (median)", "each run", "target", "result"), rows),
        _services_note(cold.services),
        "",
    ]


def _verdict(value: float, limit: float | None) -> tuple[str, str]:
    if limit is None:
        return "-", "-"
    return f"<= {limit:.2f} s", "**PASS**" if value <= limit else "**FAIL**"


def _stats_row(label: str, stats: Stats | None, limit: float | None = None) -> Row:
    """A row of the cold-start table: the median, every run and, with a limit, the verdict."""
    if stats is None:
        return (label, "not measured", "-", f"<= {limit:.2f} s" if limit else "-", "-")
    return (label, f"{stats.median:.2f}", runs_text(stats), *_verdict(stats.median, limit))


def _fresh_process_rows(summary: ColdStartSummary) -> list[Row]:
    """The plain script and the flow module's import, each in a fresh process."""
    return [
        _stats_row(
            "plain script: a fresh `python` process doing one batch (interpreter, imports, the ML work)",
            summary.plain_process_s,
        ),
        _stats_row(
            "plain script: its imports (joblib, the plain modules: pandas, scikit-learn, pandera, pyarrow)",
            summary.plain_import_s,
        ),
        _stats_row("plain script: the batch itself", summary.plain_batch_s),
        _stats_row(
            "import of the flow module in a fresh process (`import prefect`, then the flow file as "
            "`prefect.engine` loads it)",
            summary.import_flow_module_s,
        ),
        _stats_row("of which `import prefect`", summary.import_prefect_s),
        _stats_row("that import process, whole (interpreter start included)", summary.import_process_s),
    ]


def _deployment_rows(cold: ColdStart, summary: ColdStartSummary) -> list[Row]:
    """The deployment runs through the worker (and the fresh project's first one, apart)."""
    rows: list[Row] = []
    first = cold.deployment_first_run
    if first is not None:
        rows.append(
            (
                "first deployment run of the fresh project (batch 1, not in the medians): start → end",
                f"{first.flow_run_s:.2f}",
                f"trigger → final {first.trigger_to_final_s:.2f}",
                "-",
                "-",
            )
        )
    return [
        *rows,
        _stats_row(
            "deployment run through the worker (services up): the flow run's start → end",
            summary.deployment_flow_run_s,
            MAX_DEPLOYMENT_RUN_S,
        ),
        _stats_row(
            "deployment run: trigger (`create_flow_run_from_deployment`) → final state",
            summary.deployment_trigger_to_final_s,
        ),
        _stats_row(
            "deployment run: trigger → the flow run starts (worker poll, `prefect.engine` start)",
            summary.deployment_trigger_to_start_s,
        ),
        _stats_row(
            "`make trigger` (register the deployment again, start a run, wait for it): whole wall time",
            summary.make_trigger_wall_s,
        ),
        _stats_row("the run `make trigger` started: created → final state", summary.make_trigger_to_final_s),
        _stats_row("that run's Running state (the flow run's start → end)", summary.make_trigger_flow_run_s),
    ]


def _scheduled_rows(cold: ColdStart, summary: ColdStartSummary) -> list[Row]:
    """The scheduled runs' rows; or, when none counted, the one row saying why."""
    scheduled = cold.scheduled_runs
    if summary.tick_to_completed_s is None:
        reason = scheduled.skip_reason or f"none of {scheduled.wanted} scheduled runs counted"
        return [
            (
                "cron tick → COMPLETED of a scheduled run, worker idle",
                f"not measured: {reason}",
                "-",
                f"<= {MAX_TICK_TO_COMPLETED_S:.2f} s",
                "-",
            )
        ]
    return [
        _stats_row(
            "cron tick → COMPLETED of a scheduled run (expected start → end), worker idle",
            summary.tick_to_completed_s,
            MAX_TICK_TO_COMPLETED_S,
        ),
        _stats_row("cron tick → the scheduled run starts", summary.tick_to_start_s),
        _stats_row("scheduled run: the flow run's start → end", summary.tick_flow_run_s),
    ]


def _cli_rows(rows_per_batch: int, summary: ColdStartSummary) -> list[Row]:
    """The CLI's whole process for one batch, with the project's services up and without them."""
    return [
        _stats_row(
            f"CLI, one {rows_per_batch}-row batch, the project's services up (whole process)",
            summary.cli_with_services_s,
            MAX_CLI_WITH_SERVICES_S,
        ),
        _stats_row(
            f"CLI, one {rows_per_batch}-row batch, no services (whole process)",
            summary.cli_without_services_s,
            MAX_CLI_WITHOUT_SERVICES_S,
        ),
    ]


def _services_note(services: ServicesInfo) -> str:
    """Which services the cold-start section ran, how long they took to start and stop."""
    started = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in services.start_s.items())
    deployed = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in services.deploy_s.items())
    left = services.leftover_processes
    return (
        f"The benchmark's own services for the project `{services.project}`: Prefect API "
        f"{services.prefect_api}, MLflow {services.mlflow_uri}, pid and log files in "
        f"`{services.services_folder}`, Prefect's home `{services.prefect_home}`. Started in: "
        f"{started}; deployment `{services.deployment}` registered in: {deployed} (cron "
        f"`{services.cron_while_manual_runs}` while manual runs were measured, then the project's "
        f"`{services.cron}` for the scheduled runs). Stopped after the runs: "
        + "; ".join(services.stopped)
        + ". Processes of theirs left afterwards: "
        + (", ".join(f"{p.pid} ({p.command})" for p in left) + " (ended)" if left else "none")
        + "."
    )


# --------------------------------------------------------------------------- per size


def render_per_batch(sizes: dict[str, SizeSummary]) -> list[str]:
    lines = ["## Per-batch wall time (median over repetitions)", ""]
    for name, s in sizes.items():
        rows = [
            (
                r.batch,
                f"{r.rows_accumulated:,}",
                f"{r.flow_s:.2f}",
                f"{r.baseline_s:.2f}",
                f"{r.difference_s:+.2f}",
                f"{r.ratio:.2f}",
            )
            for r in s.per_batch
        ]
        header = ("batch", "accumulated rows", "flow s", "baseline s", "flow - baseline s", "flow/baseline")
        lines += [f"### {name} ({s.rows_per_batch:,} rows per batch)", "", *_table(header, rows)]
    return lines


def render_growth(sizes: dict[str, SizeSummary]) -> list[str]:
    rows = []
    for name, s in sizes.items():
        for series, g in (("flow", s.growth.flow), ("baseline", s.growth.baseline)):
            rows.append(
                (
                    name,
                    series,
                    f"{g.intercept_s:.3f}",
                    f"{g.slope_s_per_row * 1e5:.4f}",
                    f"{g.r2:.3f}",
                    f"{g.time_ratio:.2f} (batch {g.late_batch}/{g.early_batch})",
                    f"{g.rows_ratio:.2f}",
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


def where_the_time_goes(sizes: dict[str, SizeSummary]) -> list[str]:
    """A short paragraph generated from the step split."""
    sentences = []
    for name, s in sizes.items():
        steps = {k: v for k, v in s.flow_steps_s.items() if v > 0}
        total = s.flow_total_s.median
        ranked = sorted(steps.items(), key=lambda item: -item[1])
        top = ", ".join(f"{step} {100 * value / total:.0f}%" for step, value in ranked[:3])
        extra = total - s.baseline_total_s.median
        added = {k: steps.get(k, 0.0) for k in ("MLflow", "DVC", "state", "reports", ORCHESTRATION)}
        added_text = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(added.items(), key=lambda i: -i[1]))
        sentences.append(
            f"At the {name} size ({s.rows_per_batch:,} rows per batch) **{ranked[0][0]}** dominates the "
            f"flow's time (top steps: {top}). The flow needs {extra:.1f} s more than the plain script over "
            f"{s.batches} batches; the steps the script does not have account for {added_text}."
        )
    return ["## Where the time goes", "", " ".join(sentences), ""]


def render_steps(sizes: dict[str, SizeSummary]) -> list[str]:
    lines = ["## Step split (seconds summed over the batches, median over repetitions)", ""]
    for name, s in sizes.items():
        flow_total = s.flow_total_s.median
        rows = [
            (
                step,
                f"{s.flow_steps_s[step]:.2f}",
                f"{100 * s.flow_steps_s[step] / flow_total:.0f}%",
                f"{s.baseline_steps_s[step]:.2f}" if step in s.baseline_steps_s else "-",
            )
            for step in FLOW_STEPS
            if step != UNMAPPED or s.flow_steps_s[step]
        ]
        lines += [f"### {name}", "", *_table(("step", "flow s", "share of flow", "baseline s"), rows)]
        tasks = sorted(s.flow_tasks_s.items(), key=lambda item: -item[1])
        lines += _table(("Prefect task", "seconds"), [(t, f"{v:.2f}") for t, v in tasks])
    cpu_rows = [
        (name, *(f"{s.cpu_per_batch_s[k]:.2f}" for k in CPU_COLUMNS), f"{s.fixed_overhead_s:.2f}")
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


# --------------------------------------------------------------------------- monitoring and memory


def render_drift_check(timings: Sequence[DriftTiming]) -> list[str]:
    header = "| case | read + sample reference | drift tests | champion score | total | target | method |"
    lines = [
        "## The monitoring step (`check-drift`)",
        "",
        "Reference: the champion's training data in processed parquet files, sampled file by file "
        "to at most `monitoring.sample_rows` (50,000) rows; the batch is sampled the same way. "
        "The champion (the benchmark's estimator) scores the batch, sampled likewise. "
        "30 synthetic features; median of 3 in one process.",
        "",
        header,
        "|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        c = t.case
        lines.append(
            f"| {c.name} ({t.reference_rows:,} reference rows, {t.sampled_rows:,} read) "
            f"| {t.read_s:.3f} s | {t.detect_s:.3f} s | {t.champion_s:.3f} s "
            f"| **{t.total_s:.3f} s** | <= {c.target_s:g} s | {t.method} |"
        )
    return [*lines, ""]


def _cli_memory_table(memory: dict[str, MemorySummary]) -> list[str]:
    """The CLI process's peak per size, against the training data of its batch."""
    rows = [
        (
            name,
            mib(m.cli_data_bytes),
            mib(m.cli_peak_rss_bytes),
            f"{m.cli_ratio:.2f}",
            f"{m.cli_ratio_above_idle:.2f}",
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


MEMORY_NOTES = (
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


def render_memory(memory: dict[str, MemorySummary]) -> list[str]:
    rows = [
        (
            name,
            mib(m.merged_bytes),
            mib(m.flow_peak_rss_bytes),
            f"{m.flow_ratio:.2f}",
            mib(m.flow_rss_after_warmup_bytes),
            f"{m.flow_ratio_above_warmup:.2f}",
            mib(m.baseline_peak_rss_bytes),
            f"{m.baseline_ratio:.2f}",
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
    return [
        "## Memory",
        "",
        "### The CLI process (one batch, as users run it)",
        "",
        *_cli_memory_table(memory),
        "### The benchmark's in-process workers (every batch of every size in one process)",
        "",
        *_table(header, rows),
        MEMORY_NOTES,
        "",
    ]
