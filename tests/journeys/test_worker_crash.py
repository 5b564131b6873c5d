"""A worker that dies mid-run leaves no ghost run.

``make start-services`` -> ``make deploy`` -> ``make start-worker-bg`` -> a deployment run (created
through the API, as a cron tick creates it); while that run is inside its MLflow run, SIGKILL
the worker's process group and the flow run's process group at once (what a machine crash
does; Prefect starts the flow-run process in a session of its own, so killing the worker
alone would not kill it).
Then: the pipeline lock is free at once; Prefect's zombie-run automation (created by
``make deploy``, once however often it runs) marks the run Crashed within a few heartbeats,
which frees the deployment's concurrency slot; a new worker's next run trains the same
batch, and the killed attempt's MLflow run ends KILLED beside one FINISHED run.
With ``alerts.webhook_url`` set (a real webhook on loopback), ``make deploy`` also creates the
crashed-run alert: exactly one ``run_crashed`` message arrives, naming the batch and the run,
and none again after the retrain (whose own message is its promotion).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import filelock
import httpx
import pytest
import yaml
from journeys_support import Project
from mlflow import MlflowClient

from deployments.setup_deployment import DEFAULT_HEARTBEAT_S
from retrain_pipeline.automations import MISSED_HEARTBEATS, crash_alert_name, crash_automation_name
from webhook_receiver import WebhookReceiver

DEPLOYMENT_NAME = "automated-retraining"
WINDOW_S = MISSED_HEARTBEATS * DEFAULT_HEARTBEAT_S
T = TypeVar("T")


def _wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


class _RetryUnavailable(httpx.HTTPTransport):
    """Retry 503 like Prefect's own client does: a busy SQLite-backed server (three test files
    at once on two cores) answers 503 when its database stays locked."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(6):
            response = super().handle_request(request)
            if response.status_code != 503 or attempt == 5:
                return response
            response.close()
            time.sleep(1 + attempt)
        raise AssertionError("not reached")


class PrefectApi:
    def __init__(self, port: int) -> None:
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}/api", timeout=10, transport=_RetryUnavailable()
        )

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/flow_runs/{flow_run_id}")
        response.raise_for_status()
        return dict(response.json())

    def deployment(self, name: str) -> dict[str, Any]:
        response = self.http.get(f"/deployments/name/automated-training/{name}")
        response.raise_for_status()
        return dict(response.json())

    def run_deployment(self, deployment_id: str) -> str:
        """A flow run of the deployment that starts now (what the scheduler creates at a cron tick)."""
        response = self.http.post(f"/deployments/{deployment_id}/create_flow_run", json={})
        response.raise_for_status()
        return str(response.json()["id"])

    def heartbeats(self, flow_run_id: str) -> list[datetime]:
        """When the flow run's heartbeat events occurred, oldest first."""
        body = {
            "filter": {
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            },
            "limit": 50,
        }
        response = self.http.post("/events/filter", json=body)
        response.raise_for_status()
        return sorted(datetime.fromisoformat(e["occurred"]) for e in response.json()["events"])

    def automations_named(self, name: str) -> list[dict[str, Any]]:
        response = self.http.post("/automations/filter", json={})
        response.raise_for_status()
        return [a for a in response.json() if a["name"] == name]


class Clock:
    """Seconds since the journey started, printed per step (the test's wall time is the point)."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()

    def step(self, what: str) -> None:
        now = time.monotonic()
        print(f"[{now - self.started:6.1f} s] +{now - self.last:5.1f} s  {what}")
        self.last = now


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _holders_of(path: Path) -> list[str]:
    """Every process with ``path`` open: pid, process group, parent and command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not any(fd.resolve() == path for fd in (proc / "fd").iterdir()):
                continue
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"pid {proc.name} (ppid {stat[1]}, pgid {stat[2]}, state {stat[0]}): {cmdline[:200]}")
    return found


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


def _alert_to(project: Project, url: str) -> None:
    params_file = project.root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["alerts"] = {"webhook_url": url, "project_name": "crash-journey"}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def test_killed_worker_run_ends_crashed_and_the_next_run_trains_the_batch(
    journey: Project, webhook: WebhookReceiver
) -> None:
    p = journey
    _alert_to(p, webhook.url)
    alert_name = crash_alert_name(DEPLOYMENT_NAME)
    clock = Clock()
    api = PrefectApi(p.ports["prefect"])
    mlflow_client = MlflowClient(f"http://127.0.0.1:{p.ports['mlflow']}")
    holder_file = p.root / "batch_state.json.lock.holder.json"
    automation_name = crash_automation_name(DEPLOYMENT_NAME)

    p.make("start-services")
    clock.step("make start-services")
    deployed = p.make("deploy")
    clock.step("make deploy")
    assert f"automation '{automation_name}' (created," in deployed.stdout, deployed.stdout
    assert f"heartbeat every {DEFAULT_HEARTBEAT_S} s" in deployed.stdout
    assert f"automation '{alert_name}' (created," in deployed.stdout, deployed.stdout
    assert "s3cr3t" not in deployed.stdout  # the webhook's secret path is never printed
    deployment = api.deployment(DEPLOYMENT_NAME)
    assert deployment["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(DEFAULT_HEARTBEAT_S)
    p.make("start-worker-bg")
    clock.step("make start-worker-bg")

    run_id = api.run_deployment(deployment["id"])

    # Kill while the run is inside its MLflow run: the worst moment, an MLflow run left RUNNING.
    def mlflow_run_in_progress() -> bool:
        state_type = api.flow_run(run_id)["state_type"]
        assert state_type in ("SCHEDULED", "PENDING", "RUNNING"), f"run ended {state_type} before the kill"
        experiment = mlflow_client.get_experiment_by_name("automated-retraining")
        if experiment is None:
            return False
        runs = mlflow_client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{run_id}'"
        )
        return any(r.info.status == "RUNNING" for r in runs)

    _wait_for("the run's MLflow run", mlflow_run_in_progress, timeout=240, every=0.2)
    clock.step("the run's MLflow run is RUNNING")
    holder = _read_json(holder_file)
    assert holder is not None and holder["flow_run_id"] == run_id, holder
    batch = int(holder["batch"])
    worker_pid = int(json.loads((p.root / ".services" / "worker.pid").read_text())["pid"])
    flow_pid = int(holder["pid"])
    # The deployment's heartbeat setting reached the flow-run process (the automation's window assumes it).
    flow_environ = Path(f"/proc/{flow_pid}/environ").read_bytes().split(b"\0")
    assert f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={DEFAULT_HEARTBEAT_S}".encode() in flow_environ
    groups = {os.getpgid(worker_pid), os.getpgid(flow_pid)}
    assert os.getpgrp() not in groups
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    killed, killed_at = time.monotonic(), datetime.now(UTC)
    _wait_for("the killed processes to vanish", lambda: not (_alive(worker_pid) or _alive(flow_pid)), 10, 0.1)
    clock.step(f"killed process groups {sorted(groups)} (worker {worker_pid}, flow run {flow_pid})")

    # The kernel freed the pipeline lock with the process; the batch was not recorded.
    lock_file = p.root / "batch_state.json.lock"
    # A few seconds of grace: a killed process's main thread shows as a zombie while its other
    # threads still exit, and the kernel closes the shared files (and drops the flock) with the last.
    lock = filelock.FileLock(lock_file, timeout=5)
    try:
        lock.acquire()
    except filelock.Timeout:
        pytest.fail(f"the pipeline lock is still held after the kill, by: {_holders_of(lock_file)}")
    lock.release()
    state_file = p.root / "batch_state.json"
    assert not state_file.exists() or str(batch) not in p.state()["batches"], p.state()
    assert api.flow_run(run_id)["state_type"] == "RUNNING"  # the ghost, until the automation acts
    slot = api.deployment(DEPLOYMENT_NAME)["global_concurrency_limit"]
    assert slot["active_slots"] == 1, slot

    # Deploying again (as every `make trigger` does) keeps one automation, unchanged: an update
    # would drop the open heartbeat windows and this run would never be marked Crashed.
    again = p.make("deploy")
    assert f"automation '{automation_name}' (unchanged," in again.stdout, again.stdout
    assert f"automation '{alert_name}' (unchanged," in again.stdout, again.stdout
    assert len(api.automations_named(automation_name)) == 1
    assert len(api.automations_named(alert_name)) == 1
    clock.step("make deploy again")
    # The machine is back: a new worker starts; it leaves a run another worker started alone.
    p.make("start-worker-bg")
    clock.step("make start-worker-bg")

    def crashed() -> dict[str, Any] | None:
        run = api.flow_run(run_id)
        return run if run["state_type"] != "RUNNING" else None

    final = _wait_for("the Crashed state", crashed, timeout=WINDOW_S + 120, every=1)
    crashed_after = time.monotonic() - killed
    clock.step(f"{final['state_name']} {crashed_after:.0f} s after the kill (window {WINDOW_S} s)")
    assert final["state_type"] == "CRASHED", final["state"]
    assert "heartbeat" in final["state"]["message"], final["state"]
    assert crashed_after <= WINDOW_S + 30
    # The mechanism itself: Crashed one window (+ the 5 s evaluation tick) after the last heartbeat.
    beats = api.heartbeats(run_id)
    crashed_at = datetime.fromisoformat(final["state"]["timestamp"])
    print(
        f"heartbeats at {[round((b - killed_at).total_seconds()) for b in beats]} s from the kill; "
        f"Crashed {(crashed_at - beats[-1]).total_seconds():.0f} s after the last one"
    )
    assert beats and beats[-1] <= killed_at
    assert WINDOW_S <= (crashed_at - beats[-1]).total_seconds() <= WINDOW_S + 20
    # One run_crashed message, from the deployment's alert automation (the run itself was dead).
    (message,) = _wait_for("the run_crashed message", webhook.delivered, timeout=60, every=0.2)
    message_after = next(r.wall for r in webhook.received) - crashed_at.timestamp()
    clock.step(f"run_crashed message {message_after:.1f} s after the Crashed state")
    assert message["event"] == "run_crashed" and message["project"] == "crash-journey", message
    assert message["batch"] == str(batch), message
    text = message["text"]
    assert text.startswith(f"[crash-journey] batch {batch}: run crashed: flow run {final['name']} ({run_id})")
    assert "heartbeat" in text and text.endswith(f"/runs/flow-run/{run_id}"), text
    assert message_after < 30
    # Crashed released the deployment's concurrency slot (no lease expiry to wait for).
    slot = api.deployment(DEPLOYMENT_NAME)["global_concurrency_limit"]
    assert slot["active_slots"] == 0, slot

    # The next run trains the same batch.
    rerun = p.make("trigger")
    clock.step("make trigger (the next run)")
    assert re.search(r"flow run \S+: Completed", rerun.stdout), rerun.stdout
    record = p.state()["batches"][str(batch)]
    assert record["status"] == "completed", record
    assert record["prefect_flow_run_id"] != run_id
    assert record["attempts"] == 1, record  # the killed attempt never reached the state file
    assert p.state()["processed_batches"] == [batch]

    experiment = mlflow_client.get_experiment_by_name("automated-retraining")
    assert experiment is not None
    runs = mlflow_client.search_runs([experiment.experiment_id])
    statuses = {r.data.tags["prefect_flow_run_id"]: r.info.status for r in runs}
    assert statuses == {run_id: "KILLED", record["prefect_flow_run_id"]: "FINISHED"}, statuses
    assert all(r.data.tags["batch_number"] == str(batch) for r in runs)
    clock.step("checked state and MLflow")
    # The retrain's own alert (a first model is promoted), and still only one run_crashed.
    time.sleep(1)
    assert webhook.events() == ["run_crashed", "model_promoted"], webhook.events()
    assert webhook.delivered()[1]["batch"] == batch
