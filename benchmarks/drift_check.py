"""The cost of the monitoring step (``check-drift``) at the two sizes issue #15 sets targets for.

The step the flow runs, through the same plain functions: read (and sample) the champion's
training data from its processed parquet files, test every feature of the new batch against
it (:func:`retrain_pipeline.drift.detect_drift`), and score the champion on the whole batch.
Each case is timed ``repetitions`` times in this process (scipy is already imported by then,
as it is in a flow run: scikit-learn imports it); the median goes into BENCHMARKS.md (its
target check is :func:`benchmarks.analysis.drift_checks`, its table
:func:`benchmarks.report.render_drift_check`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pandas as pd

from benchmarks.records import DriftCase, DriftTiming
from benchmarks.synthetic import TARGET, make_batches
from retrain_pipeline import drift, model, monitoring
from retrain_pipeline.config import ModelConfig, MonitoringConfig

FULL_CASES = (
    DriftCase("50-row batch vs 400 rows", 50, 8, 50, 0.3),
    DriftCase("100k-row batch vs 1M rows", 100_000, 10, 100_000, 1.0),
)
SMOKE_CASES = (
    DriftCase("50-row batch vs 400 rows", 50, 8, 50, 0.3),
    DriftCase("10k-row batch vs 100k rows", 10_000, 10, 10_000, 1.0),
)


def _write_reference(folder: Path, case: DriftCase, n_features: int) -> tuple[list[Path], pd.DataFrame]:
    frames = make_batches(case.reference_files + 1, case.reference_rows_per_file, n_features, seed=7)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, frame in enumerate(frames[:-1], start=1):
        path = folder / f"batch_{number}.parquet"
        frame.to_parquet(path, index=False)
        files.append(path)
    batch = make_batches(1, case.batch_rows, n_features, seed=8)[0]
    return files, batch


def time_case(
    case: DriftCase, folder: Path, champion_config: ModelConfig, repetitions: int = 3, n_features: int = 30
) -> DriftTiming:
    files, batch = _write_reference(folder, case, n_features)
    features = [c for c in batch.columns if c != TARGET]
    config = MonitoringConfig()
    small = pd.read_parquet(files[0])
    champion = model.train_model(champion_config, small[features], small[TARGET])
    reads, detects, scores, totals = [], [], [], []
    report: drift.DriftReport | None = None
    rows = sampled = 0
    for _ in range(repetitions):
        start = time.perf_counter()
        frame, rows = monitoring.read_reference(files, features, config.sample_rows, seed=1)
        read = time.perf_counter()
        report = drift.detect_drift(frame, batch, features, config.drift_rules(), seed=1)
        detect = time.perf_counter()
        scored = (
            batch.sample(n=config.sample_rows, random_state=1) if len(batch) > config.sample_rows else batch
        )
        model.evaluate_model(champion, scored[features], scored[TARGET], 1)
        end = time.perf_counter()
        sampled = len(frame)
        reads.append(read - start)
        detects.append(detect - read)
        scores.append(end - detect)
        totals.append(end - start)
    methods = sorted({c.method for c in report.columns}) if report else []
    return DriftTiming(
        case,
        statistics.median(reads),
        statistics.median(detects),
        statistics.median(scores),
        statistics.median(totals),
        totals,
        rows,
        sampled,
        ", ".join(methods),
    )


def measure_drift_check(work: Path, smoke: bool, champion_config: ModelConfig) -> list[DriftTiming]:
    """Each case's timing; the champion is ``champion_config`` trained on one reference file."""
    cases = SMOKE_CASES if smoke else FULL_CASES
    return [time_case(case, work / f"drift-{i}", champion_config) for i, case in enumerate(cases)]
