"""Register the retraining flow as a cron-scheduled deployment on a Prefect process work pool.

    python deployments/setup_deployment.py [--params PATH] [--tracking-uri URI] [--run-now [--wait S]]

Needs a running Prefect server (``PREFECT_API_URL``; ``make start-services`` starts one).
Running it again updates the deployment (same name), never duplicates it, and resumes a
schedule that ``automation.pause_when_done`` paused.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import Flow, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from retrain_pipeline.config import Settings, load_settings
from retrain_pipeline.errors import ConfigError, PipelineError

logger = logging.getLogger(__name__)

# The project this script belongs to (its own folder, not wherever an import would find ``flows``):
# workers run the flow file from here.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/automated_training_flow.py:automated_training_flow"


class DeploymentError(PipelineError):
    """The Prefect API refused or cannot be reached."""


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


def deploy(settings: Settings, tracking_uri: str | None) -> UUID:
    """Create or update the deployment; returns its id."""
    auto = settings.automation
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    # from_source is typed "Flow | Coroutine" (sync/async dual); called synchronously it is a Flow.
    source_flow = cast(Flow[..., Any], Flow.from_source(str(PROJECT_ROOT), ENTRYPOINT))
    deployment_id = source_flow.deploy(
        name=auto.deployment_name,
        work_pool_name=auto.work_pool,
        schedules=[Cron(auto.cron_schedule, timezone=auto.timezone)],
        paused=False,
        parameters={"params_path": str(settings.params_file) if settings.params_file else None},
        job_variables={"working_dir": str(PROJECT_ROOT), "env": env},
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        description="Retrain on the next batch: validate, merge, train, gate, log, version, record.",
        tags=["retraining"],
        ignore_warnings=True,
        print_next_steps=False,
    )
    return UUID(str(deployment_id))


def run_now(deployment_id: UUID) -> FlowRun:
    """Create a flow run of the deployment that starts immediately."""
    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment_id, tags=["manual-trigger"])


def wait_for(flow_run_id: UUID, timeout: float) -> FlowRun:
    """Poll the flow run until it reaches a final state (or the timeout)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                state = flow_run.state_name
                raise DeploymentError(
                    f"flow run {flow_run.name} ({flow_run_id}) still {state} after {timeout:.0f} s"
                )
            time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="setup_deployment.py", description=__doc__.splitlines()[0])
    parser.add_argument("--params", help=f"params file (default: {PROJECT_ROOT / 'params.yaml'})")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI for the flow runs (default: MLFLOW_TRACKING_URI if set)"
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
    params = Path(args.params).expanduser().resolve() if args.params else PROJECT_ROOT / "params.yaml"
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        settings = load_settings(params if params.is_file() else None, default_root=PROJECT_ROOT)
        if args.params and not params.is_file():
            raise ConfigError(f"params file not found: {params}")
        created = ensure_process_pool(settings.automation.work_pool)
        deployment_id = deploy(settings, tracking_uri)
        auto = settings.automation
        print(
            f"work pool {auto.work_pool!r} ({'created' if created else 'exists'}, type process); "
            f"deployment 'automated-training/{auto.deployment_name}' ({deployment_id}): "
            f"cron {auto.cron_schedule!r} {auto.timezone}, concurrency 1 (cancel new), "
            f"working dir {PROJECT_ROOT}, tracking {tracking_uri or settings.mlflow.tracking_uri}",
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
    sys.exit(main())
