"""From measurements to conclusions: summaries per size, fits, memory, the cold start, target checks.

Pure functions of the records in :mod:`benchmarks.records` (nothing here runs or reads a
file): medians over repetitions, least-squares growth, peak RSS against the data size, and
each target of the issue as a :class:`~benchmarks.records.TargetCheck`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Protocol

from benchmarks.records import (
    Analysis,
    BaselineRunResult,
    BaselineWorkerResult,
    CliRun,
    ColdStart,
    ColdStartSummary,
    DriftTiming,
    Fit,
    FlowRunResult,
    FlowWorkerResult,
    Growth,
    Measurements,
    MemorySummary,
    PerBatchRow,
    SeriesGrowth,
    SizeSummary,
    Stats,
    TargetCheck,
    Totals,
)
from benchmarks.spec import (
    BASELINE_STEPS,
    FLOW_STEPS,
    MAX_CLI_WITH_SERVICES_S,
    MAX_CLI_WITH_SERVICES_TO_PLAIN,
    MAX_CLI_WITHOUT_SERVICES_S,
    MAX_DEPLOYMENT_RUN_S,
    MAX_FIXED_OVERHEAD_S,
    MAX_FLOW_TO_BASELINE,
    MAX_IDLE_CLI_RSS_MIB,
    MAX_RSS_TO_DATA,
    MAX_TICK_TO_COMPLETED_S,
    MAX_TRIGGER_WALL_TO_PLAIN,
    MAX_TRIGGERED_RUN_TO_PLAIN,
    MAX_WINDOW_GROWTH,
    BenchmarkError,
    SizeSpec,
    mib,
)


class TimedBatch(Protocol):
    """A batch of the flow or of the baseline: its wall time and its seconds per step."""

    @property
    def wall_s(self) -> float: ...

    @property
    def steps(self) -> dict[str, float]: ...


class TimedRun(Protocol):
    """A repetition of the flow or of the baseline: its batches in order."""

    @property
    def batches(self) -> Sequence[TimedBatch]: ...


def analyse(sizes: Sequence[SizeSpec], raw: Measurements) -> Analysis:
    """Summaries per size, memory and the target checks."""
    flow, baseline = raw.flow_worker, raw.baseline_worker
    summaries = {
        spec.name: summarize_size(
            spec,
            [r for r in flow.runs if r.size == spec.name],
            [r for r in baseline.runs if r.size == spec.name],
        )
        for spec in sizes
    }
    memory = {
        name: memory_summary(name, flow, baseline, merged_bytes, raw.cli)
        for name, merged_bytes in raw.merged_bytes.items()
    }
    cold = summarize_cold_start(raw.cold_start)
    checks = (
        target_checks(summaries, memory)
        + cold_start_checks(raw.cold_start, cold, memory)
        + drift_checks(raw.drift_check)
    )
    return Analysis(sizes=summaries, memory=memory, cold_start_summary=cold, checks=checks)


# --------------------------------------------------------------------------- statistics and fits


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _totals(values: list[float]) -> Totals:
    return Totals(median=_median(values), min=min(values), all=values)


def _stats(values: Sequence[float | None]) -> Stats | None:
    """Median, min, max and every value (None when nothing was measured)."""
    measured = [float(v) for v in values if v is not None]
    if not measured:
        return None
    return Stats(median=_median(measured), min=min(measured), max=max(measured), all=measured)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Fit:
    """Least squares ``y = a + b*x`` with R²."""
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if np.ptp(x) == 0:  # every batch had the same rows (a full window): no slope to fit
        return Fit(intercept_s=float(y.mean()), slope_s_per_row=0.0, r2=0.0)
    b, a = np.polyfit(x, y, 1)
    residual = float(((y - (a + b * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return Fit(intercept_s=float(a), slope_s_per_row=float(b), r2=1 - residual / total if total else 1.0)


def growth(table: Sequence[PerBatchRow], times: Sequence[float]) -> Growth:
    """Linear fit of per-batch ``times`` over accumulated rows and t(N)/t(N/2) vs the rows ratio."""
    late, early = len(table) - 1, max(0, len(table) // 2 - 1)
    fit = linear_fit([r.rows_accumulated for r in table], times)
    return Growth(
        **asdict(fit),
        late_batch=table[late].batch,
        early_batch=table[early].batch,
        time_ratio=times[late] / times[early],
        rows_ratio=table[late].rows_accumulated / table[early].rows_accumulated,
    )


# --------------------------------------------------------------------------- one size


def per_batch_table(
    spec: SizeSpec, flow_runs: Sequence[TimedRun], base_runs: Sequence[TimedRun]
) -> list[PerBatchRow]:
    """Per batch: medians over repetitions of flow and baseline wall time."""
    rows = []
    for i in range(spec.batches):
        flow_s = _median([run.batches[i].wall_s for run in flow_runs])
        base_s = _median([run.batches[i].wall_s for run in base_runs])
        rows.append(
            PerBatchRow(
                batch=i + 1,
                rows_accumulated=min(i + 1, spec.window or spec.batches) * spec.rows,
                flow_s=flow_s,
                baseline_s=base_s,
                difference_s=flow_s - base_s,
                ratio=flow_s / base_s,
            )
        )
    return rows


def step_split(runs: Sequence[TimedRun], steps: Sequence[str]) -> dict[str, float]:
    """Median over repetitions of the seconds per step summed over batches."""
    return {
        step: _median([sum(b.steps.get(step, 0.0) for b in run.batches) for run in runs]) for step in steps
    }


def task_split(runs: Sequence[FlowRunResult]) -> dict[str, float]:
    """Median over repetitions of the seconds per Prefect task summed over batches."""
    names = sorted({t.name for run in runs for b in run.batches for t in b.tasks})
    return {
        name: _median(
            [sum(t.seconds for b in run.batches for t in b.tasks if t.name == name) for run in runs]
        )
        for name in names
    }


def _median_of_means(per_run: Sequence[Sequence[float]]) -> float:
    """Median over repetitions of the mean per batch."""
    return _median([statistics.fmean(values) for values in per_run])


def summarize_size(
    spec: SizeSpec, flow_runs: Sequence[FlowRunResult], base_runs: Sequence[BaselineRunResult]
) -> SizeSummary:
    """Totals, per-batch table, ratios, overhead, growth and step split of one size."""
    flow_totals = [sum(b.wall_s for b in run.batches) for run in flow_runs]
    base_totals = [sum(b.wall_s for b in run.batches) for run in base_runs]
    table = per_batch_table(spec, flow_runs, base_runs)
    later = [row.ratio for row in table[1:]] or [table[0].ratio]
    return SizeSummary(
        rows_per_batch=spec.rows,
        batches=spec.batches,
        repetitions=spec.repetitions,
        window_batches=spec.window,
        training=spec.training,
        flow_total_s=_totals(flow_totals),
        baseline_total_s=_totals(base_totals),
        ratio_total_medians=_median(flow_totals) / _median(base_totals),
        ratio_last_batch=table[-1].ratio,
        ratio_mean_batches_2_to_n=statistics.fmean(later),
        fixed_overhead_s=_median([row.difference_s for row in table]),
        per_batch=table,
        growth=SeriesGrowth(
            flow=growth(table, [row.flow_s for row in table]),
            baseline=growth(table, [row.baseline_s for row in table]),
        ),
        flow_steps_s=step_split(flow_runs, FLOW_STEPS),
        baseline_steps_s=step_split(base_runs, tuple(dict.fromkeys(BASELINE_STEPS.values()))),
        flow_tasks_s=task_split(flow_runs),
        cpu_per_batch_s={
            "baseline process": _median_of_means([[b.process_cpu_s for b in r.batches] for r in base_runs]),
            "flow process": _median_of_means([[b.process_cpu_s for b in r.batches] for r in flow_runs]),
            "Prefect API server": _median_of_means(
                [[b.api_server_cpu_s for b in r.batches] for r in flow_runs]
            ),
        },
    )


def memory_summary(
    size: str,
    flow: FlowWorkerResult,
    baseline: BaselineWorkerResult,
    merged_bytes: int,
    cli: dict[str, CliRun],
) -> MemorySummary:
    """Peak RSS of the processes after this size, against the data size.

    ``cli`` maps sizes to their CLI runs; the smallest size's CLI process is the reference
    for a CLI process that holds (almost) no data.
    """
    flow_peak = max(r.peak_rss_bytes for r in flow.runs if r.size == size)
    base_peak = max(r.peak_rss_bytes for r in baseline.runs if r.size == size)
    idle_cli = min(run.peak_rss_bytes for run in cli.values())
    this_cli = cli[size]
    return MemorySummary(
        cli_peak_rss_bytes=this_cli.peak_rss_bytes,
        cli_data_bytes=this_cli.data_bytes,
        cli_idle_peak_rss_bytes=idle_cli,
        cli_ratio=this_cli.peak_rss_bytes / this_cli.data_bytes,
        cli_ratio_above_idle=(this_cli.peak_rss_bytes - idle_cli) / this_cli.data_bytes,
        merged_bytes=merged_bytes,
        flow_peak_rss_bytes=flow_peak,
        flow_rss_after_warmup_bytes=flow.rss_after_warmup_bytes,
        baseline_peak_rss_bytes=base_peak,
        baseline_rss_after_warmup_bytes=baseline.rss_after_warmup_bytes,
        flow_ratio=flow_peak / merged_bytes,
        flow_ratio_above_warmup=(flow_peak - flow.rss_after_warmup_bytes) / merged_bytes,
        baseline_ratio=base_peak / merged_bytes,
    )


# --------------------------------------------------------------------------- the cold start


def summarize_cold_start(cold: ColdStart) -> ColdStartSummary:
    """Medians of the cold-start measurements."""
    imports, plain = cold.import_flow_module, cold.plain_script
    runs, ticks = cold.deployment_runs, cold.scheduled_runs.runs
    return ColdStartSummary(
        import_flow_module_s=_stats([p.import_s for p in imports]),
        import_prefect_s=_stats([p.prefect_s for p in imports]),
        import_process_s=_stats([p.process_wall_s for p in imports]),
        plain_process_s=_stats([p.process_wall_s for p in plain]),
        plain_import_s=_stats([p.import_s for p in plain]),
        plain_batch_s=_stats([p.batches[0].wall_s for p in plain]),
        deployment_flow_run_s=_stats([r.flow_run_s for r in runs]),
        deployment_trigger_to_final_s=_stats([r.trigger_to_final_s for r in runs]),
        deployment_trigger_to_start_s=_stats([r.trigger_to_start_s for r in runs]),
        tick_to_completed_s=_stats([r.tick_to_final_s for r in ticks]),
        tick_to_start_s=_stats([r.tick_to_start_s for r in ticks]),
        tick_flow_run_s=_stats([r.flow_run_s for r in ticks]),
        cli_with_services_s=_stats([c.wall_s for c in cold.cli_with_services]),
        cli_without_services_s=_stats([c.wall_s for c in cold.cli_without_services]),
        make_trigger_wall_s=_stats([t.wall_s for t in cold.make_trigger]),
        make_trigger_to_final_s=_stats([t.trigger_to_final_s for t in cold.make_trigger]),
        make_trigger_flow_run_s=_stats([t.flow_run_s for t in cold.make_trigger]),
    )


def runs_text(stats: Stats) -> str:
    """Every value of a repeated measurement, for the report ("1.23, 1.45")."""
    return ", ".join(f"{v:.2f}" for v in stats.all)


def _measured(stats: Stats | None, what: str) -> Stats:
    if stats is None:
        raise BenchmarkError(f"the cold start measured no {what}")
    return stats


# --------------------------------------------------------------------------- target checks


def _check(name: str, measured: float, limit: float, unit: str, detail: str = "") -> TargetCheck:
    return TargetCheck(
        target=name, measured=measured, limit=limit, unit=unit, passed=measured <= limit, detail=detail
    )


def target_checks(sizes: dict[str, SizeSummary], memory: dict[str, MemorySummary]) -> list[TargetCheck]:
    """The issue's targets, PASS/FAIL on the measured numbers."""
    return [
        *_ratio_checks(sizes["small"], sizes["large"]),
        *_memory_checks(sizes["large"], memory["large"]),
        *_window_checks(sizes),
        *_incremental_checks(sizes),
    ]


def _ratio_checks(small: SizeSummary, large: SizeSummary) -> list[TargetCheck]:
    """Flow against baseline at the large size, the fixed overhead at the small one, growth."""
    rows = f"{large.rows_per_batch:,} rows/batch"
    flow_growth = large.growth.flow
    return [
        _check(
            f"flow/baseline at {rows}, per-batch ratio averaged over batches 2..{large.batches}",
            large.ratio_mean_batches_2_to_n,
            MAX_FLOW_TO_BASELINE,
            "x",
        ),
        _check(
            f"flow/baseline at {rows}, total (medians)", large.ratio_total_medians, MAX_FLOW_TO_BASELINE, "x"
        ),
        _check(
            f"fixed overhead per run at {small.rows_per_batch} rows/batch (median of flow - baseline)",
            small.fixed_overhead_s,
            MAX_FIXED_OVERHEAD_S,
            "s",
        ),
        _check(
            f"growth at {rows}: t(batch {flow_growth.late_batch})/t(batch {flow_growth.early_batch}) "
            "<= accumulated-rows ratio",
            flow_growth.time_ratio,
            flow_growth.rows_ratio,
            "x",
            f"fit t = {flow_growth.intercept_s:.2f} s + {flow_growth.slope_s_per_row * 1e5:.3f} s "
            f"per 100k rows (R² {flow_growth.r2:.3f})",
        ),
    ]


def _memory_checks(large: SizeSummary, memory: MemorySummary) -> list[TargetCheck]:
    """The CLI process's peak RSS against the training data at the large size."""
    rows = f"{large.rows_per_batch:,} rows/batch"
    return [
        _check(
            f"peak RSS of the flow process (the CLI, one batch) <= {MAX_RSS_TO_DATA:g}x the accumulated "
            f"training data at {rows}",
            memory.cli_ratio,
            MAX_RSS_TO_DATA,
            "x",
            f"{mib(memory.cli_peak_rss_bytes)} peak vs {mib(memory.cli_data_bytes)} "
            f"data; a CLI process with almost no data (small size) already peaks at "
            f"{mib(memory.cli_idle_peak_rss_bytes)} (Python, Prefect, MLflow, DVC, scikit-learn)",
        ),
        _check(
            f"the same, counting what the data adds: CLI peak minus the small-size CLI peak at {rows}",
            memory.cli_ratio_above_idle,
            MAX_RSS_TO_DATA,
            "x",
            f"{mib(memory.cli_peak_rss_bytes - memory.cli_idle_peak_rss_bytes)} "
            f"above that vs {mib(memory.cli_data_bytes)} data",
        ),
    ]


def _window_checks(sizes: dict[str, SizeSummary]) -> list[TargetCheck]:
    """Per-batch time stays flat once a sliding window (data.window_batches) is full."""
    checks = []
    for name, size in sizes.items():
        window = size.window_batches
        if window is None or size.batches < 2 * window:
            continue
        full = size.per_batch[window:]  # batches whose window is full: same rows each
        fit = linear_fit([row.batch for row in full], [row.flow_s for row in full])
        first, last = full[0].batch, full[-1].batch
        at_first = fit.intercept_s + fit.slope_s_per_row * first  # the x here is the batch
        at_last = fit.intercept_s + fit.slope_s_per_row * last
        checks.append(
            _check(
                f"flat with data.window_batches={window} ({name}, {size.rows_per_batch:,} rows/batch): "
                f"fitted t(batch {last})/t(batch {first})",
                at_last / at_first,
                MAX_WINDOW_GROWTH,
                "x",
                f"least-squares line over batches {first}..{last}: {at_first:.2f} s -> {at_last:.2f} s "
                f"({fit.slope_s_per_row:+.3f} s per batch); without a window the rows grow "
                f"{last / first:.1f}x over these batches",
            )
        )
    return checks


def _incremental_checks(sizes: dict[str, SizeSummary]) -> list[TargetCheck]:
    """With model.training: incremental, a late batch costs what an early one did."""
    checks = []
    for name, size in sizes.items():
        if size.training != "incremental" or size.batches < 10:
            continue
        fifth, tenth = size.per_batch[4], size.per_batch[9]
        checks.append(
            _check(
                f"model.training=incremental ({name}, {size.rows_per_batch:,} rows/batch): "
                "t(batch 10)/t(batch 5) of the flow (medians)",
                tenth.flow_s / fifth.flow_s,
                MAX_WINDOW_GROWTH,
                "x",
                f"{fifth.flow_s:.2f} s -> {tenth.flow_s:.2f} s; the baseline (incremental too): "
                f"{fifth.baseline_s:.2f} s -> {tenth.baseline_s:.2f} s",
            )
        )
    return checks


def cold_start_checks(
    cold: ColdStart, summary: ColdStartSummary, memory: dict[str, MemorySummary]
) -> list[TargetCheck]:
    """The start-up targets: a deployment run, a cron tick, the CLI with and without services, idle RSS."""
    rows = cold.rows_per_batch
    checks = _run_checks(cold, summary)
    for stats, limit, label in (
        (summary.cli_with_services_s, MAX_CLI_WITH_SERVICES_S, "with the project's services up"),
        (summary.cli_without_services_s, MAX_CLI_WITHOUT_SERVICES_S, "without services"),
    ):
        cli = _measured(stats, f"CLI run {label}")
        checks.append(
            _check(
                f"CLI one {rows}-row batch (whole process) {label}, median of {len(cli.all)}",
                cli.median,
                limit,
                "s",
                f"runs {runs_text(cli)} s",
            )
        )
    checks += _against_plain_checks(summary)
    idle = min(m.cli_idle_peak_rss_bytes for m in memory.values())
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


def _against_plain_checks(summary: ColdStartSummary) -> list[TargetCheck]:
    """What a user waits for, as a multiple of a cold plain-script process doing the same batch."""
    plain = _measured(summary.plain_process_s, "plain-script process").median
    running = summary.make_trigger_flow_run_s
    of_which = ""
    if running is not None:
        of_which = f"; of it the Running state {running.median:.2f} s ({running.median / plain:.1f}x)"
    checks = []
    for stats, limit, label, more in (
        (
            summary.make_trigger_to_final_s,
            MAX_TRIGGERED_RUN_TO_PLAIN,
            "a run started by `make trigger`: created → COMPLETED",
            of_which,
        ),
        (summary.make_trigger_wall_s, MAX_TRIGGER_WALL_TO_PLAIN, "`make trigger`, its whole wall time", ""),
        (
            summary.cli_with_services_s,
            MAX_CLI_WITH_SERVICES_TO_PLAIN,
            "the CLI (what `make run` runs), services up, whole process",
            "",
        ),
    ):
        measured = _measured(stats, label)
        checks.append(
            _check(
                f"{label} / a cold plain-script process doing the same batch (medians)",
                measured.median / plain,
                limit,
                "x",
                f"{measured.median:.2f} s vs {plain:.2f} s (runs {runs_text(measured)} s){more}",
            )
        )
    return checks


def _run_checks(cold: ColdStart, summary: ColdStartSummary) -> list[TargetCheck]:
    """A deployment run through the worker and (when measured) a scheduled run from its tick."""
    run = _measured(summary.deployment_flow_run_s, "deployment run")
    to_final = _measured(summary.deployment_trigger_to_final_s, "deployment run")
    checks = [
        _check(
            f"deployment run of a {cold.rows_per_batch}-row batch through the worker (services up): the "
            f"flow run's start → end, median of {len(run.all)}",
            run.median,
            MAX_DEPLOYMENT_RUN_S,
            "s",
            f"runs {runs_text(run)} s; trigger → final state {to_final.median:.2f} s (median)",
        )
    ]
    tick = summary.tick_to_completed_s
    if tick is not None:
        to_start = _measured(summary.tick_to_start_s, "scheduled run")
        checks.append(
            _check(
                f"cron tick → COMPLETED of a scheduled run (expected start → end), worker idle, median of "
                f"{len(tick.all)}",
                tick.median,
                MAX_TICK_TO_COMPLETED_S,
                "s",
                f"runs {runs_text(tick)} s; tick → start {to_start.median:.2f} s (median); "
                f"{len(cold.scheduled_runs.not_counted)} scheduled run(s) not counted (see the JSON)",
            )
        )
    return checks


def drift_checks(timings: Sequence[DriftTiming]) -> list[TargetCheck]:
    """The monitoring step's targets, one per case (the same shape as the benchmark's others)."""
    return [
        _check(
            f"monitoring step (read reference, drift tests, champion score): {t.case.name}",
            t.total_s,
            t.case.target_s,
            "s",
            f"median of {len(t.each_total_s)}",
        )
        for t in timings
    ]
