"""Unit tests for retrain_pipeline.state: records, derived fields, load/save, the run lock."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from retrain_pipeline.errors import PipelineBusyError, StateError
from retrain_pipeline.run_lock import describe_holder, pipeline_lock, update_holder
from retrain_pipeline.state import (
    BatchRecord,
    PipelineState,
    check_may_run,
    file_stamp,
    load_state,
    next_batch_number,
    next_record,
    save_state,
    timestamp,
    timestamp_of_file_stamp,
    utc_now,
)

STARTED = "2025-01-01T00:00:00+00:00"


def record(status: str, **fields) -> BatchRecord:
    return BatchRecord(status=status, started_at=STARTED, **fields)


def state_of(*batches: tuple[int, str], champion: str | None = None) -> PipelineState:
    state = PipelineState()
    for number, status in batches:
        state = state.with_batch(number, record(status, model_version=str(number)), champion)
    return state


# --------------------------------------------------------------------------- records and derived fields


def test_empty_state() -> None:
    state = PipelineState()
    assert (state.schema_version, state.processed_batches, state.last_batch) == (1, [], None)
    assert state.champion_version is None
    assert state.batches == {}
    assert state.record(1) is None
    assert next_batch_number(state) == 1


@pytest.mark.parametrize(
    ("batches", "processed", "last", "next_batch"),
    [
        pytest.param([(1, "completed")], [1], 1, 2, id="completed"),
        pytest.param([(1, "rejected")], [], 1, 2, id="rejected-counts-for-last"),
        pytest.param([(1, "failed")], [], None, 1, id="failed-is-retried"),
        pytest.param([(1, "completed"), (2, "rejected")], [1], 2, 3, id="completed-then-rejected"),
        pytest.param([(1, "completed"), (2, "failed")], [1], 1, 2, id="completed-then-failed"),
        pytest.param(
            [(1, "completed"), (2, "failed"), (2, "completed")], [1, 2], 2, 3, id="failed-then-retried"
        ),
        pytest.param([(3, "completed"), (1, "completed")], [1, 3], 3, 4, id="out-of-order"),
        pytest.param(
            [(2, "completed"), (10, "completed"), (9, "rejected")], [2, 10], 10, 11, id="numeric-order"
        ),
        pytest.param([(1, "completed"), (1, "completed")], [1], 1, 2, id="forced-rerun"),
    ],
)
def test_with_batch_derives_fields(
    batches: list[tuple[int, str]], processed: list[int], last: int | None, next_batch: int
) -> None:
    state = state_of(*batches)

    assert state.processed_batches == processed
    assert state.last_batch == last
    assert next_batch_number(state) == next_batch


def test_with_batch_keeps_records_sorted_by_number() -> None:
    state = state_of((10, "completed"), (2, "completed"), (9, "failed"))
    assert list(state.batches) == ["2", "9", "10"]


def test_with_batch_returns_a_new_state() -> None:
    before = state_of((1, "completed"), champion="1")
    after = before.with_batch(2, record("completed"), "2")

    assert before.processed_batches == [1]
    assert before.champion_version == "1"
    assert "2" not in before.batches
    assert after.champion_version == "2"
    assert after.record(2) == record("completed")


def test_with_batch_replaces_the_record() -> None:
    state = state_of((1, "failed")).with_batch(1, record("completed", attempts=2), None)
    assert state.record(1).status == "completed"
    assert state.record(1).attempts == 2
    assert len(state.batches) == 1


def test_accepted_batches() -> None:
    state = state_of((1, "completed"), (2, "rejected"), (3, "completed"), (4, "completed"), (5, "failed"))
    assert state.accepted_batches(up_to=3) == [1, 3]
    assert state.accepted_batches(up_to=10) == [1, 3, 4]
    assert state.accepted_batches(up_to=0) == []


@pytest.mark.parametrize(
    ("status", "force", "allowed"),
    [
        ("completed", False, False),
        ("completed", True, True),
        ("rejected", False, True),
        ("failed", False, True),
        (None, False, True),
    ],
)
def test_check_may_run(status: str | None, force: bool, allowed: bool) -> None:
    state = state_of((4, status)) if status else PipelineState()
    if allowed:
        assert check_may_run(state, 4, force=force) is None
    else:
        with pytest.raises(
            StateError, match=r"batch 4 is already completed \(model version 4\); use --force"
        ):
            check_may_run(state, 4, force=force)


def test_records_and_state_are_frozen() -> None:
    state = state_of((1, "completed"))
    with pytest.raises(ValidationError, match="frozen"):
        state.last_batch = 5
    with pytest.raises(ValidationError, match="frozen"):
        state.record(1).status = "failed"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"status": "done"}, "status"),
        ({"attempts": 0}, "attempts"),
        ({"rows": -1}, "rows"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_batch_record_validation(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BatchRecord(**{"status": "completed", "started_at": STARTED, **fields})


def test_utc_now_is_iso_utc_seconds() -> None:
    assert utc_now().endswith("+00:00")
    assert len(utc_now()) == len("2025-01-01T00:00:00+00:00")


def test_times_have_one_format_in_the_state_and_one_in_file_names() -> None:
    paris = datetime(2026, 12, 2, 22, 45, 7, 900, tzinfo=timezone(timedelta(hours=1)))
    assert timestamp(paris) == "2026-12-02T21:45:07+00:00"
    stamp = file_stamp()
    assert re.fullmatch(r"\d{8}T\d{6}\+0000", stamp)
    assert timestamp_of_file_stamp("20261202T214507+0000") == "2026-12-02T21:45:07+00:00"
    assert timestamp_of_file_stamp(stamp) <= utc_now()


# --------------------------------------------------------------------------- load and save


def test_load_missing_file_is_empty_state_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "batch_state.json"
    assert load_state(path) == PipelineState()
    assert list(tmp_path.iterdir()) == []


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    state = (
        PipelineState()
        .with_batch(
            1,
            record(
                "completed",
                finished_at=STARTED,
                rows=50,
                train_rows=40,
                holdout_rows=10,
                metrics={"f1": 0.9, "roc_auc": None},
                promoted=True,
                model_version="1",
            ),
            "1",
        )
        .with_batch(2, record("rejected", error="batch 2 rejected: x: y"), "1")
        .with_batch(3, record("failed", attempts=2, error="boom"), "1")
    )
    path = tmp_path / "sub" / "batch_state.json"

    save_state(path, state)

    assert load_state(path) == state
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert json.loads(path.read_text(encoding="utf-8"))["schema_version"] == 1
    assert os.listdir(path.parent) == ["batch_state.json"]


def test_save_replaces_the_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "batch_state.json"
    save_state(path, state_of((1, "completed")))
    save_state(path, state_of((1, "completed"), (2, "completed")))
    assert load_state(path).processed_batches == [1, 2]
    assert os.listdir(tmp_path) == ["batch_state.json"]


def valid_state_json(**overrides) -> str:
    raw = json.loads(state_of((1, "completed"), (2, "rejected")).model_dump_json())
    raw.update(overrides)
    return json.dumps(raw)


BAD_STATE_FILES = [
    pytest.param(b"{", "not valid JSON (Expecting property name", id="truncated-json"),
    pytest.param(b"", "not valid JSON", id="empty-file"),
    pytest.param(b"\xff\xfe{}", "cannot read state file", id="not-utf8"),
    pytest.param(
        valid_state_json(schema_version=2).encode(), "unsupported schema_version 2", id="schema-version-2"
    ),
    pytest.param(b"{}", "unsupported schema_version None", id="no-schema-version"),
    pytest.param(b"[1, 2]", "invalid state file: (top level): Input should be a valid dictionary", id="list"),
    pytest.param(valid_state_json(processed_batches="1").encode(), "processed_batches", id="wrong-type-list"),
    pytest.param(valid_state_json(last_batch="two").encode(), "last_batch", id="wrong-type-int"),
    pytest.param(
        valid_state_json(batches={"1": {"status": "done", "started_at": STARTED}}).encode(),
        "batches.1.status",
        id="bad-status",
    ),
    pytest.param(
        valid_state_json(batches={"x": {"status": "completed", "started_at": STARTED}}).encode(),
        "batch key 'x' is not a positive integer",
        id="bad-batch-key",
    ),
    pytest.param(valid_state_json(extra=1).encode(), "extra", id="unknown-key"),
    pytest.param(
        valid_state_json(processed_batches=[1, 2]).encode(),
        "processed_batches [1, 2] does not match the completed batches [1]",
        id="processed-inconsistent",
    ),
    pytest.param(
        valid_state_json(last_batch=1).encode(),
        "last_batch 1 does not match the batches recorded (expected 2)",
        id="last-batch-inconsistent",
    ),
]


@pytest.mark.parametrize(("content", "message"), BAD_STATE_FILES)
def test_bad_state_file_is_refused_and_left_untouched(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "batch_state.json"
    path.write_bytes(content)
    mtime = path.stat().st_mtime_ns

    with pytest.raises(StateError) as excinfo:
        load_state(path)

    text = str(excinfo.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime
    assert os.listdir(tmp_path) == ["batch_state.json"]


def test_state_path_that_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "batch_state.json"
    path.mkdir()
    with pytest.raises(StateError, match="cannot read state file"):
        load_state(path)


# --------------------------------------------------------------------------- run lock

# Takes the lock, names batch 7 as its work, says "ready" and holds the lock until killed or stdin closes.
HOLDER_SCRIPT = """
import sys
from pathlib import Path
from retrain_pipeline.run_lock import pipeline_lock, update_holder
with pipeline_lock(Path(sys.argv[1]), {"flow_run_id": "run-abc"}) as holder:
    update_holder(holder, {"batch": 7})
    print("ready", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""

# Tries the lock once; exit 0 when acquired, 3 with the message when busy.
TRY_SCRIPT = """
import sys
from pathlib import Path
from retrain_pipeline.errors import PipelineBusyError
from retrain_pipeline.run_lock import pipeline_lock
try:
    with pipeline_lock(Path(sys.argv[1]), {}):
        pass
except PipelineBusyError as exc:
    print(exc, flush=True)
    sys.exit(3)
"""


def read_line(process: subprocess.Popen, timeout: float = 30.0) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the helper process did not answer in time"
    return process.stdout.readline().strip()


@pytest.fixture
def lock_holder(tmp_path: Path):
    """A separate process holding the pipeline lock on ``tmp_path/state.lock``."""
    lock_file = tmp_path / "state.lock"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(process) == "ready"
        yield lock_file, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdin, process.stdout):
            stream.close()


def try_lock_in_subprocess(lock_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", TRY_SCRIPT, str(lock_file)], capture_output=True, text=True, timeout=60
    )


def test_lock_writes_holder_info_and_cleans_up(tmp_path: Path) -> None:
    lock_file = tmp_path / "run" / "state.lock"

    with pipeline_lock(lock_file, {"flow_run_id": "run-1"}) as holder:
        assert holder == tmp_path / "run" / "state.lock.holder.json"
        info = json.loads(holder.read_text(encoding="utf-8"))
        assert info["pid"] == os.getpid()
        assert info["flow_run_id"] == "run-1"
        assert {"host", "since"} <= set(info)
        update_holder(holder, {"batch": 3})
        assert json.loads(holder.read_text(encoding="utf-8"))["batch"] == 3
        assert describe_holder(holder) == f"pid {os.getpid()}, flow run run-1, batch 3, since {info['since']}"

    assert not holder.exists()


def test_second_acquisition_in_another_process_is_refused(lock_holder) -> None:
    lock_file, process = lock_holder

    with (
        pytest.raises(PipelineBusyError, match="another run is in progress") as excinfo,
        pipeline_lock(lock_file, {}),
    ):
        pytest.fail("the lock must not be acquired twice")

    message = str(excinfo.value)
    assert f"pid {process.pid}" in message
    assert "batch 7" in message
    assert "flow run run-abc" in message
    # the refused run must not disturb the holder's sidecar file
    holder = json.loads(lock_file.with_name("state.lock.holder.json").read_text(encoding="utf-8"))
    assert (holder["pid"], holder["batch"]) == (process.pid, 7)


def test_lock_is_released_when_the_holder_leaves_the_context(lock_holder) -> None:
    lock_file, process = lock_holder
    process.stdin.close()  # the holder leaves its with-block
    assert read_line(process) == "released"
    process.wait(timeout=30)

    with pipeline_lock(lock_file, {}) as holder:
        assert json.loads(holder.read_text(encoding="utf-8"))["pid"] == os.getpid()


def test_lock_released_in_this_process_is_free_for_another(tmp_path: Path) -> None:
    lock_file = tmp_path / "state.lock"
    with pipeline_lock(lock_file, {}):
        busy = try_lock_in_subprocess(lock_file)
    free = try_lock_in_subprocess(lock_file)

    assert busy.returncode == 3, busy.stderr
    assert f"pid {os.getpid()}" in busy.stdout
    assert free.returncode == 0, free.stdout + free.stderr


def test_lock_is_released_after_an_exception(tmp_path: Path) -> None:
    lock_file = tmp_path / "state.lock"
    with pytest.raises(RuntimeError), pipeline_lock(lock_file, {}):
        raise RuntimeError("the run failed")
    assert try_lock_in_subprocess(lock_file).returncode == 0


def test_lock_of_a_killed_process_can_be_taken(lock_holder) -> None:
    lock_file, process = lock_holder
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    deadline = time.monotonic() + 10
    while True:  # the kernel drops the flock with the process; no stale lock remains
        try:
            with pipeline_lock(lock_file, {"flow_run_id": "next"}) as holder:
                info = json.loads(holder.read_text(encoding="utf-8"))
            break
        except PipelineBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

    assert info["pid"] == os.getpid()
    assert info["flow_run_id"] == "next"


def test_stale_holder_info_of_a_killed_run_is_not_inherited(tmp_path: Path) -> None:
    lock_file = tmp_path / "state.lock"
    sidecar = tmp_path / "state.lock.holder.json"
    sidecar.write_text(json.dumps({"pid": 999999, "flow_run_id": "dead-run", "batch": 7}), encoding="utf-8")

    with pipeline_lock(lock_file, {"flow_run_id": "new-run"}) as holder:
        info = json.loads(holder.read_text(encoding="utf-8"))

    assert info["flow_run_id"] == "new-run"
    assert "batch" not in info


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "holder unknown (it is starting or finishing)"),
        ("not json", "holder unknown (it is starting or finishing)"),
        ("[1, 2]", "holder unknown (it is starting or finishing)"),
        ('{"pid": 12, "since": "t"}', "pid 12, since t"),
        ('{"pid": 12, "batch": 0, "since": "t"}', "pid 12, batch 0, since t"),
        ('{"pid": 12, "flow_run_id": "f", "batch": 3, "since": "t"}', "pid 12, flow run f, batch 3, since t"),
    ],
)
def test_describe_holder(tmp_path: Path, content: str | None, expected: str) -> None:
    info_file = tmp_path / "x.lock.holder.json"
    if content is not None:
        info_file.write_text(content, encoding="utf-8")
    assert describe_holder(info_file) == expected


def test_update_holder_merges(tmp_path: Path) -> None:
    info_file = tmp_path / "x.lock.holder.json"
    update_holder(info_file, {"pid": 1, "batch": 2})
    update_holder(info_file, {"batch": 3})
    assert json.loads(info_file.read_text(encoding="utf-8")) == {"pid": 1, "batch": 3}


# --------------------------------------------------------------------------- next_record


def _attempt(status: str, **extra: object) -> BatchRecord:
    return BatchRecord(status=status, started_at="s", finished_at="f", **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("new_status", ["failed", "rejected"])
def test_a_failed_retrain_never_uncompletes_a_batch(new_status: str) -> None:
    completed = _attempt("completed", model_version="4", data_md5="abc")

    kept = next_record(completed, _attempt(new_status, error="boom"))

    assert kept.status == "completed"
    assert kept.model_version == "4" and kept.data_md5 == "abc"
    assert kept.attempts == 2
    assert kept.error == f"retrain attempt 2 {new_status} at f: boom"


@pytest.mark.parametrize(
    ("previous", "new_status"),
    [("completed", "completed"), ("failed", "completed"), ("failed", "failed"), ("rejected", "completed")],
)
def test_other_attempts_replace_the_record_and_count(previous: str, new_status: str) -> None:
    result = next_record(_attempt(previous, attempts=3), _attempt(new_status, model_version="9"))
    assert result.status == new_status
    assert result.model_version == "9"
    assert result.attempts == 4


def test_first_attempt_is_kept_as_is() -> None:
    attempt = _attempt("failed", error="x")
    assert next_record(None, attempt) == attempt
