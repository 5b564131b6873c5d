"""Exactly-once under concurrency, SIGKILL at any point, a tracking server that goes away, a
corrupted state file. Real processes, real signals, real servers."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest

from retrain_pipeline import service_specs, services
from retrain_pipeline.params import load_settings
from retrain_pipeline.state import load_state


def _runs(params: Path) -> list[Any]:
    settings = load_settings(params)
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment_name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _assert_consistent(params: Path) -> None:
    """The invariants that must hold after anything: parse, agree with MLflow, one champion."""
    settings = load_settings(params)
    state = load_state(settings.paths.state_file)  # raises if the file is not valid
    runs = {r.info.run_id: r for r in _runs(params)}
    for key, record in state.batches.items():
        if record.status != "completed":
            continue
        run = runs[record.mlflow_run_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["batch_number"] == key
        assert run.data.tags["data_md5"] == record.data_md5
    for run in runs.values():
        assert run.info.status in ("FINISHED", "KILLED", "FAILED", "RUNNING")
    if state.champion_version is not None:
        champions = [r for r in state.batches.values() if r.model_version == state.champion_version]
        assert champions and champions[0].status == "completed"


def _sliced_params(write_params: Callable[..., Path], root: Path, **extra: object) -> Path:
    return write_params(root, data={"source": "sliced", "batch_size": 60}, **extra)


def test_simultaneous_runs_train_each_batch_once(
    tmp_path: Path, start_cli: Callable[..., subprocess.Popen[str]], write_params: Callable[..., Path]
) -> None:
    params = _sliced_params(write_params, tmp_path / "project")
    processes = [start_cli("--params", str(params)) for _ in range(4)]
    processes += [start_cli("2", "--params", str(params), "--force") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    codes = [p.returncode for p in processes]

    statuses = [out.strip().splitlines()[-1].split(":")[0] if out.strip() else "" for out, _ in outputs]
    assert all(code in (0, 1) for code in codes), [err[-1500:] for _, err in outputs]
    state = load_state(load_settings(params).paths.state_file)
    runs = _runs(params)
    per_batch = Counter(r.data.tags["batch_number"] for r in runs if r.info.status == "FINISHED")
    # Every MLflow run belongs to an attempt recorded in the state: no run for a loser.
    for key, record in state.batches.items():
        assert per_batch[key] == record.attempts, (key, per_batch, record.attempts)
    assert sum(per_batch.values()) == statuses.count("completed")
    assert "busy" in statuses or len(state.processed_batches) == statuses.count("completed")
    assert state.processed_batches == sorted(set(state.processed_batches))
    _assert_consistent(params)


def _wait_for_running_mlflow_run(db: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                    if conn.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]:
                        return True
            except sqlite3.Error:
                pass
        time.sleep(0.05)
    return False


def test_kill_during_mlflow_logging_then_rerun(
    tmp_path: Path,
    start_cli: Callable[..., subprocess.Popen[str]],
    run_cli: Callable[..., Any],
    write_params: Callable[..., Path],
) -> None:
    params = _sliced_params(write_params, tmp_path / "project")
    process = start_cli("--params", str(params))
    assert _wait_for_running_mlflow_run(params.parent / "mlflow.db", timeout=120), "no MLflow run started"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    state_file = load_settings(params).paths.state_file
    assert not state_file.exists() or "1" not in load_state(state_file).processed_batches

    rerun = run_cli("--params", str(params))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    state = load_state(state_file)
    assert state.processed_batches == [1]
    statuses = Counter(r.info.status for r in _runs(params))
    assert statuses == Counter({"KILLED": 1, "FINISHED": 1})
    assert state.champion_version == state.batches["1"].model_version
    _assert_consistent(params)


def test_sigkill_at_random_moments_never_corrupts_anything(
    tmp_path: Path,
    start_cli: Callable[..., subprocess.Popen[str]],
    run_cli: Callable[..., Any],
    write_params: Callable[..., Path],
) -> None:
    params = _sliced_params(write_params, tmp_path / "project", automation={"max_batches": 3})
    rng = random.Random(20261123)
    for _ in range(5):
        process = start_cli("--params", str(params))
        time.sleep(rng.uniform(2.0, 12.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        _assert_consistent(params)
    while True:
        result = run_cli("--params", str(params))
        assert result.returncode == 0, result.stderr[-3000:]
        if result.stdout.strip().startswith("nothing_to_do"):
            break
    state = load_state(load_settings(params).paths.state_file)
    assert state.processed_batches == [1, 2, 3]
    finished = Counter(r.data.tags["batch_number"] for r in _runs(params) if r.info.status == "FINISHED")
    for key, record in state.batches.items():
        assert finished[key] >= 1 and record.status == "completed"
    assert not [r for r in _runs(params) if r.info.status == "RUNNING"]
    _assert_consistent(params)


def test_tracking_server_outage_fails_the_batch_and_the_next_run_retries(
    tmp_path: Path,
    run_cli: Callable[..., Any],
    write_params: Callable[..., Path],
    cli_env: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    root = tmp_path / "project"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    params = _sliced_params(write_params, root)
    settings = load_settings(params)
    endpoints = service_specs.Endpoints(mlflow_port=port)
    env = {**cli_env, "MLFLOW_TRACKING_URI": uri}

    down = run_cli("--params", str(params), env=env)
    assert down.returncode == 1
    last = down.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MLflow at {uri}") and "Traceback" not in down.stderr
    state = load_state(settings.paths.state_file)
    assert state.batches["1"].status == "failed" and uri in (state.batches["1"].error or "")
    assert state.processed_batches == []

    services.start(service_specs.spec_for("mlflow", settings, endpoints), settings, timeout=180)
    try:
        up = run_cli("--params", str(params), env=env)
        assert up.returncode == 0, up.stderr[-3000:]
        state = load_state(settings.paths.state_file)
        assert state.batches["1"].status == "completed" and state.batches["1"].attempts == 2

        # Stopped mid-run: whatever the moment, the batch ends completed or failed, never half.
        process = subprocess.Popen(
            [*up.args[:2], "--params", str(params)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        holder = settings.lock_file.with_name(settings.lock_file.name + ".holder.json")
        deadline = time.monotonic() + 120
        while not (holder.exists() and '"batch"' in holder.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        services.stop(settings, "mlflow")
        _, err = process.communicate(timeout=300)
        state = load_state(settings.paths.state_file)
        assert state.batches["2"].status in ("completed", "failed")
        if state.batches["2"].status == "failed":
            assert process.returncode == 1 and uri in err.strip().splitlines()[-1]
            assert state.processed_batches == [1]
    finally:
        services.stop(settings, "mlflow")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"schema_version": 99, "batches": {}}), "unsupported schema_version 99"),
        (json.dumps({"schema_version": 1, "processed_batches": "1,2", "batches": {}}), "processed_batches"),
        (
            json.dumps({"schema_version": 1, "processed_batches": [1], "last_batch": 1, "batches": {}}),
            "does not match the completed batches",
        ),
    ],
)
def test_corrupted_state_fails_clearly_and_is_never_overwritten(
    tmp_path: Path, run_cli: Callable[..., Any], write_params: Callable[..., Path], content: str, problem: str
) -> None:
    params = _sliced_params(write_params, tmp_path / "project")
    state_file = params.parent / "batch_state.json"
    state_file.write_text(content)

    result = run_cli("--params", str(params))

    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert str(state_file) in last and problem in last
    assert "Traceback" not in result.stderr
    assert state_file.read_text() == content
