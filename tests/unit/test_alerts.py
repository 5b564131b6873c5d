"""Alerts: the builders' fields and the delivery to a real webhook on loopback (retries, a webhook
that is down or hangs, several alerts at once, the secret path never logged)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from retrain_pipeline import alerts
from retrain_pipeline.alerts import Alert, Links
from retrain_pipeline.errors import DataValidationError
from retrain_pipeline.state import BatchRecord, ColumnDriftRecord, DriftRecord
from webhook_receiver import SECRET_PATH, WebhookReceiver, refused_url

LINKS = Links("http://prefect.test/runs/flow-run/abc", "http://mlflow.test/#/experiments/1/runs/r1")


def drift_record(*, dataset_drift: bool | None = True, decay: bool | None = False) -> DriftRecord:
    return DriftRecord(
        dataset_drift=dataset_drift,
        drift_share=0.8,
        share_threshold=0.5,
        columns_tested=10,
        drifted_columns=[
            ColumnDriftRecord(column=f"c{i}", method="ks", score=0.001, threshold=0.05) for i in range(8)
        ],
        reference_batches=[1, 2],
        champion_version="2",
        metric="f1",
        champion_score_at_promotion=0.95,
        champion_score_on_batch=0.80,
        decay_tolerance=0.05,
        decay=decay,
    )


def completed(*, promoted: bool = True, drift: DriftRecord | None = None) -> BatchRecord:
    return BatchRecord(
        status="completed",
        started_at="2026-01-01T00:00:00+00:00",
        metrics={"f1": 0.97, "accuracy": 0.96},
        champion_metrics={"f1": 0.93},
        champion_version_before="2",
        promoted=promoted,
        promotion_reason="f1 0.97 >= 0.93",
        model_version="3",
        mlflow_run_id="r1",
        trained=True,
        drift=drift,
    )


def an_alert(event: str = "batch_failed", batch: int = 4) -> Alert:
    return Alert(event, "proj", batch, "boom", {"x": 1}, LINKS.prefect_run_url, LINKS.mlflow_run_url)


# --------------------------------------------------------------------------- builders


def test_rejected_names_the_batch_file_and_problem() -> None:
    error = DataValidationError(5, "data/landing/batch_5.csv", "column 'mean_radius': wrong type")
    alert = alerts.batch_rejected("proj", error, LINKS)
    body = alert.body()
    assert (body["event"], body["project"], body["batch"]) == ("batch_rejected", "proj", 5)
    assert body["reason"] == "column 'mean_radius': wrong type"
    assert body["figures"] == {"file": "data/landing/batch_5.csv"}
    assert body["prefect_run_url"] == LINKS.prefect_run_url and body["mlflow_run_url"] is None
    assert body["text"].startswith("[proj] batch 5: batch rejected: column 'mean_radius'")
    assert LINKS.prefect_run_url in body["text"]
    assert json.loads(json.dumps(body)) == body  # plain JSON


def test_failed_names_the_exception_and_may_have_no_batch() -> None:
    alert = alerts.batch_failed("proj", None, ConnectionError("MLflow down"), LINKS)
    assert alert.reason == "ConnectionError: MLflow down"
    assert alert.batch is None and alert.text().startswith("[proj] no batch: batch failed:")


def test_a_completed_batch_gives_drift_decay_and_promotion_each_when_so() -> None:
    record = completed(drift=drift_record(dataset_drift=True, decay=True))
    found = alerts.completed_batch("proj", 3, record, "f1", LINKS)
    assert [a.event for a in found] == ["dataset_drift", "champion_decay", "model_promoted"]
    drift, decay, promoted = found
    assert drift.figures["drift_share"] == 0.8 and drift.figures["drifted_columns"] == [
        f"c{i}" for i in range(8)
    ]
    assert "8 of 10 columns drifted" in drift.reason and "c0, c1, c2, c3, c4 and 3 more" in drift.reason
    assert (
        decay.figures["champion_score_on_batch"] == 0.8 and "champion v2 f1 0.8 on this batch" in decay.reason
    )
    assert promoted.figures == {
        "old_version": "2",
        "new_version": "3",
        "metric": "f1",
        "new_score": 0.97,
        "old_score": 0.93,
        "promotion_reason": "f1 0.97 >= 0.93",
    }
    assert promoted.reason == "model v3 (f1 0.97) replaces v2 (f1 0.93)"
    assert all(a.mlflow_run_url == LINKS.mlflow_run_url for a in found)


@pytest.mark.parametrize(
    ("drift", "promoted", "events"),
    [
        (None, False, []),
        (drift_record(dataset_drift=None, decay=None), False, []),  # first batch: not checked
        (drift_record(dataset_drift=False, decay=False), True, ["model_promoted"]),
        (drift_record(dataset_drift=False, decay=True), False, ["champion_decay"]),
    ],
)
def test_only_what_the_record_says(drift: DriftRecord | None, promoted: bool, events: list[str]) -> None:
    found = alerts.completed_batch("proj", 3, completed(promoted=promoted, drift=drift), "f1", LINKS)
    assert [a.event for a in found] == events


def test_first_promotion_has_no_old_version() -> None:
    record = completed().model_copy(update={"champion_version_before": None, "champion_metrics": None})
    alert = alerts.model_promoted("proj", 1, record, "f1", LINKS)
    assert alert is not None and alert.reason == "model v3 (f1 0.97) replaces no champion"


def test_schedule_paused() -> None:
    alert = alerts.schedule_paused("proj", "automated-retraining", "all 8 batches are done", LINKS)
    assert alert.event == "schedule_paused" and alert.batch is None
    assert alert.figures == {"deployment": "automated-retraining"}


# --------------------------------------------------------------------------- delivery


def test_delivered_to_a_real_webhook() -> None:
    with WebhookReceiver() as hook:
        result = alerts.deliver([an_alert()], hook.url, timeout_s=2, retries=2)
        (body,) = hook.wait_for(1)
    assert [a.event for a in result.delivered] == ["batch_failed"]
    assert not result.lost
    assert body == {**an_alert().body(), "sent_at": body["sent_at"]}


def test_a_500_is_retried_then_delivered() -> None:
    with WebhookReceiver(statuses=[500, 503]) as hook:
        started = time.monotonic()
        result = alerts.deliver([an_alert()], hook.url, timeout_s=2, retries=2)
        took = time.monotonic() - started
    assert len(result.delivered) == 1 and not result.lost
    assert [r.status for r in hook.received] == [500, 503, 200]
    assert 1.5 <= took < 3  # 0.5 s then 1 s of backoff


def test_a_400_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver(statuses=[404]) as hook, caplog.at_level(logging.WARNING):
        result = alerts.deliver([an_alert()], hook.url, timeout_s=2, retries=2)
    assert len(hook.received) == 1 and result.lost[0][1] == "HTTP 404 Not Found"


def test_a_webhook_that_is_down_loses_the_alert_quickly_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    url = refused_url()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="retrain_pipeline.alerts"):
        result = alerts.deliver([an_alert(batch=7)], url, timeout_s=2, retries=2)
    took = time.monotonic() - started
    assert not result.delivered and len(result.lost) == 1
    assert took < 2.5  # the two backoffs; a refused connection answers at once
    (message,) = [r.getMessage() for r in caplog.records]
    port = url.split(":")[2].split("/")[0]
    assert message.startswith(f"alert lost: batch_failed batch 7 to http://127.0.0.1:{port}/...: ")
    assert "refused" in message and "after 3 attempts" in message
    assert SECRET_PATH not in caplog.text and "s3cr3t" not in caplog.text


def test_a_hanging_webhook_costs_at_most_the_bound_for_several_alerts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeout_s, retries = 0.5, 1
    bound = alerts.delivery_bound(timeout_s, retries)
    assert bound == pytest.approx(1.5)
    with WebhookReceiver(hang_s=5) as hook, caplog.at_level(logging.WARNING):
        started = time.monotonic()
        result = alerts.deliver(
            [an_alert("dataset_drift"), an_alert("champion_decay"), an_alert("model_promoted")],
            hook.url,
            timeout_s=timeout_s,
            retries=retries,
        )
        took = time.monotonic() - started
    assert not result.delivered and len(result.lost) == 3
    assert bound <= took < bound + 0.8, took  # once for all three, not three times
    assert all("timed out" in why for _, why in result.lost), result.lost
    assert "s3cr3t" not in caplog.text


def test_several_alerts_are_sent_at_the_same_time() -> None:
    with WebhookReceiver(hang_s=0.5) as hook:
        started = time.monotonic()
        found = [an_alert(event) for event in ("dataset_drift", "champion_decay", "model_promoted")]
        result = alerts.deliver(found, hook.url, timeout_s=2, retries=0)
        took = time.monotonic() - started
    assert len(result.delivered) == 3
    assert sorted(hook.events()) == ["champion_decay", "dataset_drift", "model_promoted"]
    assert took < 1.2  # three 0.5 s answers at once, not 1.5 s one after the other


def test_nothing_to_send_sends_nothing() -> None:
    assert alerts.deliver([], refused_url(), timeout_s=1, retries=2) == alerts.Delivery()


def test_backoffs() -> None:
    assert (
        alerts.backoffs(0) == []
        and alerts.backoffs(2) == [0.5, 1.0]
        and alerts.backoffs(3) == [0.5, 1.0, 1.0]
    )
