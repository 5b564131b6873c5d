"""Prefect tasks that manage batches: read the state, choose the batch, record the outcome.

Thin wrappers over :mod:`retrain_pipeline.state` and the state store. The flow
passes the store whose lock it holds, so that (with PostgreSQL) the loads and saves go
through the lock's own connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain_pipeline import state as state_store
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import StateError
from retrain_pipeline.fileio import write_text_atomic
from retrain_pipeline.state import BatchRecord, PipelineState
from retrain_pipeline.state_stores import StateStore


@dataclass(frozen=True)
class BatchChoice:
    """The batch this run works on, or None with the reason there is nothing to do."""

    batch_number: int | None
    reason: str
    all_done: bool = False  # max_batches reached: nothing will ever be left to do


@task(name="choose-batch", cache_policy=NO_CACHE)
def choose_batch(
    settings: Settings, store: StateStore, requested: int | None, force: bool
) -> tuple[PipelineState, BatchChoice]:
    """Read the state and pick the batch (call it under the store's lock)."""
    state = store.load()
    return state, _choose(settings, state, requested, force)


def _choose(settings: Settings, state: PipelineState, requested: int | None, force: bool) -> BatchChoice:
    """The requested batch, or the next one; refuses a completed batch unless forced."""
    max_batches = settings.automation.max_batches
    if requested is None:
        number = state_store.next_batch_number(state)
        if number > max_batches:
            return BatchChoice(None, f"all {max_batches} batches are done (automation.max_batches)", True)
        return BatchChoice(number, f"next batch after {state.last_batch or 'none'}")
    if requested > max_batches:
        raise StateError(
            f"batch {requested} is beyond automation.max_batches={max_batches} "
            f"({settings.params_file or 'defaults'})"
        )
    state_store.check_may_run(state, requested, force=force)
    return BatchChoice(requested, "requested" + (" with --force" if force else ""))


@task(name="record-batch", cache_policy=NO_CACHE)
def record_batch(
    settings: Settings,
    store: StateStore,
    state: PipelineState,
    batch_number: int,
    record: BatchRecord,
    champion_version: str | None,
) -> PipelineState:
    """Write the batch's record into the state store atomically; returns the new state.

    A completed batch first gets ``metrics/batch_<N>.json`` and ``metrics/latest.json``.
    """
    record = state_store.next_record(state.record(batch_number), record)
    if record.status == "completed":
        _write_metrics(settings, batch_number, record)
    new_state = state.with_batch(batch_number, record, champion_version)
    store.save(new_state, what=f"the state of batch {batch_number}")
    get_run_logger().info("Recorded batch %d as %s in %s", batch_number, record.status, store.description)
    return new_state


@task(name="pause-schedule", cache_policy=NO_CACHE)
def pause_schedule(deployment_id: str) -> None:
    """Pause the deployment's schedule (``automation.pause_when_done``)."""
    with get_client(sync_client=True) as client:
        client.pause_deployment(deployment_id)
    get_run_logger().info(
        "All batches done: paused deployment %s (run setup_deployment again to resume)", deployment_id
    )


def _write_metrics(settings: Settings, batch_number: int, record: BatchRecord) -> None:
    """``metrics/batch_<N>.json`` and ``metrics/latest.json``: the record without status/error."""
    payload: dict[str, Any] = {"batch_number": batch_number, **record.model_dump(exclude={"status", "error"})}
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_text_atomic(settings.metrics_file(batch_number), text)
    write_text_atomic(settings.latest_metrics_file, text)
