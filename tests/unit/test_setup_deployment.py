"""The deployment's heartbeat setting and its zombie-run automation, without a server."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest
import yaml
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.server.utilities.user_templates import render_user_template_sync

import deployments.setup_deployment as setup_deployment
from deployments.setup_deployment import DEFAULT_HEARTBEAT_S, heartbeat_seconds
from retrain_pipeline.automations import (
    crash_alert,
    crash_alert_block,
    crash_alert_block_name,
    crash_alert_name,
    crash_automation,
    crash_automation_name,
    same_definition,
)
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import ConfigError
from retrain_pipeline.params import load_settings

VAR = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, DEFAULT_HEARTBEAT_S), ({VAR: ""}, DEFAULT_HEARTBEAT_S), ({VAR: "30"}, 30), ({VAR: " 120 "}, 120)],
)
def test_heartbeat_defaults_to_30_s_and_follows_the_environment(
    environ: dict[str, str], expected: int
) -> None:
    assert heartbeat_seconds(environ) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("29", "at least 30 seconds"),
        ("0", "at least 30 seconds"),
        ("1.5", "not a whole number"),
        ("x", "not"),
    ],
)
def test_a_bad_heartbeat_names_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        heartbeat_seconds({VAR: value})
    assert VAR in str(caught.value)


def test_the_automation_crashes_silent_runs_of_this_deployment_only() -> None:
    deployment_id = uuid4()
    automation = crash_automation(deployment_id, "nightly", 40)
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger)

    assert (
        automation.name
        == crash_automation_name("nightly")
        == ("automated-training/nightly: crash runs without heartbeats")
    )
    assert automation.enabled
    assert trigger.posture == Posture.Proactive
    # Running opens the first window: a run killed before its first heartbeat is still Crashed.
    assert trigger.after == {"prefect.flow-run.heartbeat", "prefect.flow-run.Running"}
    assert trigger.expect == {
        "prefect.flow-run.heartbeat",
        "prefect.flow-run.Completed",
        "prefect.flow-run.Failed",
        "prefect.flow-run.Cancelled",
        "prefect.flow-run.Crashed",
    }
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.within == timedelta(seconds=120)  # three heartbeats
    assert trigger.threshold == 1
    assert isinstance(trigger.match_related, ResourceSpecification)
    assert trigger.match_related.root["prefect.resource.id"] == f"prefect.deployment.{deployment_id}"
    (action,) = automation.actions
    assert isinstance(action, ChangeFlowRunState)
    assert action.state == StateType.CRASHED
    assert not action.force  # a run that already finished stays finished
    assert action.message is not None and "heartbeats" in action.message


def test_an_automation_read_back_from_the_api_counts_as_unchanged() -> None:
    deployment_id = uuid4()
    wanted = crash_automation(deployment_id, "nightly", 30)
    # What the API returns: JSON (sets become lists, in any order), plus server-side fields.
    payload = wanted.model_dump(mode="json")
    payload["trigger"]["expect"].reverse()
    payload["trigger"]["id"] = str(uuid4())
    read_back = AutomationCore.model_validate(payload)

    assert same_definition(read_back, wanted)
    assert not same_definition(read_back, crash_automation(deployment_id, "nightly", 60))
    assert not same_definition(read_back, crash_automation(uuid4(), "nightly", 30))


def alerting_settings(tmp_path: Path, **alerts: object) -> Settings:
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"alerts": {"project_name": "churn", **alerts}}), encoding="utf-8"
    )
    return load_settings(tmp_path / "params.yaml")


def test_the_crash_alert_renders_batch_run_and_message_into_safe_json(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/services/T0/B0/s3cr3t"
    settings = alerting_settings(tmp_path, webhook_url=url)
    deployment_id, block_id = uuid4(), uuid4()
    automation = crash_alert(settings, deployment_id, block_id)
    assert automation.name == crash_alert_name("automated-retraining")
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Reactive
    assert trigger.expect == {"prefect.flow-run.Crashed"} and trigger.threshold == 1
    assert isinstance(trigger.match_related, ResourceSpecification)
    assert trigger.match_related.root["prefect.resource.id"] == f"prefect.deployment.{deployment_id}"
    (action,) = automation.actions
    assert isinstance(action, SendNotification) and action.block_document_id == block_id

    # Rendered as Prefect's server renders it (its sandboxed Jinja), with a message full of quotes.
    run_id = uuid4()
    message = 'No heartbeat for 90 s: "dead"\nworker {gone}'
    flow_run = SimpleNamespace(
        id=run_id, name="brave-fox", tags=["retraining", "batch:7"], state=SimpleNamespace(message=message)
    )
    subject = render_user_template_sync(action.subject, {"flow_run": flow_run})
    body = render_user_template_sync(action.body, {"flow_run": flow_run})
    assert subject == "7"
    assert body.startswith(f"[churn] batch 7: run crashed: flow run brave-fox ({run_id}) of ")
    assert message in body and body.endswith(f"/runs/flow-run/{run_id}")
    untagged = SimpleNamespace(**{**vars(flow_run), "tags": ["retraining"]})
    assert render_user_template_sync(action.subject, {"flow_run": untagged}) == "unknown"

    block = crash_alert_block(settings)
    request = block._build_request_args(body=body, subject=subject)
    assert request["url"] == url and "s3cr3t" not in block.url
    sent = json.loads(json.dumps(request["json"]))  # what httpx sends with json=
    assert sent == {
        "text": body,
        "event": "run_crashed",
        "project": "churn",
        "batch": "7",
        "reason": "the flow run crashed (its process or machine died)",
    }


def test_the_crash_alert_block_name_is_a_valid_block_name() -> None:
    assert crash_alert_block_name("Automated_Retraining 2") == "retrain-crash-alert-automated-retraining-2"


class _CapturedFlow:
    """What ``Flow.from_source(...)`` returns, recording the arguments of ``deploy``."""

    def __init__(self, source: object) -> None:
        self.source = source
        self.deployed: dict[str, object] = {}

    def deploy(self, **kwargs: object) -> str:
        self.deployed = kwargs
        return str(uuid4())


@pytest.mark.parametrize("code_source", [None, "https://example.invalid/retrain.git"])
def test_local_runs_start_the_engine_directly_and_cloned_ones_as_prefect_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code_source: str | None
) -> None:
    captured: list[_CapturedFlow] = []

    def from_source(source: object, entrypoint: str) -> _CapturedFlow:
        captured.append(_CapturedFlow(source))
        return captured[-1]

    monkeypatch.setattr(setup_deployment.Flow, "from_source", from_source)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"automation": {"code_source": code_source}}), encoding="utf-8")

    setup_deployment.deploy(load_settings(params), tracking_uri=None)

    job_variables = captured[0].deployed["job_variables"]
    assert isinstance(job_variables, dict)
    if code_source is None:
        # No workspace supervisor process (a second Prefect import) before the engine's.
        command = setup_deployment.engine_command()
        assert job_variables["command"] == command
        assert command.endswith(" -m prefect.engine")
        assert job_variables["working_dir"] == str(setup_deployment.PROJECT_ROOT)
    else:
        assert "command" not in job_variables  # each worker's own interpreter


def test_the_registration_version_changes_with_what_the_deployment_is_registered_from(
    tmp_path: Path,
) -> None:
    def version(automation: dict[str, object], alerts: dict[str, object] | None = None) -> str:
        params = tmp_path / "params.yaml"
        params.write_text(
            yaml.safe_dump({"automation": automation, "alerts": alerts or {}}), encoding="utf-8"
        )
        return setup_deployment.registration_version(load_settings(params), None, DEFAULT_HEARTBEAT_S)

    first = version({"cron_schedule": "*/2 * * * *"})
    assert first.startswith("config-") and len(first) == len("config-") + 16
    assert version({"cron_schedule": "*/2 * * * *"}) == first  # the same settings: the same version
    for changed in (
        version({"cron_schedule": "*/5 * * * *"}),
        version({"cron_schedule": "*/2 * * * *", "timezone": "Asia/Tokyo"}),
        version({"cron_schedule": "*/2 * * * *", "work_pool": "other-pool"}),
        version({"cron_schedule": "*/2 * * * *"}, {"webhook_url": "https://hooks.example.invalid/x"}),
    ):
        assert changed != first
    params = tmp_path / "params.yaml"
    settings = load_settings(params)
    assert setup_deployment.registration_version(settings, None, 60) != setup_deployment.registration_version(
        settings, None, DEFAULT_HEARTBEAT_S
    )
    assert setup_deployment.registration_version(
        settings, "http://127.0.0.1:5000", DEFAULT_HEARTBEAT_S
    ) != setup_deployment.registration_version(settings, None, DEFAULT_HEARTBEAT_S)
