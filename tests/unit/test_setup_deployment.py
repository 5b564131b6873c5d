"""The deployment's heartbeat setting and its zombie-run automation, without a server."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from deployments.setup_deployment import (
    DEFAULT_HEARTBEAT_S,
    crash_automation,
    crash_automation_name,
    heartbeat_seconds,
    same_definition,
)
from retrain_pipeline.errors import ConfigError

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
