"""The shared DVC remote through the real flow: a project pushes what it versions, a fresh
project folder (a worker on a new machine) pulls the batches it needs, and a third fresh
folder restores a batch's exact training table from the remote alone."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from flows.automated_training_flow import automated_training_flow
from retrain_pipeline import manifests, operations
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import StateError, VersioningError
from retrain_pipeline.fileio import md5_file
from retrain_pipeline.manifests import parse_training_manifest
from retrain_pipeline.params import load_settings
from retrain_pipeline.state import PipelineState, load_state
from retrain_pipeline.versioning import cached_file

MakeProject = Callable[..., Path]


def run(params: Path, batch: int | None = None) -> dict:
    return automated_training_flow(batch_number=batch, params_path=str(params))


def remote_objects(remote: Path) -> set[str]:
    return {p.parent.name + p.name for p in (remote / "files" / "md5").glob("*/*")}


def manifest(settings: Settings, state: PipelineState, batch: int) -> dict[int, str]:
    """Batch -> md5 of the files the training-data manifest of ``batch`` lists (local cache)."""
    text = cached_file(settings.root, state.batches[str(batch)].data_md5 or "").read_text()
    return {f.batch: f.md5 for f in parse_training_manifest(text)}


def test_a_fresh_project_pulls_earlier_batches_and_another_restores_from_the_remote(
    make_project: MakeProject, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    shared = {
        "stores": {"dvc_remote": str(remote)},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }

    # Project A trains batches 1-2 and pushes each batch file, manifest and model.
    a_params = make_project("a", **shared)
    assert [run(a_params)["status"] for _ in range(2)] == ["completed", "completed"]
    a = load_settings(a_params)
    a_state = load_state(a.paths.state_file)
    pushed = remote_objects(remote)
    for n in (1, 2):
        record = a_state.batches[str(n)]
        assert {record.data_md5, record.model_md5, md5_file(a.processed_batch_file(n))} <= pushed
    assert manifest(a, a_state, 2) == {n: md5_file(a.processed_batch_file(n)) for n in (1, 2)}

    # Project B: a worker on a machine that never saw the project, with the shared state.
    b_params = make_project("b", **shared)
    b = load_settings(b_params)
    shutil.copy2(a.paths.state_file, b.paths.state_file)
    assert not b.data.processed_dir.exists() and not (b.root / ".dvc").exists()
    outcome = run(b_params)
    assert (outcome["status"], outcome["batch_number"]) == ("completed", 3)
    b_state = load_state(b.paths.state_file)
    for n in (1, 2):  # pulled, byte for byte
        assert b.processed_batch_file(n).read_bytes() == a.processed_batch_file(n).read_bytes()
    listed = manifest(b, b_state, 3)
    assert {n: listed[n] for n in (1, 2)} == manifest(a, a_state, 2)
    assert listed[3] == md5_file(b.processed_batch_file(3))
    record = b_state.batches["3"]
    assert record.training_rows_total == 150
    assert {record.data_md5, record.model_md5, listed[3]} <= remote_objects(remote)
    assert "shared" in (b.root / ".dvc" / "config.local").read_text()

    # Folder C restores batch 3's exact training table from the remote alone.
    c_params = make_project("c", **shared)
    c = load_settings(c_params)
    shutil.copy2(b.paths.state_file, c.paths.state_file)
    target, md5 = operations.restore_data(c, 3)
    assert md5 == record.data_md5
    expected = pd.concat([pd.read_parquet(b.processed_batch_file(n)) for n in (1, 2, 3)], ignore_index=True)
    pd.testing.assert_frame_equal(pd.read_parquet(target), expected)
    assert not c.processed_batches_dir.exists()  # only the restored table, no batch files

    # Lineage tells whether the objects are in the remote too.
    lineage = operations.lineage(c, batch=3)
    assert lineage["data_in_dvc_cache"].endswith("(present); remote: present")
    assert lineage["model_in_dvc_cache"].endswith("(missing); remote: present")

    # What the remote lacks is named with the remote.
    lost = record.model_md5 or ""
    (remote / "files" / "md5" / lost[:2] / lost[2:]).unlink()
    d = load_settings(make_project("d", **shared))
    with pytest.raises(StateError, match=f"no object {lost} .*nor has DVC remote {remote}"):
        manifests.cached_bytes(d, lost, "the model of batch 3")


def test_a_failed_push_fails_the_batch(make_project: MakeProject, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    remote = blocker / "remote"
    params = make_project(stores={"dvc_remote": str(remote)})

    with pytest.raises(VersioningError, match=f"dvc push of 3 file.*{remote}"):
        run(params)
    record = load_state(load_settings(params).paths.state_file).batches["1"]
    assert record.status == "failed"
    assert str(remote) in (record.error or "")
