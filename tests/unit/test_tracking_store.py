"""One artifact scheme: a store holding proxied ``mlflow-artifacts:`` URIs is repaired in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from sklearn.linear_model import LogisticRegression

from retrain_pipeline import tracking
from retrain_pipeline.config import Settings
from retrain_pipeline.params import settings_from_mapping


def _proxied_store(root: Path) -> Settings:
    """A project store as an earlier version's server left it: proxied URIs, files on disk.

    The model is logged locally, then every ``file:`` URI is rewritten the way a server
    started with ``--artifacts-destination <root>/mlartifacts`` records it.
    """
    settings = settings_from_mapping({"mlflow": {"registered_model_name": "clf"}}, root)
    config = settings.mlflow
    experiment_id = tracking.connect(config)
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.sklearn.log_model(
            model, name="model", registered_model_name="clf", pip_requirements=["scikit-learn"]
        )
    prefix = config.artifact_location.as_uri() + "/"
    db_file = tracking.sqlite_file(config.tracking_uri)
    assert db_file is not None
    with sqlite3.connect(db_file) as db:
        for table, column in tracking._ARTIFACT_URI_COLUMNS:
            db.execute(
                f"UPDATE {table} SET {column} = replace({column}, ?, 'mlflow-artifacts:/')"
                f" WHERE {column} LIKE ?",
                (prefix, prefix + "%"),
            )
            db.execute(
                f"UPDATE {table} SET {column} = 'mlflow-artifacts:/' WHERE {column} = ?",
                (config.artifact_location.as_uri(),),
            )
    return settings


def _proxied_uris(db_file: Path) -> int:
    with sqlite3.connect(db_file) as db:
        return sum(
            db.execute(f"SELECT count(*) FROM {t} WHERE {c} LIKE 'mlflow-artifacts:%'").fetchone()[0]
            for t, c in tracking._ARTIFACT_URI_COLUMNS
        )


def test_a_store_with_proxied_uris_is_repaired_and_its_models_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = _proxied_store(tmp_path)
    db_file = tracking.sqlite_file(settings.mlflow.tracking_uri)
    assert db_file is not None
    assert _proxied_uris(db_file) >= 4  # experiment, run, logged model, model version
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)  # not the store an earlier test used
    with pytest.raises(MlflowException, match="mlflow-artifacts"):
        mlflow.sklearn.load_model("models:/clf/1")  # what users saw after `make stop`

    assert tracking.repair_proxied_artifact_uris(settings.mlflow) >= 4
    assert _proxied_uris(db_file) == 0
    assert tracking.repair_proxied_artifact_uris(settings.mlflow) == 0  # idempotent
    assert list(tracking.load_version(settings.mlflow, "1").predict([[0.9]])) == [1]


def test_connect_repairs_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = _proxied_store(tmp_path)
    tracking.connect(settings.mlflow)
    assert list(tracking.load_version(settings.mlflow, "1").predict([[0.1]])) == [0]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "postgresql://u@h/db"])
def test_other_stores_are_left_alone(tmp_path: Path, uri: str) -> None:
    settings = settings_from_mapping({"mlflow": {"tracking_uri": uri}}, tmp_path)
    assert tracking.repair_proxied_artifact_uris(settings.mlflow) == 0


def test_a_missing_store_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = settings_from_mapping({}, tmp_path)
    assert tracking.repair_proxied_artifact_uris(settings.mlflow) == 0
    assert not (tmp_path / "mlflow.db").exists()


_CREATE = """
import sys
from pathlib import Path
from retrain_pipeline import tracking
from retrain_pipeline.config import Settings
from retrain_pipeline.params import settings_from_mapping
settings = settings_from_mapping({}, Path(sys.argv[1]))
print("creating", flush=True)
tracking.create_sqlite_store(settings.mlflow)
print("created", flush=True)
"""


def test_a_store_killed_while_being_created_leaves_no_broken_file(tmp_path: Path) -> None:
    """kill -9 during MLflow's table creation and migrations: no half-made mlflow.db; the next
    run creates a complete one (before, every later run failed: 'table ... already exists')."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen(
        [sys.executable, "-c", _CREATE, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "creating"
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".mlflow.db.*.creating")) and time.monotonic() < deadline:
        time.sleep(0.01)  # the temporary store exists: MLflow is creating tables or migrating
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.stdout.read() == "", "the store was complete before the kill; the test proved nothing"
    assert not (tmp_path / "mlflow.db").exists()
    assert list(tmp_path.glob(".mlflow.db.*.creating")), "the killed process's temporary store"

    settings = settings_from_mapping({}, tmp_path)
    assert tracking.create_sqlite_store(settings.mlflow) is True
    assert not list(tmp_path.glob(".mlflow.db.*.creating")), "stale temporary stores are removed"
    assert tracking.create_sqlite_store(settings.mlflow) is False  # exists: left alone
    assert tracking.connect(settings.mlflow)  # a complete store MLflow accepts
