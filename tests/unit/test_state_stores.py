"""The state stores: batch_state.json (file + flock) and PostgreSQL (document + advisory lock).

The PostgreSQL tests run against a real server (the session's, one fresh database per
test; the outage test starts its own), never a mock.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from retrain_pipeline.errors import PipelineBusyError, StateError
from retrain_pipeline.params import settings_from_mapping
from retrain_pipeline.postgres import LocalPostgres
from retrain_pipeline.state import BatchRecord, PipelineState, Rollback, load_state
from retrain_pipeline.state_stores import (
    TABLE,
    FileStateStore,
    PostgresStateStore,
    advisory_key,
    application_name,
    state_store,
)
from retrain_pipeline.urls import redact_url

STARTED = "2025-01-01T00:00:00+00:00"
RUN_ID = "0b3c1d2e-1111-2222-3333-444455556666"
NAME = "automated-retraining"

# Holds the store's lock (batch 7) until its stdin closes; the URL comes from the environment.
HOLDER = """
import os, sys
from retrain_pipeline.state_stores import PostgresStateStore
store = PostgresStateStore(os.environ["STATE_URL"], os.environ["STATE_NAME"])
with store.lock({"flow_run_id": os.environ["RUN_ID"]}) as handle:
    handle.update({"batch": 7})
    print("locked", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""


def sample_state() -> PipelineState:
    state = PipelineState()
    state = state.with_batch(
        1,
        BatchRecord(
            status="completed",
            started_at=STARTED,
            finished_at=STARTED,
            rows=50,
            metrics={"f1": 0.91, "roc_auc": None},
            model_version="1",
            promoted=True,
        ),
        "1",
    )
    state = state.with_batch(2, BatchRecord(status="rejected", started_at=STARTED, error="bad"), "1")
    state = state.with_batch(10, BatchRecord(status="completed", started_at=STARTED, model_version="2"), "2")
    rollback = Rollback(at=STARTED, by="me", reason="test", from_version="2", to_version="1", to_batch=1)
    return state.with_rollback(rollback)


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return password


def read_line(process: subprocess.Popen[str], timeout: float = 60) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output from the holder within {timeout} s"
    return process.stdout.readline().strip()


def stored_documents(url: str) -> dict[str, object]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT name, document FROM {TABLE}")
        documents = dict(cursor.fetchall())
    connection.close()
    return documents


def execute(url: str, query: str, args: tuple[object, ...] = ()) -> None:
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(query, args)
    finally:
        connection.close()


def try_lock(store: PostgresStateStore, timeout: float) -> float:
    """Seconds until the store's lock could be taken (polling every 20 ms), or PipelineBusyError."""
    start = time.monotonic()
    while True:
        try:
            with store.lock({"flow_run_id": "next"}):
                return time.monotonic() - start
        except PipelineBusyError:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.02)


@pytest.fixture
def own_postgres(free_port: Callable[[], int]) -> Iterator[LocalPostgres]:
    """A PostgreSQL server of this test alone, not started: the test starts and stops it.

    Its folder is not under ``tmp_path``: pytest creates its folders 0700, which the
    ``postgres`` user PostgreSQL runs as (under root) cannot traverse.
    """
    folder = Path(tempfile.mkdtemp(prefix="retrain-state-pg-"))
    folder.chmod(0o711)
    server = LocalPostgres(folder / "pg", port=free_port())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def holder(postgres_url: str) -> Iterator[subprocess.Popen[str]]:
    """A subprocess holding the PostgreSQL lock of NAME (batch 7)."""
    env = {**os.environ, "STATE_URL": postgres_url, "STATE_NAME": NAME, "RUN_ID": RUN_ID}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert read_line(process) == "locked", process.stderr.read() if process.stderr else ""
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


# --------------------------------------------------------------------------- choosing the store


def test_the_file_store_is_the_default(tmp_path: Path) -> None:
    settings = settings_from_mapping({}, tmp_path)
    store = state_store(settings)
    assert isinstance(store, FileStateStore)
    assert store.description == f"batch_state.json ({tmp_path / 'batch_state.json'})"


def test_a_database_url_chooses_postgres_named_by_the_experiment(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://user:s3cret@db.example:5433/retrain"
    settings = settings_from_mapping(
        {"stores": {"state_database_url": url}, "mlflow": {"experiment_name": "churn"}}, tmp_path
    )
    store = state_store(settings)
    assert isinstance(store, PostgresStateStore)
    assert store.name == "churn"
    assert store.description == (
        "PostgreSQL state store postgresql+psycopg2://user:***@db.example:5433/retrain (document 'churn')"
    )
    assert "s3cret" not in store.description


def test_advisory_key_is_a_stable_positive_62_bit_int() -> None:
    key = advisory_key(NAME)
    assert key == advisory_key(NAME)
    assert 0 < key < 2**62
    assert advisory_key("other") != key


def test_application_name_fits_63_bytes() -> None:
    info: dict[str, object] = {"pid": 4242, "host": "worker-1", "flow_run_id": RUN_ID}
    assert application_name(info) == "retrain pid 4242@worker-1 run 0b3c1d2e"
    info["batch"] = 12
    assert application_name(info) == "retrain pid 4242@worker-1 batch 12 run 0b3c1d2e"
    info["host"] = "a-very-long-host-name." * 10 + "é"
    long = application_name(info)
    assert len(long.encode()) <= 63
    assert long.startswith("retrain pid 4242@a-very-long") and long.endswith(" batch 12 run 0b3c1d2e")
    assert application_name({"pid": 1, "host": "h", "flow_run_id": "rebuild-state"}).endswith(
        "run rebuild-state"
    )


# --------------------------------------------------------------------------- the file store


def test_file_store_round_trip_lock_and_backup(tmp_path: Path) -> None:
    settings = settings_from_mapping({}, tmp_path)
    store = FileStateStore(settings)
    assert store.load() == PipelineState()
    assert store.backup() is None

    with store.lock({"flow_run_id": "run-1"}) as handle:
        handle.update({"batch": 3})
        sidecar = json.loads(settings.lock_file.with_name("batch_state.json.lock.holder.json").read_text())
        assert (sidecar["flow_run_id"], sidecar["batch"], sidecar["pid"]) == ("run-1", 3, os.getpid())
        store.save(sample_state())
    assert load_state(settings.paths.state_file) == sample_state() == store.load()

    backup = store.backup()
    assert backup is not None and Path(backup).name.startswith("batch_state.json.bak-")
    assert load_state(Path(backup)) == sample_state()
    assert not settings.paths.state_file.exists()


# --------------------------------------------------------------------------- PostgreSQL: the document


def test_postgres_round_trip(postgres_url: str) -> None:
    store = PostgresStateStore(postgres_url, NAME)
    state = sample_state()
    store.save(state)

    assert store.load() == state
    assert PostgresStateStore(postgres_url, NAME).load() == state
    # The document is exactly the JSON of batch_state.json, one row per pipeline.
    assert stored_documents(postgres_url) == {NAME: json.loads(state.model_dump_json())}

    later = state.with_batch(11, BatchRecord(status="failed", started_at=STARTED, error="x"), "2")
    store.save(later)
    assert store.load() == later
    assert list(stored_documents(postgres_url)) == [NAME]


def test_postgres_empty_store(postgres_url: str) -> None:
    store = PostgresStateStore(postgres_url, NAME)
    assert store.load() == PipelineState()  # no table yet
    assert store.backup() is None
    PostgresStateStore(postgres_url, "another-pipeline").save(sample_state())
    assert store.load() == PipelineState()  # a table, but no row for this pipeline
    assert store.backup() is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param({"schema_version": 2}, "unsupported schema_version 2", id="schema-version"),
        pytest.param([1, 2], "invalid state document: (top level): Input should be a valid", id="list"),
        pytest.param(
            {"schema_version": 1, "processed_batches": [5]},
            "invalid state document: (top level): processed_batches [5] does not match",
            id="inconsistent",
        ),
    ],
)
def test_postgres_invalid_document_names_the_store(postgres_url: str, document: object, message: str) -> None:
    store = PostgresStateStore(postgres_url, NAME)
    store.save(PipelineState())
    execute(postgres_url, f"UPDATE {TABLE} SET document = %s::jsonb", (json.dumps(document),))

    with pytest.raises(StateError) as excinfo:
        store.load()

    text = str(excinfo.value)
    assert text.startswith(f"PostgreSQL state store {redact_url(postgres_url)} (document '{NAME}'): ")
    assert message in text
    assert text.endswith("it was left untouched")
    assert password_of(postgres_url) not in text


def test_postgres_backup_keeps_the_previous_document(postgres_url: str) -> None:
    store = PostgresStateStore(postgres_url, NAME)
    store.save(sample_state())
    execute(postgres_url, f"UPDATE {TABLE} SET document = '{{\"schema_version\": 9}}'::jsonb")

    with store.lock({"flow_run_id": "rebuild-state"}):
        first = store.backup()
        second = store.backup()  # same second: a distinct name, the first backup is kept
        store.save(PipelineState())

    documents = stored_documents(postgres_url)
    backups = sorted(name for name in documents if name.startswith(f"{NAME}@backup-"))
    assert len(backups) == 2
    assert first is not None and backups[0] in first and redact_url(postgres_url) in first
    assert second is not None and second != first
    assert all(documents[name] == {"schema_version": 9} for name in backups)
    assert store.load() == PipelineState()


def test_postgres_concurrent_first_saves_create_the_table_once(postgres_url: str) -> None:
    stores = [PostgresStateStore(postgres_url, f"pipeline-{i}") for i in range(8)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def first_save(store: PostgresStateStore) -> None:
        barrier.wait()
        try:
            store.save(sample_state())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_save, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(stored_documents(postgres_url)) == sorted(s.name for s in stores)


def test_postgres_unreachable_server_is_a_state_error_without_the_password(
    postgres: LocalPostgres, free_port: Callable[[], int]
) -> None:
    url = postgres.url("postgres").replace(f":{postgres.port}/", f":{free_port()}/")
    store = PostgresStateStore(url, NAME)

    def lock() -> None:
        with store.lock({}):
            pass

    for action in (store.load, lambda: store.save(PipelineState()), lock):
        with pytest.raises(StateError) as excinfo:
            action()
        text = str(excinfo.value)
        assert text.startswith(f"PostgreSQL state store {redact_url(url)}: cannot ")
        assert "cannot connect (" in text and "Connection refused" in text
        assert postgres.password() not in text
        assert not isinstance(excinfo.value, PipelineBusyError)


# --------------------------------------------------------------------------- PostgreSQL: the lock


def test_postgres_lock_is_exclusive_between_processes(
    postgres_url: str, holder: subprocess.Popen[str]
) -> None:
    store = PostgresStateStore(postgres_url, NAME)

    with pytest.raises(PipelineBusyError) as excinfo, store.lock({"flow_run_id": "second"}):
        pytest.fail("the lock must not be acquired twice")

    message = str(excinfo.value)
    assert message.startswith(
        f"another run is in progress: retrain pid {holder.pid}@{socket.gethostname()[:20]}"
    )
    assert "batch 7" in message and f"run {RUN_ID[:8]}" in message
    assert "PostgreSQL session " in message and "connected since " in message and "last query at " in message
    # Another pipeline (another document) is not blocked by it.
    with PostgresStateStore(postgres_url, "other-pipeline").lock({}):
        pass

    assert holder.stdin is not None
    holder.stdin.close()  # the holder leaves its with-block
    assert read_line(holder) == "released"
    assert try_lock(store, timeout=5) < 5


def test_postgres_lock_of_a_killed_holder_is_free_within_seconds(
    postgres_url: str, holder: subprocess.Popen[str]
) -> None:
    store = PostgresStateStore(postgres_url, NAME)
    with pytest.raises(PipelineBusyError), store.lock({}):
        pass

    killed_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    waited = try_lock(store, timeout=10)
    elapsed = time.monotonic() - killed_at

    print(f"lock free {elapsed:.3f} s after kill -9 ({waited:.3f} s of polling)")
    assert elapsed < 5


def test_postgres_loads_and_saves_use_the_lock_connection(postgres_url: str) -> None:
    store = PostgresStateStore(postgres_url, NAME)
    with store.lock({"flow_run_id": RUN_ID}) as handle:
        handle.update({"batch": 4})
        store.save(sample_state())
        assert store.load() == sample_state()
        connection = psycopg2.connect(postgres_url)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            sessions = [row[0] for row in cursor.fetchall()]
        connection.close()
    # Only the lock's session: no short-lived connection was opened for the load and the save.
    info: dict[str, object] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "batch": 4,
        "flow_run_id": RUN_ID,
    }
    assert sessions == [application_name(info)]


def test_postgres_save_fails_when_the_lock_connection_is_lost(own_postgres: LocalPostgres) -> None:
    server = own_postgres
    server.start()
    server.create_database("retrain")
    url = server.url("retrain")
    store = PostgresStateStore(url, NAME)
    store.save(sample_state())
    newer = sample_state().with_batch(11, BatchRecord(status="completed", started_at=STARTED), "3")

    with store.lock({"flow_run_id": RUN_ID}):
        server.stop()
        with pytest.raises(StateError) as stopped:
            store.save(newer, what="the state of batch 11")
        server.start()
        # The server is back, but the lock went with the old connection: still no save.
        with pytest.raises(StateError) as restarted:
            store.save(newer, what="the state of batch 11")
        with pytest.raises(StateError, match="cannot load the state: connection lost"):
            store.load()

    prefix = f"{store.description}: cannot save the state of batch 11: "
    assert store.description == f"PostgreSQL state store {redact_url(url)} (document '{NAME}')"
    for excinfo in (stopped, restarted):
        text = str(excinfo.value)
        assert text.startswith(prefix + "connection lost ("), text
        assert server.password() not in text
    assert store.load() == sample_state()  # nothing was saved
    assert try_lock(store, timeout=5) < 5  # and the lock is free again
