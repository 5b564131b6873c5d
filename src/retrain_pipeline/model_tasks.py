"""Prefect tasks for models: champion, training, evaluation, MLflow logging, promotion.

Thin wrappers: the logic lives in :mod:`retrain_pipeline.model` and ``tracking``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from sklearn.pipeline import Pipeline

from retrain_pipeline import data_tasks, model, reporting, tracking
from retrain_pipeline.config import Settings
from retrain_pipeline.data_tasks import TrainingData
from retrain_pipeline.errors import TrackingError
from retrain_pipeline.fileio import atomic_path, md5_file
from retrain_pipeline.state import PipelineState
from retrain_pipeline.state_stores import state_store
from retrain_pipeline.tracking import SKIP_REASON_TAG, TRAINED_TAG


@dataclass(frozen=True)
class Champion:
    version: str
    model: Any


@task(name="load-champion", cache_policy=NO_CACHE)
def load_champion(settings: Settings, state: PipelineState) -> tuple[str, Champion | None]:
    """Connect to MLflow; returns the experiment id and the current champion from the registry.

    Runs of this project left RUNNING by a killed attempt are marked KILLED first.
    The state store (``batch_state.json`` or PostgreSQL) is the commit point: if a run stopped
    after recording a promotion but before moving the alias, the alias is moved to the
    recorded champion first.
    """
    logger = get_run_logger()
    experiment_id = tracking.connect(settings.mlflow)
    orphans = tracking.close_orphaned_runs(settings.mlflow, experiment_id, settings.project_id)
    if orphans:
        logger.warning("Marked MLflow runs of killed attempts as KILLED: %s", ", ".join(orphans))
    return experiment_id, _champion(settings, state)


def _champion(settings: Settings, state: PipelineState) -> Champion | None:
    logger = get_run_logger()
    version = tracking.champion_version(settings.mlflow)
    if state.champion_version is not None and version != state.champion_version:
        logger.warning(
            "MLflow alias '%s' is at %s but %s records champion v%s; restoring the recorded one",
            tracking.CHAMPION_ALIAS,
            version,
            state_store(settings).description,
            state.champion_version,
        )
        tracking.set_champion(settings.mlflow, state.champion_version)
        version = state.champion_version
    if version is None:
        return None
    local = _local_champion(settings, state, version)
    if local is not None:
        return Champion(version, local)
    return Champion(version, tracking.load_version(settings.mlflow, version))


def _local_champion(settings: Settings, state: PipelineState, version: str) -> Any | None:
    """The champion from ``models/champion.joblib`` when that file is exactly version ``version``.

    The file is a copy of the model the promoting run registered; it is used only when its md5
    is the ``model_md5`` the state records for that version, so a rollback, another machine's
    promotion or an edited file all fall back to loading the version from the registry.
    Loading the local file costs milliseconds; the registry's (skops) about 1.7 s.
    """
    path = settings.champion_model_file
    recorded = {record.model_md5 for record in state.batches.values() if record.model_version == version}
    recorded.discard(None)
    if len(recorded) != 1 or not path.is_file() or md5_file(path) not in recorded:
        return None
    import joblib

    get_run_logger().debug("Champion v%s loaded from %s (md5 matches the state)", version, path)
    return joblib.load(path)


@task(name="train-model", cache_policy=NO_CACHE)
def train(settings: Settings, training: TrainingData, champion: Champion | None) -> model.Trained:
    """Train on the merged train rows; ``model.training: incremental`` continues from the
    champion on the batches it has not learned, or says why it cannot and trains from scratch
    on every batch of the window."""
    parts, impute = training.parts, settings.data.allow_missing_values
    batches = ", ".join(map(str, training.learned))
    if settings.model.training == "full":
        fitted = model.train_model(settings.model, parts.train_features, parts.train_target, impute=impute)
        return model.Trained(
            fitted, None, training.learned, parts.summary, f"trained from scratch on batches {batches}"
        )
    logger = get_run_logger()
    old = champion.model if champion else None
    problem = model.cannot_continue(settings.model, old, parts.train_features, impute=impute)
    if champion is not None and problem is None:
        fitted = model.continue_training(
            settings.model, champion.model, parts.train_features, parts.train_target, settings.data.classes
        )
        how = f"continued from champion v{champion.version} on batches {batches}"
        logger.info("Incremental training: %s", how)
        return model.Trained(fitted, champion.version, training.learned, parts.summary, how)
    features, target, summary = parts.train_features, parts.train_target, parts.summary
    if training.learned != training.accepted_batches:
        features, target, summary = data_tasks.full_train_part(settings, training)
    everything = ", ".join(map(str, training.accepted_batches))
    how = f"trained from scratch on batches {everything}: cannot continue from the champion ({problem})"
    logger.info("Incremental training: %s", how)
    fitted = model.train_model(settings.model, features, target, impute=impute)
    return model.Trained(fitted, None, training.accepted_batches, summary, how)


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate(
    settings: Settings, trained: Pipeline, champion: Champion | None, training: TrainingData
) -> model.Evaluation:
    """Score the new model and the champion on the same holdout; decide promotion."""
    logger = get_run_logger()
    cfg = settings.evaluation
    evaluation = model.evaluate_against_champion(
        trained,
        champion.model if champion else None,
        champion.version if champion else None,
        training.parts.holdout_features,
        training.parts.holdout_target,
        positive_label=settings.data.classes[1],
        metric=cfg.primary_metric,
        tolerance=cfg.promotion_tolerance,
    )
    if champion is not None and evaluation.champion_problem:
        logger.warning(
            "Champion v%s cannot score the current holdout: %s", champion.version, evaluation.champion_problem
        )
    logger.info(
        "%s=%s; decision: %s",
        cfg.primary_metric,
        evaluation.metrics.get(cfg.primary_metric),
        evaluation.decision.reason,
    )
    return evaluation


@task(name="log-to-mlflow", cache_policy=NO_CACHE)
def log_run(
    settings: Settings,
    experiment_id: str,
    *,
    trained: model.Trained,
    training: TrainingData,
    evaluation: model.Evaluation,
    tags: dict[str, str],
    monitoring_metrics: dict[str, float | None],
    documents: dict[str, Any],
) -> tracking.LoggedModel:
    """One MLflow run for this attempt: tags, params, metrics (with the batch's monitoring
    figures), JSON documents, model; registers a version."""
    cfg = settings
    summary = trained.summary
    # A few training rows as the input example (every batch has at least one).
    example = training.parts.train_features.head(5)
    params: dict[str, Any] = {
        "batch_number": training.batch_number,
        "estimator": cfg.model.estimator,
        "random_state": cfg.model.random_state,
        "impute_strategy": cfg.model.impute_strategy,
        "scale_features": cfg.model.scale_features,
        "batch_rows": training.rows,
        "training_rows_total": summary.rows,
        "train_rows": summary.train_rows,
        "holdout_rows": summary.holdout_rows,
        "accepted_batches": ",".join(map(str, training.accepted_batches)),
        "window_batches": cfg.data.window_batches or "all",
        "training": cfg.model.training,
        "continued_from_version": trained.continued_from or "none",
        "learned_batches": ",".join(map(str, trained.learned)),
        "holdout_fraction": cfg.evaluation.holdout_fraction,
        "primary_metric": cfg.evaluation.primary_metric,
        "promotion_tolerance": cfg.evaluation.promotion_tolerance,
        **{f"model__{key}": value for key, value in cfg.model.hyperparameters.items()},
    }
    metrics = {
        **evaluation.metrics,
        **{f"champion_{k}": v for k, v in (evaluation.champion_metrics or {}).items()},
        "promoted": float(evaluation.decision.promote),
        **monitoring_metrics,
    }
    return tracking.log_training_run(
        cfg.mlflow,
        experiment_id,
        run_name=f"batch-{training.batch_number}",
        tags={**tags, tracking.DECISION_TAG: evaluation.decision.reason},
        params=params,
        metrics=metrics,
        model=trained.model,
        input_example=example,
        documents=documents,
    )


@task(name="log-untrained-to-mlflow", cache_policy=NO_CACHE)
def log_untrained(
    settings: Settings,
    experiment_id: str,
    *,
    training: TrainingData,
    skip_reason: str,
    tags: dict[str, str],
    monitoring_metrics: dict[str, float | None],
    documents: dict[str, Any],
) -> str:
    """The MLflow run of a batch accepted without training: its monitoring figures; returns its id."""
    params: dict[str, Any] = {
        "batch_number": training.batch_number,
        "batch_rows": training.rows,
        "training_rows_total": training.parts.summary.rows,
        "accepted_batches": ",".join(map(str, training.accepted_batches)),
        "retrain_policy": settings.monitoring.retrain_policy,
        "primary_metric": settings.evaluation.primary_metric,
    }
    return tracking.log_untrained_run(
        settings.mlflow,
        experiment_id,
        run_name=f"batch-{training.batch_number}-not-trained",
        tags={**tags, TRAINED_TAG: "false", SKIP_REASON_TAG: skip_reason[:5000]},
        params=params,
        metrics=monitoring_metrics,
        documents=documents,
    )


@task(name="tag-and-promote", cache_policy=NO_CACHE)
def tag_and_promote(
    settings: Settings, run_id: str, promoted_version: str | None, model_file: Path | None
) -> None:
    """After the state commit: tag the MLflow run as committed, then promote when decided.

    Promoting moves the ``champion`` alias and copies the model to ``models/champion.joblib``.
    A failed tag is only a warning (rebuild-state would skip that run).
    """
    try:
        tracking.mark_committed(settings.mlflow, run_id)
    except TrackingError as exc:
        get_run_logger().warning(
            "Could not tag run %s as committed (rebuild-state would skip it): %s", run_id, exc
        )
    if promoted_version is not None and model_file is not None:
        tracking.set_champion(settings.mlflow, promoted_version)
        with atomic_path(settings.champion_model_file) as tmp:
            shutil.copyfile(model_file, tmp)


@task(name="publish-reports", cache_policy=NO_CACHE)
def publish_reports(
    settings: Settings, state: PipelineState, run_id: str | None, report: str | None, batch_number: int
) -> Path:
    """The training report (when a model was trained) and the metric history.

    The history is a plot (metrics/metric_history.png, also attached to the MLflow run) and
    a table artifact.
    """
    if report is not None:
        create_markdown_artifact(
            markdown=report, key="training-report", description=f"Batch {batch_number} training report"
        )
    metric = settings.evaluation.primary_metric
    path = settings.metric_plot_file
    with atomic_path(path) as tmp:
        tmp.write_bytes(reporting.plot_metric_history(state, metric))
    create_table_artifact(
        table=[point.as_row(metric) for point in reporting.metric_history(state, metric)],
        key="metric-history",
        description=f"{metric} per batch: new model, champion before, promotion",
    )
    if run_id:
        try:
            tracking.log_file(settings.mlflow, run_id, str(path))
        except TrackingError as exc:
            get_run_logger().warning("Could not attach %s to MLflow run %s: %s", path.name, run_id, exc)
    return path
