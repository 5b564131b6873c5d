"""Unit tests for retrain_pipeline.reporting.training_report."""

from __future__ import annotations

import pytest

from retrain_pipeline.config import METRIC_NAMES
from retrain_pipeline.data import DataSummary
from retrain_pipeline.reporting import training_report

SUMMARY = DataSummary(rows=100, train_rows=80, holdout_rows=20, class_counts={"0": 60, "1": 40})
NEW = {"accuracy": 0.95, "precision": 0.9, "recall": 0.875, "f1": 0.88732, "roc_auc": None}
CHAMPION = {"accuracy": 0.9, "precision": 0.85, "recall": 0.8, "f1": 0.82, "roc_auc": 0.97}


def report(**overrides) -> str:
    arguments = {
        "batch_number": 4,
        "metrics": NEW,
        "champion_metrics": CHAMPION,
        "champion_version": "2",
        "new_version": "3",
        "promoted": True,
        "reason": "f1 0.8873 >= champion 0.8200 - tolerance 0",
        "primary_metric": "f1",
        "summary": SUMMARY,
    }
    return training_report(**{**arguments, **overrides})


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0].split()[0] in METRIC_NAMES:
            rows[cells[0].split()[0]] = cells[1:]
    return rows


def test_title_and_decision() -> None:
    text = report()
    assert text.splitlines()[0] == "# Batch 4: model v3 promoted"
    assert "**Decision:** f1 0.8873 >= champion 0.8200 - tolerance 0 (primary metric: `f1`)" in text
    assert text.endswith("\n")


def test_not_promoted_title() -> None:
    assert report(promoted=False).splitlines()[0] == "# Batch 4: model v3 not promoted"


def test_metric_table() -> None:
    text = report()

    assert "| metric | new v3 | champion v2 |" in text
    assert "|---|---|---|" in text
    assert table_rows(text) == {
        "accuracy": ["0.9500", "0.9000"],
        "precision": ["0.9000", "0.8500"],
        "recall": ["0.8750", "0.8000"],
        "f1": ["0.8873", "0.8200"],
        "roc_auc": ["n/a", "0.9700"],
    }
    assert "| f1 **(primary)** |" in text
    assert text.count("**(primary)**") == 1


def test_metric_rows_follow_metric_names_order() -> None:
    assert list(table_rows(report())) == list(METRIC_NAMES)


@pytest.mark.parametrize("champion_metrics", [None, {}])
def test_without_champion_everything_is_na(champion_metrics) -> None:
    text = report(champion_metrics=champion_metrics, champion_version=None)

    assert "| metric | new v3 | champion (none) |" in text
    assert all(cells[1] == "n/a" for cells in table_rows(text).values())


def test_missing_metric_keys_are_na() -> None:
    rows = table_rows(report(metrics={"accuracy": 1.0}, champion_metrics={"f1": 0.5}))
    assert rows["accuracy"] == ["1.0000", "n/a"]
    assert rows["f1"] == ["n/a", "0.5000"]
    assert rows["roc_auc"] == ["n/a", "n/a"]


def test_data_summary_section() -> None:
    text = report()
    assert "## Training data" in text
    assert "- rows: 100 (train 80, holdout 20)" in text
    assert "- class counts: {'0': 60, '1': 40}" in text
