"""Training data by reference: the manifest that names a model's batch files by md5, written
when it trains, read back out of DVC with the files it names.

A model's training data is not versioned as one more copy of all history: it is a small
manifest (:func:`training_manifest`) naming the processed batch files by md5, each of which
DVC tracks once. This module writes that manifest from the accepted batch files, and reads
the objects it names back with one call to :func:`retrain_pipeline.versioning.cached_objects`
per step (which fetches what the local cache lacks from the DVC remote and checks each
object's md5). Plain functions: no Prefect; DVC only through :mod:`retrain_pipeline.versioning`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from retrain_pipeline import versioning
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import StateError, VersioningError
from retrain_pipeline.fileio import atomic_path, md5_file, write_text_atomic
from retrain_pipeline.state import PipelineState
from retrain_pipeline.urls import redact_url

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class BatchFile:
    """One processed batch file in a training set: its path (relative), md5 and rows."""

    batch: int
    file: str
    md5: str
    rows: int


def training_manifest(
    batch_number: int,
    files: Sequence[BatchFile],
    window_batches: int | None,
    lineage: Mapping[str, Any] | None = None,
) -> str:
    """JSON text naming the exact batch files (by md5) the model of ``batch_number`` trains on.

    Merged in this order, they are its training table: DVC keeps each batch file once and
    this small manifest per model, instead of a new copy of all history per batch.
    ``lineage`` (incremental training): which model it continued from and which batches it
    learned; the training data of a continued model is then its champion's and these.
    """
    payload = {
        "format": MANIFEST_FORMAT,
        "batch_number": batch_number,
        "window_batches": window_batches,
        "rows": sum(f.rows for f in files),
        "batches": [{"batch": f.batch, "file": f.file, "md5": f.md5, "rows": f.rows} for f in files],
        **(lineage or {}),
    }
    return json.dumps(payload, indent=2) + "\n"


def parse_training_manifest(text: str) -> list[BatchFile]:
    """The batch files a manifest names, in merge order; ValueError when it is not one."""
    payload = json.loads(text)
    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"not a training-data manifest (format {MANIFEST_FORMAT})")
    return [
        BatchFile(int(b["batch"]), str(b["file"]), str(b["md5"]), int(b["rows"])) for b in payload["batches"]
    ]


@dataclass(frozen=True)
class WrittenManifest:
    """The training-data manifest of a batch, written: the batch files it lists, and those
    of them DVC must (re)track because no up-to-date ``.dvc`` file records their md5."""

    files: tuple[BatchFile, ...]
    untracked: tuple[Path, ...]


def write_training_manifest(
    settings: Settings, batch_number: int, batches: Sequence[int], lineage: Mapping[str, Any] | None = None
) -> WrittenManifest:
    """Write ``settings.training_manifest_file`` for the model of ``batch_number``, trained on
    the processed files of ``batches`` (oldest first, ``batch_number`` last).

    Earlier batch files were tracked when they were accepted: their md5s come from their
    ``.dvc`` files, so no run re-hashes history. The new batch's file, and any whose ``.dvc``
    file is missing or out of date (one fetched from the remote, say), are hashed here and
    returned in ``untracked``.
    """
    processed = settings.data.processed_dir
    files: list[BatchFile] = []
    untracked: list[Path] = []
    for k in batches:
        path = settings.processed_batch_file(k)
        md5 = versioning.recorded_md5(path) if k != batch_number else None
        if md5 is None:
            md5 = md5_file(path)
            untracked.append(path)
        rows = pq.read_metadata(path).num_rows
        files.append(BatchFile(k, path.relative_to(processed).as_posix(), md5, rows))
    manifest = training_manifest(batch_number, files, settings.data.window_batches, lineage)
    write_text_atomic(settings.training_manifest_file, manifest)
    return WrittenManifest(tuple(files), tuple(untracked))


def check_tracked(settings: Settings, files: Sequence[BatchFile], tracked: Mapping[Path, str]) -> None:
    """VersioningError when DVC recorded another md5 for a listed file than the manifest's:
    the file changed while it was being versioned, and the manifest would lie."""
    for f in files:
        path = settings.processed_batch_file(f.batch)
        if path in tracked and tracked[path] != f.md5:
            raise VersioningError(
                f"{path} changed while it was being versioned (md5 {f.md5} -> {tracked[path]})"
            )


def cached_files(settings: Settings, wanted: Mapping[str, str]) -> dict[str, Path]:
    """The cached, md5-checked files of the objects ``wanted`` (md5 -> what it is), fetched
    from the DVC remote first when the local cache lacks them (:func:`versioning.cached_objects`);
    StateError naming what is absent or corrupt."""
    remote = settings.stores.dvc_remote
    found = versioning.cached_objects(settings.root, remote, wanted)
    for md5, path in found.absent.items():
        nor = f", nor has DVC remote {redact_url(remote)}" if remote is not None else ""
        raise StateError(f"DVC cache has no object {md5} for {wanted[md5]} ({path}){nor}")
    return found.files


def cached_bytes(settings: Settings, md5: str, what: str) -> bytes:
    """The content DVC cached under ``md5`` (:func:`cached_files`)."""
    return cached_files(settings, {md5: what})[md5].read_bytes()


def parse_listing(payload: bytes, manifest_md5: str, what: str, hint: str = "") -> list[BatchFile]:
    """The batch files that the manifest ``payload`` (object ``manifest_md5``, the training
    data of ``what``) lists; StateError, ending with ``hint``, when it is not a manifest."""
    try:
        return parse_training_manifest(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise StateError(
            f"DVC cache object {manifest_md5} of {what} is not a training-data manifest ({exc}){hint}"
        ) from exc


def restore_processed_batches(settings: Settings, state: PipelineState, batches: Sequence[int]) -> list[int]:
    """Fetch the processed files of accepted ``batches`` that are missing here from the DVC remote.

    A worker on a fresh clone has the shared state but not the files. Batch k's file is found
    through its training-data manifest, the object whose md5 is the state's ``data_md5`` of
    batch k, which lists the md5 of batch k's file. Two DVC fetches in all, whatever the
    number of batches (the manifests, then the files); every object is checked against its
    md5 and each file is written into place atomically. Does nothing without
    ``stores.dvc_remote`` or when no file is missing (the caller then reports a missing
    file). Returns the batches restored.
    """
    remote = settings.stores.dvc_remote
    missing = [k for k in batches if not settings.processed_batch_file(k).is_file()]
    if remote is None or not missing:
        return []
    manifests = {k: _manifest_md5(settings, state, k) for k in missing}
    listings = versioning.cached_objects(
        settings.root,
        remote,
        {md5: f"the training-data manifest of batch {k}" for k, md5 in manifests.items()},
    )
    files: dict[int, str] = {}
    for k, md5 in manifests.items():
        if md5 in listings.absent:
            raise _not_in_remote(settings, k, md5, "its training-data manifest")
        files[k] = _listed_md5(k, md5, listings.files[md5].read_bytes())
    objects = versioning.cached_objects(
        settings.root, remote, {md5: f"the processed data of batch {k}" for k, md5 in files.items()}
    )
    for k, md5 in files.items():
        if md5 in objects.absent:
            raise _not_in_remote(settings, k, md5, "its processed file")
        with atomic_path(settings.processed_batch_file(k)) as tmp:
            shutil.copyfile(objects.files[md5], tmp)  # streamed: a batch file can be large
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


def _listed_md5(batch_number: int, manifest_md5: str, payload: bytes) -> str:
    """The md5 that batch ``batch_number``'s manifest ``payload`` lists for its file."""
    hint = f": its processed file cannot be found; retrain batch {batch_number} with --force"
    listed = parse_listing(payload, manifest_md5, f"batch {batch_number}", hint)
    for entry in listed:
        if entry.batch == batch_number:
            return entry.md5
    raise StateError(
        f"the training-data manifest {manifest_md5} of batch {batch_number} does not list batch "
        f"{batch_number}; retrain batch {batch_number} with --force"
    )
