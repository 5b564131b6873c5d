"""Unit tests for model_tasks._local_champion: models/champion.joblib is used only when its md5 is
the one the state records for the champion's version."""

from __future__ import annotations

import logging
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from retrain_pipeline import model_tasks
from retrain_pipeline.config import Settings
from retrain_pipeline.fileio import md5_file
from retrain_pipeline.model_tasks import _local_champion
from retrain_pipeline.params import settings_from_mapping
from retrain_pipeline.state import BatchRecord, PipelineState

STARTED = "2025-01-01T00:00:00+00:00"
OTHER_MD5 = "0" * 32


@pytest.fixture(autouse=True)
def _no_prefect_run_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_local_champion`` logs with Prefect's run logger, which exists only inside a run."""
    monkeypatch.setattr(model_tasks, "get_run_logger", lambda: logging.getLogger("test"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_from_mapping({}, tmp_path)


@pytest.fixture
def features() -> np.ndarray:
    return make_classification(n_samples=80, n_features=5, random_state=0)[0]


@pytest.fixture
def champion(settings: Settings, features: np.ndarray) -> LogisticRegression:
    """A small fitted model, dumped to the settings' champion file."""
    target = (features[:, 0] + features[:, 1] > 0).astype(int)
    fitted = LogisticRegression().fit(features, target)
    settings.champion_model_file.parent.mkdir(parents=True)
    joblib.dump(fitted, settings.champion_model_file)
    return fitted


def state_with(*records: tuple[str, str | None]) -> PipelineState:
    """A state with one completed batch per ``(model_version, model_md5)``, numbered from 1."""
    state = PipelineState()
    for number, (version, md5) in enumerate(records, start=1):
        record = BatchRecord(status="completed", started_at=STARTED, model_version=version, model_md5=md5)
        state = state.with_batch(number, record, champion_version=version)
    return state


def test_the_file_with_the_recorded_md5_is_loaded(
    settings: Settings,
    champion: LogisticRegression,
    features: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = state_with(("3", md5_file(settings.champion_model_file)))

    with caplog.at_level(logging.DEBUG, logger="test"):
        loaded = _local_champion(settings, state, "3")

    assert loaded is not None
    assert loaded is not champion
    np.testing.assert_array_equal(loaded.predict(features), champion.predict(features))
    np.testing.assert_array_equal(loaded.predict_proba(features), champion.predict_proba(features))
    assert f"Champion v3 loaded from {settings.champion_model_file}" in caplog.text


def test_records_of_other_versions_and_without_md5_do_not_matter(
    settings: Settings, champion: LogisticRegression, features: np.ndarray
) -> None:
    md5 = md5_file(settings.champion_model_file)
    state = state_with(("1", OTHER_MD5), ("3", None), ("3", md5), ("3", md5), ("4", OTHER_MD5))

    loaded = _local_champion(settings, state, "3")

    assert loaded is not None
    np.testing.assert_array_equal(loaded.predict(features), champion.predict(features))


def test_another_md5_is_not_loaded(settings: Settings, champion: LogisticRegression) -> None:
    assert _local_champion(settings, state_with(("3", OTHER_MD5)), "3") is None


def test_a_file_changed_after_its_md5_was_recorded_is_not_loaded(
    settings: Settings, champion: LogisticRegression
) -> None:
    state = state_with(("3", md5_file(settings.champion_model_file)))
    with settings.champion_model_file.open("ab") as handle:
        handle.write(b"\0")

    assert _local_champion(settings, state, "3") is None


def test_a_missing_file_is_not_loaded(settings: Settings, champion: LogisticRegression) -> None:
    state = state_with(("3", md5_file(settings.champion_model_file)))
    settings.champion_model_file.unlink()

    assert _local_champion(settings, state, "3") is None


def test_a_version_with_no_record_is_not_loaded(settings: Settings, champion: LogisticRegression) -> None:
    state = state_with(("3", md5_file(settings.champion_model_file)))

    assert _local_champion(settings, state, "4") is None


def test_a_version_recorded_without_md5_is_not_loaded(
    settings: Settings, champion: LogisticRegression
) -> None:
    assert _local_champion(settings, state_with(("3", None)), "3") is None


def test_the_file_of_another_version_is_not_loaded(settings: Settings, champion: LogisticRegression) -> None:
    """After a rollback to v2 the file is still v3's: v2 comes from the registry."""
    state = state_with(("2", OTHER_MD5), ("3", md5_file(settings.champion_model_file)))

    assert _local_champion(settings, state, "2") is None


def test_a_version_recorded_with_two_md5s_is_not_loaded(
    settings: Settings, champion: LogisticRegression
) -> None:
    md5 = md5_file(settings.champion_model_file)
    for records in ((("3", md5), ("3", OTHER_MD5)), (("3", OTHER_MD5), ("3", md5))):
        assert _local_champion(settings, state_with(*records), "3") is None
