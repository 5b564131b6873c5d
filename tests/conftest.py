"""Shared fixtures: a temporary project folder with its own params.yaml."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from retrain_pipeline.postgres import LocalPostgres

# Small and fast, but the same code paths as the shipped params.yaml.
BASE_PARAMS: dict[str, Any] = {
    "data": {"source": "sliced", "batch_size": 50},
    "model": {
        "estimator": "random_forest",
        "hyperparameters": {"n_estimators": 25, "max_depth": 4, "n_jobs": 1},
    },
    "automation": {"max_batches": 8},
}


@pytest.fixture(autouse=True)
def _mlflow_points_nowhere_after_a_test() -> Iterator[None]:
    """MLflow keeps its tracking and registry URIs process-wide: a test that pointed them at
    its own store must not leave a later test in the same pytest-xdist process registering
    into, or loading ``models:/`` from, that store."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # the setters export them too
    before = {name: os.environ.get(name) for name in names}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


#: The longest test files first: ``make test`` hands whole files to its pytest-xdist processes
#: in collection order, so a long file collected last would run alone at the end. The order
#: by measured time (a fresh clone, 2 cores); files not named keep their place after these.
LONGEST_FIRST = (
    "tests/journeys/test_upgrade.py",
    "tests/cluster/test_cluster.py",
    "tests/journeys/test_worker_crash.py",
    "tests/benchmarks/test_bench_smoke.py",
    "tests/journeys/test_mixed_modes.py",
    "tests/robustness/test_crashes_and_concurrency.py",
    "tests/robustness/test_bad_batches.py",
    "tests/e2e/test_cli.py",
    "tests/integration/test_scheduled_deployment.py",
)


REPO = Path(__file__).resolve().parent.parent

#: The markers, applied here and nowhere else (select with ``-m``, see pyproject.toml): each
#: test folder's layer, and ``postgres`` for every test that uses a PostgreSQL server (a fixture
#: named ``*postgres*``).
FOLDER_MARKERS = {
    "unit": "unit",
    "flow": "flow",
    "e2e": "e2e",
    "integration": "integration",
    "robustness": "robustness",
    "journeys": "journey",
    "cluster": "cluster",
    "benchmarks": "bench",
}


def _relative(item: pytest.Item) -> str:
    return Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()


def pytest_itemcollected(item: pytest.Item) -> None:
    item.add_marker(FOLDER_MARKERS[_relative(item).split("/")[1]])
    if any("postgres" in name for name in getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.postgres)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = _relative(item)
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a currently free loopback port."""
    return _free_port


@pytest.fixture
def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write ``params.yaml`` (BASE_PARAMS + overrides) into a fresh folder; returns its path."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RETRAIN_STATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RETRAIN_DVC_REMOTE", raising=False)
    monkeypatch.delenv("RETRAIN_ALERT_WEBHOOK_URL", raising=False)

    def _make(name: str = "project", **overrides: Any) -> Path:
        root = tmp_path / name
        root.mkdir()
        params = root / "params.yaml"
        params.write_text(yaml.safe_dump(deep_merge(BASE_PARAMS, overrides)), encoding="utf-8")
        return params

    return _make


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A real PostgreSQL server (from the OS packages) for the whole session, on a free port.

    Not skipped when PostgreSQL is missing: the error says how to install it (``.ci/run``
    installs it on CI machines).
    """
    server = LocalPostgres(tmp_path_factory.mktemp("postgres") / "server", port=_free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture
def postgres_url(postgres: LocalPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh database on the session's PostgreSQL; returns its postgresql:// URL."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:50]
    name = f"{name}_{_free_port()}"
    postgres.create_database(name)
    return postgres.url(name)
