"""Monitoring a batch against the champion: has the data drifted, has the champion decayed,
must the batch be trained (``monitoring.retrain_policy``)?

Plain functions, no Prefect and no MLflow; :mod:`retrain_pipeline.monitoring_tasks` runs them
in the flow. The statistics are in :mod:`retrain_pipeline.drift`.

- **Reference**: the accepted batches the current champion was trained on: its own batch
  and the earlier accepted batches of its window (``data.window_batches``), the same rule
  that chose its training data. No champion: nothing to compare with.
- **Decay**: the champion scores the new batch (labels arrive with it; a sample of
  ``sample_rows`` rows when it is larger) with the primary metric; it has decayed when that
  score is more than ``decay_tolerance`` below its score on the holdout when it was trained.
- **Policy**: ``always`` trains every batch. ``on_change`` trains only when the data drifted
  or the champion decayed, or when either could not be checked (no champion, a champion
  that cannot score the batch, a batch or reference under ``min_rows`` rows); ``--force``
  always trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from retrain_pipeline import data, drift, model
from retrain_pipeline.config import MonitoringConfig
from retrain_pipeline.state import ColumnDriftRecord, DriftRecord, PipelineState


def champion_batch(state: PipelineState) -> int | None:
    """The batch whose model is the current champion."""
    if state.champion_version is None:
        return None
    return state.batch_of_version(state.champion_version)


def reference_batches(state: PipelineState, window_batches: int | None) -> list[int]:
    """The accepted batches the current champion was trained on, oldest first."""
    batch = champion_batch(state)
    if batch is None:
        return []
    return data.training_batches(state.accepted_batches(up_to=batch), batch, window_batches)


def read_reference(
    files: Sequence[Path], columns: Sequence[str], sample_rows: int, seed: int
) -> tuple[pd.DataFrame, int]:
    """The feature ``columns`` of the processed ``files``, at most about ``sample_rows`` rows
    in all (a uniform sample: each file gives its share), and the number of rows they hold.

    Sampling file by file keeps a large history (a million rows) from being loaded whole.
    """
    total = sum(pq.read_metadata(path).num_rows for path in files)
    rng = np.random.default_rng(seed)
    tables = []
    for path in files:
        table = pq.read_table(path, columns=list(columns))
        if total > sample_rows:
            keep = round(sample_rows * table.num_rows / total)
            table = table.take(np.sort(rng.choice(table.num_rows, size=keep, replace=False)))
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=list(columns)), 0
    return pa.concat_tables(tables).to_pandas(), total


def drift_against(
    files: Sequence[Path],
    batch: pd.DataFrame,
    features: Sequence[str],
    config: MonitoringConfig,
    seed: int,
) -> drift.DriftReport:
    """The batch against the reference batches' processed ``files``, read and sampled file by
    file (:func:`read_reference`); the report counts the reference's rows before sampling."""
    frame, rows = read_reference(files, features, config.sample_rows, seed)
    report = drift.detect_drift(frame, batch, features, config.drift_rules(), seed=seed)
    return dataclasses.replace(report, reference_rows=rows, reference_sampled=rows > len(frame))


def score_on_batch(
    champion: object,
    batch: pd.DataFrame,
    *,
    features: Sequence[str],
    target_column: str,
    positive_label: int | str,
    metric: str,
    sample_rows: int | None = None,
    seed: int = 0,
) -> float | None:
    """``champion``'s ``metric`` on the batch (a seeded uniform sample of ``sample_rows`` rows
    when it is larger); ValueError or KeyError when it cannot score these columns."""
    if sample_rows is not None and len(batch) > sample_rows:
        batch = batch.sample(n=sample_rows, random_state=seed)
    scores = model.evaluate_model(champion, batch[list(features)], batch[target_column], positive_label)
    return _finite(scores.get(metric))


@dataclass(frozen=True)
class ChampionScore:
    """The champion's primary metric when it was trained and on the new batch."""

    version: str
    metric: str
    at_promotion: float | None
    on_batch: float | None
    problem: str | None = None  # why it could not score the batch


def champion_score(
    champion: object,
    version: str,
    state: PipelineState,
    batch: pd.DataFrame,
    *,
    features: Sequence[str],
    target_column: str,
    positive_label: int | str,
    metric: str,
    sample_rows: int | None = None,
    seed: int = 0,
) -> ChampionScore:
    """:func:`score_on_batch`, beside the champion's promotion-time score from the state."""
    batch_number = state.batch_of_version(version)
    record = state.record(batch_number) if batch_number is not None else None
    at_promotion = _finite((record.metrics or {}).get(metric)) if record else None
    try:
        on_batch = score_on_batch(
            champion,
            batch,
            features=features,
            target_column=target_column,
            positive_label=positive_label,
            metric=metric,
            sample_rows=sample_rows,
            seed=seed,
        )
    except (ValueError, KeyError) as exc:  # e.g. trained on other feature columns
        return ChampionScore(version, metric, at_promotion, None, str(exc))
    return ChampionScore(version, metric, at_promotion, on_batch)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def drift_record(
    config: MonitoringConfig,
    report: drift.DriftReport | None,
    reference: Sequence[int],
    score: ChampionScore | None,
    *,
    note: str | None = None,
) -> DriftRecord:
    """The ``drift`` section of the batch's state record. ``note`` says why there is no report."""
    decay = None
    if score is not None and score.at_promotion is not None and score.on_batch is not None:
        decay = score.at_promotion - score.on_batch > config.decay_tolerance + 1e-12
    if report is not None:
        note = report.skipped_reason
    tested = 0 if report is None else sum(1 for c in report.columns if c.method != "none")
    checked = report is not None and report.skipped_reason is None and tested > 0
    return DriftRecord(
        dataset_drift=report.dataset_drift if checked and report else None,
        drift_share=report.drift_share if checked and report else None,
        share_threshold=config.drift_share,
        columns_tested=tested,
        drifted_columns=[
            ColumnDriftRecord(column=c.column, method=c.method, score=c.score, threshold=c.threshold)
            for c in (report.columns if report else ())
            if c.drifted
        ],
        reference_batches=list(reference),
        reference_rows=report.reference_rows if report else 0,
        current_rows=report.current_rows if report else 0,
        note=note if not checked else None,
        champion_version=score.version if score else None,
        metric=score.metric if score else None,
        champion_score_at_promotion=score.at_promotion if score else None,
        champion_score_on_batch=score.on_batch if score else None,
        decay_tolerance=config.decay_tolerance,
        decay=decay,
    )


@dataclass(frozen=True)
class RetrainDecision:
    train: bool
    reason: str


def retrain_decision(policy: str, record: DriftRecord, *, force: bool) -> RetrainDecision:
    """Whether the batch is trained, and why (the skip reason carries the figures)."""
    if policy == "always":
        return RetrainDecision(True, "retrain_policy is always")
    if force:
        return RetrainDecision(True, "--force")
    if record.champion_version is None:
        return RetrainDecision(True, "no champion yet")
    if record.dataset_drift:
        return RetrainDecision(True, "data drifted: " + _drift_figures(record))
    if record.decay:
        return RetrainDecision(True, "champion decayed: " + _decay_figures(record))
    if record.dataset_drift is None:
        return RetrainDecision(True, f"drift could not be checked ({record.note})")
    if record.decay is None:
        return RetrainDecision(True, "champion decay could not be checked")
    return RetrainDecision(
        False, f"no drift ({_drift_figures(record)}) and no decay ({_decay_figures(record)})"
    )


def _drift_figures(record: DriftRecord) -> str:
    drifted = len(record.drifted_columns)
    return (
        f"{drifted} of {record.columns_tested} columns drifted, share "
        f"{record.drift_share or 0:.2f} vs threshold {record.share_threshold:g}"
    )


def _decay_figures(record: DriftRecord) -> str:
    return (
        f"champion v{record.champion_version} {record.metric} {record.champion_score_on_batch:.4f} "
        f"on this batch vs {record.champion_score_at_promotion:.4f} when trained, tolerance "
        f"{record.decay_tolerance:g}"
    )


def drift_markdown(batch_number: int, record: DriftRecord, report: drift.DriftReport | None) -> str:
    """The Prefect artifact: the verdicts, then the table of the most drifted columns."""
    lines = [f"# Batch {batch_number}: drift against the champion's training data", ""]
    if record.reference_batches:
        lines.append(
            f"Reference: batches {', '.join(map(str, record.reference_batches))} "
            f"({record.reference_rows} rows); this batch: {record.current_rows} rows."
        )
        lines.append("")
    if record.champion_version is not None:
        on_batch, at_promotion = record.champion_score_on_batch, record.champion_score_at_promotion
        lines.append(
            f"**Champion v{record.champion_version}**: {record.metric} "
            f"{'n/a' if on_batch is None else f'{on_batch:.4f}'} on this batch, "
            f"{'n/a' if at_promotion is None else f'{at_promotion:.4f}'} when trained; decay: "
            f"{'n/a' if record.decay is None else ('**yes**' if record.decay else 'no')} "
            f"(tolerance {record.decay_tolerance:g})"
        )
        lines.append("")
    if report is None:
        lines.append(f"Drift not checked: {record.note}")
    else:
        lines.append(drift.markdown_table(report))
    return "\n".join(lines) + "\n"


#: The per-column table on the batch's MLflow run.
DRIFT_REPORT_FILE = "drift_report.json"


def mlflow_metrics(record: DriftRecord) -> dict[str, float | None]:
    """The monitoring metrics of the batch's MLflow run (None: not logged)."""
    dataset_drift = record.dataset_drift
    return {
        "drift_share": record.drift_share,
        "dataset_drift": None if dataset_drift is None else float(dataset_drift),
        "drifted_columns": None if dataset_drift is None else float(len(record.drifted_columns)),
        "champion_score_on_batch": record.champion_score_on_batch,
        "champion_decay": None if record.decay is None else float(record.decay),
    }


def report_document(record: DriftRecord, report: drift.DriftReport | None) -> dict[str, object]:
    """The JSON logged as :data:`DRIFT_REPORT_FILE`: the summary and every column's test."""
    return {
        "summary": record.model_dump(mode="json"),
        "columns": [] if report is None else [column.to_dict() for column in report.columns],
    }
