"""The plain functions behind the flow's tasks: validate_and_merge_batch and
evaluate_against_champion, without Prefect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain_pipeline import data, model
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import DataValidationError, StateError
from retrain_pipeline.params import settings_from_mapping


def batch(seed: int, rows: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.integers(0, 100, rows)})
    frame["target"] = (frame["a"] > 0).astype(int)
    return frame


def settings(tmp_path: Path) -> Settings:
    return settings_from_mapping({}, tmp_path, light=True)


def accept(tmp_path: Path, number: int, frame: pd.DataFrame, earlier: dict[int, Path]) -> data.MergedBatch:
    cfg = settings(tmp_path)
    first_number = min(earlier) if earlier else None
    first = data.read_first_batch(earlier[first_number], first_number) if first_number else None
    merged = data.validate_and_merge_batch(
        frame,
        config=cfg.data,
        evaluation=cfg.evaluation,
        batch_number=number,
        source=f"batch_{number}.csv",
        first=first,
        earlier=earlier,
    )
    data.write_processed_batch(merged.split, tmp_path / f"batch_{number}.parquet", merged.kinds)
    return merged


def test_batches_merge_with_the_earlier_ones_and_keep_their_kinds(tmp_path: Path) -> None:
    first = accept(tmp_path, 1, batch(1), {})
    assert first.kinds == {"a": "float", "b": "integer"}
    assert first.parts.summary.rows == 60 and len(first.valid) == 60

    second = accept(tmp_path, 2, batch(2), {1: tmp_path / "batch_1.parquet"})

    assert second.parts.summary.rows == 120
    assert second.kinds == first.kinds
    assert len(second.parts.holdout_features) == 24  # 20% of each batch


def test_a_later_batch_must_match_the_kinds_the_first_fixed(tmp_path: Path) -> None:
    accept(tmp_path, 1, batch(1), {})
    floats = batch(2).assign(b=lambda f: f["b"] + 0.5)

    with pytest.raises(DataValidationError, match=r"batch 2 rejected: batch_2\.csv: column 'b'"):
        accept(tmp_path, 2, floats, {1: tmp_path / "batch_1.parquet"})


def test_an_earlier_file_with_other_columns_is_a_state_error(tmp_path: Path) -> None:
    accept(tmp_path, 1, batch(1), {})
    batch(3).rename(columns={"b": "c"}).assign(__split__="train").to_parquet(tmp_path / "odd.parquet")

    with pytest.raises(StateError, match="accepted batch 7 has columns"):
        accept(tmp_path, 2, batch(2), {1: tmp_path / "batch_1.parquet", 7: tmp_path / "odd.parquet"})


def test_a_champion_that_cannot_score_the_holdout_loses_its_place() -> None:
    train = batch(1)
    features, target = train[["a", "b"]], train["target"]
    cfg = settings_from_mapping({}, Path("."), light=True)
    new = model.train_model(cfg.model, features, target)
    other = model.train_model(cfg.model, features.rename(columns={"b": "c"}), target)

    evaluation = model.evaluate_against_champion(
        new, other, "3", features, target, positive_label=1, metric="f1", tolerance=0.0
    )

    assert evaluation.decision.promote and "champion v3 cannot score" in evaluation.decision.reason
    assert evaluation.champion_metrics is None and evaluation.champion_problem
    same = model.evaluate_against_champion(
        new, new, "4", features, target, positive_label=1, metric="f1", tolerance=0.0
    )
    assert same.decision.promote and same.champion_metrics == same.metrics and same.champion_problem is None
