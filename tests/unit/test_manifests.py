"""Training data by reference (``retrain_pipeline.manifests``): a real DVC repository in
tmp_path, no mocks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from retrain_pipeline import data, manifests, validation, versioning
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import StateError, VersioningError
from retrain_pipeline.fileio import md5_file
from retrain_pipeline.params import load_settings
from retrain_pipeline.project import prepare_project

MakeProject = Callable[..., Path]


def _write_batch(settings: Settings, k: int) -> Path:
    frame = pd.DataFrame({"f": [float(k), k + 0.5, k + 1.0], "target": [0, 1, k % 2]})
    frame = frame.assign(**{data.SPLIT_COLUMN: [data.TRAIN, data.TRAIN, data.HOLDOUT]})
    path = settings.processed_batch_file(k)
    data.write_processed_batch(frame, path, {"f": validation.FLOAT})
    return path


@pytest.fixture
def settings(make_project: MakeProject) -> Settings:
    settings = load_settings(make_project())
    prepare_project(settings)
    return settings


def test_the_manifest_lists_every_batch_and_hashes_only_what_dvc_has_not_recorded(settings: Settings) -> None:
    first, second = _write_batch(settings, 1), _write_batch(settings, 2)
    versioning.track(settings.root, [first])  # batch 1 was accepted earlier
    third = _write_batch(settings, 3)

    written = manifests.write_training_manifest(settings, 3, [1, 2, 3])

    # Batch 3 is the new one, batch 2 has no .dvc file: both need (re)tracking; batch 1 does not.
    assert written.untracked == (second, third)
    listed = manifests.parse_training_manifest(settings.training_manifest_file.read_text(encoding="utf-8"))
    assert listed == list(written.files)
    assert [(f.batch, f.file, f.md5, f.rows) for f in listed] == [
        (k, f"batches/batch_{k}.parquet", md5_file(p), 3) for k, p in ((1, first), (2, second), (3, third))
    ]


def test_a_batch_file_changed_after_it_was_tracked_is_hashed_again(settings: Settings) -> None:
    first = _write_batch(settings, 1)
    versioning.track(settings.root, [first])
    frame = pd.read_parquet(first).assign(f=lambda df: df["f"] * 2)
    data.write_processed_batch(frame, first, {"f": validation.FLOAT})
    stamp = (first.with_name(first.name + ".dvc")).stat().st_mtime_ns + 1_000_000
    os.utime(first, ns=(stamp, stamp))  # newer than its .dvc file, whatever the clock's grain

    written = manifests.write_training_manifest(settings, 2, [1])

    assert written.untracked == (first,)
    assert written.files[0].md5 == md5_file(first)


def test_a_file_that_changed_while_it_was_versioned_is_refused(settings: Settings) -> None:
    path = _write_batch(settings, 1)
    listed = [manifests.BatchFile(1, "batches/batch_1.parquet", "a" * 32, 3)]
    manifests.check_tracked(settings, listed, {path: "a" * 32})  # what DVC recorded agrees
    manifests.check_tracked(settings, listed, {})  # not re-tracked: nothing to compare
    with pytest.raises(VersioningError, match=f"{path} changed while it was being versioned"):
        manifests.check_tracked(settings, listed, {path: "b" * 32})


def test_a_corrupt_or_missing_cache_object_is_named(settings: Settings) -> None:
    path = _write_batch(settings, 1)
    md5 = versioning.track(settings.root, [path])[path]
    assert manifests.cached_bytes(settings, md5, "batch 1") == path.read_bytes()

    cached = versioning.cached_file(settings.root, md5)
    cached.chmod(0o644)
    cached.write_bytes(b"not the batch")
    corrupt = f"DVC cache object {cached} for batch 1 is corrupt: md5 [0-9a-f]{{32}} != {md5}"
    with pytest.raises(StateError, match=corrupt):
        manifests.cached_bytes(settings, md5, "batch 1")

    with pytest.raises(StateError, match=f"DVC cache has no object {'0' * 32} for the model"):
        manifests.cached_bytes(settings, "0" * 32, "the model")


def test_an_object_that_is_not_a_manifest_is_refused_with_the_hint() -> None:
    refused = r"object abc of batch 4 is not a training-data manifest \(.*\); retry"
    with pytest.raises(StateError, match=refused):
        manifests.parse_listing(b'{"format": "something else"}', "abc", "batch 4", "; retry")
    with pytest.raises(StateError, match="is not a training-data manifest"):
        manifests.parse_listing(b"\xff\xfe", "abc", "batch 4")
