"""The benchmark's pure parts: fits, per-size summaries, target checks, the records' JSON form, rendering.

No process, server or file is started or written: the records are built in the test. The
smoke test (test_bench_smoke.py) reads a real benchmark.json back through the records.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
from benchmarks.analysis import _window_checks, growth, linear_fit, per_batch_table, summarize_size
from benchmarks.baseline import group_steps
from benchmarks.flow_run import flow_steps, task_name
from benchmarks.records import (
    BaselineBatch,
    BaselineRunResult,
    FlowBatch,
    FlowRunResult,
    ScheduledRuns,
    SkippedScheduledRuns,
    TargetCheck,
    TaskDuration,
    from_dict,
)
from benchmarks.report import render_targets
from benchmarks.spec import (
    BASELINE_STEPS,
    ORCHESTRATION,
    UNMAPPED,
    SizeSpec,
)


def flow_batch(n: int, wall_s: float, tasks: list[TaskDuration]) -> FlowBatch:
    return FlowBatch(n, wall_s, 0.5, 0.25, "completed", f"run-{n}", tasks, flow_steps(wall_s, tasks))


def baseline_batch(n: int, wall_s: float) -> BaselineBatch:
    substeps = {"read": wall_s / 4, "write data": wall_s / 4, "train": wall_s / 2}
    return BaselineBatch(n, wall_s, 0.1, 50 * n, substeps, group_steps(substeps, BASELINE_STEPS))


def runs(
    spec: SizeSpec, flow_s: list[list[float]], base_s: list[list[float]]
) -> tuple[list[FlowRunResult], list[BaselineRunResult]]:
    """Flow and baseline runs of a size, one per repetition, from their per-batch wall times."""
    task = [TaskDuration("train-model", 0.25)]
    flow = [
        FlowRunResult(
            spec.name,
            rep,
            "p",
            "b",
            spec.batches,
            [flow_batch(n, s, task) for n, s in enumerate(times, 1)],
            1,
        )
        for rep, times in enumerate(flow_s, 1)
    ]
    base = [
        BaselineRunResult(
            spec.name, rep, "p", "b", spec.batches, [baseline_batch(n, s) for n, s in enumerate(times, 1)], 1
        )
        for rep, times in enumerate(base_s, 1)
    ]
    return flow, base


def test_linear_fit_recovers_a_line_and_has_no_slope_without_spread() -> None:
    fit = linear_fit([1, 2, 3, 4], [3.0, 5.0, 7.0, 9.0])
    assert fit.intercept_s == pytest.approx(1.0) and fit.slope_s_per_row == pytest.approx(2.0)
    assert fit.r2 == pytest.approx(1.0)
    flat = linear_fit([5, 5, 5], [1.0, 2.0, 3.0])
    assert (flat.intercept_s, flat.slope_s_per_row, flat.r2) == (2.0, 0.0, 0.0)


def test_flow_steps_map_tasks_and_leave_the_rest_to_orchestration() -> None:
    steps = flow_steps(2.0, [TaskDuration("train-model", 0.5), TaskDuration("new-task", 0.25)])
    assert steps["train"] == 0.5 and steps[UNMAPPED] == 0.25
    assert steps[ORCHESTRATION] == pytest.approx(1.25)
    assert task_name("log-to-mlflow-3a1") == "log-to-mlflow"


def test_per_batch_table_takes_medians_and_caps_rows_at_the_window() -> None:
    spec = SizeSpec("w", rows=100, batches=4, repetitions=3, window=2)
    flow, base = runs(spec, [[2, 2, 2, 2], [4, 4, 4, 4], [3, 3, 3, 30]], [[1, 1, 1, 1]] * 3)
    table = per_batch_table(spec, flow, base)
    assert [row.rows_accumulated for row in table] == [100, 200, 200, 200]
    assert [row.flow_s for row in table] == [3, 3, 3, 4]
    assert table[-1].ratio == 4 and table[-1].difference_s == 3
    grown = growth(table, [row.flow_s for row in table])
    assert (grown.late_batch, grown.early_batch, grown.rows_ratio) == (4, 2, 1.0)
    assert grown.time_ratio == pytest.approx(4 / 3)


def test_summarize_size_and_the_window_check() -> None:
    spec = SizeSpec("large-window", rows=1000, batches=4, repetitions=1, window=2)
    flow, base = runs(spec, [[3.0, 2.0, 2.0, 2.0]], [[1.0, 1.0, 1.0, 1.0]])
    size = summarize_size(spec, flow, base)
    assert size.flow_total_s.all == [9.0] and size.baseline_total_s.median == 4.0
    assert size.ratio_total_medians == 2.25 and size.ratio_mean_batches_2_to_n == 2.0
    assert size.fixed_overhead_s == 1.0
    assert size.flow_tasks_s == {"train-model": 1.0}
    assert size.baseline_steps_s["validate+merge"] == 2.0 and size.baseline_steps_s["train"] == 2.0
    assert size.cpu_per_batch_s == {"baseline process": 0.1, "flow process": 0.5, "Prefect API server": 0.25}
    (check,) = _window_checks({"large-window": size})
    assert check.measured == pytest.approx(1.0) and check.passed
    assert check.target.startswith("flat with data.window_batches=2 (large-window, 1,000 rows/batch)")


def test_scheduled_runs_keep_their_json_form_both_ways() -> None:
    skipped = {"wanted": 0, "runs": [], "not_counted": [], "skipped": "the smoke variant does not wait"}
    waited = {"wanted": 3, "runs": [], "not_counted": []}
    either: Any = SkippedScheduledRuns | ScheduledRuns  # the type of ColdStart.scheduled_runs
    assert type(from_dict(either, skipped)) is SkippedScheduledRuns
    assert type(from_dict(either, waited)) is ScheduledRuns
    assert asdict(from_dict(either, skipped)) == skipped
    assert asdict(from_dict(either, waited)) == waited
    with pytest.raises(ValueError, match="runs"):
        from_dict(ScheduledRuns, {"wanted": 1})


def test_report_rows_for_targets() -> None:
    checks = [
        TargetCheck("fast enough", 1.5, 2.0, "s", True, "median of 3"),
        TargetCheck("lean", 4.0, 3.0, "x", False, ""),
    ]
    lines = render_targets(checks)
    assert lines[2] == "| target | measured | limit | result | detail |"
    assert "| fast enough | 1.50 s | <= 2.00 s | **PASS** | median of 3 |" in lines
    assert "| lean | 4.00 x | <= 3.00 x | **FAIL** |  |" in lines
