"""Prefect tasks for data: set up, load, validate and merge a batch, quarantine, version.

Thin wrappers: the logic lives in :mod:`retrain_pipeline.data`, ``project`` and ``versioning``,
and in the plain functions here that restore processed batches from the DVC remote.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from retrain_pipeline import data, versioning
from retrain_pipeline.config import Settings, redact_url
from retrain_pipeline.errors import DataValidationError, StateError, VersioningError
from retrain_pipeline.fileio import atomic_path, dump_joblib_atomic, md5_file, write_text_atomic
from retrain_pipeline.state import PipelineState, utc_now

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
        frame = data.slice_batch(raw, batch_number, cfg.batch_size)
        if frame is None:
            return None
        first = (batch_number - 1) * cfg.batch_size
        source = f"{cfg.raw_file} rows {first}-{first + len(frame) - 1}"
        return BatchInput(batch_number, source, None, frame)
    path = data.find_landing_file(cfg.landing_dir, batch_number)
    if path is None:
        return None
    return BatchInput(batch_number, str(path), path, data.read_batch_file(path, batch_number))


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
    earlier = data.training_window(accepted, cfg.window_batches)
    restore_processed_batches(settings, state, sorted({*accepted[:1], *earlier}))
    first = data.read_first_batch(_processed_path(settings, accepted[0]), accepted[0]) if accepted else None
    merged = data.validate_and_merge_batch(
        batch.frame,
        config=cfg,
        evaluation=settings.evaluation,
        batch_number=n,
        source=batch.source,
        first=first,
        earlier={k: settings.processed_batch_file(k) for k in earlier},  # checked as each is read
    )
    data.write_processed_batch(merged.split, settings.processed_batch_file(n), merged.kinds)
    return TrainingData(
        n, len(merged.valid), merged.parts, (*earlier, n), settings.processed_batch_file(n), merged.valid
    )


def _processed_path(settings: Settings, batch_number: int) -> Path:
    """The processed file of an accepted batch; StateError when it is missing.

    ``validate_and_merge`` has fetched missing files from the DVC remote (if any) before.
    """
    return data.require_processed_file(settings.processed_batch_file(batch_number), batch_number)


def restore_processed_batches(settings: Settings, state: PipelineState, batches: Sequence[int]) -> list[int]:
    """Fetch the processed files of accepted ``batches`` that are missing here from the DVC remote.

    A worker on a fresh clone has the shared state but not the files. Batch k's file is found
    through its training-data manifest, the object whose md5 is the state's ``data_md5`` of
    batch k, which lists the md5 of batch k's file. Two DVC fetches in all, whatever the
    number of batches (the manifests, then the files); every object is checked against its
    md5 and each file is written into place atomically. Does nothing without
    ``stores.dvc_remote`` or when no file is missing (``_processed_path`` then reports a
    missing file). Returns the batches restored.
    """
    remote = settings.stores.dvc_remote
    missing = [k for k in batches if not settings.processed_batch_file(k).is_file()]
    if remote is None or not missing:
        return []
    manifests = {k: _manifest_md5(settings, state, k) for k in missing}
    absent = versioning.fetch(settings.root, remote, manifests.values())
    files: dict[int, str] = {}
    for k, md5 in manifests.items():
        if md5 in absent:
            raise _not_in_remote(settings, k, md5, "its training-data manifest")
        files[k] = _listed_md5(settings, k, md5)
    absent = versioning.fetch(settings.root, remote, files.values())
    for k, md5 in files.items():
        if md5 in absent:
            raise _not_in_remote(settings, k, md5, "its processed file")
        _write_from_cache(settings, k, md5)
    logger.info("Restored the processed data of batch(es) %s from DVC remote %s", missing, redact_url(remote))
    return missing


def _manifest_md5(settings: Settings, state: PipelineState, batch_number: int) -> str:
    record = state.record(batch_number)
    if record is None or not record.data_md5:
        path = settings.processed_batch_file(batch_number)
        raise StateError(
            f"processed data of accepted batch {batch_number} is missing ({path}) and its state record "
            f"names no training-data manifest to fetch it by; retrain batch {batch_number} with --force"
        )
    return record.data_md5


def _not_in_remote(settings: Settings, batch_number: int, md5: str, what: str) -> StateError:
    path = settings.processed_batch_file(batch_number)
    remote = redact_url(settings.stores.dvc_remote or "")
    return StateError(
        f"processed data of accepted batch {batch_number} is missing ({path}) and DVC remote "
        f"{remote} has no object {md5} ({what}); push it from a machine that has it "
        f"(dvc push) or retrain batch {batch_number} with --force"
    )


def _listed_md5(settings: Settings, batch_number: int, manifest_md5: str) -> str:
    """The md5 that batch ``batch_number``'s manifest (in the local cache) lists for its file."""
    cached = versioning.cached_file(settings.root, manifest_md5)
    payload = cached.read_bytes()
    digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()
    if digest != manifest_md5:
        raise StateError(
            f"DVC cache object {cached} (training-data manifest of batch {batch_number}) is corrupt: "
            f"md5 {digest} != {manifest_md5}; delete it and run again"
        )
    try:
        listed = data.parse_training_manifest(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise StateError(
            f"DVC object {manifest_md5} of batch {batch_number} is not a training-data manifest "
            f"({exc}): its processed file cannot be found; retrain batch {batch_number} with --force"
        ) from exc
    for entry in listed:
        if entry.batch == batch_number:
            return entry.md5
    raise StateError(
        f"the training-data manifest {manifest_md5} of batch {batch_number} does not list batch "
        f"{batch_number}; retrain batch {batch_number} with --force"
    )


def _write_from_cache(settings: Settings, batch_number: int, md5: str) -> None:
    """Copy the cached object into the batch's processed file, atomically, checking its md5."""
    cached = versioning.cached_file(settings.root, md5)
    with atomic_path(settings.processed_batch_file(batch_number)) as tmp:
        shutil.copyfile(cached, tmp)
        digest = md5_file(tmp)
        if digest != md5:
            raise StateError(
                f"DVC cache object {cached} (processed data of batch {batch_number}) is corrupt: "
                f"md5 {digest} != {md5}; delete it and run again"
            )


@task(name="quarantine-batch", cache_policy=NO_CACHE)
def quarantine_batch(settings: Settings, error: DataValidationError, batch: BatchInput | None) -> Path | None:
    """Copy the rejected file (or the rejected rows) to the quarantine folder with its reason.

    Only regular files inside the landing folder are copied; a symlink pointing elsewhere
    or a directory is recorded but never followed.
    """
    folder = settings.data.quarantine_dir
    folder.mkdir(parents=True, exist_ok=True)
    stamp = utc_now().replace(":", "").replace("-", "")
    source = Path(error.file)
    landing = settings.data.landing_dir.resolve()
    target: Path | None = None
    if batch is not None and batch.path is None:
        target = folder / f"batch_{error.batch_number}.{stamp}.csv"
        data.write_csv_atomic(batch.frame, target)
    elif source.is_file() and source.resolve().is_relative_to(landing):
        target = folder / f"{source.stem}.{stamp}{source.suffix}"
        shutil.copy2(source.resolve(), target)
    reason_file = folder / f"batch_{error.batch_number}.{stamp}.reason.txt"
    write_text_atomic(reason_file, str(error) + "\n")
    return target


@task(name="save-and-version", cache_policy=NO_CACHE)
def save_and_version(settings: Settings, training: TrainingData, model: object | None) -> Versioned:
    """Save the model to ``models/batch_<N>.joblib``; DVC-track it, the new batch file and
    the manifest of the training data, and push them to the DVC remote when one is configured.
    ``model`` None (a batch accepted without training): the batch file and the manifest of
    the data accepted so far only.

    Earlier batch files were tracked when they were accepted: their md5s come from their
    ``.dvc`` files, so no run re-hashes or re-copies history. A file whose ``.dvc`` file is
    missing or out of date (one fetched from the remote, say) is hashed and tracked again.
    A failed push raises VersioningError: the batch is not completed.
    """
    model_file = settings.model_file(training.batch_number) if model is not None else None
    if model_file is not None:
        dump_joblib_atomic(model, model_file)
    processed = settings.data.processed_dir
    to_track = [training.file, settings.training_manifest_file]
    if model_file is not None:
        to_track.append(model_file)
    files = []
    for k in training.accepted_batches:
        path = settings.processed_batch_file(k)
        md5 = versioning.recorded_md5(path) if k != training.batch_number else None
        if md5 is None:
            md5 = md5_file(path)
            if path not in to_track:
                to_track.append(path)
        rows = pq.read_metadata(path).num_rows
        files.append(data.BatchFile(k, path.relative_to(processed).as_posix(), md5, rows))
    manifest = data.training_manifest(training.batch_number, files, settings.data.window_batches)
    write_text_atomic(settings.training_manifest_file, manifest)
    tracked = versioning.track(settings.root, to_track)
    expected = {settings.processed_batch_file(f.batch): f.md5 for f in files}
    for path, md5 in expected.items():
        if path in tracked and tracked[path] != md5:
            raise VersioningError(
                f"{path} changed while it was being versioned (md5 {md5} -> {tracked[path]})"
            )
    if settings.stores.dvc_remote is not None:
        versioning.push(settings.root, to_track)
    model_md5 = tracked[model_file] if model_file is not None else None
    return Versioned(model_file, tracked[settings.training_manifest_file], model_md5)
