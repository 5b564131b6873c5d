"""The training data of a batch: its train/holdout split, the accepted batches its window
keeps, their processed files merged with it.

The merged batches are read straight into one train and one holdout frame (never a merged
table beside a list of batches). A batch's processed file is Parquet with its split column
and, in its schema metadata, the feature kinds it was accepted with. No Prefect, MLflow or
DVC; functions that touch files say so in their name (``read_*``, ``write_*``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq
from sklearn.model_selection import train_test_split

from retrain_pipeline.config import DataConfig, EvaluationConfig
from retrain_pipeline.errors import StateError
from retrain_pipeline.fileio import atomic_path
from retrain_pipeline.validation import (
    FEATURE_KINDS_KEY,
    check_feature_kinds,
    feature_kinds,
    recorded_feature_kinds,
    require_classes,
    schema_for,
    validate_batch,
)

SPLIT_COLUMN = "__split__"
TRAIN, HOLDOUT = "train", "holdout"


def split_batch(
    frame: pd.DataFrame, *, target_column: str, holdout_fraction: float, seed: int, batch_number: int
) -> pd.DataFrame:
    """Copy of ``frame`` with a ``__split__`` column (train/holdout), seeded per batch.

    Stratified by the target when every class has at least two rows.
    """
    split = pd.Series(TRAIN, index=frame.index)
    if len(frame) >= 2:
        n_holdout = min(max(1, round(len(frame) * holdout_fraction)), len(frame) - 1)
        labels = frame[target_column]
        counts = labels.value_counts()
        n_classes = len(counts)
        can_stratify = counts.min() >= 2 and n_holdout >= n_classes and len(frame) - n_holdout >= n_classes
        stratify = labels if can_stratify else None
        _, holdout_index = train_test_split(
            frame.index, test_size=n_holdout, random_state=seed + batch_number, stratify=stratify
        )
        split.loc[holdout_index] = HOLDOUT
    return frame.assign(**{SPLIT_COLUMN: split})


def training_window(earlier: Sequence[int], window_batches: int | None) -> list[int]:
    """The earlier accepted batches a new batch is merged with: all, or the last ``W - 1``."""
    if window_batches is None:
        return list(earlier)
    return list(earlier[len(earlier) - (window_batches - 1) :]) if window_batches > 1 else []


def training_batches(accepted: Sequence[int], batch_number: int, window_batches: int | None) -> list[int]:
    """The batches the model of ``batch_number`` trains on, oldest first: the accepted batches
    before it that the window keeps (:func:`training_window`), then ``batch_number`` itself."""
    return [*training_window([k for k in accepted if k < batch_number], window_batches), batch_number]


def merge_batches(batches: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate split batches (oldest first) into one training table."""
    if not batches:
        raise ValueError("merge_batches needs at least one batch")
    return pd.concat(batches, ignore_index=True)


@dataclass(frozen=True)
class DataSummary:
    rows: int
    train_rows: int
    holdout_rows: int
    class_counts: dict[str, int]


@dataclass(frozen=True)
class TrainHoldout:
    """What training and scoring read from the merged batches (:func:`merge_train_holdout`)."""

    train_features: pd.DataFrame
    train_target: pd.Series
    holdout_features: pd.DataFrame
    holdout_target: pd.Series
    summary: DataSummary


# --------------------------------------------------------------------------- one batch, merged


@dataclass(frozen=True)
class FirstBatch:
    """What the processed file of the first accepted batch fixes for later batches."""

    batch_number: int
    columns: list[str]
    kinds: dict[str, str] | None  # None: written before feature kinds were recorded


def read_first_batch(path: Path, batch_number: int) -> FirstBatch:
    """Columns and feature kinds of the first accepted batch, from its processed file's schema."""
    schema = pq.read_schema(path)
    try:
        kinds = recorded_feature_kinds(schema.metadata)
    except ValueError as exc:
        raise StateError(
            f"processed data of accepted batch {batch_number} ({path}) has {exc}; "
            f"restore it (dvc checkout) or retrain batch {batch_number} with --force"
        ) from exc
    return FirstBatch(batch_number, schema.names, kinds)


def expected_features(config: DataConfig, first: FirstBatch | None, frame: pd.DataFrame) -> list[str]:
    """Declared features, else those of the first accepted batch, else this batch's columns."""
    if config.feature_columns:
        return list(config.feature_columns)
    names = first.columns if first else [str(c) for c in frame.columns]
    return [c for c in names if c not in (config.target_column, SPLIT_COLUMN)]


def require_processed_file(path: Path, batch_number: int) -> Path:
    """``path``, the processed file of accepted batch ``batch_number``; StateError when missing."""
    if not path.is_file():
        raise StateError(
            f"processed data of accepted batch {batch_number} is missing ({path}); "
            f"restore it (dvc checkout) or retrain batch {batch_number} with --force"
        )
    return path


def processed_schema(path: Path, batch_number: int, columns: Sequence[str]) -> pyarrow.Schema:
    """The schema of an accepted batch's processed file; StateError when the file is missing
    or its columns are not ``columns``."""
    schema = pq.read_schema(require_processed_file(path, batch_number))
    if schema.names != list(columns):
        raise StateError(
            f"accepted batch {batch_number} has columns {schema.names} but the current "
            f"schema is {list(columns)}; the feature set changed between batches"
        )
    return schema


def merge_train_holdout(
    earlier: Mapping[int, Path],
    split: pd.DataFrame,
    target_column: str,
    learn: Collection[int] | None = None,
) -> TrainHoldout:
    """The train and holdout parts of the ``earlier`` batches' processed files and this
    ``split`` batch, oldest first, read straight into one frame each.

    The files' schemas and split columns give each part's size and column types first; each
    file is then read on its own and its rows are copied into their place, so the merged
    table, or a list of every batch beside it, never exists. Values keep their type (a column
    that is integer in one batch and float in another is float, as pandas merges them).
    ``learn``: the earlier batches whose train rows are trained on (None: all); the others
    give their holdout rows only.
    """
    columns = [str(c) for c in split.columns]
    features = [c for c in columns if c not in (target_column, SPLIT_COLUMN)]
    schemas = {k: processed_schema(path, k, columns) for k, path in earlier.items()}
    stored = [[schema.field(c).type.to_pandas_dtype() for schema in schemas.values()] for c in features]
    dtypes = {c: np.result_type(split[c].dtype, *types) for c, types in zip(features, stored, strict=True)}
    holdout_of = {
        k: pq.read_table(path, columns=[SPLIT_COLUMN])[SPLIT_COLUMN].to_numpy(zero_copy_only=False) == HOLDOUT
        for k, path in earlier.items()
    }
    new_holdout = split[SPLIT_COLUMN].to_numpy() == HOLDOUT
    trained = [k for k in earlier if learn is None or k in learn]
    train = _Part(features, dtypes, int(sum((~holdout_of[k]).sum() for k in trained) + (~new_holdout).sum()))
    holdout = _Part(features, dtypes, int(sum(m.sum() for m in holdout_of.values()) + new_holdout.sum()))
    for k, path in earlier.items():
        frame = pd.read_parquet(path)
        holdout.add(frame, holdout_of[k], target_column)
        if k in trained:
            train.add(frame, ~holdout_of[k], target_column)
        del frame
    holdout.add(split, new_holdout, target_column)
    train.add(split, ~new_holdout, target_column)
    train_features, train_target = train.result()
    holdout_features, holdout_target = holdout.result()
    balance = pd.concat([train_target, holdout_target]).value_counts().sort_index()
    summary = DataSummary(
        rows=len(train_target) + len(holdout_target),
        train_rows=len(train_target),
        holdout_rows=len(holdout_target),
        class_counts={str(label): int(n) for label, n in balance.items()},
    )
    return TrainHoldout(train_features, train_target, holdout_features, holdout_target, summary)


class _Part:
    """The train or holdout part of merged batches, filled batch by batch: one array per
    feature column of its final length, and the target's pieces."""

    def __init__(self, features: Sequence[str], dtypes: Mapping[str, np.dtype], rows: int) -> None:
        self._arrays = {c: np.empty(rows, dtype=dtypes[c]) for c in features}
        self._targets: list[pd.Series] = []
        self._filled = 0

    def add(self, frame: pd.DataFrame, rows: np.ndarray, target_column: str) -> None:
        end = self._filled + int(rows.sum())
        for name, array in self._arrays.items():
            array[self._filled : end] = frame[name].to_numpy()[rows]
        self._targets.append(frame[target_column][rows])
        self._filled = end

    def result(self) -> tuple[pd.DataFrame, pd.Series]:
        """The features (the arrays themselves, not copied) and the target."""
        features = pd.DataFrame(self._arrays, copy=False)
        return features, pd.concat(self._targets, ignore_index=True)


@dataclass(frozen=True)
class MergedBatch:
    """A validated batch, split, and merged with the earlier accepted batches."""

    valid: pd.DataFrame  # the batch, validated (features and target)
    split: pd.DataFrame  # the same rows with their train/holdout column: its processed file
    parts: TrainHoldout  # train and holdout of the merged batches (never one merged table)
    kinds: dict[str, str]  # the feature kinds its processed file records


def validate_and_merge_batch(
    frame: pd.DataFrame,
    *,
    config: DataConfig,
    evaluation: EvaluationConfig,
    batch_number: int,
    source: str,
    first: FirstBatch | None,
    earlier: Mapping[int, Path],
    learn: Collection[int] | None = None,
) -> MergedBatch:
    """Validate a batch, split it, merge it with the ``earlier`` batches' processed files
    (:func:`merge_train_holdout`; ``learn``: the earlier batches trained on, None: all).

    The first accepted batch fixes the feature names and kinds (bool, integer, float) that
    later batches must have; a first batch (or one after a legacy file) records its own.
    DataValidationError names the file and the problem.
    """
    n = batch_number
    features = expected_features(config, first, frame)
    fixed = first.kinds if first else None
    if first:
        check_feature_kinds(frame, features, fixed, batch_number=n, file=source, fixed_by=first.batch_number)
    valid = validate_batch(frame, schema_for(config, features), batch_number=n, file=source)
    split = split_batch(
        valid,
        target_column=config.target_column,
        holdout_fraction=evaluation.holdout_fraction,
        seed=evaluation.split_seed,
        batch_number=n,
    )
    parts = merge_train_holdout(earlier, split, config.target_column, learn)
    require_classes(parts.train_target, config.classes, batch_number=n, file=source)
    kinds = fixed if fixed is not None else feature_kinds(frame, features)
    return MergedBatch(valid, split, parts, kinds)


def write_processed_batch(frame: pd.DataFrame, path: Path, kinds: Mapping[str, str]) -> None:
    """Write an accepted batch to ``path`` as Parquet, atomically, with its feature kinds.

    The kinds go into the schema metadata (``FEATURE_KINDS_KEY``, a JSON object); the
    table itself is what ``write_parquet_atomic`` writes.
    """
    table = pyarrow.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), FEATURE_KINDS_KEY: json.dumps(dict(kinds)).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
