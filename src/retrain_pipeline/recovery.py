"""Rebuild ``batch_state.json`` from MLflow (and the quarantine folder) after it was lost or
corrupted. ``make rebuild-state`` runs it; the old file is kept as a backup, never deleted.

Completed batches come from the MLflow runs tagged ``state_committed`` (the tag is set right
after a batch is recorded in the state file); rejected batches from the ``.reason.txt``
files in the quarantine folder; the champion from the registry alias.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from retrain_pipeline.config import METRIC_NAMES, Settings
from retrain_pipeline.state import BatchRecord, PipelineState, timestamp, timestamp_of_file_stamp
from retrain_pipeline.tracking import (
    DATA_MD5_TAG,
    DECISION_TAG,
    FLOW_RUN_TAG,
    MODEL_MD5_TAG,
    SKIP_REASON_TAG,
    TRAINED_TAG,
    BatchRun,
)

_REASON_FILE = re.compile(r"^batch_(\d+)\.(\d{8}T\d{6}\+0000)\.reason\.txt$")  # quarantine_batch's names


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return timestamp(datetime.fromtimestamp(ms / 1000, UTC))


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def record_from_run(run: BatchRun, attempts: int) -> BatchRecord:
    """The completed record of a batch as its MLflow run describes it (the drift section stays
    in the run's ``drift_report.json``)."""
    committed = BatchRecord(
        status="completed",
        started_at=_iso(run.start_time_ms) or "",
        finished_at=_iso(run.end_time_ms),
        attempts=attempts,
        rows=_int(run.params.get("batch_rows")),
        training_rows_total=_int(run.params.get("training_rows_total")),
        mlflow_run_id=run.run_id,
        data_md5=run.tags.get(DATA_MD5_TAG),
        prefect_flow_run_id=run.tags.get(FLOW_RUN_TAG),
    )
    if run.tags.get(TRAINED_TAG) == "false":  # accepted without training (monitoring)
        return committed.model_copy(update={"trained": False, "skip_reason": run.tags.get(SKIP_REASON_TAG)})
    champion: dict[str, float | None] = {
        name: run.metrics[f"champion_{name}"] for name in METRIC_NAMES if f"champion_{name}" in run.metrics
    }
    promoted = run.metrics.get("promoted")
    return committed.model_copy(
        update={
            "train_rows": _int(run.params.get("train_rows")),
            "holdout_rows": _int(run.params.get("holdout_rows")),
            "metrics": {name: run.metrics.get(name) for name in METRIC_NAMES},
            "champion_metrics": champion or None,
            "promoted": None if promoted is None else promoted == 1.0,
            "promotion_reason": run.tags.get(DECISION_TAG),
            "model_version": run.model_version,
            "model_md5": run.tags.get(MODEL_MD5_TAG),
        }
    )


def rejected_from_quarantine(folder: Path) -> dict[int, BatchRecord]:
    """The latest rejection of each batch, from ``batch_<N>.<stamp>.reason.txt`` files."""
    latest: dict[int, tuple[str, Path]] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _REASON_FILE.match(path.name)
            if match:
                number, stamp = int(match.group(1)), match.group(2)
                if number not in latest or stamp > latest[number][0]:
                    latest[number] = (stamp, path)
    records = {}
    for number, (stamp, path) in latest.items():
        when = timestamp_of_file_stamp(stamp)
        reason = path.read_text(encoding="utf-8", errors="replace").strip()
        records[number] = BatchRecord(status="rejected", started_at=when, finished_at=when, error=reason)
    return records


def rebuild_state(
    runs: list[BatchRun], rejected: dict[int, BatchRecord], champion_version: str | None
) -> PipelineState:
    """A consistent state: the latest committed run per batch, then rejections of other batches."""
    per_batch: dict[int, list[BatchRun]] = defaultdict(list)
    for run in runs:
        per_batch[run.batch_number].append(run)
    state = PipelineState()
    for number in sorted(per_batch):
        attempts = per_batch[number]
        latest = max(attempts, key=lambda r: r.start_time_ms)
        state = state.with_batch(number, record_from_run(latest, len(attempts)), champion_version)
    for number, record in sorted(rejected.items()):
        if number not in per_batch:
            state = state.with_batch(number, record, champion_version)
    return state.model_copy(update={"champion_version": champion_version})


def rebuild_state_store(settings: Settings) -> str:
    """Rebuild the state in its store under the store's lock (the old state is kept as a
    backup); returns a one-line summary."""
    from retrain_pipeline import tracking
    from retrain_pipeline.state_stores import state_store

    store = state_store(settings)
    with store.lock({"flow_run_id": "rebuild-state"}):
        tracking.connect(settings.mlflow)
        runs = tracking.committed_runs(settings.mlflow, settings.project_id)
        rejected = rejected_from_quarantine(settings.data.quarantine_dir)
        state = rebuild_state(runs, rejected, tracking.champion_version(settings.mlflow))
        backup = store.backup()
        store.save(state, what="the rebuilt state")
    rejected_numbers = [int(k) for k, r in state.batches.items() if r.status == "rejected"]
    return (
        f"Rebuilt {store.description} from {len(runs)} committed MLflow run(s): "
        f"completed {state.processed_batches}, rejected {rejected_numbers}, champion {state.champion_version}"
        + (f"; the previous state is kept as {backup}" if backup else "")
    )
