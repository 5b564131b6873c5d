"""rebuild_state: a consistent state from committed MLflow runs and quarantine reasons."""

from __future__ import annotations

from pathlib import Path

from retrain_pipeline.recovery import rebuild_state, record_from_run, rejected_from_quarantine
from retrain_pipeline.tracking import BatchRun


def _run(batch: int, start: int, version: str, promoted: float = 1.0, champion: bool = False) -> BatchRun:
    metrics = {
        "accuracy": 0.9,
        "precision": 0.8,
        "recall": 0.7,
        "f1": 0.75,
        "roc_auc": 0.95,
        "promoted": promoted,
    }
    if champion:
        metrics["champion_f1"] = 0.7
    return BatchRun(
        run_id=f"run-{batch}-{start}",
        batch_number=batch,
        start_time_ms=start,
        end_time_ms=start + 5000,
        params={"batch_rows": "50", "train_rows": "40", "holdout_rows": "10", "training_rows_total": "50"},
        metrics=metrics,
        tags={
            "data_md5": f"d{batch}",
            "model_md5": f"m{batch}",
            "promotion_decision": "why",
            "prefect_flow_run_id": "fr",
        },
        model_version=version,
    )


def test_record_from_run_maps_params_metrics_and_tags() -> None:
    record = record_from_run(_run(3, 1_700_000_000_000, "7", promoted=0.0, champion=True), attempts=2)
    assert record.status == "completed"
    assert record.started_at == "2023-11-14T22:13:20+00:00"
    assert (record.rows, record.train_rows, record.holdout_rows, record.training_rows_total) == (
        50,
        40,
        10,
        50,
    )
    assert record.metrics == {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "roc_auc": 0.95}
    assert record.champion_metrics == {"f1": 0.7}
    assert record.promoted is False
    assert (record.model_version, record.data_md5, record.model_md5) == ("7", "d3", "m3")
    assert record.attempts == 2


def test_latest_run_per_batch_wins_and_attempts_are_counted() -> None:
    runs = [_run(1, 1000, "1"), _run(2, 2000, "2"), _run(2, 3000, "3")]
    state = rebuild_state(runs, {}, champion_version="3")
    assert state.processed_batches == [1, 2]
    assert state.last_batch == 2
    assert state.batches["2"].model_version == "3" and state.batches["2"].attempts == 2
    assert state.champion_version == "3"


def test_rejections_come_from_the_quarantine(tmp_path: Path) -> None:
    (tmp_path / "batch_2.20261123T101500+0000.reason.txt").write_text("batch 2 rejected: x.csv: empty\n")
    (tmp_path / "batch_2.20261123T091500+0000.reason.txt").write_text("older\n")
    (tmp_path / "batch_1.20261123T091500+0000.reason.txt").write_text("batch 1 was fixed later\n")
    (tmp_path / "batch_2.20261123T101500+0000.csv").write_text("")
    rejected = rejected_from_quarantine(tmp_path)
    assert sorted(rejected) == [1, 2]
    assert rejected[2].error == "batch 2 rejected: x.csv: empty"
    assert rejected[2].finished_at == "2026-11-23T10:15:00+00:00"

    state = rebuild_state([_run(1, 1000, "1")], rejected, champion_version="1")
    assert state.processed_batches == [1]  # a completed run outranks an older rejection
    assert state.batches["2"].status == "rejected"
    assert state.last_batch == 2


def test_nothing_to_rebuild_gives_an_empty_state(tmp_path: Path) -> None:
    state = rebuild_state([], rejected_from_quarantine(tmp_path / "missing"), None)
    assert state.batches == {} and state.processed_batches == [] and state.champion_version is None


def test_a_run_accepted_without_training_rebuilds_as_untrained() -> None:
    run = BatchRun(
        run_id="run-4",
        batch_number=4,
        start_time_ms=1_700_000_000_000,
        end_time_ms=1_700_000_002_000,
        params={"batch_rows": "50", "training_rows_total": "200"},
        metrics={"drift_share": 0.1, "champion_score_on_batch": 0.9},
        tags={"data_md5": "d4", "prefect_flow_run_id": "fr", "trained": "false", "skip_reason": "no drift"},
        model_version=None,
    )

    record = record_from_run(run, attempts=1)

    assert record.status == "completed" and record.trained is False and record.skip_reason == "no drift"
    assert (record.rows, record.training_rows_total, record.data_md5) == (50, 200, "d4")
    assert record.model_version is None and record.metrics is None and record.promoted is None
    state = rebuild_state([_run(3, 1, "1"), run], {}, "1")
    assert state.processed_batches == [3, 4] and state.batches["4"].trained is False
