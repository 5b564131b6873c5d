"""Alerts: what happened to a batch, as a Slack-compatible JSON message delivered with bounded retries.

Plain (no Prefect, no MLflow): builders turn what the flow has (a batch record, an error, a
pause) into :class:`Alert`; :func:`deliver` POSTs them to a webhook with the standard library.
The body's ``text`` is what Slack and Teams incoming webhooks show; the other keys are for
machines (``event`` is one of :data:`retrain_pipeline.config.ALERT_EVENTS`).

Delivery never raises: a webhook that is down or hanging costs a batch at most
:func:`delivery_bound` seconds once (the alerts of one batch are sent at the same time), and
each lost alert is logged as one WARNING naming the event, the batch and the webhook without
its secret path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retrain_pipeline.errors import DataValidationError
from retrain_pipeline.state import BatchRecord, utc_now
from retrain_pipeline.urls import redact_webhook

logger = logging.getLogger(__name__)

#: Pauses before the second attempt, then before each later one.
FIRST_BACKOFF_S = 0.5
LATER_BACKOFF_S = 1.0
#: Statuses worth another attempt; any other 4xx is the webhook's final answer.
RETRIED_STATUSES = frozenset({408, 425, 429})
SHOWN_COLUMNS = 5  # drifted columns named in the text line

Figures = dict[str, Any]
LogTo = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class Links:
    """Where a person can look: the Prefect flow run and the MLflow run (None: none exists)."""

    prefect_run_url: str | None = None
    mlflow_run_url: str | None = None


@dataclass(frozen=True)
class Alert:
    """One event of one batch (``batch`` None: the run had not chosen one)."""

    event: str
    project: str
    batch: int | None
    reason: str
    figures: Figures = field(default_factory=dict)
    prefect_run_url: str | None = None
    mlflow_run_url: str | None = None
    at: str = field(default_factory=utc_now)

    def text(self) -> str:
        """What a person reads: project, batch, event and reason, the figures, both links."""
        where = f"batch {self.batch}" if self.batch is not None else "no batch"
        lines = [f"[{self.project}] {where}: {self.event.replace('_', ' ')}: {self.reason}"]
        shown = {k: v for k, v in self.figures.items() if v is not None and not isinstance(v, (list, dict))}
        if shown:
            lines.append(", ".join(f"{k} {_figure(v)}" for k, v in shown.items()))
        links = [
            f"{name}: {url}"
            for name, url in (("Prefect run", self.prefect_run_url), ("MLflow run", self.mlflow_run_url))
            if url
        ]
        if links:
            lines.append(" | ".join(links))
        return "\n".join(lines)

    def body(self) -> dict[str, Any]:
        """The JSON document POSTed to the webhook (and the payload of the Prefect event)."""
        return {
            "text": self.text(),
            "event": self.event,
            "project": self.project,
            "batch": self.batch,
            "reason": self.reason,
            "figures": self.figures,
            "prefect_run_url": self.prefect_run_url,
            "mlflow_run_url": self.mlflow_run_url,
            "sent_at": self.at,
        }


def _figure(value: Any) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- builders


def batch_rejected(project: str, error: DataValidationError, links: Links) -> Alert:
    """A batch file failed validation (it is quarantined; the pipeline moves on)."""
    return Alert(
        "batch_rejected",
        project,
        error.batch_number,
        error.problem,
        {"file": error.file},
        links.prefect_run_url,
    )


def batch_failed(project: str, batch: int | None, error: BaseException, links: Links) -> Alert:
    """The run failed (the next run retries the batch)."""
    reason = f"{type(error).__name__}: {error}"
    return Alert("batch_failed", project, batch, reason, {}, links.prefect_run_url, links.mlflow_run_url)


def completed_batch(
    project: str, batch: int, record: BatchRecord, primary_metric: str, links: Links
) -> list[Alert]:
    """The alerts of a completed batch: dataset_drift, champion_decay, model_promoted (each when so)."""
    found = [
        alert
        for alert in (
            dataset_drift(project, batch, record, links),
            champion_decay(project, batch, record, links),
        )
        if alert is not None
    ]
    promoted = model_promoted(project, batch, record, primary_metric, links)
    return found + ([promoted] if promoted else [])


def dataset_drift(project: str, batch: int, record: BatchRecord, links: Links) -> Alert | None:
    """The batch drifted from the champion's training data (None: it did not, or was not checked)."""
    drift = record.drift
    if drift is None or drift.dataset_drift is not True:
        return None
    columns = [c.column for c in drift.drifted_columns]
    named = ", ".join(columns[:SHOWN_COLUMNS]) + (
        f" and {len(columns) - SHOWN_COLUMNS} more" if len(columns) > SHOWN_COLUMNS else ""
    )
    reason = (
        f"{len(columns)} of {drift.columns_tested} columns drifted "
        f"(share {_figure(drift.drift_share)} >= {_figure(drift.share_threshold)}): {named}"
    )
    figures: Figures = {
        "drift_share": drift.drift_share,
        "share_threshold": drift.share_threshold,
        "columns_tested": drift.columns_tested,
        "drifted_columns": columns,
        "reference_batches": drift.reference_batches,
        "trained": record.trained,
    }
    return Alert(
        "dataset_drift", project, batch, reason, figures, links.prefect_run_url, links.mlflow_run_url
    )


def champion_decay(project: str, batch: int, record: BatchRecord, links: Links) -> Alert | None:
    """The champion scores the batch worse than when it was promoted (None: it does not)."""
    drift = record.drift
    if drift is None or drift.decay is not True:
        return None
    metric = drift.metric or "score"
    on_batch, at_promotion = (
        _figure(drift.champion_score_on_batch),
        _figure(drift.champion_score_at_promotion),
    )
    reason = (
        f"champion v{drift.champion_version} {metric} {on_batch} on this batch, {at_promotion} when "
        f"promoted (tolerance {_figure(drift.decay_tolerance)})"
    )
    figures: Figures = {
        "champion_version": drift.champion_version,
        "metric": drift.metric,
        "champion_score_on_batch": drift.champion_score_on_batch,
        "champion_score_at_promotion": drift.champion_score_at_promotion,
        "decay_tolerance": drift.decay_tolerance,
    }
    return Alert(
        "champion_decay", project, batch, reason, figures, links.prefect_run_url, links.mlflow_run_url
    )


def model_promoted(
    project: str, batch: int, record: BatchRecord, primary_metric: str, links: Links
) -> Alert | None:
    """A new model became champion (None: it was not promoted)."""
    if not record.promoted or record.model_version is None:
        return None
    new = (record.metrics or {}).get(primary_metric)
    old = (record.champion_metrics or {}).get(primary_metric)
    before = record.champion_version_before
    was = f"v{before} ({primary_metric} {_figure(old)})" if before else "no champion"
    reason = f"model v{record.model_version} ({primary_metric} {_figure(new)}) replaces {was}"
    figures: Figures = {
        "old_version": before,
        "new_version": record.model_version,
        "metric": primary_metric,
        "new_score": new,
        "old_score": old,
        "promotion_reason": record.promotion_reason,
    }
    return Alert(
        "model_promoted", project, batch, reason, figures, links.prefect_run_url, links.mlflow_run_url
    )


def schedule_paused(project: str, deployment: str, reason: str, links: Links) -> Alert:
    """Every batch is done: the deployment's schedule was paused."""
    return Alert(
        "schedule_paused",
        project,
        None,
        f"{reason}: paused the schedule of deployment {deployment}",
        {"deployment": deployment},
        links.prefect_run_url,
    )


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Delivery:
    """What reached the webhook and what was lost (with why)."""

    delivered: tuple[Alert, ...] = ()
    lost: tuple[tuple[Alert, str], ...] = ()


def backoffs(retries: int) -> list[float]:
    """The pauses before each retry: 0.5 s, then 1 s."""
    return [FIRST_BACKOFF_S if i == 0 else LATER_BACKOFF_S for i in range(retries)]


def delivery_bound(timeout_s: float, retries: int) -> float:
    """The longest :func:`deliver` waits for any number of alerts (every attempt timing out)."""
    return timeout_s * (retries + 1) + sum(backoffs(retries))


def deliver(
    alerts: Sequence[Alert],
    url: str,
    *,
    timeout_s: float,
    retries: int,
    log: LogTo | None = None,
) -> Delivery:
    """POST each alert to ``url`` at the same time (one thread each) and wait for all of them.

    Each attempt waits at most ``timeout_s``; a connection error, a timeout, 5xx, 408, 425 or
    429 is retried ``retries`` times (:func:`backoffs`); 2xx is delivered. Never raises: a
    lost alert is logged as a WARNING on ``log`` (this module's logger by default).
    """
    log = log or logger
    if not alerts:
        return Delivery()
    outcomes: list[str | None] = [None] * len(alerts)  # None: delivered; else why it was lost
    finished = [False] * len(alerts)

    def send(i: int) -> None:
        try:
            outcomes[i] = _post_with_retries(alerts[i].body(), url, timeout_s, retries)
        except Exception as exc:  # delivery never breaks the batch
            outcomes[i] = f"{type(exc).__name__}: {exc}"
        finished[i] = True

    threads = [
        threading.Thread(target=send, args=(i,), name=f"alert-{a.event}", daemon=True)
        for i, a in enumerate(alerts)
    ]
    for thread in threads:
        thread.start()
    # The sockets' timeouts bound each attempt; this deadline also covers a webhook that trickles
    # its answer (each read within the timeout, the whole longer).
    deadline = time.monotonic() + delivery_bound(timeout_s, retries) + 0.5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    delivered: list[Alert] = []
    lost: list[tuple[Alert, str]] = []
    shown = redact_webhook(url)
    for alert, done, outcome in zip(alerts, finished, outcomes, strict=True):
        why = outcome if done else f"no answer within {delivery_bound(timeout_s, retries):.1f} s"
        if done and outcome is None:
            delivered.append(alert)
            continue
        why = (why or "").replace(url, shown)
        where = f"batch {alert.batch}" if alert.batch is not None else "no batch"
        log.warning("alert lost: %s %s to %s: %s", alert.event, where, shown, why)
        lost.append((alert, why))
    return Delivery(tuple(delivered), tuple(lost))


def _post_with_retries(body: dict[str, Any], url: str, timeout_s: float, retries: int) -> str | None:
    """None when a 2xx came back; else why the last attempt failed."""
    data = json.dumps(body, default=str).encode()
    why = "not sent"
    for attempt, pause in enumerate([0.0, *backoffs(retries)]):
        if attempt:
            time.sleep(pause)
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "retrain-pipeline-alerts"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # http(s) only (config)
                response.read(1024)
                return None
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code not in RETRIED_STATUSES:
                return why
        except urllib.error.URLError as exc:
            why = f"{exc.reason}"
        except (TimeoutError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{why} (after {retries + 1} attempts)"
