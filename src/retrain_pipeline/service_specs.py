"""How each background service of a project runs: its command line, environment, URL,
readiness check, stop signal (a :class:`ServiceSpec`).

The Prefect server, the MLflow server, the process worker and the scoring server; the
servers bind to 127.0.0.1 unless told otherwise (:class:`Endpoints`).
"""

from __future__ import annotations

import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retrain_pipeline.arguments import (
    DEFAULT_HOST,
    DEFAULT_MLFLOW_PORT,
    DEFAULT_PREFECT_PORT,
    DEFAULT_SERVE_PORT,
)
from retrain_pipeline.config import AutomationConfig, Settings
from retrain_pipeline.errors import ServiceError
from retrain_pipeline.service_records import prefect_home, running_urls

SERVICE_NAMES = ("prefect", "mlflow", "worker", "serve")


@dataclass(frozen=True)
class Endpoints:
    prefect_host: str = DEFAULT_HOST
    prefect_port: int = DEFAULT_PREFECT_PORT
    mlflow_host: str = DEFAULT_HOST
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    serve_host: str = DEFAULT_HOST
    serve_port: int = DEFAULT_SERVE_PORT

    @property
    def prefect_api(self) -> str:
        return f"http://{self.prefect_host}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.mlflow_host}:{self.mlflow_port}"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    ready: Callable[[str], bool]  # given what the service logged since this start
    stop_signal: signal.Signals
    marker: str  # must appear in the process's command line: guards against a reused pid
    cwd: Path | None = None  # default: the project folder


def _bin(name: str) -> str:
    """An executable of this environment (the project's .venv)."""
    return str(Path(sys.executable).parent / name)


def _http_ok(url: str) -> Callable[[str], bool]:
    def check(_: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return check


def _log_says(text: str) -> Callable[[str], bool]:
    def check(log_text: str) -> bool:
        return text in log_text

    return check


def base_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(prefect_home(settings)),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def spec_for(name: str, settings: Settings, endpoints: Endpoints) -> ServiceSpec:
    """How to run one service for this project."""
    env = base_env(settings)
    if name == "prefect":
        env.pop("PREFECT_API_URL", None)
        return prefect_server_spec(endpoints.prefect_host, endpoints.prefect_port, env)
    if name == "mlflow":
        store = settings.mlflow.tracking_uri
        if settings.mlflow.is_remote:
            raise ServiceError(f"mlflow.tracking_uri is already a server ({store}); nothing to start")
        return mlflow_server_spec(
            store, mlflow_artifact_args(settings), endpoints.mlflow_host, endpoints.mlflow_port, env
        )
    if name == "worker":
        env.update(worker_env(settings))
        return worker_spec(name, settings.automation, env)
    if name == "serve":
        return serve_spec(settings, endpoints.serve_host, endpoints.serve_port, env)
    raise ServiceError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")


def prefect_server_spec(host: str, port: int, env: dict[str, str], cwd: Path | None = None) -> ServiceSpec:
    """``prefect server start``; its database is whatever ``env`` configures (SQLite by default)."""
    url = f"http://{host}:{port}/api"
    argv = [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)]
    return ServiceSpec("prefect", argv, env, url, _http_ok(f"{url}/health"), signal.SIGTERM, "prefect", cwd)


def mlflow_server_spec(
    store: str, artifact_args: list[str], host: str, port: int, env: dict[str, str], cwd: Path | None = None
) -> ServiceSpec:
    """``mlflow server`` over ``store`` with one web worker (2 cores); see :func:`mlflow_artifact_args`."""
    url = f"http://{host}:{port}"
    argv = [
        _bin("mlflow"),
        "server",
        "--backend-store-uri",
        store,
        *artifact_args,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # MLflow's job runner (GenAI scorers and prompt optimisation, which this pipeline does not
    # use) starts about 8 more processes, each importing MLflow: seconds of CPU at every start.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env}
    return ServiceSpec("mlflow", argv, env, url, _http_ok(f"{url}/health"), signal.SIGTERM, "mlflow", cwd)


def worker_spec(
    name: str,
    automation: AutomationConfig,
    env: dict[str, str],
    extra_args: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> ServiceSpec:
    """A Prefect process worker for the work pool, talking to ``env["PREFECT_API_URL"]``.

    It polls every ``automation.worker_poll_seconds`` and starts a scheduled run's process
    ``automation.worker_prefetch_seconds`` early: the process loads the flow (the imports, about
    10 s on 2 cores) and Prefect holds it until the scheduled time, so the run itself starts
    on the tick. Prefect's own settings in the environment win.
    """
    env = {
        "PREFECT_WORKER_QUERY_SECONDS": f"{automation.worker_poll_seconds:g}",
        "PREFECT_WORKER_PREFETCH_SECONDS": f"{automation.worker_prefetch_seconds:g}",
        **env,
    }
    pool = automation.work_pool
    argv = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", *extra_args]
    return ServiceSpec(
        name,
        argv,
        env,
        env["PREFECT_API_URL"],
        _log_says("started!"),
        signal.SIGINT,  # a Prefect worker ignores SIGTERM for a long time; SIGINT stops it
        "worker",
        cwd,
    )


def serve_spec(settings: Settings, host: str, port: int, env: dict[str, str]) -> ServiceSpec:
    """The scoring server (:mod:`retrain_pipeline.serving`) over the project's tracking store:
    ``MLFLOW_TRACKING_URI`` if set, else the project's running MLflow server, else the
    params' store. Ready once ``/model`` answers (the champion, if any, is loaded by then)."""
    url = f"http://{host}:{port}"
    argv = [sys.executable, "-m", "retrain_pipeline.serving", "--host", host, "--port", str(port)]
    if settings.params_file is not None:
        argv += ["--params", str(settings.params_file)]
    mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or running_urls(settings).get("mlflow")
    if mlflow_uri:
        env = {**env, "MLFLOW_TRACKING_URI": mlflow_uri}
    return ServiceSpec(
        "serve", argv, env, url, _http_ok(f"{url}/model"), signal.SIGTERM, "retrain_pipeline.serving"
    )


def mlflow_artifact_args(settings: Settings) -> list[str]:
    """How the MLflow server started here stores artifacts (``mlflow.serve_artifacts``).

    Default: one artifact scheme in every mode. Clients read and write the files under
    ``mlflow.artifact_location`` themselves, so what the server logged loads without it (no
    proxied ``mlflow-artifacts:`` URIs, which only this server could resolve). With
    ``serve_artifacts: true`` the server proxies them (stored under ``artifact_location``), so
    clients on other machines need only its http URI.
    """
    location = settings.mlflow.artifact_location
    if settings.mlflow.serve_artifacts:
        return ["--artifacts-destination", location.as_uri(), "--serve-artifacts"]
    return ["--default-artifact-root", location.as_uri(), "--no-serve-artifacts"]


def worker_env(settings: Settings) -> dict[str, str]:
    """Where the worker and its flow runs find the servers and this project's params file.

    ``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` from the environment win (a worker on
    another machine, or a shell that sourced ``.cluster/env``); otherwise the servers that
    ``make start-services`` runs for this project.
    """
    urls = running_urls(settings)
    env: dict[str, str] = {}
    prefect_url = os.environ.get("PREFECT_API_URL", "").strip() or urls.get("prefect")
    if not prefect_url:
        raise ServiceError(
            "no Prefect server: run `make start-services` first, or set PREFECT_API_URL to your server"
        )
    env["PREFECT_API_URL"] = prefect_url
    mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or urls.get("mlflow")
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    if settings.params_file is not None:
        # Runs of a deployment whose code comes from Git name no params file: they use the worker's.
        env["RETRAIN_PARAMS"] = str(settings.params_file)
    return env
