"""``batch_state.json``, the pipeline's commit point: its schema, atomic load/save, batch selection.

A batch counts as completed only once its record is written here, and the file is always
replaced atomically, so after any crash it holds either the previous state or the new one.
:mod:`retrain_pipeline.state_stores` chooses where the state and the run lock live: these
files (the lock: :mod:`retrain_pipeline.run_lock`), or PostgreSQL (``stores.state_database_url``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retrain_pipeline.errors import StateError
from retrain_pipeline.fileio import write_text_atomic

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BatchStatus = Literal["completed", "rejected", "failed"]


def timestamp(moment: datetime) -> str:
    """``moment`` as the pipeline writes every time: ISO 8601 in UTC, to the second."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def utc_now() -> str:
    """The current time as the pipeline writes it (:func:`timestamp`)."""
    return timestamp(datetime.now(UTC))


#: :func:`file_stamp`'s format, for ``datetime.strptime``.
FILE_STAMP_FORMAT = "%Y%m%dT%H%M%S%z"


def file_stamp() -> str:
    """The current time for a file name (``20261202T214500+0000``): :func:`utc_now` without
    the separators that file names and sorting do not want."""
    return utc_now().replace(":", "").replace("-", "")


def timestamp_of_file_stamp(stamp: str) -> str:
    """The :func:`timestamp` of a :func:`file_stamp`."""
    return timestamp(datetime.strptime(stamp, FILE_STAMP_FORMAT))


class ColumnDriftRecord(BaseModel):
    """One drifted feature: the test that flagged it (:mod:`retrain_pipeline.drift`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    method: str  # ks, wasserstein, chi2 or jensenshannon
    score: float | None  # p-value (ks, chi2) or distance (wasserstein, jensenshannon)
    threshold: float | None


class DriftRecord(BaseModel):
    """How the batch differs from the data the champion was trained on, and how the champion
    scores on it. Absent from records written before monitoring existed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_drift: bool | None  # None: not checked (no champion yet, or too few rows)
    drift_share: float | None  # drifted columns / tested columns
    share_threshold: float
    columns_tested: int = Field(ge=0)
    drifted_columns: list[ColumnDriftRecord] = Field(default_factory=list)
    reference_batches: list[int] = Field(default_factory=list)
    reference_rows: int = Field(default=0, ge=0)
    current_rows: int = Field(default=0, ge=0)
    note: str | None = None  # why drift was not checked
    champion_version: str | None = None
    metric: str | None = None  # the primary metric
    champion_score_at_promotion: float | None = None
    champion_score_on_batch: float | None = None
    decay_tolerance: float | None = None
    decay: bool | None = None  # None: no champion, or it cannot score this batch


class BatchRecord(BaseModel):
    """What happened to one batch (its latest attempt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: BatchStatus
    started_at: str
    finished_at: str | None = None
    attempts: int = Field(default=1, ge=1)
    source: str | None = None
    rows: int | None = Field(default=None, ge=0)
    train_rows: int | None = Field(default=None, ge=0)
    holdout_rows: int | None = Field(default=None, ge=0)
    training_rows_total: int | None = Field(default=None, ge=0)
    metrics: dict[str, float | None] | None = None
    champion_metrics: dict[str, float | None] | None = None
    champion_version_before: str | None = None
    promoted: bool | None = None
    promotion_reason: str | None = None
    mlflow_run_id: str | None = None
    model_version: str | None = None
    data_md5: str | None = None
    model_md5: str | None = None
    prefect_flow_run_id: str | None = None
    error: str | None = None
    trained: bool | None = None  # False: accepted without training (monitoring.retrain_policy)
    skip_reason: str | None = None  # why it was not trained
    drift: DriftRecord | None = None
    # model.training: incremental (None for full training and older records): the champion
    # version the model continued from (None: trained from scratch), and the batches whose
    # train rows it learned in this run.
    continued_from: str | None = None
    learned_batches: list[int] | None = None


class Rollback(BaseModel):
    """An operator moved the champion back to an earlier version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: str
    by: str
    reason: str
    from_version: str | None
    to_version: str
    to_batch: int


class PipelineState(BaseModel):
    """The whole state file. ``processed_batches`` and ``last_batch`` derive from ``batches``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    processed_batches: list[int] = Field(default_factory=list)
    last_batch: int | None = None
    champion_version: str | None = None
    batches: dict[str, BatchRecord] = Field(default_factory=dict)
    rollbacks: list[Rollback] = Field(default_factory=list)

    @field_validator("batches")
    @classmethod
    def _keys_are_batch_numbers(cls, value: dict[str, BatchRecord]) -> dict[str, BatchRecord]:
        for key in value:
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"batch key {key!r} is not a positive integer")
        return value

    @model_validator(mode="after")
    def _derived_fields_agree(self) -> PipelineState:
        if self.processed_batches != _completed(self.batches):
            raise ValueError(
                f"processed_batches {self.processed_batches} does not match the completed "
                f"batches {_completed(self.batches)}"
            )
        if self.last_batch != _last_finished(self.batches):
            raise ValueError(
                f"last_batch {self.last_batch} does not match the batches recorded "
                f"(expected {_last_finished(self.batches)})"
            )
        return self

    def record(self, batch_number: int) -> BatchRecord | None:
        return self.batches.get(str(batch_number))

    def with_batch(
        self, batch_number: int, record: BatchRecord, champion_version: str | None
    ) -> PipelineState:
        """A new state with ``record`` for the batch and the given champion."""
        batches = {**self.batches, str(batch_number): record}
        batches = dict(sorted(batches.items(), key=lambda item: int(item[0])))
        return PipelineState(
            processed_batches=_completed(batches),
            last_batch=_last_finished(batches),
            champion_version=champion_version,
            batches=batches,
            rollbacks=self.rollbacks,
        )

    def with_rollback(self, rollback: Rollback) -> PipelineState:
        """A new state whose champion is the rollback's target, with the rollback recorded."""
        return self.model_copy(
            update={"champion_version": rollback.to_version, "rollbacks": [*self.rollbacks, rollback]}
        )

    def batch_of_version(self, version: str) -> int | None:
        """The completed batch whose model is the given registered version."""
        for key, record in self.batches.items():
            if record.status == "completed" and record.model_version == version:
                return int(key)
        return None

    def accepted_batches(self, up_to: int) -> list[int]:
        """Completed batches numbered ``<= up_to``, oldest first."""
        return [n for n in self.processed_batches if n <= up_to]


def _completed(batches: dict[str, BatchRecord]) -> list[int]:
    return sorted(int(k) for k, r in batches.items() if r.status == "completed")


def _last_finished(batches: dict[str, BatchRecord]) -> int | None:
    done = [int(k) for k, r in batches.items() if r.status in ("completed", "rejected")]
    return max(done) if done else None


def next_record(previous: BatchRecord | None, attempt: BatchRecord) -> BatchRecord:
    """The record to keep after an attempt at a batch that may have been tried before.

    A failed or rejected retrain (``--force``) never un-completes a batch: the completed
    record, its model and its data stay in use, and the attempt is noted in ``error``.
    """
    if previous is None:
        return attempt
    attempts = previous.attempts + 1
    if previous.status == "completed" and attempt.status != "completed":
        note = f"retrain attempt {attempts} {attempt.status} at {attempt.finished_at}: {attempt.error}"
        return previous.model_copy(update={"attempts": attempts, "error": note})
    return attempt.model_copy(update={"attempts": attempts})


# --------------------------------------------------------------------------- file I/O


def load_state(path: Path) -> PipelineState:
    """Read the state file; a missing file is an empty state, a bad one a StateError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PipelineState()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: cannot read state file: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "fix it or rebuild it from MLflow; it was left untouched"
        ) from exc
    return parse_state(raw, str(path))


def parse_state(raw: object, source: str, *, kind: str = "state file") -> PipelineState:
    """Validate a decoded state document (from the file or another store) into a PipelineState.

    Every store gives the same StateError messages, prefixed with ``source`` (the file, or
    the store's description); ``kind`` names what was read ("state file", "state document").
    """
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        raise StateError(
            f"{source}: unsupported schema_version {raw.get('schema_version')!r} "
            f"(this version reads {SCHEMA_VERSION}); it was left untouched"
        )
    try:
        return PipelineState.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise StateError(f"{source}: invalid {kind}: {problems}; it was left untouched") from exc


def save_state(path: Path, state: PipelineState) -> None:
    """Replace the state file atomically (temp file, fsync, os.replace)."""
    write_text_atomic(path, state.model_dump_json(indent=2) + "\n")


# --------------------------------------------------------------------------- batch selection


def next_batch_number(state: PipelineState) -> int:
    """The batch an automatic run takes: one past the last completed or rejected batch."""
    return (state.last_batch or 0) + 1


def check_may_run(state: PipelineState, batch_number: int, *, force: bool) -> None:
    """Refuse to redo a completed batch unless forced."""
    record = state.record(batch_number)
    if record is not None and record.status == "completed" and not force:
        raise StateError(
            f"batch {batch_number} is already completed (model version {record.model_version}); "
            "use --force to retrain it"
        )
