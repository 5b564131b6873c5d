"""One project driven the way the README tells users to, mixing every mode in one sequence.

embedded ``make run`` -> ``make start-services`` -> ``make run`` -> ``make stop`` -> the plain
``python flows/automated_training_flow.py`` -> ``make demo`` -> ``make stop`` -> ``make run``:
every run trains the next batch, each batch has exactly one finished MLflow run, the
champion loads with the services up and down, ``make lineage`` and ``make rollback`` work
in both modes, and every Prefect run lands in the project's one Prefect database.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
from journeys_support import Project
from mlflow import MlflowClient

MODEL = "breast-cancer-classifier"


def _store(project: Project) -> str:
    return f"sqlite:///{project.root / 'mlflow.db'}"


def _server(project: Project) -> str:
    return f"http://127.0.0.1:{project.ports['mlflow']}"


def _champion_predicts(tracking_uri: str) -> int:
    """Load the champion through ``tracking_uri`` and predict one row; returns its version."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        client = MlflowClient(tracking_uri)
        version = client.get_model_version_by_alias(MODEL, "champion")
        model = mlflow.sklearn.load_model(f"models:/{MODEL}@champion")
        row = pd.DataFrame([[0.0] * len(model.feature_names_in_)], columns=model.feature_names_in_)
        assert len(model.predict(row)) == 1
        return int(version.version)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def _completed(project: Project) -> list[int]:
    state = project.state()
    return sorted(int(k) for k, r in state["batches"].items() if r["status"] == "completed")


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_every_mode_trains_the_next_batch_on_one_store(journey: Project) -> None:
    p = journey

    # 1. No services at all: the embedded mode.
    assert _last_line(p.make("run")).startswith("completed: batch 1: model v1")
    assert _champion_predicts(_store(p)) == 1

    # 2. Services up: the same run now goes through the MLflow and Prefect servers.
    p.make("start-services")
    assert _last_line(p.make("run")).startswith("completed: batch 2: model v2")
    assert p.make("services-status").stdout.count("running") == 2
    for uri in (_server(p), _store(p)):  # one store: both ways see the same champion
        assert _champion_predicts(uri) in (1, 2)
    assert "batch 2" in p.make("lineage", BATCH="2").stdout
    p.make("rollback", VERSION="1", REASON="journey: services up")
    assert _champion_predicts(_server(p)) == 1

    # 3. Services down again; the entry point named in the README, without make.
    p.make("stop")
    plain = subprocess.run(
        [sys.executable, "flows/automated_training_flow.py"],
        cwd=p.root,
        env=p.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert plain.returncode == 0, plain.stderr[-4000:]
    assert _last_line(plain).startswith("completed: batch 3: model v3"), plain.stdout[-2000:]
    assert "ERROR" not in plain.stdout + plain.stderr, "a healthy run printed an ERROR line"
    assert "batch 2" in p.make("lineage", VERSION="2").stdout
    p.make("rollback", VERSION="2", REASON="journey: services down")
    assert _champion_predicts(_store(p)) == 2

    # 4. The demo: services, deployment, worker, one deployment run now.
    demo = p.make("demo", timeout=900)
    assert "completed" in demo.stdout
    assert _completed(p) == [1, 2, 3, 4]
    assert _champion_predicts(_server(p)) >= 2

    # 5. Stopped again: the next batch trains in the embedded mode.
    p.make("stop")
    assert _last_line(p.make("run")).startswith("completed: batch 5: model v5")
    assert _champion_predicts(_store(p)) >= 2
    assert "batch 5" in p.make("lineage", BATCH="5").stdout

    # One finished MLflow run per batch, five registered versions, all in one store.
    client = MlflowClient(_store(p))
    experiment = client.get_experiment_by_name("automated-retraining")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_batch: dict[str, list[str]] = {}
    for run in runs:
        by_batch.setdefault(run.data.tags["batch_number"], []).append(run.info.status)
    assert by_batch == {str(n): ["FINISHED"] for n in range(1, 6)}
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 5
    state = p.state()
    assert all(state["batches"][str(n)]["attempts"] == 1 for n in range(1, 6))

    # Every flow run, whichever way it started, is in the project's one Prefect database.
    with sqlite3.connect(p.root / ".prefect" / "prefect.db") as db:
        (completed_runs,) = db.execute(
            "select count(*) from flow_run where state_type = 'COMPLETED'"
        ).fetchone()
    assert completed_runs == 5
    assert not (Path(p.env["HOME"]) / ".prefect" / "prefect.db").exists(), "a run used ~/.prefect"
