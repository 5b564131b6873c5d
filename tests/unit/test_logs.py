"""Prefect run-time helpers in retrain_pipeline.logs."""

from __future__ import annotations

import logging

import pytest
from prefect.settings import get_current_settings

from retrain_pipeline.errors import DataValidationError
from retrain_pipeline.logs import HEARTBEAT_ENV, DropPipelineTracebacks, one_off_run_settings


def test_one_off_runs_turn_prefect_heartbeats_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    before = get_current_settings().flows.heartbeat_frequency
    with one_off_run_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before


def test_a_heartbeat_frequency_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "60")
    before = get_current_settings().flows.heartbeat_frequency
    assert before is not None  # Prefect's default (180 s) or the user's profile
    with one_off_run_settings():
        assert get_current_settings().flows.heartbeat_frequency == before


def test_pipeline_errors_lose_their_traceback_others_keep_it() -> None:
    def record(exc: Exception) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, (type(exc), exc, None))

    expected = record(DataValidationError(3, "batch_3.csv", "bad"))
    unexpected = record(RuntimeError("boom"))
    assert DropPipelineTracebacks().filter(expected) and expected.exc_info is None
    assert DropPipelineTracebacks().filter(unexpected) and unexpected.exc_info is not None
