"""The real flow, in-process, with MLflow (SQLite) and DVC in a temporary project."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import joblib
import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from flows.automated_training_flow import automated_training_flow
from retrain_pipeline.data import SPLIT_COLUMN
from retrain_pipeline.errors import DataValidationError, StateError
from retrain_pipeline.fileio import md5_file, write_parquet_atomic
from retrain_pipeline.manifests import parse_training_manifest
from retrain_pipeline.operations import rollback
from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset
from retrain_pipeline.state import load_state
from retrain_pipeline.validation import recorded_feature_kinds
from retrain_pipeline.versioning import cached_file, recorded_md5


def run(params: Path, batch: int | None = None, force: bool = False) -> dict:
    return automated_training_flow(batch_number=batch, params_path=str(params), force=force)


def client_for(params: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=load_settings(params).mlflow.tracking_uri)


def runs_by_batch(params: Path) -> dict[str, list]:
    settings = load_settings(params)
    client = client_for(params)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment_name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    grouped: dict[str, list] = {}
    for r in runs:
        grouped.setdefault(r.data.tags["batch_number"], []).append(r)
    return grouped


def dvc_md5(path: Path) -> str:
    meta = yaml.safe_load(path.with_name(path.name + ".dvc").read_text())
    return meta["outs"][0]["md5"]


def test_three_batches_end_to_end(make_project: Callable[..., Path]) -> None:
    params = make_project()
    outcomes = [run(params) for _ in range(3)]

    assert [o["status"] for o in outcomes] == ["completed"] * 3
    assert [o["batch_number"] for o in outcomes] == [1, 2, 3]
    settings = load_settings(params)
    state = load_state(settings.paths.state_file)
    assert state.processed_batches == [1, 2, 3]
    assert state.last_batch == 3

    # Merge: batch N trains on every accepted batch <= N; holdout is the union of holdout parts.
    for n in (1, 2, 3):
        record = state.batches[str(n)]
        assert record.status == "completed"
        assert record.rows == 50
        assert record.training_rows_total == 50 * n
        assert record.train_rows + record.holdout_rows == 50 * n
        assert record.holdout_rows == 10 * n
        assert set(record.metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc"}

    # The gate: every decision follows the rule, and the champion is the last promoted version.
    promoted_versions = []
    for n in (1, 2, 3):
        record = state.batches[str(n)]
        if record.champion_metrics is None:
            assert record.promoted is True
        else:
            assert record.promoted == (record.metrics["f1"] >= record.champion_metrics["f1"])
        if record.promoted:
            promoted_versions.append(record.model_version)
    assert state.batches["1"].promoted is True
    assert state.champion_version == promoted_versions[-1]

    # MLflow: one run per batch with the tags, versions registered, alias on the champion.
    client = client_for(params)
    grouped = runs_by_batch(params)
    assert sorted(grouped) == ["1", "2", "3"]
    for n in (1, 2, 3):
        (mlrun,) = grouped[str(n)]
        record = state.batches[str(n)]
        assert mlrun.info.run_id == record.mlflow_run_id
        assert mlrun.info.status == "FINISHED"
        assert mlrun.data.tags["data_md5"] == record.data_md5
        assert mlrun.data.tags["prefect_flow_run_id"] == record.prefect_flow_run_id
        assert mlrun.data.metrics["f1"] == pytest.approx(record.metrics["f1"])
        assert mlrun.data.params["training_rows_total"] == str(50 * n)
    name = settings.mlflow.registered_model_name
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2", "3"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == state.champion_version

    # DVC: the latest .dvc files carry batch 3's md5s. Each data_md5 is a manifest in the
    # cache naming batch files 1..N by md5; each batch file is cached once.
    assert dvc_md5(settings.training_manifest_file) == state.batches["3"].data_md5
    assert dvc_md5(settings.model_file(3)) == state.batches["3"].model_md5
    for n in (1, 2, 3):
        manifest = cached_file(settings.root, state.batches[str(n)].data_md5)
        listed = parse_training_manifest(manifest.read_text())
        assert [f.batch for f in listed] == list(range(1, n + 1))
        for f in listed:
            assert f.md5 == dvc_md5(settings.processed_batch_file(f.batch))
            # Later runs can take it from the .dvc file without hashing the batch again.
            assert recorded_md5(settings.processed_batch_file(f.batch)) == f.md5
            assert md5_file(cached_file(settings.root, f.md5)) == f.md5
            assert len(pd.read_parquet(cached_file(settings.root, f.md5))) == f.rows == 50
    assert len({state.batches[str(n)].data_md5 for n in (1, 2, 3)}) == 3

    # Outputs: models, metrics, processed data of every batch with its train/holdout split.
    assert settings.champion_model_file.is_file()
    latest = json.loads(settings.latest_metrics_file.read_text())
    assert latest["batch_number"] == 3
    for n in (1, 2, 3):
        processed = pd.read_parquet(settings.processed_batch_file(n))
        assert len(processed) == 50
        assert set(processed[SPLIT_COLUMN]) == {"train", "holdout"}


def test_nothing_to_do_when_max_batches_reached(make_project: Callable[..., Path]) -> None:
    params = make_project(automation={"max_batches": 1})
    assert run(params)["status"] == "completed"
    state_file = load_settings(params).paths.state_file
    before = state_file.read_bytes()

    outcome = run(params)

    assert outcome["status"] == "nothing_to_do"
    assert "max_batches" in outcome["message"]
    assert state_file.read_bytes() == before


def test_no_new_data_is_not_an_error(make_project: Callable[..., Path]) -> None:
    params = make_project(data={"source": "landing"})
    outcome = run(params)
    assert outcome["status"] == "nothing_to_do"
    assert "no data for batch 1" in outcome["message"]
    assert not load_settings(params).paths.state_file.exists()


def test_completed_batch_needs_force(make_project: Callable[..., Path]) -> None:
    params = make_project()
    run(params)
    state_file = load_settings(params).paths.state_file
    before = state_file.read_bytes()

    with pytest.raises(StateError, match=r"batch 1 is already completed.*--force"):
        run(params, batch=1)
    assert state_file.read_bytes() == before

    outcome = run(params, batch=1, force=True)
    assert outcome["status"] == "completed"
    state = load_state(state_file)
    assert state.batches["1"].attempts == 2
    assert state.batches["1"].model_version == "2"
    assert len(runs_by_batch(params)["1"]) == 2


def _landing(settings_root: Path, frame: pd.DataFrame, name: str) -> Path:
    landing = settings_root / "data" / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / name
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def test_landing_rejects_bad_batch_and_moves_on(make_project: Callable[..., Path]) -> None:
    params = make_project(data={"source": "landing"})
    root = params.parent
    raw = breast_cancer_dataset(seed=1, target_column="target")
    _landing(root, raw.iloc[0:60], "batch_1.csv")
    _landing(root, raw.iloc[60:120].drop(columns=["mean_radius"]), "batch_2.csv")
    _landing(root, raw.iloc[120:180], "batch_3.parquet")

    assert run(params)["status"] == "completed"
    settings = load_settings(params)
    champion_before = load_state(settings.paths.state_file).champion_version
    data_md5_before = dvc_md5(settings.training_manifest_file)

    with pytest.raises(
        DataValidationError, match=r"batch 2 rejected: .*batch_2\.csv: missing column\(s\) \['mean_radius'\]"
    ):
        run(params)

    state = load_state(settings.paths.state_file)
    assert state.batches["2"].status == "rejected"
    assert "batch_2.csv" in state.batches["2"].error
    assert state.processed_batches == [1]
    assert state.champion_version == champion_before
    assert dvc_md5(settings.training_manifest_file) == data_md5_before
    assert not settings.processed_batch_file(2).exists()
    quarantined = sorted(p.name for p in settings.data.quarantine_dir.iterdir())
    assert any(n.startswith("batch_2.") and n.endswith(".csv") for n in quarantined)
    assert any(n.endswith(".reason.txt") for n in quarantined)
    assert "2" not in runs_by_batch(params)

    outcome = run(params)
    assert outcome["status"] == "completed" and outcome["batch_number"] == 3
    state = load_state(settings.paths.state_file)
    assert state.processed_batches == [1, 3]
    assert state.batches["3"].training_rows_total == 120  # batches 1 and 3, never the rejected 2


def test_landing_rejects_a_column_that_changed_type(make_project: Callable[..., Path]) -> None:
    params = make_project(data={"source": "landing"})
    root = params.parent
    raw = breast_cancer_dataset(seed=2, target_column="target")
    _landing(root, raw.iloc[0:60], "batch_1.csv")
    _landing(root, raw.iloc[60:120].assign(mean_radius=True), "batch_2.csv")  # the schema coerces to 1.0
    _landing(
        root,
        raw.iloc[120:180].assign(mean_texture=lambda f: f["mean_texture"].round().astype("int64")),
        "batch_3.parquet",
    )
    assert run(params)["status"] == "completed"
    settings = load_settings(params)
    kinds = recorded_feature_kinds(pq.read_schema(settings.processed_batch_file(1)).metadata)
    assert kinds == {c: "float" for c in raw.columns if c != "target"}

    for n, file, problem in (
        (2, "batch_2.csv", "column 'mean_radius': expected float (fixed by batch 1), found bool"),
        (3, "batch_3.parquet", "column 'mean_texture': expected float (fixed by batch 1), found integer"),
    ):
        with pytest.raises(DataValidationError) as e:
            run(params)
        assert str(e.value).startswith(f"batch {n} rejected: ") and file in str(e.value)
        assert e.value.problem == problem
        record = load_state(settings.paths.state_file).batches[str(n)]
        assert record.status == "rejected" and record.error is not None and record.error.endswith(problem)
        (reason,) = settings.data.quarantine_dir.glob(f"batch_{n}.*.reason.txt")
        assert problem in reason.read_text()
        assert not settings.processed_batch_file(n).exists()

    state = load_state(settings.paths.state_file)
    assert state.processed_batches == [1]
    assert sorted(runs_by_batch(params)) == ["1"]


def test_project_from_before_recorded_kinds_accepts_numbers_but_not_bools(
    make_project: Callable[..., Path],
) -> None:
    params = make_project(data={"source": "landing"})
    root = params.parent
    raw = breast_cancer_dataset(seed=4, target_column="target")
    as_int = raw.iloc[60:120].assign(mean_texture=lambda f: f["mean_texture"].round().astype("int64"))
    _landing(root, raw.iloc[0:60], "batch_1.csv")
    _landing(root, as_int, "batch_2.parquet")
    _landing(root, raw.iloc[120:180].assign(mean_radius=False), "batch_3.csv")
    assert run(params)["status"] == "completed"
    settings = load_settings(params)
    first = settings.processed_batch_file(1)
    write_parquet_atomic(pd.read_parquet(first), first)  # as processed files were written before
    assert recorded_feature_kinds(pq.read_schema(first).metadata) is None

    assert run(params)["status"] == "completed"  # integers where floats were seen: accepted
    with pytest.raises(DataValidationError) as e:
        run(params)
    assert e.value.problem == "column 'mean_radius': expected integer or float, found bool"
    assert load_state(settings.paths.state_file).processed_batches == [1, 2]


def test_busy_lock_means_no_training(make_project: Callable[..., Path]) -> None:
    params = make_project()
    settings = load_settings(params)
    settings.lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder_code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from retrain_pipeline.run_lock import pipeline_lock, update_holder
        with pipeline_lock(Path({str(settings.lock_file)!r}), {{"flow_run_id": "other-run"}}) as info:
            update_holder(info, {{"batch": 7}})
            print("locked", flush=True)
            time.sleep(120)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        outcome = run(params)
    finally:
        holder.kill()
        holder.wait()

    assert outcome["status"] == "busy"
    assert f"pid {holder.pid}" in outcome["message"]
    assert "batch 7" in outcome["message"]
    assert not settings.paths.state_file.exists()
    assert runs_by_batch(params) == {}

    # The lock of a killed process is free again.
    time.sleep(0.2)
    assert run(params)["status"] == "completed"


def test_relative_paths_follow_the_params_folder(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    params = make_project("nested")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert run(params)["status"] == "completed"

    root = params.parent
    for produced in ("batch_state.json", "mlflow.db", "models/batch_1.joblib", "metrics/latest.json", ".dvc"):
        assert (root / produced).exists(), produced
    assert list(elsewhere.iterdir()) == []


def test_rebuild_state_from_mlflow_and_quarantine(make_project: Callable[..., Path]) -> None:
    from retrain_pipeline.cli import main as cli_main

    params = make_project(data={"source": "landing"})
    root = params.parent
    raw = breast_cancer_dataset(seed=5, target_column="target")
    _landing(root, raw.iloc[0:60], "batch_1.csv")
    _landing(root, raw.iloc[60:120].assign(target=9), "batch_2.csv")
    _landing(root, raw.iloc[120:180], "batch_3.csv")
    run(params)
    with pytest.raises(DataValidationError):
        run(params)
    run(params)
    state_file = load_settings(params).paths.state_file
    original = load_state(state_file)
    state_file.write_text("{ corrupted")

    assert cli_main(["rebuild-state", "--params", str(params)]) == 0

    rebuilt = load_state(state_file)
    assert rebuilt.processed_batches == original.processed_batches == [1, 3]
    assert rebuilt.last_batch == original.last_batch == 3
    assert rebuilt.champion_version == original.champion_version
    assert rebuilt.batches["2"].status == "rejected"
    for key in ("1", "3"):
        before, after = original.batches[key], rebuilt.batches[key]
        for field in (
            "mlflow_run_id",
            "model_version",
            "data_md5",
            "model_md5",
            "promoted",
            "metrics",
            "rows",
            "training_rows_total",
        ):
            assert getattr(after, field) == getattr(before, field), (key, field)
    backups = list(root.glob("batch_state.json.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == "{ corrupted"


def test_sliding_window_trains_on_the_last_batches_only(make_project: Callable[..., Path]) -> None:
    params = make_project(data={"window_batches": 2})
    for _ in range(3):
        assert run(params)["status"] == "completed"
    settings = load_settings(params)
    state = load_state(settings.paths.state_file)
    assert [state.batches[str(n)].training_rows_total for n in (1, 2, 3)] == [50, 100, 100]
    listed = parse_training_manifest(cached_file(settings.root, state.batches["3"].data_md5).read_text())
    assert [f.batch for f in listed] == [2, 3]
    (mlrun,) = runs_by_batch(params)["3"]
    assert mlrun.data.params["accepted_batches"] == "2,3"
    assert mlrun.data.params["window_batches"] == "2"


def test_incremental_training_continues_from_the_champion(make_project: Callable[..., Path]) -> None:
    # Tolerance 1: every model is promoted, so each batch continues from the one before.
    params = make_project(model={"training": "incremental"}, evaluation={"promotion_tolerance": 1.0})
    for _ in range(3):
        assert run(params)["status"] == "completed"
    settings = load_settings(params)
    state = load_state(settings.paths.state_file)
    first, second, third = (state.batches[str(n)] for n in (1, 2, 3))
    assert (first.continued_from, first.learned_batches) == (None, [1])
    assert (second.continued_from, second.learned_batches) == (first.model_version, [2])
    assert (third.continued_from, third.learned_batches) == (second.model_version, [3])
    # Each learns its own 40 train rows; each is gated on the holdout of every accepted batch.
    assert [r.train_rows for r in (first, second, third)] == [40, 40, 40]
    assert [r.holdout_rows for r in (first, second, third)] == [10, 20, 30]
    forest = joblib.load(settings.model_file(3))[-1]
    assert len(forest.estimators_) == 3 * 25  # each batch grew the forest by n_estimators
    manifest = json.loads(cached_file(settings.root, third.data_md5).read_text())
    assert [b["batch"] for b in manifest["batches"]] == [1, 2, 3]  # the data of this run
    assert manifest["training"] == "incremental"
    assert (manifest["continued_from"], manifest["learned_batches"]) == (second.model_version, [3])
    (mlrun,) = runs_by_batch(params)["3"]
    assert mlrun.data.params["continued_from_version"] == second.model_version
    assert mlrun.data.params["learned_batches"] == "3"


def test_incremental_training_learns_what_the_champion_missed_and_restarts_when_it_must(
    make_project: Callable[..., Path],
) -> None:
    params = make_project(model={"training": "incremental"}, evaluation={"promotion_tolerance": 1.0})
    for _ in range(3):
        assert run(params)["status"] == "completed"
    settings = load_settings(params)
    first = load_state(settings.paths.state_file).batches["1"]
    rollback(settings, str(first.model_version), "test: back to the first model")
    # The champion learned batch 1 only: batch 4 learns 2, 3 and 4 on top of it.
    assert run(params)["status"] == "completed"
    fourth = load_state(settings.paths.state_file).batches["4"]
    assert (fourth.continued_from, fourth.learned_batches, fourth.train_rows) == (
        first.model_version,
        [2, 3, 4],
        120,
    )
    # Other hyperparameters than the champion's: batch 5 cannot continue, learns every batch.
    params.write_text(params.read_text().replace("max_depth: 4", "max_depth: 3"), encoding="utf-8")
    assert run(params)["status"] == "completed"
    fifth = load_state(settings.paths.state_file).batches["5"]
    assert (fifth.continued_from, fifth.learned_batches, fifth.train_rows) == (None, [1, 2, 3, 4, 5], 200)
    assert len(joblib.load(settings.model_file(5))[-1].estimators_) == 25
