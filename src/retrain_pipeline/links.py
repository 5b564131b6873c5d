"""Links to a run in the MLflow UI or the Prefect UI, for lineage, alerts."""

from __future__ import annotations

import os

from retrain_pipeline.arguments import DEFAULT_HOST, DEFAULT_MLFLOW_PORT, DEFAULT_PREFECT_PORT
from retrain_pipeline.config import Settings


def mlflow_ui(settings: Settings) -> str:
    """The tracking server, else the project's running MLflow server, else the default address."""
    if settings.mlflow.is_remote:
        return settings.mlflow.tracking_uri.rstrip("/")
    from retrain_pipeline.service_records import running_urls

    return running_urls(settings).get("mlflow", f"http://{DEFAULT_HOST}:{DEFAULT_MLFLOW_PORT}").rstrip("/")


def prefect_ui(settings: Settings) -> str:
    """PREFECT_API_URL's UI, else the project's running Prefect server's, else the default."""
    from retrain_pipeline.service_records import running_urls

    api = os.environ.get("PREFECT_API_URL", "").strip() or running_urls(settings).get("prefect", "")
    api = api.rstrip("/")
    return api.removesuffix("/api") if api else f"http://{DEFAULT_HOST}:{DEFAULT_PREFECT_PORT}"


def mlflow_run_link(settings: Settings, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run, or None without a run."""
    return f"{mlflow_ui(settings)}/#/experiments/{experiment_id}/runs/{run_id}" if run_id else None


def flow_run_link(settings: Settings, flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run, or None without one."""
    return f"{prefect_ui(settings)}/runs/flow-run/{flow_run_id}" if flow_run_id else None
