"""Several machines on one: two workers in two clones and a client clone, sharing only the
servers (Prefect and MLflow on PostgreSQL), the state database, the DVC remote and the
landing folder. The tests run in file order on one cluster, as a team would use it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from cluster_support import ClusterProject

from retrain_pipeline.postgres import LocalPostgres

DEPLOYMENT = "automated-training/automated-retraining"
MODEL = "breast-cancer-classifier"
EXPERIMENT = "automated-retraining"


# --------------------------------------------------------------------------- helpers


def worker_cli(
    cluster: ClusterProject, worker: str, *args: str, timeout: float = 600
) -> subprocess.Popen[str]:
    """The flow's command line run on a worker's machine: its clone, its params, the cluster's URLs."""
    folder = cluster.worker_dir(worker)
    env = {**cluster.client(), "PYTHONPATH": str(folder / "src")}
    return subprocess.Popen(
        [sys.executable, "flows/automated_training_flow.py", *args, "--params", str(folder / "params.yaml")],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def client_make(cluster: ClusterProject, *targets: str, **variables: str) -> subprocess.Popen[str]:
    """A make target on the client clone, in a shell that sourced ``.cluster/env``."""
    argv = ["make", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.Popen(
        argv,
        cwd=cluster.root,
        env=cluster.client(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def client_python(cluster: ClusterProject, code: str) -> str:
    """Run ``code`` in a fresh interpreter with the client's cluster settings; returns stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code], env=cluster.client(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def prefect(cluster: ClusterProject, code: str) -> str:
    """Run a few lines against the cluster's Prefect API in a fresh interpreter; returns stdout."""
    script = (
        "from uuid import UUID\n"
        "from prefect import get_client\n"
        "from prefect.deployments import run_deployment\n"
        "client = get_client(sync_client=True).__enter__()\n" + code
    )
    return client_python(cluster, script)


def fire_deployment_runs(cluster: ClusterProject, batches: list[int | None]) -> list[str]:
    """Create one deployment run per entry (``None``: the next batch); returns their ids."""
    lines = [
        f"print(run_deployment({DEPLOYMENT!r}, parameters={ ({'batch_number': b} if b else {})!r}, "
        "timeout=0).id)"
        for b in batches
    ]
    return prefect(cluster, "\n".join(lines)).split()


def flow_run_states(cluster: ClusterProject, ids: list[str]) -> dict[str, str]:
    """Each flow run's state type, with its message after a space (``FAILED batch 2 is ...``)."""
    code = "\n".join(
        f"run = client.read_flow_run(UUID({i!r}))\n"
        f"print({i!r}, run.state_type.value, (run.state.message or '').replace(chr(10), ' '))"
        for i in ids
    )
    return dict(line.split(" ", 1) for line in prefect(cluster, code).splitlines())


def state_type(state: str) -> str:
    return state.split(" ", 1)[0]


def acceptable_contender_end(state: str) -> bool:
    """Trained it, cancelled by the deployment's concurrency limit, or started after another
    contender had completed the batch and refused it as already completed (as the CLI does)."""
    return state_type(state) in ("COMPLETED", "CANCELLED") or (
        state_type(state) == "FAILED" and "already completed" in state
    )


def state_document(cluster: ClusterProject) -> dict[str, Any]:
    """The state as the client's ``make status JSON=1`` prints it."""
    return dict(json.loads(cluster.as_client().make("status", timeout=120, JSON="1").stdout))


def completed(document: dict[str, Any]) -> list[int]:
    return sorted(int(k) for k, r in document["batches"].items() if r["status"] == "completed")


def finished_runs_per_batch(cluster: ClusterProject) -> dict[int, int]:
    code = (
        "import collections, json, mlflow\n"
        f"runs = mlflow.search_runs(experiment_names=[{EXPERIMENT!r}], output_format='list')\n"
        "done = [r for r in runs if r.info.status == 'FINISHED']\n"
        "count = collections.Counter(r.data.tags.get('batch_number') for r in done)\n"
        "print(json.dumps(count))\n"
    )
    counts = json.loads(client_python(cluster, code))
    return {int(k): v for k, v in counts.items() if k is not None and k != "null"}


def advisory_lock_held(cluster: ClusterProject) -> bool:
    url = cluster.cluster_env()["RETRAIN_STATE_DATABASE_URL"]
    try:
        with psycopg2.connect(url, connect_timeout=5) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            row = cursor.fetchone()
    except psycopg2.Error:
        return False
    return bool(row and row[0])


def processes_of_worker(cluster: ClusterProject, worker: str) -> list[int]:
    """The worker process and its flow runs (they carry the worker's RETRAIN_PARAMS)."""
    marker = f"RETRAIN_PARAMS={cluster.worker_dir(worker) / 'params.yaml'}".encode()
    found = []
    for pid in cluster.cluster_processes():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(pid)
    return found


def flow_run_worker(cluster: ClusterProject) -> str | None:
    """Which worker has a flow run process right now."""
    for worker in ("worker-1", "worker-2"):
        for pid in processes_of_worker(cluster, worker):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"worker\0start" not in cmdline:  # not the worker itself: one of its flow runs
                return worker
    return None


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(1800)
def test_concurrent_runs_from_both_sides_train_each_batch_exactly_once(cluster: ClusterProject) -> None:
    """For each of 6 batches, two deployment runs and two command-line runs (the client
    clone's make and a worker machine's CLI) start at once; exactly one trains it."""
    started = time.monotonic()
    outputs: list[str] = []
    for batch in range(1, 7):
        run_ids = fire_deployment_runs(cluster, [batch, batch])
        contenders = [
            client_make(cluster, "run-manual", BATCH=str(batch)),
            worker_cli(cluster, "worker-2", str(batch)),
        ]
        for process in contenders:
            out, err = process.communicate(timeout=600)
            # The CLI's own last "error:" line (make adds its own line after it).
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            last = errors[-1] if errors else (err.strip().splitlines() or [""])[-1]
            outputs.append(f"batch {batch}: exit {process.returncode}: {out.strip()[-200:]} {last}")
            # Trained, busy (another run holds the lock) or refused as already completed.
            assert process.returncode == 0 or "already completed" in last, outputs[-1]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = flow_run_states(cluster, run_ids)
            ended = ("COMPLETED", "CANCELLED", "FAILED", "CRASHED")
            if all(state_type(s) in ended for s in states.values()):
                break
            time.sleep(3)
        assert all(acceptable_contender_end(s) for s in states.values()), (states, outputs)
        document = state_document(cluster)
        if batch not in completed(document):
            # Every contender found another holding it: the next plain run trains it.
            retry = client_make(cluster, "run-manual", BATCH=str(batch))
            out, err = retry.communicate(timeout=600)
            assert retry.returncode == 0, err
    cluster.log.append(f"6 batches through concurrent triggers in {time.monotonic() - started:.1f} s")

    document = state_document(cluster)
    assert completed(document) == [1, 2, 3, 4, 5, 6], "\n".join(outputs)
    assert document["processed_batches"] == [1, 2, 3, 4, 5, 6]
    for number in range(1, 7):
        record = document["batches"][str(number)]
        assert record["attempts"] == 1, (number, record)
        assert record["model_version"] and record["data_md5"] and record["mlflow_run_id"]
    assert finished_runs_per_batch(cluster) == {n: 1 for n in range(1, 7)}
    # No machine shares a disk: whoever trained a batch pushed its data, so each side's later
    # batches merged all earlier ones (rows grow by the same 50-row step).
    totals = [document["batches"][str(n)]["training_rows_total"] for n in range(1, 7)]
    assert totals == sorted(totals) and len(set(totals)) == 6, totals

    # The champion loads on both sides with only the MLflow http URI (proxied artifacts).
    load = (
        "import mlflow.sklearn, numpy as np\n"
        f"model = mlflow.sklearn.load_model('models:/{MODEL}@champion')\n"
        "print(type(model).__name__, model.predict(np.zeros((1, model.n_features_in_))).shape)\n"
    )
    for folder in (cluster.root, cluster.worker_dir("worker-1")):
        result = subprocess.run(
            [sys.executable, "-c", load], cwd=folder, env=cluster.client(), capture_output=True, text=True
        )
        assert result.returncode == 0 and "(1,)" in result.stdout, result.stderr[-2000:]


def test_restore_data_from_the_client_comes_from_the_remote(cluster: ClusterProject) -> None:
    """The client clone trained none of batch 6's data itself: restore-data pulls it."""
    result = cluster.as_client().make("restore-data", timeout=300, BATCH="6")
    import pandas as pd

    restored = [Path(word) for word in result.stdout.split() if word.endswith(".parquet")]
    assert restored, result.stdout
    frame = pd.read_parquet(restored[0])
    assert len(frame) == state_document(cluster)["batches"]["6"]["training_rows_total"]


def test_kill_9_of_the_worker_holding_a_batch_fails_over(
    cluster: ClusterProject, wait_until: Callable[..., object]
) -> None:
    """The machine of the worker that runs batch 7 dies (worker and flow run killed with -9):
    the other worker trains batch 7 on a later run."""
    fire_deployment_runs(cluster, [7])
    # A run holds the lock for about 2 s now: look often, or it is over before it is seen.
    victim = wait_until(
        lambda: advisory_lock_held(cluster) and flow_run_worker(cluster), 240, "a run of batch 7", 0.05
    )
    assert isinstance(victim, str)
    survivor = "worker-2" if victim == "worker-1" else "worker-1"
    for pid in processes_of_worker(cluster, victim):
        subprocess.run(["kill", "-9", str(pid)], check=False)
    killed_at = time.monotonic()
    wait_until(lambda: not advisory_lock_held(cluster), 10, "PostgreSQL to free the dead holder's lock", 0.2)
    lock_freed = time.monotonic() - killed_at

    def batch_7_done() -> bool:
        if 7 in completed(state_document(cluster)):
            return True
        fire_deployment_runs(cluster, [7])  # the schedule's next tick
        return False

    wait_until(batch_7_done, 300, "another worker to train batch 7", every=10)
    failover = time.monotonic() - killed_at
    cluster.log.append(
        f"kill -9: lock freed after {lock_freed:.1f} s, batch 7 trained again after {failover:.0f} s"
    )
    assert (cluster.worker_dir(survivor) / "data/processed/batches/batch_7.parquet").is_file()
    assert finished_runs_per_batch(cluster)[7] == 1
    # A second start-cluster restarts what died and keeps the rest.
    restarted = cluster.make("start-cluster", timeout=600)
    assert f"{victim}: started" in restarted.stdout, restarted.stdout


def test_postgres_stopped_mid_run_fails_clearly_and_the_batch_trains_later(
    cluster: ClusterProject, wait_until: Callable[..., object]
) -> None:
    run = client_make(cluster, "run-manual", BATCH="8")
    wait_until(lambda: advisory_lock_held(cluster), 240, "the client's run of batch 8 to take the lock", 0.2)
    postgres = LocalPostgres(cluster.root / ".cluster" / "postgres", cluster.ports["postgres"])
    postgres.stop()
    try:
        out, err = run.communicate(timeout=600)
    finally:
        cluster.make("start-cluster", timeout=600)  # PostgreSQL back; the servers reconnect
    # The command's own last line (make adds "make: *** ... Error 1" after it).
    last = ([line for line in err.strip().splitlines() if not line.startswith("make: ***")] or [""])[-1]
    assert run.returncode != 0, out
    assert last.startswith("error:") and "PostgreSQL" in last, err[-3000:]
    document = state_document(cluster)
    assert 8 not in completed(document)
    again = client_make(cluster, "run-manual", BATCH="8")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert 8 in completed(state_document(cluster))
    assert finished_runs_per_batch(cluster)[8] == 1


def test_stop_cluster_leaves_nothing_running_and_start_reuses_the_data(cluster: ClusterProject) -> None:
    cluster.make("stop-cluster", timeout=300)
    assert cluster.cluster_processes() == []
    status = cluster.make("cluster-status").stdout
    assert "running" not in status, status
    started = time.monotonic()
    cluster.make("start-cluster", timeout=600)
    cluster.log.append(f"second start-cluster (data reused) in {time.monotonic() - started:.1f} s")
    assert completed(state_document(cluster)) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_client_lineage_and_rollback_use_the_cluster(cluster: ClusterProject) -> None:
    document = state_document(cluster)
    process = client_make(cluster, "lineage", BATCH="3", JSON="1")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    lineage = json.loads(out)
    assert lineage["batch"] == 3
    assert lineage["model_version"] == document["batches"]["3"]["model_version"]
    target = next(
        r["model_version"]
        for r in document["batches"].values()
        if r["model_version"] != document["champion_version"]
    )
    process = client_make(cluster, "rollback", VERSION=target, REASON="cluster test")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    after = state_document(cluster)
    assert after["champion_version"] == target
    assert after["rollbacks"][-1]["reason"] == "cluster test"
