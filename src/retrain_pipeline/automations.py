"""The deployment's Prefect automations, which deal with crashed runs: a run whose heartbeats
stop is marked Crashed; when ``alerts`` wants ``run_crashed``, a crashed run's alert goes out
through a webhook block.

Crashed runs cannot send their own alert, so Prefect sends it: the second automation posts to
a Prefect custom-webhook block that keeps the webhook URL in its secrets. Both are created or
updated in place by name (:func:`ensure_automation`), never duplicated.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast
from uuid import UUID

from prefect import get_client
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound
from prefect.types import SecretDict

from retrain_pipeline import links
from retrain_pipeline.alert_tasks import BATCH_TAG_PREFIX
from retrain_pipeline.config import Settings
from retrain_pipeline.urls import redact_webhook

FLOW_NAME = "automated-training"  # the flow's name (flows/automated_training_flow.py)
# A run is declared dead after this many heartbeat periods without one (Prefect's recipe:
# 30 s heartbeats, a 90 s window). One missed heartbeat alone can be a slow network or API.
MISSED_HEARTBEATS = 3
TERMINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


def runs_of(deployment_id: UUID) -> ResourceSpecification:
    """What relates an event to a run of this deployment (both automations' triggers)."""
    return ResourceSpecification(
        {"prefect.resource.role": "deployment", "prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    )


def crash_automation_name(deployment_name: str) -> str:
    return f"{FLOW_NAME}/{deployment_name}: crash runs without heartbeats"


def crash_automation(deployment_id: UUID, deployment_name: str, heartbeat_s: int) -> AutomationCore:
    """Mark a run of this deployment Crashed when its heartbeats stop (Prefect's zombie-run recipe).

    Proactive trigger: after a flow run enters Running, and after each of its heartbeats,
    expect another heartbeat or a terminal state of the same run within
    ``MISSED_HEARTBEATS * heartbeat_s`` seconds. Running opens the first window: a run killed
    before its first heartbeat reached the server would otherwise never be Crashed, and its
    deployment concurrency slot would block every later run.
    Prefect's triggers service checks expired windows every 5 s, so a run is Crashed
    between ``(MISSED_HEARTBEATS - 1) * heartbeat_s`` and ``MISSED_HEARTBEATS * heartbeat_s + 5``
    seconds after its process died.
    """
    window = timedelta(seconds=MISSED_HEARTBEATS * heartbeat_s)
    return AutomationCore(
        name=crash_automation_name(deployment_name),
        description=(
            f"Created by deployments/setup_deployment.py for {FLOW_NAME}/{deployment_name}: a run "
            f"that sends no heartbeat for {window.total_seconds():.0f} s is marked Crashed, which "
            "frees its deployment concurrency slot for the next run."
        ),
        enabled=True,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in TERMINAL_EVENTS)},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=runs_of(deployment_id),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[
            ChangeFlowRunState(
                name=None,
                state=StateType.CRASHED,
                force=False,
                message=(
                    f"No heartbeat for {window.total_seconds():.0f} s: the run stopped sending "
                    "heartbeats (its worker or machine died)."
                ),
            )
        ],
    )


def crash_alert_name(deployment_name: str) -> str:
    return f"{FLOW_NAME}/{deployment_name}: alert on crashed runs"


def crash_alert_block_name(deployment_name: str) -> str:
    """The webhook block's name (Prefect block names: lowercase letters, digits and dashes)."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in deployment_name.lower()).strip("-")
    return f"retrain-crash-alert-{slug or 'deployment'}"


def crash_alert_block(settings: Settings) -> CustomWebhookNotificationBlock:
    """The webhook as a Prefect notification block: the same JSON keys as the flow's alerts.

    The block puts the rendered ``body`` and ``subject`` (the batch, from the run's
    ``batch:<N>`` tag) into ``json_data`` as JSON strings, so any text is safe there. The URL
    lives in the block's secrets (hidden in the UI), the block's ``url`` only names it.
    """
    url = settings.alerts.webhook_url
    assert url is not None
    return CustomWebhookNotificationBlock(
        name=crash_alert_block_name(settings.automation.deployment_name),
        url="{{webhook_url}}",
        method="POST",
        json_data={
            "text": "{{body}}",
            "event": "run_crashed",
            "project": settings.project_name,
            "batch": "{{subject}}",
            "reason": "the flow run crashed (its process or machine died)",
        },
        secrets=SecretDict({"webhook_url": url}),
        headers={"Content-Type": "application/json"},
        cookies={},
        timeout=settings.alerts.timeout_seconds,
    )


def crash_alert(settings: Settings, deployment_id: UUID, block_id: UUID) -> AutomationCore:
    """When a run of this deployment turns Crashed, send one message through ``block_id``.

    Template variables (Prefect 3.8 ``SendNotification``): ``flow_run`` is read from the API
    for the event's flow run (name, id, tags, state); the batch comes from its ``batch:<N>``
    tag, which the flow adds once it has chosen the batch (empty before that).
    """
    deployment_name = settings.automation.deployment_name
    batch = (
        f'{{% for tag in flow_run.tags if tag.startswith("{BATCH_TAG_PREFIX}") %}}'
        f"{{{{ tag[{len(BATCH_TAG_PREFIX)}:] }}}}{{% else %}}unknown{{% endfor %}}"
    )
    run_url = f"{links.prefect_ui(settings)}/runs/flow-run/{{{{ flow_run.id }}}}"
    body = (
        f"[{settings.project_name}] batch {batch}: run crashed: flow run {{{{ flow_run.name }}}} "
        f"({{{{ flow_run.id }}}}) of {FLOW_NAME}/{deployment_name}: {{{{ flow_run.state.message }}}}\n"
        f"Prefect run: {run_url}"
    )
    return AutomationCore(
        name=crash_alert_name(deployment_name),
        description=(
            f"Created by deployments/setup_deployment.py for {FLOW_NAME}/{deployment_name}: a crashed "
            "run cannot send its own alert, so this sends the run_crashed message (alerts.webhook_url)."
        ),
        enabled=True,
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=runs_of(deployment_id),
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=batch, body=body)],
    )


def ensure_crash_alert(settings: Settings, deployment_id: UUID) -> str:
    """The crashed-run alert (block and automation) when ``run_crashed`` is wanted, else neither;
    one line saying what was done."""
    name = crash_alert_name(settings.automation.deployment_name)
    block_name = crash_alert_block_name(settings.automation.deployment_name)
    url = settings.alerts.webhook_url
    if url is not None and settings.alerts.wants("run_crashed"):
        # save() is typed "UUID | Coroutine" (sync/async dual); called synchronously it is a UUID.
        block_id = cast(UUID, crash_alert_block(settings).save(block_name, overwrite=True))
        automation_id, done = ensure_automation(crash_alert(settings, deployment_id, block_id))
        return (
            f"automation {name!r} ({done}, {automation_id}): a crashed run is reported to "
            f"{redact_webhook(url)} (block {block_name!r})"
        )
    removed = remove_crash_alert(name, block_name)
    why = "alerts.webhook_url is not set" if url is None else "run_crashed is not in alerts.events"
    return f"crashed runs are not reported ({why})" + (f"; removed {removed}" if removed else "")


def remove_crash_alert(name: str, block_name: str) -> str:
    """Delete the crashed-run automation(s) and the webhook block; what was removed, or ''."""
    removed = []
    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(name):
            client.delete_automation(automation.id)
            removed.append(f"automation {name!r}")
        try:
            block = client.read_block_document_by_name(block_name, block_type_slug="custom-webhook")
        except ObjectNotFound:
            block = None
        if block is not None and block.id is not None:
            client.delete_block_document(block.id)
            removed.append(f"block {block_name!r}")
    return " and ".join(removed)


def ensure_automation(automation: AutomationCore) -> tuple[UUID, str]:
    """Create the automation, or update the one with its name; returns its id and what was done.

    An unchanged automation is left alone: an update gives its trigger a new id on the
    server, which drops the open heartbeat windows, so a run that died just before a
    redeploy would never be marked Crashed. Extra automations of the same name are deleted.
    """
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(automation.name)  # newest first
        if not existing:
            return client.create_automation(automation), "created"
        keep, *duplicates = existing
        for duplicate in duplicates:
            client.delete_automation(duplicate.id)
        if same_definition(keep, automation):
            return keep.id, "unchanged"
        client.update_automation(keep.id, automation)
        return keep.id, "updated"


def same_definition(current: AutomationCore, wanted: AutomationCore) -> bool:
    """True when ``current`` (as read from the API) already does what ``wanted`` describes."""
    fields = (
        "name",
        "description",
        "enabled",
        "trigger",
        "actions",
        "actions_on_trigger",
        "actions_on_resolve",
    )
    return all(getattr(current, name) == getattr(wanted, name) for name in fields)
