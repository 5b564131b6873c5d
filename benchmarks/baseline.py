"""The plain-script baseline (the floor): the flow's work through the project's plain functions.

One batch is read, validated, split and merged with every earlier accepted batch re-read from
its Parquet file (``retrain_pipeline.sources``, ``.data``), written, checked for drift against the
champion's training data (``retrain_pipeline.monitoring``), trained and scored against the
champion kept in memory (``retrain_pipeline.model``) and saved with joblib: no Prefect, MLflow
or DVC. The project modules are imported inside the functions, so that a worker can time them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.records import BaselineBatch, RunJob
from benchmarks.spec import BASELINE_STEPS, BenchmarkError

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from retrain_pipeline.config import Settings
    from retrain_pipeline.data import TrainHoldout

logger = logging.getLogger(__name__)


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


def group_steps(seconds: dict[str, float], mapping: dict[str, str]) -> dict[str, float]:
    """Seconds per sub-step summed into the steps ``mapping`` assigns them to."""
    grouped: dict[str, float] = {}
    for name, value in seconds.items():
        grouped[mapping[name]] = grouped.get(mapping[name], 0.0) + value
    return grouped


@dataclass
class BaselineRun:
    """A plain-script run over one project: what it keeps between batches."""

    settings: Settings
    out: Path
    features: list[str] | None = None
    accepted: list[int] = field(default_factory=list)
    champion: Pipeline | None = None
    champion_batch: int | None = None

    def batch_file(self, batch_number: int) -> Path:
        return self.out / "batches" / f"batch_{batch_number}.parquet"


def baseline_batch(run: BaselineRun, batch_number: int) -> BaselineBatch:
    """One batch through the plain functions, timed per step."""
    timer = StepTimer()
    start, cpu = time.perf_counter(), time.process_time()
    parts = _baseline_data(run, batch_number, timer)
    _baseline_model(run, parts, batch_number, timer)
    wall = time.perf_counter() - start
    run.accepted.append(batch_number)
    return BaselineBatch(
        batch=batch_number,
        wall_s=wall,
        process_cpu_s=time.process_time() - cpu,
        rows_accumulated=parts.summary.rows,
        substeps=timer.seconds,
        steps=group_steps(timer.seconds, BASELINE_STEPS),
    )


def _baseline_data(run: BaselineRun, n: int, timer: StepTimer) -> TrainHoldout:
    """Read, validate, split, merge with the earlier batches (re-read), write the batch: the
    same plain functions the flow's validate-and-merge task calls."""
    from retrain_pipeline import data, sources

    cfg = run.settings.data
    with timer.step("read"):
        path = sources.find_landing_file(cfg.landing_dir, n)
        if path is None:
            raise BenchmarkError(f"landing batch {n} is missing in {cfg.landing_dir}")
        frame = sources.read_batch_file(path, n)
    with timer.step("validate+merge"):
        first = (
            data.read_first_batch(run.batch_file(run.accepted[0]), run.accepted[0]) if run.accepted else None
        )
        earlier = data.training_batches(run.accepted, n, cfg.window_batches)[:-1]
        incremental = run.settings.model.training == "incremental" and run.champion_batch is not None
        merged = data.validate_and_merge_batch(
            frame,
            config=cfg,
            evaluation=run.settings.evaluation,
            batch_number=n,
            source=str(path),
            first=first,
            earlier={k: run.batch_file(k) for k in earlier},
            learn={k for k in earlier if k > (run.champion_batch or 0)} if incremental else None,
        )
        run.features = [str(c) for c in merged.parts.train_features.columns]
    with timer.step("write data"):
        data.write_processed_batch(merged.split, run.batch_file(n), merged.kinds)
    with timer.step("drift check"):
        _baseline_drift_check(run, merged.valid, n)
    return merged.parts


def _baseline_drift_check(run: BaselineRun, batch: pd.DataFrame, n: int) -> None:
    """The flow's monitoring step, through the same plain functions: the batch against the
    champion's training data, and the champion's score on the batch."""
    from retrain_pipeline import data, monitoring

    if run.champion is None or run.champion_batch is None or run.features is None:
        return
    cfg, config = run.settings.data, run.settings.monitoring
    reference = data.training_batches(run.accepted, run.champion_batch, cfg.window_batches)
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


def _baseline_model(run: BaselineRun, parts: TrainHoldout, n: int, timer: StepTimer) -> None:
    """Train, score the new and the previous model on the holdout, save the model."""
    import joblib

    from retrain_pipeline import model

    with timer.step("train"):
        config, impute = run.settings.model, run.settings.data.allow_missing_values
        if config.training == "incremental" and run.champion is not None:  # as the flow's train task
            trained = model.continue_training(
                config, run.champion, parts.train_features, parts.train_target, run.settings.data.classes
            )
        else:
            trained = model.train_model(config, parts.train_features, parts.train_target, impute=impute)
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


def run_baseline(job: RunJob) -> list[BaselineBatch]:
    """The baseline over one project's batches 1..N."""
    from retrain_pipeline.params import load_settings

    run = BaselineRun(load_settings(job.params_file), Path(job.baseline_out))
    batches = []
    for n in range(1, job.n_batches + 1):
        batches.append(baseline_batch(run, n))
        logger.info("baseline %s rep %s batch %d: %.2f s", job.size, job.rep, n, batches[-1].wall_s)
    return batches
