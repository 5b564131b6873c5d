"""The flow's alert step: every alert becomes a Prefect event (the UI's event feed; users build
automations on them), sent on to the webhook when ``alerts.events`` wants it
(:mod:`retrain_pipeline.alerts`).

One :class:`RunAlerts` per flow run. Each method is called once, after the state commit of what
it reports, so an alert never claims something that was not recorded; it never raises.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import get_client, get_run_logger
from prefect.events import emit_event
from prefect.runtime import flow_run

from retrain_pipeline import alerts, links
from retrain_pipeline.alerts import Alert, Delivery
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import DataValidationError
from retrain_pipeline.state import BatchRecord
from retrain_pipeline.urls import redact_webhook

#: The Prefect event of each alert (``retrain.*``, beside Prefect's own ``prefect.*``).
EVENT_NAMES = {
    "batch_rejected": "retrain.batch.rejected",
    "batch_failed": "retrain.batch.failed",
    "run_crashed": "retrain.run.crashed",  # sent by the deployment's automation, not the flow
    "dataset_drift": "retrain.batch.drifted",
    "champion_decay": "retrain.champion.decayed",
    "model_promoted": "retrain.model.promoted",
    "schedule_paused": "retrain.schedule.paused",
}
BATCH_TAG_PREFIX = "batch:"  # the flow run's tag naming its batch (the crashed-run message reads it)


class RunAlerts:
    """The alerts of one flow run; remembers its batch once chosen."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.batch: int | None = None

    def chose(self, batch: int) -> None:
        """The run works on ``batch``: tag its flow run ``batch:<N>`` (one API call)."""
        self.batch = batch
        tag_flow_run(batch)

    def rejected(self, error: DataValidationError) -> Delivery:
        alert = alerts.batch_rejected(self.settings.project_name, error, self._links())
        return announce(self.settings, [alert])

    def failed(self, error: BaseException) -> Delivery:
        alert = alerts.batch_failed(self.settings.project_name, self.batch, error, self._links())
        return announce(self.settings, [alert])

    def completed(self, batch: int, record: BatchRecord, experiment_id: str | None) -> Delivery:
        """dataset_drift, champion_decay and model_promoted, each when the record says so."""
        found = alerts.completed_batch(
            self.settings.project_name,
            batch,
            record,
            self.settings.evaluation.primary_metric,
            self._links(experiment_id, record.mlflow_run_id),
        )
        return announce(self.settings, found)

    def paused(self, deployment: str, reason: str) -> Delivery:
        alert = alerts.schedule_paused(self.settings.project_name, deployment, reason, self._links())
        return announce(self.settings, [alert])

    def _links(self, experiment_id: str | None = None, mlflow_run_id: str | None = None) -> alerts.Links:
        return alerts.Links(
            links.flow_run_link(self.settings, flow_run.id),
            links.mlflow_run_link(self.settings, experiment_id, mlflow_run_id),
        )


def announce(settings: Settings, found: Sequence[Alert]) -> Delivery:
    """Emit a Prefect event per alert, then deliver the wanted ones to the webhook (at once)."""
    logger = get_run_logger()
    for alert in found:
        resource = {
            "prefect.resource.id": f"retrain.project.{settings.project_id}",
            "prefect.resource.name": settings.project_name,
        }
        if alert.batch is not None:
            resource["retrain.batch"] = str(alert.batch)
        try:
            emit_event(EVENT_NAMES[alert.event], resource=resource, payload=alert.body())
        except Exception as exc:  # an event feed problem never fails the batch
            logger.warning("Prefect event %s not emitted: %s", EVENT_NAMES[alert.event], exc)
    wanted = [alert for alert in found if settings.alerts.wants(alert.event)]
    url = settings.alerts.webhook_url
    if not wanted or url is None:
        return alerts.Delivery()
    delivery = alerts.deliver(
        wanted, url, timeout_s=settings.alerts.timeout_seconds, retries=settings.alerts.retries, log=logger
    )
    if delivery.delivered:
        sent = ", ".join(alert.event for alert in delivery.delivered)
        logger.info("Alerts sent to %s: %s", redact_webhook(url), sent)
    return delivery


def tag_flow_run(batch: int) -> None:
    """Add ``batch:<N>`` to this flow run's tags (replacing an earlier one); a failure only warns."""
    run_id = flow_run.id
    if not run_id:
        return
    tags = [tag for tag in flow_run.tags if not tag.startswith(BATCH_TAG_PREFIX)]
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, tags=[*tags, f"{BATCH_TAG_PREFIX}{batch}"])
    except Exception as exc:  # a missing tag only leaves the batch out of a crash message
        get_run_logger().warning("Could not tag flow run %s with its batch: %s", run_id, exc)
