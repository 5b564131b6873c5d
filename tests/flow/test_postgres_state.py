"""The real flow, in-process, with its batch state and run lock in PostgreSQL.

``stores.state_database_url`` points at a fresh database of the session's PostgreSQL; MLflow
(SQLite) and DVC stay in the temporary project. No ``batch_state.json`` may appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import psycopg2
import pytest

from flows.automated_training_flow import automated_training_flow
from retrain_pipeline.cli import main as cli
from retrain_pipeline.config import Settings
from retrain_pipeline.params import load_settings
from retrain_pipeline.state_stores import TABLE, PostgresStateStore, state_store


def run(params: Path, batch: int | None = None) -> dict:
    return automated_training_flow(batch_number=batch, params_path=str(params))


def documents(url: str) -> dict[str, dict]:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT name, document FROM {TABLE}")
            return dict(cursor.fetchall())
    finally:
        connection.close()


def other_sessions(url: str) -> list[str]:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def assert_no_state_files(settings: Settings) -> None:
    leftovers = sorted(p.name for p in settings.root.glob(f"{settings.paths.state_file.name}*"))
    assert leftovers == [], leftovers


def test_flow_keeps_its_state_in_postgres(
    make_project: Callable[..., Path], postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    params = make_project(stores={"state_database_url": postgres_url})
    settings = load_settings(params)
    name = settings.mlflow.experiment_name

    outcomes = [run(params) for _ in range(2)]

    assert [(o["status"], o["batch_number"]) for o in outcomes] == [("completed", 1), ("completed", 2)]
    assert_no_state_files(settings)
    assert other_sessions(postgres_url) == []  # the lock's connection is closed: the lock is free
    store = state_store(settings)
    assert isinstance(store, PostgresStateStore)
    state = store.load()
    assert documents(postgres_url) == {name: json.loads(state.model_dump_json())}
    assert state.processed_batches == [1, 2] and state.last_batch == 2
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    for n in (1, 2):
        record = state.batches[str(n)]
        assert record.status == "completed" and record.training_rows_total == 50 * n
        mlrun = client.get_run(record.mlflow_run_id)
        assert mlrun.data.tags["batch_number"] == str(n)
        assert mlrun.data.tags["data_md5"] == record.data_md5
    assert state.champion_version in {"1", "2"}

    # status --json prints the document from PostgreSQL, never the password.
    assert cli(["status", "--json", "--params", str(params)]) == 0
    printed = capsys.readouterr().out
    payload = json.loads(printed)
    assert payload["state_file"] is None
    assert payload["state_store"] == store.description
    assert list(payload["batches"]) == ["1", "2"]
    assert {k: payload[k] for k in state.model_dump()} == state.model_dump(mode="json")
    assert payload["champion_version"] == state.champion_version and payload["next_batch"] == 3
    password = urlsplit(postgres_url).password
    assert password and password not in printed

    # rollback saves under the PostgreSQL lock.
    target = "1" if state.champion_version == "2" else "2"
    assert cli(["rollback", "--version", target, "--reason", "test", "--params", str(params)]) == 0
    capsys.readouterr()
    rolled = store.load()
    assert rolled.champion_version == target and rolled.rollbacks[-1].to_version == target

    # rebuild-state keeps the previous document in a backup row.
    assert cli(["rebuild-state", "--params", str(params)]) == 0
    message = capsys.readouterr().out
    assert f"Rebuilt {store.description}" in message and f"{name}@backup-" in message
    stored = documents(postgres_url)
    (backup,) = [key for key in stored if key.startswith(f"{name}@backup-")]
    assert stored[backup] == json.loads(rolled.model_dump_json())
    rebuilt = store.load()
    assert rebuilt.processed_batches == [1, 2] and rebuilt.champion_version == target
    assert_no_state_files(settings)


def test_busy_postgres_lock_means_no_training(make_project: Callable[..., Path], postgres_url: str) -> None:
    params = make_project(stores={"state_database_url": postgres_url})
    settings = load_settings(params)
    holder_code = textwrap.dedent(
        """
        import os, sys
        from retrain_pipeline.state_stores import PostgresStateStore
        store = PostgresStateStore(os.environ["STATE_URL"], os.environ["STATE_NAME"])
        with store.lock({"flow_run_id": "other-run"}) as handle:
            handle.update({"batch": 7})
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    env = {**os.environ, "STATE_URL": postgres_url, "STATE_NAME": settings.mlflow.experiment_name}
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        outcome = run(params)
    finally:
        holder.kill()
        holder.wait()

    assert outcome["status"] == "busy"
    assert f"retrain pid {holder.pid}@" in outcome["message"] and "batch 7" in outcome["message"]
    assert state_store(settings).load().batches == {}
    assert_no_state_files(settings)
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    assert client.get_experiment_by_name(settings.mlflow.experiment_name) is None

    # The killed holder's lock is free again.
    assert run(params)["status"] == "completed"
    assert state_store(settings).load().processed_batches == [1]
