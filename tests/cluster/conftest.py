"""The several-machines topology for real: ``make start-cluster`` on a copy of the project.

One cluster per module (starting it costs about 40 s): a real PostgreSQL from the OS
packages, the Prefect and MLflow servers on it, a DVC remote folder and two process workers
in two clones of the copy's committed code. The copy itself is the client machine: its
make targets point at the cluster through ``.cluster/env``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cluster_support import ClusterProject

from journeys.journeys_support import REPO, copy_project, journey_env
from retrain_pipeline.errors import PostgresError
from retrain_pipeline.postgres import LocalPostgres

CLUSTER_PARAMS = {
    "model": {"hyperparameters": {"n_estimators": 25, "max_depth": 4, "n_jobs": 1}},
    "automation": {"cron_schedule": "0 0 1 1 *", "max_batches": 10},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProject]:
    """A copy of the project (a Git repository) with its cluster started; stopped afterwards."""
    base = tmp_path_factory.mktemp("cluster")
    root = copy_project(REPO, base / "project")
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    for section, values in CLUSTER_PARAMS.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key] = {**(params[section].get(key) or {}), **value}
            else:
                params[section][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    _git(root, "init", "--quiet")
    _git(root, "add", "-A")
    _git(root, "commit", "--quiet", "-m", "the project as users clone it")
    home = base / "home"
    home.mkdir()
    ports = {
        name: _free_port() for name in ("prefect", "mlflow", "postgres", "cluster_prefect", "cluster_mlflow")
    }
    env = journey_env(ports, home)
    env.update(
        CLUSTER_POSTGRES_PORT=str(ports["postgres"]),
        CLUSTER_PREFECT_PORT=str(ports["cluster_prefect"]),
        CLUSTER_MLFLOW_PORT=str(ports["cluster_mlflow"]),
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
    )
    project = ClusterProject(root, env, ports)
    try:
        started = time.monotonic()
        project.make("start-cluster", timeout=600)
        project.log.append(f"cluster started in {time.monotonic() - started:.1f} s")
        yield project
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            project.make("stop-cluster", check=False, timeout=300)
        for pid in project.cluster_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(PostgresError):  # its files may live outside tmp (see LocalPostgres)
            LocalPostgres(root / ".cluster" / "postgres", ports["postgres"]).remove()
        print("\n".join(project.log))


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def wait_until() -> Callable[..., object]:
    def _wait(condition: Callable[[], object], timeout: float, what: str, every: float = 1.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    return _wait
