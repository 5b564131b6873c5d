"""Prefect task for monitoring: compare the batch with the champion's data to decide whether
to train it. Thin wrapper: the logic lives in :mod:`retrain_pipeline.monitoring` and ``drift``."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from retrain_pipeline import drift, monitoring
from retrain_pipeline.config import Settings
from retrain_pipeline.data_tasks import TrainingData
from retrain_pipeline.errors import StateError
from retrain_pipeline.manifests import restore_processed_batches
from retrain_pipeline.model_tasks import Champion
from retrain_pipeline.state import DriftRecord, PipelineState


@dataclass(frozen=True)
class BatchMonitoring:
    record: DriftRecord  # the state record's ``drift`` section
    report: drift.DriftReport | None  # every column (logged to MLflow as JSON)
    decision: monitoring.RetrainDecision


@task(name="check-drift", cache_policy=NO_CACHE)
def monitor_batch(
    settings: Settings, state: PipelineState, training: TrainingData, champion: Champion | None, force: bool
) -> BatchMonitoring:
    """Drift of the batch against the champion's training data, the champion's score on it,
    and whether ``monitoring.retrain_policy`` trains it; publishes a ``drift-report`` artifact."""
    logger = get_run_logger()
    cfg, n = settings.monitoring, training.batch_number
    reference = monitoring.reference_batches(state, settings.data.window_batches)
    report: drift.DriftReport | None = None
    score: monitoring.ChampionScore | None = None
    note = None if champion is not None else "no champion yet: nothing to compare with"
    if champion is not None:
        features = [str(c) for c in training.parts.train_features.columns]
        score = monitoring.champion_score(
            champion.model,
            champion.version,
            state,
            training.batch_frame,
            features=features,
            target_column=settings.data.target_column,
            positive_label=settings.data.classes[1],
            metric=settings.evaluation.primary_metric,
            sample_rows=cfg.sample_rows,
            seed=settings.evaluation.split_seed + n,
        )
        if score.problem:
            logger.warning("Champion v%s cannot score batch %d: %s", champion.version, n, score.problem)
        if not reference:
            note = f"champion v{champion.version} has no recorded training batches"
        else:
            try:
                report = _drift_report(settings, state, training, reference, features)
            except (OSError, StateError, pa.ArrowInvalid, KeyError) as exc:
                # Monitoring informs; it never blocks the batch (on_change then trains it).
                note = f"the champion's training data cannot be read: {exc}"
                logger.warning("Batch %d: drift not checked: %s", n, note)
    record = monitoring.drift_record(cfg, report, reference, score, note=note)
    decision = monitoring.retrain_decision(cfg.retrain_policy, record, force=force)
    _log_summary(record, decision, n)
    create_markdown_artifact(
        markdown=monitoring.drift_markdown(n, record, report),
        key="drift-report",
        description=f"Batch {n}: drift against the champion's training data",
    )
    return BatchMonitoring(record, report, decision)


def _drift_report(
    settings: Settings,
    state: PipelineState,
    training: TrainingData,
    reference: list[int],
    features: list[str],
) -> drift.DriftReport:
    """:func:`monitoring.drift_against` the reference batches' processed files, fetched from
    the DVC remote first when missing here."""
    restore_processed_batches(settings, state, reference)
    files = [settings.processed_batch_file(k) for k in reference]
    seed = settings.evaluation.split_seed + training.batch_number
    return monitoring.drift_against(files, training.batch_frame, features, settings.monitoring, seed)


def _log_summary(record: DriftRecord, decision: monitoring.RetrainDecision, batch_number: int) -> None:
    logger = get_run_logger()
    if record.dataset_drift is None:
        logger.info("Batch %d: drift not checked (%s)", batch_number, record.note)
    else:
        drifted = ", ".join(c.column for c in record.drifted_columns[:5]) or "none"
        logger.log(
            30 if record.dataset_drift else 20,
            "Batch %d: %s: %d of %d columns drifted (share %.2f, threshold %g; %s)",
            batch_number,
            "DATA DRIFT" if record.dataset_drift else "no data drift",
            len(record.drifted_columns),
            record.columns_tested,
            record.drift_share or 0.0,
            record.share_threshold,
            drifted,
        )
    if record.decay:
        logger.warning(
            "Batch %d: champion v%s decayed: %s %.4f on this batch vs %.4f when trained",
            batch_number,
            record.champion_version,
            record.metric,
            record.champion_score_on_batch,
            record.champion_score_at_promotion,
        )
    logger.info(
        "Batch %d: %s (%s)", batch_number, "train" if decision.train else "do not train", decision.reason
    )
