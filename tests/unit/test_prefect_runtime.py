"""Prefect run-time helpers in retrain_pipeline.prefect_runtime."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prefect.settings import get_current_settings

from retrain_pipeline.errors import DataValidationError
from retrain_pipeline.prefect_runtime import (
    EPHEMERAL_STARTUP_TIMEOUT_S,
    HEARTBEAT_ENV,
    STARTUP_TIMEOUT_ENV,
    DropPipelineTracebacks,
    one_off_run_settings,
    prefect_api_unreachable,
)


def test_one_off_runs_turn_prefect_heartbeats_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    before = get_current_settings().flows.heartbeat_frequency
    with one_off_run_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before


def test_a_heartbeat_frequency_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "60")
    with one_off_run_settings():
        assert get_current_settings().flows.heartbeat_frequency == 60


def test_cli_runs_use_the_project_prefect_home_and_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", STARTUP_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    with one_off_run_settings(tmp_path / ".prefect", "http://127.0.0.1:4999/api"):
        current = get_current_settings()
        assert current.home == tmp_path / ".prefect"
        assert current.api.url == "http://127.0.0.1:4999/api"
        assert current.server.analytics_enabled is False
        assert current.server.ephemeral.startup_timeout_seconds == EPHEMERAL_STARTUP_TIMEOUT_S
        # The temporary API server is a subprocess: it gets the same home through its environment.
        exported = current.to_environment_variables(exclude_unset=True)
        assert exported["PREFECT_HOME"] == str(tmp_path / ".prefect")
    assert get_current_settings().home != tmp_path / ".prefect"


def test_what_the_user_sets_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    monkeypatch.setenv(STARTUP_TIMEOUT_ENV, "300")
    with one_off_run_settings(tmp_path / ".prefect", None):
        current = get_current_settings()
        assert current.home == tmp_path / "mine"
        assert current.server.ephemeral.startup_timeout_seconds == 300


def test_an_unreachable_temporary_api_gets_one_line_naming_the_setting() -> None:
    with one_off_run_settings():
        message = prefect_api_unreachable(
            RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server. stdout: x")
        )
    assert message is not None and "\n" not in message
    assert STARTUP_TIMEOUT_ENV in message and f"within {EPHEMERAL_STARTUP_TIMEOUT_S} s" in message
    assert prefect_api_unreachable(RuntimeError("something else")) is None
    assert prefect_api_unreachable(ValueError("Timed out while attempting to connect")) is None


def test_pipeline_errors_lose_their_traceback_others_keep_it() -> None:
    def record(exc: Exception) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, (type(exc), exc, None))

    expected = record(DataValidationError(3, "batch_3.csv", "bad"))
    unexpected = record(RuntimeError("boom"))
    assert DropPipelineTracebacks().filter(expected) and expected.exc_info is None
    assert DropPipelineTracebacks().filter(unexpected) and unexpected.exc_info is not None


def test_the_pipeline_error_behind_a_prefect_api_failure_is_found() -> None:
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from retrain_pipeline.errors import StateError
    from retrain_pipeline.prefect_runtime import pipeline_error_behind, prefect_api_failure

    request = httpx.Request("POST", "http://127.0.0.1:4300/api/flow_runs/x/set_state")
    response = httpx.Response(500, request=request)
    try:
        try:
            raise StateError("PostgreSQL state store postgresql://u:***@h/db: connection lost")
        except StateError:
            raise PrefectHTTPStatusError("500", request=request, response=response) from None
    except PrefectHTTPStatusError as exc:
        api_error = exc
    # `from None` hides the cause in tracebacks but keeps the context: still found.
    assert str(pipeline_error_behind(api_error)).startswith("PostgreSQL state store")
    assert prefect_api_failure(api_error) == (
        "Prefect API POST http://127.0.0.1:4300/api/flow_runs/x/set_state answered 500"
    )
    assert pipeline_error_behind(ValueError("plain")) is None
    assert prefect_api_failure(ValueError("plain")) is None
