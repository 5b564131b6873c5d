"""Register the retraining flow as a cron-scheduled deployment on a Prefect process work pool.

    python deployments/setup_deployment.py [--params PATH] [--tracking-uri URI] [--run-now [--wait S]]

Needs a running Prefect server (``PREFECT_API_URL``; ``make start-services`` starts one).
Running it again updates the deployment (same name), never duplicates it, and resumes a
schedule that ``automation.pause_when_done`` paused.

Crashed workers: the deployment's runs send a Prefect heartbeat event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 unless that variable is set when deploying),
and an automation named after the deployment marks a run Crashed once
:data:`MISSED_HEARTBEATS` heartbeats in a row are missing (its worker or machine died). Crashed
releases the run's deployment concurrency slot, so the next scheduled run starts; the
pipeline lock (a ``flock``) was already freed by the kernel when the run's process died.

Crashed runs cannot send their own alert: when ``alerts`` wants ``run_crashed``, a second
automation sends one through a Prefect custom-webhook block (the webhook URL kept in the
block's secrets) when a run of this deployment turns Crashed; otherwise that automation and
block are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import Flow, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import (
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
    FlowRun,
)
from prefect.exceptions import FlowRunWaitTimeout, ObjectNotFound
from prefect.flow_runs import wait_for_flow_run
from prefect.runner.storage import GitRepository
from prefect.schedules import Cron
from pydantic import ValidationError

from retrain_pipeline import links
from retrain_pipeline.automations import (
    FLOW_NAME,
    MISSED_HEARTBEATS,
    crash_alert_name,
    crash_automation,
    crash_automation_name,
    ensure_automation,
    ensure_crash_alert,
)
from retrain_pipeline.config import AutomationConfig, Settings
from retrain_pipeline.errors import ConfigError, DeploymentError, PipelineError
from retrain_pipeline.params import load_settings, params_for_command
from retrain_pipeline.prefect_runtime import HEARTBEAT_ENV, exit_without_teardown

logger = logging.getLogger(__name__)

# The project this script belongs to (its own folder, not wherever an import would find ``flows``):
# workers run the flow file from here.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/automated_training_flow.py:automated_training_flow"

DEFAULT_HEARTBEAT_S = 30  # Prefect's minimum; its own default (180 s) would take 9 minutes to notice
MIN_HEARTBEAT_S = 30  # Prefect refuses lower values (its setting has ge=30)


def ensure_process_pool(name: str) -> bool:
    """Create the process work pool unless it exists; True when created."""
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True
    if pool.type != "process":
        raise DeploymentError(f"work pool {name!r} exists with type {pool.type!r}, not 'process'")
    return False


def heartbeat_seconds(environ: Mapping[str, str]) -> int:
    """The heartbeat period of deployment runs: ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` if set, else 30 s."""
    text = environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return DEFAULT_HEARTBEAT_S
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{HEARTBEAT_ENV}={text!r} is not a whole number of seconds") from None
    if value < MIN_HEARTBEAT_S:
        raise ConfigError(f"{HEARTBEAT_ENV}={value}: Prefect needs at least {MIN_HEARTBEAT_S} seconds")
    return value


def engine_command() -> str:
    """How a worker on this machine starts a run's process: Prefect's engine, run directly by
    this environment's interpreter.

    Without a command, Prefect 3.8's process worker starts a workspace supervisor process
    (``python -m prefect.runner._workspace_supervisor``) that imports Prefect (about 1.5 s on
    2 cores), runs the deployment's pull step and only then execs ``python -m prefect.engine``,
    which imports Prefect again. With the command, the engine process itself runs the pull
    step (``set_working_directory``) and loads the flow.
    """
    from prefect.utilities.processutils import command_to_string

    return command_to_string([sys.executable, "-m", "prefect.engine"])


def deploy(settings: Settings, tracking_uri: str | None, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> UUID:
    """Create or update the deployment; returns its id. Its runs send a heartbeat every ``heartbeat_s``.

    Runs of a deployment of this folder start Prefect's engine directly (:func:`engine_command`);
    those of ``automation.code_source`` (workers anywhere, each with its own interpreter) the
    way Prefect chooses. The deployment's ``version`` is :func:`registration_version`.
    """
    auto = settings.automation
    source, parameters, job_variables = deployment_source(settings, tracking_uri, heartbeat_s)
    # from_source is typed "Flow | Coroutine" (sync/async dual); called synchronously it is a Flow.
    source_flow = cast(Flow[..., Any], Flow.from_source(source, ENTRYPOINT))
    deployment_id = source_flow.deploy(
        name=auto.deployment_name,
        work_pool_name=auto.work_pool,
        schedules=[Cron(auto.cron_schedule, timezone=auto.timezone)],
        paused=False,
        parameters=parameters,
        job_variables=job_variables,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        description="Retrain on the next batch: validate, merge, train, gate, log, version, record.",
        tags=["retraining"],
        version=registration_version(settings, tracking_uri, heartbeat_s),
        ignore_warnings=True,
        print_next_steps=False,
    )
    return UUID(str(deployment_id))


def deployment_source(
    settings: Settings, tracking_uri: str | None, heartbeat_s: int
) -> tuple[str | GitRepository, dict[str, Any], dict[str, Any]]:
    """Where the deployment's code comes from, its parameters and its job variables."""
    auto = settings.automation
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", HEARTBEAT_ENV: str(heartbeat_s)}
    source: str | GitRepository
    if auto.code_source:
        # Workers anywhere: each run clones the code into a temporary folder on its worker and
        # works on that worker's own project folder (the RETRAIN_PARAMS the worker sets).
        source = GitRepository(url=auto.code_source, branch=auto.code_branch, pull_interval=None)
        parameters: dict[str, Any] = {"params_path": None}
        job_variables: dict[str, Any] = {"env": env}
        if tracking_uri and tracking_uri.partition("://")[0] in ("http", "https"):
            env["MLFLOW_TRACKING_URI"] = tracking_uri  # a local store would not exist on other machines
    else:
        source = str(PROJECT_ROOT)
        parameters = {"params_path": str(settings.params_file) if settings.params_file else None}
        job_variables = {"working_dir": str(PROJECT_ROOT), "env": env, "command": engine_command()}
        if tracking_uri:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
    return source, parameters, job_variables


def registration_version(settings: Settings, tracking_uri: str | None, heartbeat_s: int) -> str:
    """A digest of everything the deployment and its automations are registered from: the flow
    file and this script (their bytes), Prefect's version, the code source, parameters, job
    variables, schedule, pool, heartbeat, project name, Prefect UI and alerts settings.

    It is the deployment's ``version``; ``--run-now`` registers again only when it changed
    (:func:`unchanged_deployment`).
    """
    import prefect

    auto = settings.automation
    source, parameters, job_variables = deployment_source(settings, tracking_uri, heartbeat_s)
    described = {
        "files": [
            hashlib.sha256(path.read_bytes()).hexdigest()
            for path in (PROJECT_ROOT / ENTRYPOINT.partition(":")[0], Path(__file__).resolve())
        ],
        "prefect": prefect.__version__,
        "source": [auto.code_source, auto.code_branch] if isinstance(source, GitRepository) else source,
        "parameters": parameters,
        "job_variables": job_variables,
        "schedule": [auto.cron_schedule, auto.timezone, auto.work_pool, auto.deployment_name],
        "heartbeat_s": heartbeat_s,
        "project": settings.project_name,
        "prefect_ui": links.prefect_ui(settings),
        "alerts": settings.alerts.model_dump(mode="json"),
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
    return f"config-{digest[:16]}"


def unchanged_deployment(settings: Settings, tracking_uri: str | None, heartbeat_s: int) -> UUID | None:
    """The deployment's id when it is registered from exactly these settings and files, is not
    paused (registering resumes it), and its work pool and automations exist; None when it has
    to be registered again."""
    auto = settings.automation
    automations = [crash_automation_name(auto.deployment_name)]
    if settings.alerts.webhook_url is not None and settings.alerts.wants("run_crashed"):
        automations.append(crash_alert_name(auto.deployment_name))
    with get_client(sync_client=True) as client:
        try:
            current = client.read_deployment_by_name(f"{FLOW_NAME}/{auto.deployment_name}")
            client.read_work_pool(auto.work_pool)
        except ObjectNotFound:
            return None
        if current.paused or current.version != registration_version(settings, tracking_uri, heartbeat_s):
            return None
        if not all(client.read_automations_by_name(name) for name in automations):
            return None
    return current.id


def with_code_source(settings: Settings, url: str) -> Settings:
    """``settings`` whose ``automation.code_source`` is ``url`` (validated like the params key)."""
    raw = settings.automation.model_dump()
    raw["code_source"] = url
    try:
        automation = AutomationConfig.model_validate(raw)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--code-source {url!r}: {problem}") from None
    return settings.model_copy(update={"automation": automation})


def run_now(deployment_id: UUID) -> FlowRun:
    """Create a flow run of the deployment that starts immediately."""
    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment_id, tags=["manual-trigger"])


def wait_for(flow_run_id: UUID, timeout: float) -> FlowRun:
    """Prefect's own wait (it follows the run's events) until a final state, or DeploymentError
    after ``timeout`` seconds naming the state the run is still in."""
    try:
        return asyncio.run(wait_for_flow_run(flow_run_id, timeout=math.ceil(timeout)))
    except FlowRunWaitTimeout as exc:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
        raise DeploymentError(
            f"flow run {flow_run.name} ({flow_run_id}) still {flow_run.state_name} after {timeout:.0f} s"
        ) from exc


def deploy_and_report(settings: Settings, tracking_uri: str | None) -> UUID:
    """The work pool, the deployment and its crashed-run automation; says what it did."""
    heartbeat_s = heartbeat_seconds(os.environ)
    created = ensure_process_pool(settings.automation.work_pool)
    deployment_id = deploy(settings, tracking_uri, heartbeat_s)
    auto = settings.automation
    automation = crash_automation(deployment_id, auto.deployment_name, heartbeat_s)
    automation_id, done = ensure_automation(automation)
    code = (
        f"code from {auto.code_source} (each worker's own project folder), "
        if auto.code_source
        else f"working dir {PROJECT_ROOT}, "
    )
    print(
        f"work pool {auto.work_pool!r} ({'created' if created else 'exists'}, type process); "
        f"deployment '{FLOW_NAME}/{auto.deployment_name}' ({deployment_id}): "
        f"cron {auto.cron_schedule!r} {auto.timezone}, concurrency 1 (cancel new), "
        + code
        + f"tracking {tracking_uri or settings.mlflow.tracking_uri}",
        flush=True,
    )
    print(
        f"automation {automation.name!r} ({done}, {automation_id}): runs send a heartbeat every "
        f"{heartbeat_s} s ({HEARTBEAT_ENV}); a run silent for {MISSED_HEARTBEATS * heartbeat_s} s "
        "(its worker or machine died) is marked Crashed and frees the deployment's slot",
        flush=True,
    )
    print(ensure_crash_alert(settings, deployment_id), flush=True)
    return deployment_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="setup_deployment.py", description=__doc__.splitlines()[0])
    parser.add_argument("--params", help=f"params file (default: {PROJECT_ROOT / 'params.yaml'})")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI for the flow runs (default: MLFLOW_TRACKING_URI if set)"
    )
    parser.add_argument(
        "--code-source",
        metavar="GIT_URL",
        help="Git URL workers clone the code from (default: automation.code_source; none: this folder)",
    )
    parser.add_argument("--run-now", action="store_true", help="also start one run immediately")
    parser.add_argument(
        "--wait", type=float, default=0, metavar="S", help="wait up to S s for that run to finish"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "error: PREFECT_API_URL is not set: start the services first (make start-services)",
            file=sys.stderr,
        )
        return 2
    params = params_for_command(args.params, PROJECT_ROOT / "params.yaml")
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        settings = load_settings(params, default_root=PROJECT_ROOT)  # a missing file is a ConfigError
        if args.code_source:
            settings = with_code_source(settings, args.code_source)
        heartbeat_s = heartbeat_seconds(os.environ)
        deployment_id = unchanged_deployment(settings, tracking_uri, heartbeat_s) if args.run_now else None
        if deployment_id is None:
            deployment_id = deploy_and_report(settings, tracking_uri)
        else:
            print(
                f"deployment '{FLOW_NAME}/{settings.automation.deployment_name}' ({deployment_id}) and "
                "its automations are registered from these settings and files already: not registered "
                "again (make deploy always does)",
                flush=True,
            )
        if args.run_now:
            flow_run = run_now(deployment_id)
            print(f"triggered flow run {flow_run.name} ({flow_run.id})", flush=True)
            if args.wait:
                final = wait_for(flow_run.id, args.wait)
                print(f"flow run {final.name}: {final.state_name}", flush=True)
                if final.state is None or not final.state.is_completed():
                    return 1
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())  # not the interpreter's teardown of Prefect's modules (about 1.5 s)
