"""Alerts from the real flow to a real webhook on loopback: exactly one message per event per
batch, sent after the state records it, and a webhook that is down never fails a batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from prefect import get_client
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from flows.automated_training_flow import automated_training_flow
from retrain_pipeline.errors import DataValidationError, StateError
from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset
from retrain_pipeline.state import load_state
from webhook_receiver import SECRET_PATH, WebhookReceiver, refused_url

RAW = breast_cancer_dataset(seed=7, target_column="target")
FEATURES = [c for c in RAW.columns if c != "target"]


def land(params: Path, batch: int, frame: pd.DataFrame) -> None:
    landing = params.parent / "data" / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    frame.to_csv(landing / f"batch_{batch}.csv", index=False)


def rows(start: int, stop: int, *, shifted: bool = False) -> pd.DataFrame:
    frame = RAW.iloc[start:stop].copy()
    if shifted:
        frame[FEATURES] = frame[FEATURES] * 3
    return frame


def run(params: Path) -> dict:
    return automated_training_flow(params_path=str(params))


def prefect_events(name: str, project_id: str, timeout: float = 15) -> list[Event]:
    """The events ``name`` of the project, once at least one arrived (they are sent in the background)."""
    wanted = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[f"retrain.project.{project_id}"]),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_events(filter=wanted, limit=50).events  # the server caps it at 50
            if found or time.monotonic() > deadline:
                return list(found)
            time.sleep(0.3)


def alerting_project(make_project: Callable[..., Path], url: str, **overrides: object) -> Path:
    return make_project(
        data={"source": "landing"}, alerts={"webhook_url": url, "project_name": "churn"}, **overrides
    )


def test_a_malformed_batch_sends_one_rejection(make_project: Callable[..., Path]) -> None:
    with WebhookReceiver() as hook:
        params = alerting_project(make_project, hook.url)
        bad = rows(0, 60)
        bad.loc[bad.index[3], "mean_radius"] = float("nan")
        land(params, 1, bad)
        with pytest.raises(DataValidationError):
            run(params)
        (body,) = hook.wait_for(1)
        time.sleep(0.3)
        assert len(hook.received) == 1
    record = load_state(load_settings(params).paths.state_file).batches["1"]
    assert record.status == "rejected"  # recorded before the message
    assert body["event"] == "batch_rejected" and body["project"] == "churn" and body["batch"] == 1
    assert "mean_radius" in body["reason"] and body["reason"] == record.error.split(": ", 2)[2]
    assert body["figures"]["file"].endswith("batch_1.csv")
    assert "/runs/flow-run/" in body["prefect_run_url"] and body["mlflow_run_url"] is None
    assert body["text"].startswith("[churn] batch 1: batch rejected: ")
    # The same alert is a Prefect event (the UI's event feed; users' own automations).
    (event,) = prefect_events("retrain.batch.rejected", load_settings(params).project_id)
    assert event.payload == body and event.resource["retrain.batch"] == "1"
    assert event.resource["prefect.resource.name"] == "churn"


def test_promotion_then_drift_send_one_message_each(make_project: Callable[..., Path]) -> None:
    with WebhookReceiver() as hook:
        params = alerting_project(make_project, hook.url)
        land(params, 1, rows(0, 150))
        land(params, 2, rows(150, 300, shifted=True))

        assert run(params)["status"] == "completed"
        (promoted,) = hook.wait_for(1)
        # From the state commit (the state file written) to the message at the webhook.
        state_file = load_settings(params).paths.state_file
        commit_to_alert = hook.received[0].wall - state_file.stat().st_mtime
        assert run(params)["status"] == "completed"
        time.sleep(0.5)
        second = hook.delivered()[1:]
    state = load_state(load_settings(params).paths.state_file)
    assert promoted["event"] == "model_promoted" and promoted["batch"] == 1
    assert promoted["figures"]["new_version"] == "1" and promoted["figures"]["old_version"] is None
    assert promoted["figures"]["metric"] == "f1"
    assert promoted["figures"]["new_score"] == state.batches["1"].metrics["f1"]
    assert promoted["mlflow_run_url"].endswith(f"/runs/{state.batches['1'].mlflow_run_id}")
    assert promoted["prefect_run_url"].endswith(state.batches["1"].prefect_flow_run_id)

    events = [b["event"] for b in second]
    assert events.count("dataset_drift") == 1, events
    assert len(events) == len(set(events)), events  # one message per event per batch
    (drift,) = [b for b in second if b["event"] == "dataset_drift"]
    record = state.batches["2"].drift
    assert drift["batch"] == 2 and drift["figures"]["drift_share"] == record.drift_share
    assert "mean_radius" in drift["figures"]["drifted_columns"]
    assert drift["mlflow_run_url"].endswith(f"/runs/{state.batches['2'].mlflow_run_id}")
    assert ("model_promoted" in events) == bool(state.batches["2"].promoted)
    assert ("champion_decay" in events) == bool(record.decay)
    print(f"state commit -> model_promoted at the webhook: {commit_to_alert:.2f} s")
    assert 0 < commit_to_alert < 5


def test_a_webhook_that_is_down_does_not_fail_the_batch(
    make_project: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    params = make_project(
        data={"source": "landing"},
        alerts={"webhook_url": refused_url(), "timeout_seconds": 0.5, "retries": 1},
    )
    land(params, 1, rows(0, 60))
    with caplog.at_level(logging.WARNING):
        outcome = run(params)
    assert outcome["status"] == "completed"
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert lost: ")]
    assert len(lost) == 1 and lost[0].startswith("alert lost: model_promoted batch 1 to http://127.0.0.1:")
    assert SECRET_PATH not in caplog.text


def test_a_failure_before_the_batch_is_chosen_sends_one_failure(make_project: Callable[..., Path]) -> None:
    with WebhookReceiver() as hook:
        params = alerting_project(make_project, hook.url)
        (params.parent / "batch_state.json").write_text("{not json", encoding="utf-8")
        with pytest.raises(StateError):
            run(params)
        (body,) = hook.wait_for(1)
        time.sleep(0.3)
        assert len(hook.received) == 1
    assert body["event"] == "batch_failed" and body["batch"] is None
    assert body["reason"].startswith("StateError: ") and "batch_state.json" in body["reason"]
