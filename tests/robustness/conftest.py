"""Fixtures for the robustness tests: a real Prefect server for the CLI runs, and helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from retrain_pipeline import service_records, service_specs, services
from retrain_pipeline.params import load_settings

REPO = Path(__file__).resolve().parents[2]
FLOW = REPO / "flows" / "automated_training_flow.py"


@pytest.fixture(scope="session")
def prefect_api(
    tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]
) -> Iterator[tuple[str, Path]]:
    """A Prefect server on a free loopback port, so each CLI process starts in seconds."""
    root = tmp_path_factory.mktemp("robustness-prefect")
    (root / "params.yaml").write_text("{}")
    settings = load_settings(root / "params.yaml")
    endpoints = service_specs.Endpoints(prefect_port=free_port())
    services.start(service_specs.spec_for("prefect", settings, endpoints), settings, timeout=180)
    try:
        yield endpoints.prefect_api, service_records.prefect_home(settings)
    finally:
        services.stop(settings, "prefect")


@pytest.fixture
def cli_env(prefect_api: tuple[str, Path]) -> dict[str, str]:
    api_url, home = prefect_api
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


@pytest.fixture
def start_cli(cli_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.Popen[str]]:
    def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(FLOW), *args],
            cwd=tmp_path,
            env=env or cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    return _start


@pytest.fixture
def run_cli(
    start_cli: Callable[..., subprocess.Popen[str]],
) -> Callable[..., subprocess.CompletedProcess[str]]:
    def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        process = start_cli(*args, env=env)
        stdout, stderr = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    return _run


@pytest.fixture
def write_params() -> Callable[..., Path]:
    """Write a landing-source params.yaml into a folder (sections override the base)."""
    return _write_params


def _write_params(root: Path, **sections: object) -> Path:
    base = {
        "data": {"source": "landing"},
        "model": {"estimator": "logistic_regression", "hyperparameters": {"max_iter": 500}},
        "mlflow": {"max_retries": 1, "retry_backoff_factor": 0, "request_timeout_seconds": 5},
        "automation": {"max_batches": 100},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}  # type: ignore[dict-item]
    root.mkdir(parents=True, exist_ok=True)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(base))
    return params
