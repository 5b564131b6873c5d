"""Testing a task without the Prefect engine: call its function, ``task.fn(...)``.

No flow run, no API server: the task's body runs as a plain call. Tasks that log through
``get_run_logger()`` need a run context; ``prefect.logging.disable_run_logger()`` stands in
for it. These tests double as the examples of that pattern; the flow tests run the same tasks
through the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from prefect.logging import disable_run_logger

from retrain_pipeline import data
from retrain_pipeline.batch_manager import choose_batch
from retrain_pipeline.config import Settings
from retrain_pipeline.data_tasks import TrainingData, load_batch, validate_and_merge
from retrain_pipeline.errors import StateError
from retrain_pipeline.model_tasks import Champion, evaluate, train
from retrain_pipeline.params import load_settings
from retrain_pipeline.project import prepare_project
from retrain_pipeline.state import BatchRecord, PipelineState
from retrain_pipeline.state_stores import state_store

MakeProject = Callable[..., Path]


@pytest.fixture
def settings(make_project: MakeProject) -> Settings:
    settings = load_settings(make_project())
    prepare_project(settings)  # the raw demo data that the sliced source cuts batches from
    return settings


def _accept(
    settings: Settings, state: PipelineState, batch_number: int
) -> tuple[PipelineState, TrainingData]:
    """Load, validate and merge a batch with the tasks' functions; record it as completed."""
    batch = load_batch.fn(settings, batch_number)
    assert batch is not None
    training = validate_and_merge.fn(settings, state, batch)
    record = BatchRecord(status="completed", started_at="2026-12-02T00:00:00Z", rows=training.rows)
    return state.with_batch(batch_number, record, None), training


def test_the_data_tasks_run_as_plain_calls(settings: Settings) -> None:
    state, first = _accept(settings, PipelineState(), 1)
    assert first.accepted_batches == (1,) and first.rows == 50
    assert first.file == settings.processed_batch_file(1) and first.file.is_file()

    state, second = _accept(settings, state, 2)
    assert second.accepted_batches == (1, 2)
    assert len(second.parts.train_target) + len(second.parts.holdout_target) == 100

    assert load_batch.fn(settings, 1_000) is None  # the raw data has no batch 1000


def test_the_model_tasks_run_as_plain_calls_with_the_run_logger_disabled(settings: Settings) -> None:
    _, training = _accept(settings, PipelineState(), 1)
    model = train.fn(settings, training, None).model
    # A champion trained on other columns cannot score this holdout: the new model is promoted.
    other = training.parts.train_features.rename(columns=lambda c: f"other_{c}")
    stranger = train.fn(
        settings, replace(training, parts=replace(training.parts, train_features=other)), None
    ).model

    with disable_run_logger():  # evaluate logs through get_run_logger()
        evaluation = evaluate.fn(settings, model, Champion("3", stranger), training)

    assert evaluation.decision.promote
    assert "champion v3 cannot score" in evaluation.decision.reason
    assert evaluation.champion_problem
    assert set(evaluation.metrics) >= {settings.evaluation.primary_metric}


def test_choose_batch_reads_the_store_it_is_given(settings: Settings) -> None:
    store = state_store(settings)
    state, choice = choose_batch.fn(settings, store, None, False)
    assert state == PipelineState() and choice.batch_number == 1

    done = state.with_batch(1, BatchRecord(status="completed", started_at="2026-12-02T00:00:00Z"), None)
    store.save(done)
    with pytest.raises(StateError, match="batch 1 is already completed"):
        choose_batch.fn(settings, store, 1, False)
    assert choose_batch.fn(settings, store, 1, True)[1].batch_number == 1  # --force


def test_an_earlier_batch_with_other_columns_is_refused_as_a_changed_feature_set(settings: Settings) -> None:
    state, _ = _accept(settings, PipelineState(), 1)
    state, _ = _accept(settings, state, 2)
    earlier = settings.processed_batch_file(2)  # batch 1 fixes the schema; batch 2 drifts from it
    frame = pd.read_parquet(earlier).drop(columns=["mean_radius"])
    data.write_processed_batch(frame, earlier, {})
    batch = load_batch.fn(settings, 3)
    assert batch is not None

    with pytest.raises(StateError) as refused:
        validate_and_merge.fn(settings, state, batch)

    message = str(refused.value)
    assert message.startswith("accepted batch 2 has columns [")
    assert "the feature set changed between batches" in message
    assert not settings.processed_batch_file(3).exists()  # nothing written for the refused batch
