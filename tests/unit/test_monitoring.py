"""Unit tests for retrain_pipeline.monitoring: reference batches, the champion's score and
decay, the drift record and the retraining decision; the monitoring params."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain_pipeline import drift, monitoring
from retrain_pipeline.config import MonitoringConfig
from retrain_pipeline.errors import ConfigError
from retrain_pipeline.params import settings_from_mapping
from retrain_pipeline.reporting import drift_cell, drift_summary
from retrain_pipeline.state import BatchRecord, PipelineState

STAMP = "2026-01-01T00:00:00+00:00"


def completed(version: str | None, f1: float | None = 0.9, trained: bool | None = True) -> BatchRecord:
    return BatchRecord(
        status="completed",
        started_at=STAMP,
        model_version=version,
        metrics=None if f1 is None else {"f1": f1},
        trained=trained,
    )


def state_of(records: dict[int, BatchRecord], champion: str | None) -> PipelineState:
    state = PipelineState()
    for number, record in records.items():
        state = state.with_batch(number, record, champion)
    return state


def test_reference_is_what_the_champion_was_trained_on() -> None:
    state = state_of(
        {1: completed("1"), 2: completed(None, None, trained=False), 3: completed("2"), 4: completed("3")},
        champion="2",
    )
    assert monitoring.reference_batches(state, None) == [1, 2, 3]  # batch 2 was accepted untrained
    assert monitoring.reference_batches(state, 2) == [2, 3]  # the same window rule as training
    assert monitoring.reference_batches(state_of({1: completed("1")}, None), None) == []


class Constant:
    """A fitted classifier stand-in that predicts one label."""

    classes_ = np.array([0, 1])

    def __init__(self, label: int) -> None:
        self.label = label

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(features), 2))
        out[:, self.label] = 1.0
        return out


def test_champion_score_on_the_batch_and_at_promotion() -> None:
    state = state_of({1: completed("1", f1=0.8)}, champion="1")
    batch = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "target": [1, 1, 0, 1]})
    score = monitoring.champion_score(
        Constant(1), "1", state, batch, features=["x"], target_column="target", positive_label=1, metric="f1"
    )
    assert score.at_promotion == 0.8
    assert score.on_batch == pytest.approx(2 * 0.75 / 1.75)  # precision 0.75, recall 1
    broken = monitoring.champion_score(
        Constant(1), "1", state, batch, features=["y"], target_column="target", positive_label=1, metric="f1"
    )
    assert broken.on_batch is None and broken.problem


def test_decay_is_a_drop_larger_than_the_tolerance() -> None:
    config = MonitoringConfig(decay_tolerance=0.05)

    def decay(at: float, on: float) -> bool | None:
        score = monitoring.ChampionScore("1", "f1", at, on)
        return monitoring.drift_record(config, None, [1], score).decay

    assert decay(0.90, 0.86) is False
    assert decay(0.90, 0.85) is False  # exactly the tolerance: not larger
    assert decay(0.90, 0.84) is True
    assert (
        monitoring.drift_record(config, None, [1], monitoring.ChampionScore("1", "f1", 0.9, None)).decay
        is None
    )


def report_for(shift: float) -> drift.DriftReport:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({f"c{i}": rng.normal(size=300) for i in range(4)})
    current = pd.DataFrame({f"c{i}": rng.normal(size=300) + (shift if i < 3 else 0) for i in range(4)})
    return drift.detect_drift(reference, current, list(reference.columns))


def test_drift_record_keeps_only_the_drifted_columns_and_the_figures() -> None:
    config = MonitoringConfig()
    report = report_for(shift=2.0)
    score = monitoring.ChampionScore("3", "f1", 0.9, 0.7)
    # A reference sampled before the tests: the report counts its rows before sampling.
    record = monitoring.drift_record(
        config, dataclasses.replace(report, reference_rows=123_456), [1, 2], score
    )
    assert record.dataset_drift is True and record.drift_share == 0.75 and record.columns_tested == 4
    assert [c.column for c in record.drifted_columns] == ["c0", "c1", "c2"]
    assert all(c.method == "ks" for c in record.drifted_columns)
    assert record.reference_rows == 123_456 and record.current_rows == 300
    assert record.decay is True and record.champion_version == "3"
    metrics = monitoring.mlflow_metrics(record)
    assert metrics == {
        "drift_share": 0.75,
        "dataset_drift": 1.0,
        "drifted_columns": 3.0,
        "champion_score_on_batch": 0.7,
        "champion_decay": 1.0,
    }
    document = monitoring.report_document(record, report)
    assert len(json.loads(json.dumps(document))["columns"]) == 4
    assert drift_cell(record.model_dump(mode="json")) == "yes 0.75 +decay"
    assert "c0, c1, c2" in drift_summary(record.model_dump(mode="json"))


def decision(
    policy: str, *, shift: float, on_batch: float, force: bool = False
) -> monitoring.RetrainDecision:
    config = MonitoringConfig(retrain_policy=policy)  # type: ignore[arg-type]
    score = monitoring.ChampionScore("1", "f1", 0.9, on_batch)
    record = monitoring.drift_record(config, report_for(shift), [1], score)
    return monitoring.retrain_decision(config.retrain_policy, record, force=force)


def test_on_change_trains_only_on_drift_or_decay() -> None:
    assert decision("always", shift=0.0, on_batch=0.9).train
    skipped = decision("on_change", shift=0.0, on_batch=0.9)
    assert not skipped.train and "no drift" in skipped.reason and "no decay" in skipped.reason
    assert "0.9000 on this batch" in skipped.reason
    assert decision("on_change", shift=2.0, on_batch=0.9).reason.startswith("data drifted")
    assert decision("on_change", shift=0.0, on_batch=0.5).reason.startswith("champion decayed")
    assert decision("on_change", shift=0.0, on_batch=0.9, force=True).reason == "--force"


def test_on_change_trains_when_nothing_could_be_checked() -> None:
    config = MonitoringConfig(retrain_policy="on_change")
    no_champion = monitoring.drift_record(config, None, [], None, note="no champion yet")
    assert monitoring.retrain_decision("on_change", no_champion, force=False).reason == "no champion yet"
    tiny = drift.detect_drift(pd.DataFrame({"a": range(100)}), pd.DataFrame({"a": range(10)}), ["a"])
    record = monitoring.drift_record(config, tiny, [1], monitoring.ChampionScore("1", "f1", 0.9, 0.9))
    assert record.dataset_drift is None and record.note
    verdict = monitoring.retrain_decision("on_change", record, force=False)
    assert verdict.train and "could not be checked" in verdict.reason


def test_read_reference_samples_each_file_by_its_share(tmp_path: Path) -> None:
    files = []
    for k, size in enumerate((3000, 1000)):
        path = tmp_path / f"batch_{k}.parquet"
        pd.DataFrame({"a": np.full(size, float(k)), "b": np.arange(size, dtype=float)}).to_parquet(path)
        files.append(path)
    frame, total = monitoring.read_reference(files, ["a"], sample_rows=400, seed=1)
    assert total == 4000 and list(frame.columns) == ["a"]
    assert (frame["a"] == 0).sum() == 300 and (frame["a"] == 1).sum() == 100
    whole, total = monitoring.read_reference(files, ["a", "b"], sample_rows=10_000, seed=1)
    assert len(whole) == total == 4000


@pytest.mark.parametrize(
    ("monitoring_section", "key"),
    [
        ({"retrain_policy": "sometimes"}, "monitoring.retrain_policy"),
        ({"drift_share": 0}, "monitoring.drift_share"),
        ({"ks_threshold": 1.5}, "monitoring.ks_threshold"),
        ({"decay_tolerance": -0.1}, "monitoring.decay_tolerance"),
        ({"sample_rows": 500}, "monitoring"),  # not above large_sample_rows (1000)
        ({"window": 3}, "monitoring.window"),
    ],
)
def test_bad_monitoring_params_fail_naming_the_key(
    tmp_path: Path, monitoring_section: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{key}\b"):
        settings_from_mapping({"monitoring": monitoring_section}, tmp_path, light=True)


def test_monitoring_defaults_keep_todays_behaviour(tmp_path: Path) -> None:
    settings = settings_from_mapping({}, tmp_path, light=True)
    assert settings.monitoring.retrain_policy == "always"
    rules = settings.monitoring.drift_rules()
    assert (rules.drift_share, rules.ks_threshold, rules.large_sample_rows) == (0.5, 0.05, 1000)


def test_old_state_records_without_monitoring_still_load() -> None:
    old = {"status": "completed", "started_at": STAMP, "model_version": "1", "metrics": {"f1": 0.9}}
    record = BatchRecord.model_validate(old)
    assert record.drift is None and record.trained is None and record.skip_reason is None
    assert drift_cell(None) == "-"


def test_metric_history_carries_the_champion_score_on_each_batch() -> None:
    from retrain_pipeline.reporting import metric_history, plot_metric_history

    config = MonitoringConfig()
    checked = monitoring.drift_record(
        config, report_for(0.0), [1], monitoring.ChampionScore("1", "f1", 0.9, 0.8)
    )
    untrained = completed(None, None, trained=False).model_copy(update={"drift": checked})
    state = state_of({1: completed("1"), 2: untrained}, champion="1")
    points = metric_history(state, "f1")
    assert [p.champion_on_batch for p in points] == [None, 0.8]
    assert points[1].as_row("f1")["champion f1 on the new batch"] == 0.8
    assert plot_metric_history(state, "f1").startswith(b"\x89PNG")
