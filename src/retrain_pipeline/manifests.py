"""Training data by reference: the manifest of a batch's training data, and the batch files
it names, read back out of DVC.

A model's training data is not versioned as one more copy of all history: it is a small
manifest (:func:`training_manifest`) naming the processed batch files by md5, each of which
DVC tracks once. This module writes that manifest from the accepted
batch files, and reads the objects it names back from the DVC cache (fetching them from the
DVC remote first, when one is configured), each checked against its md5. Plain functions:
no Prefect; DVC only through :mod:`retrain_pipeline.versioning`.
"""

from __future__ import annotations

import hashlib
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


def cached_bytes(settings: Settings, md5: str, what: str) -> bytes:
    """The content DVC cached under ``md5``, fetched from the DVC remote first when the
    local cache lacks it; StateError naming ``what`` when it is absent or corrupt."""
    cached = versioning.cached_file(settings.root, md5)
    remote = settings.stores.dvc_remote
    if remote is not None and not cached.is_file():
        versioning.fetch(settings.root, remote, [md5])
    try:
        payload = cached.read_bytes()
    except OSError as exc:
        nor = f", nor has DVC remote {redact_url(remote)}" if remote is not None else ""
        raise StateError(f"DVC cache has no object {md5} for {what} ({cached}){nor}") from exc
    _check_md5(cached, hashlib.md5(payload, usedforsecurity=False).hexdigest(), md5, what)
    return payload


def _check_md5(cached: Path, digest: str, md5: str, what: str) -> None:
    if digest != md5:
        raise StateError(
            f"DVC cache object {cached} for {what} is corrupt: md5 {digest} != {md5}; delete it and run again"
        )


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
        _copy_cached(settings, md5, settings.processed_batch_file(k), f"the processed data of batch {k}")
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
    what = f"batch {batch_number}"
    payload = cached_bytes(settings, manifest_md5, f"the training-data manifest of {what}")
    hint = f": its processed file cannot be found; retrain batch {batch_number} with --force"
    listed = parse_listing(payload, manifest_md5, what, hint)
    for entry in listed:
        if entry.batch == batch_number:
            return entry.md5
    raise StateError(
        f"the training-data manifest {manifest_md5} of batch {batch_number} does not list batch "
        f"{batch_number}; retrain batch {batch_number} with --force"
    )


def _copy_cached(settings: Settings, md5: str, target: Path, what: str) -> None:
    """Copy the cached object ``md5`` to ``target`` atomically, checking its md5 on the way
    (a batch file can be large: it is streamed, not read into memory)."""
    cached = versioning.cached_file(settings.root, md5)
    with atomic_path(target) as tmp:
        shutil.copyfile(cached, tmp)
        _check_md5(cached, md5_file(tmp), md5, what)
