"""Monitoring in the real flow: drift and decay are recorded for every batch (state, MLflow,
Prefect artifact), and ``retrain_policy: on_change`` accepts unchanged batches untrained."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.automated_training_flow import automated_training_flow
from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset
from retrain_pipeline.state import load_state
from retrain_pipeline.versioning import recorded_md5

RAW = breast_cancer_dataset(seed=7, target_column="target")
FEATURES = [c for c in RAW.columns if c != "target"]


def land(params: Path, batch: int, frame: pd.DataFrame) -> None:
    landing = params.parent / "data" / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    frame.to_csv(landing / f"batch_{batch}.csv", index=False)


def rows(start: int, stop: int, *, shifted: bool = False) -> pd.DataFrame:
    """Rows of the breast-cancer set; ``shifted`` multiplies every feature by 3."""
    frame = RAW.iloc[start:stop].copy()
    if shifted:
        frame[FEATURES] = frame[FEATURES] * 3
    return frame


def run(params: Path, batch: int | None = None, force: bool = False) -> dict:
    return automated_training_flow(batch_number=batch, params_path=str(params), force=force)


def mlflow_runs(params: Path) -> dict[str, mlflow.entities.Run]:
    settings = load_settings(params)
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment_name)
    return {r.data.tags["batch_number"]: r for r in client.search_runs([experiment.experiment_id])}


def drift_artifacts() -> list[str]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drift-report"]))
        )
    return [str(a.data) for a in found]


def test_a_shifted_batch_is_reported_as_drift_everywhere(make_project: Callable[..., Path]) -> None:
    params = make_project(data={"source": "landing"})
    land(params, 1, rows(0, 150))
    land(params, 2, rows(150, 300, shifted=True))
    before = len(drift_artifacts())

    assert run(params)["status"] == "completed"
    outcome = run(params)
    assert outcome["status"] == "completed" and outcome["trained"] is True and outcome["drift"] is True

    state = load_state(load_settings(params).paths.state_file)
    first, second = state.batches["1"], state.batches["2"]
    assert first.drift is not None and first.drift.dataset_drift is None  # no champion yet
    assert "no champion" in (first.drift.note or "")
    drift = second.drift
    assert drift is not None and drift.dataset_drift is True
    assert drift.drift_share is not None and drift.drift_share >= 0.5
    assert drift.columns_tested == len(FEATURES)
    drifted = {c.column for c in drift.drifted_columns}
    assert "mean_radius" in drifted and len(drifted) >= len(FEATURES) // 2
    assert {c.method for c in drift.drifted_columns} == {"ks"}  # 120 reference rows: small-sample test
    assert all(c.score is not None and c.score < c.threshold for c in drift.drifted_columns)
    assert drift.reference_batches == [1] and drift.current_rows == 150
    assert drift.champion_version == "1" and drift.champion_score_on_batch is not None
    assert drift.champion_score_at_promotion == first.metrics["f1"]
    assert second.trained is True and second.skip_reason is None

    run_2 = mlflow_runs(params)["2"]
    assert run_2.data.metrics["drift_share"] == drift.drift_share
    assert run_2.data.metrics["dataset_drift"] == 1.0
    assert run_2.data.metrics["champion_score_on_batch"] == drift.champion_score_on_batch
    client = mlflow.MlflowClient(tracking_uri=load_settings(params).mlflow.tracking_uri)
    table = json.loads(Path(client.download_artifacts(run_2.info.run_id, "drift_report.json")).read_text())
    assert len(table["columns"]) == len(FEATURES)
    assert table["summary"]["dataset_drift"] is True

    artifacts = drift_artifacts()
    assert len(artifacts) == before + 2
    assert any("mean_radius" in a and "Batch 2" in a for a in artifacts)

    lines = {line.split()[0]: line for line in _status(params).splitlines()[2:10] if line[:1].isdigit()}
    assert f"yes {drift.drift_share:.2f}" in lines["2"], lines["2"]


def _status(params: Path) -> str:
    from retrain_pipeline.cli import render_status, status_payload

    settings = load_settings(params)
    return render_status(status_payload(settings, load_state(settings.paths.state_file)))


def test_on_change_skips_an_unchanged_batch_and_trains_the_next_shift_on_everything(
    make_project: Callable[..., Path],
) -> None:
    # A wide decay tolerance: a 150-row batch from the same data must not count as decay.
    params = make_project(
        data={"source": "landing"}, monitoring={"retrain_policy": "on_change", "decay_tolerance": 0.3}
    )
    land(params, 1, rows(0, 150))
    land(params, 2, rows(150, 300))
    land(params, 3, rows(300, 450, shifted=True))
    settings = load_settings(params)

    assert run(params)["trained"] is True
    skipped = run(params)
    assert skipped["status"] == "completed" and skipped["trained"] is False, skipped
    assert "accepted without training" in skipped["message"]
    state = load_state(settings.paths.state_file)
    record = state.batches["2"]
    assert record.status == "completed" and record.trained is False
    assert record.model_version is None and record.model_md5 is None and record.metrics is None
    assert record.skip_reason and "no drift" in record.skip_reason and "no decay" in record.skip_reason
    assert record.drift is not None and record.drift.dataset_drift is False and record.drift.decay is False
    assert state.processed_batches == [1, 2] and state.champion_version == "1"
    # Validated, merged and versioned: its processed file is tracked by DVC; no model file.
    assert recorded_md5(settings.processed_batch_file(2)) is not None
    assert record.data_md5 is not None
    assert not settings.model_file(2).exists()
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    assert len(client.search_model_versions(f"name='{settings.mlflow.registered_model_name}'")) == 1
    run_2 = mlflow_runs(params)["2"]
    assert run_2.data.tags["trained"] == "false" and run_2.data.tags["skip_reason"] == record.skip_reason
    assert run_2.data.metrics["drift_share"] == record.drift.drift_share
    assert "champion_score_on_batch" in run_2.data.metrics

    trained = run(params)
    assert trained["batch_number"] == 3 and trained["trained"] is True and trained["drift"] is True
    state = load_state(settings.paths.state_file)
    third = state.batches["3"]
    assert third.training_rows_total == 450  # batches 1, 2 (skipped) and 3
    assert third.drift is not None and third.drift.reference_batches == [1]
    assert third.model_version == "2"


def test_force_trains_a_batch_the_policy_would_skip(make_project: Callable[..., Path]) -> None:
    params = make_project(
        data={"source": "landing"}, monitoring={"retrain_policy": "on_change", "decay_tolerance": 0.3}
    )
    land(params, 1, rows(0, 150))
    land(params, 2, rows(150, 300))
    run(params)
    forced = run(params, batch=2, force=True)
    assert forced["trained"] is True and forced["model_version"] == "2"


def test_unreadable_champion_data_is_noted_and_never_blocks_the_batch(
    make_project: Callable[..., Path],
) -> None:
    params = make_project(
        data={"source": "landing", "window_batches": 1},
        evaluation={"promotion_tolerance": 1.0},  # every new model is promoted: batch 2's is champion
        monitoring={"retrain_policy": "on_change"},
    )
    for batch, start in ((1, 0), (2, 150), (3, 300)):
        land(params, batch, rows(start, start + 150))
    settings = load_settings(params)
    run(params)
    run(params)
    # Batch 2's processed file (the champion's only training batch with a window of 1) is gone.
    settings.processed_batch_file(2).unlink()

    outcome = run(params)

    assert outcome["status"] == "completed" and outcome["trained"] is True, outcome
    drift = load_state(settings.paths.state_file).batches["3"].drift
    assert drift is not None and drift.dataset_drift is None
    assert drift.note and "cannot be read" in drift.note and "batch_2.parquet" in drift.note
    assert drift.champion_score_on_batch is not None  # the champion still scored the batch
