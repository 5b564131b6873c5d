"""The scheduled product for real: a Prefect server, an MLflow server, a process worker and
the cron deployment, all started on free loopback ports by these tests and torn down after.

The tests share one set of services and one project, and pass in any order: each trains
the next batch, whichever it is, and puts back the deployment it changed (the cron of the
schedule test, the pause of the pause-when-done test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import mlflow
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from retrain_pipeline import service_specs, services
from retrain_pipeline.params import load_settings

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "deployments" / "setup_deployment.py"
NEVER = "0 0 1 1 *"  # a cron that will not fire during the test: manual triggers only
PARAMS = {
    "data": {"source": "sliced", "batch_size": 60},
    "model": {"estimator": "logistic_regression", "hyperparameters": {"max_iter": 500}},
    "automation": {
        "max_batches": 9,  # 60-row batches of the 569-row demo data: every test has one left
        "cron_schedule": NEVER,
        "timezone": "Europe/Berlin",
        "work_pool": "it-pool",
        "deployment_name": "it-retraining",
    },
}


@dataclass
class Stack:
    root: Path
    params: Path
    env: dict[str, str]
    api_url: str
    mlflow_uri: str

    def setup_deployment(self, *args: str, params: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SETUP), "--params", str(params or self.params), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def state(self) -> dict:
        return json.loads((self.root / "batch_state.json").read_text())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("scheduled")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    prefect_port, mlflow_port = free_port(), free_port()
    settings = load_settings(params)
    endpoints = service_specs.Endpoints("127.0.0.1", prefect_port, "127.0.0.1", mlflow_port)
    saved = dict(os.environ)
    os.environ.update(
        # The scheduler looks for due runs every 5 s (default 60), the worker polls every 2 s.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_PROFILE"):
        os.environ.pop(key, None)
    try:
        for name in ("prefect", "mlflow"):
            services.start(service_specs.spec_for(name, settings, endpoints), settings, timeout=180)
        env = {
            **service_specs.base_env(settings),
            "PREFECT_API_URL": endpoints.prefect_api,
            "MLFLOW_TRACKING_URI": endpoints.mlflow_uri,
        }
        deployed = subprocess.run(
            [sys.executable, str(SETUP), "--params", str(params)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        os.environ["PREFECT_API_URL"] = endpoints.prefect_api
        services.start(service_specs.spec_for("worker", settings, endpoints), settings, timeout=120)
        with temporary_settings(updates={PREFECT_API_URL: endpoints.prefect_api}):
            yield Stack(root, params, env, endpoints.prefect_api, endpoints.mlflow_uri)
    finally:
        for name in ("worker", "mlflow", "prefect"):
            print(services.stop(settings, name, timeout=30))
        os.environ.clear()
        os.environ.update(saved)


def _deployment(name: str = "it-retraining"):  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"automated-training/{name}")


def _wait(flow_run_ids: list[UUID], timeout: float = 240) -> list[FlowRun]:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in flow_run_ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            assert time.monotonic() < deadline, [(r.name, r.state_name) for r in runs]
            time.sleep(2)


def _mlflow_batches(stack: Stack) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri)
    experiment = client.get_experiment_by_name("automated-retraining")
    if experiment is None:
        return []
    return sorted(r.data.tags["batch_number"] for r in client.search_runs([experiment.experiment_id]))


def _processed(stack: Stack) -> list[int]:
    """The batches completed so far (none before the first run writes the state)."""
    return stack.state()["processed_batches"] if (stack.root / "batch_state.json").is_file() else []


def _assert_trained_next(stack: Stack, before: list[int]) -> dict:
    """One more batch, the next one, was trained, once: in the state and in MLflow."""
    state = stack.state()
    batch = len(before) + 1
    assert state["processed_batches"] == [*before, batch]
    assert state["batches"][str(batch)]["status"] == "completed"
    assert _mlflow_batches(stack) == [str(k) for k in state["processed_batches"]]
    return state


def _put_back(stack: Stack) -> None:
    """Register the deployment as PARAMS say again (cron, not paused); drop the runs the
    changed schedule left scheduled and wait for any that already started."""
    result = stack.setup_deployment()
    assert result.returncode == 0, result.stderr[-3000:]
    deployment = _deployment()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id={"any_": [deployment.id]},
                state={"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}},
            ),
            limit=50,
        )
        for run in runs:
            if run.state is not None and run.state.is_scheduled():
                client.delete_flow_run(run.id)
    _wait([r.id for r in runs if r.state is not None and not r.state.is_scheduled()])


def test_deployment_is_registered_as_configured(stack: Stack) -> None:
    deployment = _deployment()
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("it-pool")
    assert pool.type == "process"
    assert deployment.work_pool_name == "it-pool"
    assert [s.schedule.cron for s in deployment.schedules] == [NEVER]
    assert [s.schedule.timezone for s in deployment.schedules] == ["Europe/Berlin"]
    assert deployment.concurrency_limit == 1 or deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert deployment.job_variables["working_dir"] == str(REPO)
    # Its runs start Prefect's engine directly, without Prefect's workspace supervisor process.
    assert deployment.job_variables["command"].endswith(" -m prefect.engine")
    assert deployment.job_variables["env"]["MLFLOW_TRACKING_URI"] == stack.mlflow_uri
    assert deployment.parameters["params_path"] == str(stack.params)
    assert deployment.paused is False

    # Deploying again updates the same deployment: one deployment, one schedule.
    again = stack.setup_deployment()
    assert again.returncode == 0, again.stderr[-3000:]
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
        all_deployments = client.read_deployments()
    assert len(found) == 1
    assert [d.name for d in all_deployments] == ["it-retraining"]
    assert len(_deployment().schedules) == 1


def test_triggered_run_trains_through_the_worker(stack: Stack) -> None:
    before = _processed(stack)
    started = time.monotonic()
    result = stack.setup_deployment("--run-now", "--wait", "240")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Completed" in result.stdout
    # Registered from these very settings and files already (the fixture did it): not again.
    assert "not registered again" in result.stdout and "work pool" not in result.stdout, result.stdout
    print(f"deploy + trigger -> COMPLETED: {elapsed:.1f} s")

    state = _assert_trained_next(stack, before)
    assert state["champion_version"] is not None
    if not before:
        assert state["champion_version"] == "1"


def test_a_trigger_registers_again_what_changed(stack: Stack) -> None:
    before = _processed(stack)
    registered = _deployment()
    assert registered.version.startswith("config-")
    other = stack.root / "params-other-timezone.yaml"
    other.write_text(
        yaml.safe_dump({**PARAMS, "automation": {**PARAMS["automation"], "timezone": "Asia/Tokyo"}})
    )
    try:
        result = stack.setup_deployment("--run-now", "--wait", "240", params=other)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "work pool 'it-pool'" in result.stdout and "not registered again" not in result.stdout
        changed = _deployment()
        assert changed.id == registered.id and changed.version != registered.version
        assert [s.schedule.timezone for s in changed.schedules] == ["Asia/Tokyo"]
        assert changed.parameters["params_path"] == str(other)
        _assert_trained_next(stack, before)
    finally:
        _put_back(stack)
    assert _deployment().version == registered.version  # the same settings, the same version


def test_two_runs_at_once_train_only_once(stack: Stack) -> None:
    before = _processed(stack)
    deployment = _deployment()
    with get_client(sync_client=True) as client:
        runs = [client.create_flow_run_from_deployment(deployment.id) for _ in range(2)]
    finals = _wait([r.id for r in runs])

    states = sorted(r.state_name for r in finals)
    _assert_trained_next(stack, before)
    # Either the deployment's concurrency limit cancelled the second run, or it reached the
    # pipeline lock and did nothing: never two trainings.
    assert states.count("Completed") >= 1
    assert all(s in ("Completed", "Cancelled") for s in states), states


def test_the_cron_schedule_itself_fires(stack: Stack) -> None:
    before = _processed(stack)
    minute = stack.root / "params-minute.yaml"
    minute.write_text(
        yaml.safe_dump({**PARAMS, "automation": {**PARAMS["automation"], "cron_schedule": "* * * * *"}})
    )
    try:
        result = stack.setup_deployment(params=minute)
        assert result.returncode == 0, result.stderr[-3000:]
        deployment = _deployment()
        assert [s.schedule.cron for s in deployment.schedules] == ["* * * * *"]

        deadline = time.monotonic() + 200
        completed: list[FlowRun] = []
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and not completed:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        deployment_id={"any_": [deployment.id]}, state={"type": {"any_": ["COMPLETED"]}}
                    ),
                    limit=50,
                )
                completed = [r for r in runs if r.auto_scheduled]
                time.sleep(3)
        assert completed, "no scheduled run completed within 200 s"
    finally:
        _put_back(stack)
    processed = _processed(stack)  # each minute's run trained the next batch
    assert processed[: len(before)] == before and len(processed) > len(before)
    assert processed == list(range(1, len(processed) + 1))
    assert _mlflow_batches(stack) == [str(k) for k in processed]


def test_schedule_pauses_when_all_batches_are_done(stack: Stack) -> None:
    before = _processed(stack)
    last = stack.root / "params-one-left.yaml"  # the same project: one batch left to do
    automation = {**PARAMS["automation"], "max_batches": len(before) + 1}
    last.write_text(yaml.safe_dump({**PARAMS, "automation": automation}))
    try:
        result = stack.setup_deployment(params=last)
        assert result.returncode == 0, result.stderr[-3000:]
        for _ in range(2):  # the last batch, then a run that finds all done and pauses
            with get_client(sync_client=True) as client:
                flow_run = client.create_flow_run_from_deployment(_deployment().id)
            (final,) = _wait([flow_run.id])
            assert final.state_name == "Completed"
        deadline = time.monotonic() + 120
        while not _deployment().paused:
            assert time.monotonic() < deadline, "deployment was not paused after max_batches"
            time.sleep(2)
        _assert_trained_next(stack, before)
    finally:
        _put_back(stack)
    assert _deployment().paused is False  # deploying again resumes it
