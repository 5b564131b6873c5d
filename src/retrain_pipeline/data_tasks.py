"""Prefect tasks for a batch's data: load, validate, merge, quarantine a rejected one, version.

Thin wrappers: the logic lives in :mod:`retrain_pipeline.sources`, ``data``, ``manifests`` and
``versioning``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from retrain_pipeline import data, manifests, sources, versioning
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import DataValidationError
from retrain_pipeline.fileio import dump_joblib_atomic, write_csv_atomic, write_text_atomic
from retrain_pipeline.state import PipelineState, file_stamp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchInput:
    """A batch as it arrived: where it came from and its raw rows."""

    batch_number: int
    source: str
    path: Path | None
    frame: pd.DataFrame


@dataclass(frozen=True)
class TrainingData:
    """The validated batch merged with the earlier accepted batches of its window.

    Only the train and holdout parts are kept, not the merged table they were cut from:
    holding both would double the memory a run needs while the model trains.
    """

    batch_number: int
    rows: int  # rows of this batch
    parts: data.TrainHoldout
    accepted_batches: tuple[int, ...]  # the batches merged, oldest first
    learned: tuple[int, ...]  # those whose train rows are in ``parts`` (the others: holdout only)
    file: Path  # the processed file of this batch
    batch_frame: pd.DataFrame  # this batch, validated (features and target): what monitoring checks


@dataclass(frozen=True)
class Versioned:
    """The saved model file and the md5s DVC recorded for the training-data manifest and it
    (no model: the batch was accepted without training)."""

    model_file: Path | None
    data_md5: str
    model_md5: str | None


@task(name="load-batch", cache_policy=NO_CACHE)
def load_batch(settings: Settings, batch_number: int) -> BatchInput | None:
    """The batch's rows, or None when its data has not arrived."""
    cfg = settings.data
    if cfg.source == "sliced":
        raw = pd.read_csv(cfg.raw_file)
        frame = sources.slice_batch(raw, batch_number, cfg.batch_size)
        if frame is None:
            return None
        first = (batch_number - 1) * cfg.batch_size
        source = f"{cfg.raw_file} rows {first}-{first + len(frame) - 1}"
        return BatchInput(batch_number, source, None, frame)
    path = sources.find_landing_file(cfg.landing_dir, batch_number)
    if path is None:
        return None
    return BatchInput(batch_number, str(path), path, sources.read_batch_file(path, batch_number))


@task(name="validate-and-merge", cache_policy=NO_CACHE)
def validate_and_merge(settings: Settings, state: PipelineState, batch: BatchInput) -> TrainingData:
    """Validate the batch, split it, merge it with the earlier accepted batches of its window.

    The first accepted batch fixes the feature names and kinds (bool, integer, float) that
    later batches must have. Writes the batch's processed file, with those kinds; the merged
    table is only cut into train and holdout. Processed files of earlier batches that are
    missing here (a fresh clone) come from the DVC remote, when one is configured.
    """
    cfg, n = settings.data, batch.batch_number
    accepted = [k for k in state.accepted_batches(up_to=n) if k != n]
    batches = data.training_batches(accepted, n, cfg.window_batches)
    earlier = batches[:-1]
    manifests.restore_processed_batches(settings, state, sorted({*accepted[:1], *earlier}))
    first = data.read_first_batch(_processed_path(settings, accepted[0]), accepted[0]) if accepted else None
    learn = _not_learned_by_champion(settings, state, earlier)
    merged = data.validate_and_merge_batch(
        batch.frame,
        config=cfg,
        evaluation=settings.evaluation,
        batch_number=n,
        source=batch.source,
        first=first,
        earlier={k: settings.processed_batch_file(k) for k in earlier},  # checked as each is read
        learn=learn,
    )
    data.write_processed_batch(merged.split, settings.processed_batch_file(n), merged.kinds)
    learned = tuple(batches) if learn is None else (*(k for k in earlier if k in learn), n)
    return TrainingData(
        n,
        len(merged.valid),
        merged.parts,
        tuple(batches),
        learned,
        settings.processed_batch_file(n),
        merged.valid,
    )


def _not_learned_by_champion(settings: Settings, state: PipelineState, earlier: list[int]) -> set[int] | None:
    """``model.training: incremental``: the ``earlier`` batches the champion has not learned
    (accepted after the batch it was trained on: a batch whose model was not promoted, one
    accepted untrained, those after a rollback's target), which the next model learns with the
    new batch. None (train on every batch of the window): full training, or no champion."""
    if settings.model.training == "full" or state.champion_version is None:
        return None
    champion_batch = state.batch_of_version(state.champion_version)
    if champion_batch is None:
        return None
    return {k for k in earlier if k > champion_batch}


def full_train_part(
    settings: Settings, training: TrainingData
) -> tuple[pd.DataFrame, pd.Series, data.DataSummary]:
    """The train rows of every batch of the window (what full training learns), when an
    incremental run cannot continue from its champion and trains from scratch instead."""
    earlier = {k: settings.processed_batch_file(k) for k in training.accepted_batches[:-1]}
    split = pd.read_parquet(training.file)
    parts = data.merge_train_holdout(earlier, split, settings.data.target_column)
    return parts.train_features, parts.train_target, parts.summary


def _processed_path(settings: Settings, batch_number: int) -> Path:
    """The processed file of an accepted batch; StateError when it is missing.

    ``validate_and_merge`` has fetched missing files from the DVC remote (if any) before.
    """
    return data.require_processed_file(settings.processed_batch_file(batch_number), batch_number)


@task(name="quarantine-batch", cache_policy=NO_CACHE)
def quarantine_batch(settings: Settings, error: DataValidationError, batch: BatchInput | None) -> Path | None:
    """Copy the rejected file (or the rejected rows) to the quarantine folder with its reason.

    Only regular files inside the landing folder are copied; a symlink pointing elsewhere
    or a directory is recorded but never followed.
    """
    folder = settings.data.quarantine_dir
    folder.mkdir(parents=True, exist_ok=True)
    stamp = file_stamp()
    source = Path(error.file)
    landing = settings.data.landing_dir.resolve()
    target: Path | None = None
    if batch is not None and batch.path is None:
        target = folder / f"batch_{error.batch_number}.{stamp}.csv"
        write_csv_atomic(batch.frame, target)
    elif source.is_file() and source.resolve().is_relative_to(landing):
        target = folder / f"{source.stem}.{stamp}{source.suffix}"
        shutil.copy2(source.resolve(), target)
    reason_file = folder / f"batch_{error.batch_number}.{stamp}.reason.txt"
    write_text_atomic(reason_file, str(error) + "\n")
    return target


@task(name="save-and-version", cache_policy=NO_CACHE)
def save_and_version(
    settings: Settings, training: TrainingData, model: object | None, lineage: Mapping[str, Any] | None = None
) -> Versioned:
    """Save the model to ``models/batch_<N>.joblib``; DVC-track it, the new batch file and
    the manifest of the training data, and push them to the DVC remote when one is configured.
    ``model`` None (a batch accepted without training): the batch file and the manifest of
    the data accepted so far only.

    Earlier batch files were tracked when they were accepted: their md5s come from their
    ``.dvc`` files, so no run re-hashes or re-copies history. A file whose ``.dvc`` file is
    missing or out of date (one fetched from the remote, say) is hashed and tracked again.
    A failed push raises VersioningError: the batch is not completed. ``lineage``: how the
    model was trained (incremental: what it continued from), recorded in the manifest.
    """
    model_file = settings.model_file(training.batch_number) if model is not None else None
    if model_file is not None:
        dump_joblib_atomic(model, model_file)
    manifest = manifests.write_training_manifest(
        settings, training.batch_number, training.accepted_batches, lineage
    )
    to_track = [training.file, settings.training_manifest_file]
    if model_file is not None:
        to_track.append(model_file)
    to_track += [path for path in manifest.untracked if path not in to_track]
    tracked = versioning.track(settings.root, to_track)
    manifests.check_tracked(settings, manifest.files, tracked)
    if settings.stores.dvc_remote is not None:
        versioning.push(settings.root, to_track)
    model_md5 = tracked[model_file] if model_file is not None else None
    return Versioned(model_file, tracked[settings.training_manifest_file], model_md5)
