"""Unit tests for the service specs of retrain_pipeline.services: the worker's poll and prefetch
settings (automation.worker_poll_seconds / worker_prefetch_seconds) and the MLflow server's job runner."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retrain_pipeline import service_specs
from retrain_pipeline.errors import ConfigError
from retrain_pipeline.params import load_settings

API_URL = "http://127.0.0.1:4200/api"
POLL = "PREFECT_WORKER_QUERY_SECONDS"
PREFETCH = "PREFECT_WORKER_PREFETCH_SECONDS"
JOBS = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


@pytest.fixture(autouse=True)
def _no_worker_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (POLL, PREFETCH, JOBS, "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)


def automation_of(make_project: Callable[..., Path], name: str = "project", **automation: Any) -> Any:
    return load_settings(make_project(name, automation=automation)).automation


def test_worker_env_has_the_poll_and_prefetch_seconds_of_the_params(
    make_project: Callable[..., Path],
) -> None:
    automation = automation_of(
        make_project, worker_poll_seconds=3, worker_prefetch_seconds=45, work_pool="night-pool"
    )

    spec = service_specs.worker_spec("worker", automation, {"PREFECT_API_URL": API_URL, "OTHER": "kept"})

    assert spec.env[POLL] == "3"
    assert spec.env[PREFETCH] == "45"
    assert spec.env["OTHER"] == "kept"
    assert spec.url == API_URL
    pool_option = spec.argv.index("--pool")
    assert spec.argv[pool_option + 1] == "night-pool"
    assert spec.argv[1:4] == ["worker", "start", "--pool"]


def test_worker_env_defaults_and_fractions(make_project: Callable[..., Path]) -> None:
    default = service_specs.worker_spec("worker", automation_of(make_project), {"PREFECT_API_URL": API_URL})
    assert (default.env[POLL], default.env[PREFETCH]) == ("1", "30")  # a run started now waits 0.5 s

    fraction = service_specs.worker_spec(
        "worker",
        automation_of(make_project, "other", worker_poll_seconds=2.5, worker_prefetch_seconds=0),
        {"PREFECT_API_URL": API_URL},
    )
    assert (fraction.env[POLL], fraction.env[PREFETCH]) == ("2.5", "0")


def test_worker_settings_given_in_the_env_win(make_project: Callable[..., Path]) -> None:
    automation = automation_of(make_project, worker_poll_seconds=3, worker_prefetch_seconds=45)

    spec = service_specs.worker_spec(
        "worker", automation, {"PREFECT_API_URL": API_URL, POLL: "10", PREFETCH: "0"}
    )

    assert (spec.env[POLL], spec.env[PREFETCH]) == ("10", "0")


def test_the_services_worker_gets_the_params_values_unless_the_environment_sets_them(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        make_project(automation={"worker_poll_seconds": 3, "worker_prefetch_seconds": 45})
    )
    monkeypatch.setenv("PREFECT_API_URL", API_URL)

    spec = service_specs.spec_for("worker", settings, service_specs.Endpoints())
    assert (spec.env[POLL], spec.env[PREFETCH]) == ("3", "45")

    monkeypatch.setenv(PREFETCH, "7")
    spec = service_specs.spec_for("worker", settings, service_specs.Endpoints())
    assert (spec.env[POLL], spec.env[PREFETCH]) == ("3", "7")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("worker_poll_seconds", 0),
        ("worker_poll_seconds", 0.5),
        ("worker_poll_seconds", 301),
        ("worker_prefetch_seconds", -1),
        ("worker_prefetch_seconds", 3601),
        ("worker_prefetch_seconds", "soon"),
    ],
)
def test_bad_worker_seconds_are_refused_naming_the_key(
    make_project: Callable[..., Path], key: str, value: Any
) -> None:
    params = make_project(automation={key: value})
    for light in (False, True):
        with pytest.raises(ConfigError, match=re.escape(f"automation.{key}:")):
            load_settings(params, light=light)


def test_mlflow_server_runs_no_job_runner() -> None:
    spec = service_specs.mlflow_server_spec("sqlite:///x.db", [], "127.0.0.1", 5000, {"OTHER": "kept"})

    assert spec.env[JOBS] == "false"
    assert spec.env["OTHER"] == "kept"


def test_mlflow_job_runner_setting_given_in_the_env_wins() -> None:
    spec = service_specs.mlflow_server_spec("sqlite:///x.db", [], "127.0.0.1", 5000, {JOBS: "true"})

    assert spec.env[JOBS] == "true"
