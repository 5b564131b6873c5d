"""Plain data functions: find and read a batch, validate it, split it, merge history.

Nothing here imports Prefect, MLflow or DVC. Functions that touch files say so in their
name (``read_*``, ``write_*``, ``find_*``); the others take and return DataFrames and never
modify their inputs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors
from sklearn.model_selection import train_test_split

from retrain_pipeline.config import DataConfig, EvaluationConfig
from retrain_pipeline.errors import DataValidationError, StateError
from retrain_pipeline.fileio import atomic_path

logger = logging.getLogger(__name__)

SPLIT_COLUMN = "__split__"
TRAIN, HOLDOUT = "train", "holdout"
LANDING_SUFFIXES = (".csv", ".parquet")
_SNIFF_BYTES = 64 * 1024


# --------------------------------------------------------------------------- sources


def breast_cancer_dataset(seed: int, target_column: str) -> pd.DataFrame:
    """The bundled scikit-learn breast-cancer data, snake_case columns, shuffled with ``seed``."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: re.sub(r"\W+", "_", str(c)).strip("_").lower())
    frame = frame.rename(columns={"target": target_column})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def slice_batch(raw: pd.DataFrame, batch_number: int, batch_size: int) -> pd.DataFrame | None:
    """Rows ``(N-1)*batch_size .. N*batch_size-1`` of ``raw``; None when none exist yet."""
    start = (batch_number - 1) * batch_size
    if start >= len(raw):
        return None
    return raw.iloc[start : start + batch_size].reset_index(drop=True)


def find_landing_file(landing_dir: Path, batch_number: int) -> Path | None:
    """The landing file of a batch (``batch_<N>.csv`` or ``.parquet``), or None if absent.

    Raises DataValidationError when both formats exist, when the entry is not a regular
    file, or when it is a symlink that points outside the landing folder.
    """
    candidates = [landing_dir / f"batch_{batch_number}{suffix}" for suffix in LANDING_SUFFIXES]
    present = [path for path in candidates if path.exists() or path.is_symlink()]
    if not present:
        return None
    if len(present) > 1:
        names = " and ".join(path.name for path in present)
        raise DataValidationError(batch_number, str(present[0]), f"ambiguous: both {names} exist")
    path = present[0]
    resolved = path.resolve()
    if not resolved.is_relative_to(landing_dir.resolve()):
        raise DataValidationError(
            batch_number, str(path), f"symlink points outside the landing folder (to {resolved})"
        )
    if not resolved.is_file():
        kind = "a directory" if resolved.is_dir() else "not a regular file"
        raise DataValidationError(batch_number, str(path), f"is {kind}")
    return path


def read_batch_file(path: Path, batch_number: int) -> pd.DataFrame:
    """Read a landing file into a DataFrame, turning every parse problem into a clear error."""
    if path.suffix == ".parquet":
        return _read_parquet(path, batch_number)
    return _read_csv(path, batch_number)


def _read_parquet(path: Path, batch_number: int) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise DataValidationError(batch_number, str(path), f"not a readable Parquet file ({exc})") from exc
    _reject_duplicate_columns([str(c) for c in frame.columns], batch_number, path)
    return frame


def _read_csv(path: Path, batch_number: int) -> pd.DataFrame:
    reject = partial(DataValidationError, batch_number, str(path))
    payload = path.read_bytes()
    if not payload.strip():
        raise reject("file is empty")
    if b"\x00" in payload[:_SNIFF_BYTES]:
        raise reject("binary content (NUL bytes), not CSV text")
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise reject(f"not valid UTF-8 text (byte {payload[exc.start]:#04x} at offset {exc.start})") from exc
    header = next(csv.reader(io.StringIO(text)), [])
    _reject_duplicate_columns(header, batch_number, path)
    if len(header) == 1:
        for delimiter in (";", "\t", "|"):
            if delimiter in header[0]:
                raise reject(f"header has one column and contains {delimiter!r}: CSV must use ','")
    try:
        with warnings.catch_warnings():
            # index_col=False stops pandas from silently turning the first column into the
            # index when rows have more fields than the header; it warns instead: refuse.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), low_memory=False, index_col=False)
    except pd.errors.ParserWarning as exc:
        raise reject("some rows have more fields than the header") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise reject(f"malformed CSV ({' '.join(str(exc).split())})") from exc
    return frame


def _reject_duplicate_columns(columns: Sequence[str], batch_number: int, path: Path) -> None:
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise DataValidationError(batch_number, str(path), f"duplicate column name(s) {duplicates}")


# --------------------------------------------------------------------------- validation


def build_schema(
    feature_columns: Sequence[str],
    target_column: str,
    classes: Sequence[int | str],
    *,
    allow_missing_values: bool,
    max_abs_value: float | None,
) -> pa.DataFrameSchema:
    """The pandera schema every batch must satisfy."""
    # Check names double as the keys of _check_label's messages.
    feature_checks = [
        pa.Check(lambda s: s.notna().any(), element_wise=False, ignore_na=False, name="not_all_missing"),
        pa.Check(lambda s: np.isfinite(s), name="finite"),
    ]
    if max_abs_value is not None:
        feature_checks.append(pa.Check(lambda s: s.abs() <= max_abs_value, name="max_abs_value"))
    columns = {
        name: pa.Column(float, checks=feature_checks, nullable=allow_missing_values, coerce=True)
        for name in feature_columns
    }
    # Integer labels are checked as floats so that 1.5 is rejected, not truncated to 1;
    # validate_batch then casts them back to int.
    label_type = float if isinstance(classes[0], int) else str
    columns[target_column] = pa.Column(
        label_type, checks=pa.Check.isin(list(classes)), nullable=False, coerce=True
    )
    integer_target = target_column if label_type is float else None
    return pa.DataFrameSchema(
        columns, strict=True, ordered=False, coerce=True, metadata={"integer_target": integer_target}
    )


def schema_for(config: DataConfig, feature_columns: Sequence[str]) -> pa.DataFrameSchema:
    """The batch schema the ``data`` section of params.yaml describes."""
    return build_schema(
        feature_columns,
        config.target_column,
        config.classes,
        allow_missing_values=config.allow_missing_values,
        max_abs_value=config.max_abs_value,
    )


def validate_batch(
    frame: pd.DataFrame, schema: pa.DataFrameSchema, *, batch_number: int, file: str
) -> pd.DataFrame:
    """Return the batch coerced to the schema, columns in schema order, or raise."""
    if frame.empty:
        raise DataValidationError(batch_number, file, "no data rows (header only)")
    try:
        valid = schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        raise DataValidationError(batch_number, file, describe_schema_errors(exc.failure_cases)) from exc
    valid = valid[list(schema.columns)].reset_index(drop=True)
    integer_target = (schema.metadata or {}).get("integer_target")
    if integer_target:
        valid[integer_target] = valid[integer_target].astype("int64")
    return valid


def describe_schema_errors(failures: pd.DataFrame, examples: int = 3) -> str:
    """Summarise pandera's failure cases as one line: column, problem, example values."""
    problems: list[str] = []
    missing = failures.loc[failures["check"] == "column_in_dataframe", "failure_case"]
    if len(missing):
        problems.append(f"missing column(s) {sorted(map(str, missing))}")
    extra = failures.loc[failures["check"] == "column_in_schema", "failure_case"]
    if len(extra):
        problems.append(f"unexpected column(s) {sorted(map(str, extra))}")
    per_column = failures[failures["column"].notna()]
    for column, group in per_column.groupby("column", sort=False):
        problems.append(f"column {column!r}: {_column_problems(group, examples)}")
    return "; ".join(problems) or "failed schema validation"


def _column_problems(group: pd.DataFrame, examples: int) -> str:
    """One column's failures; a type or all-missing failure hides the checks it makes moot."""
    checks = group["check"].astype(str)
    coerce = group[checks.str.startswith("coerce_dtype")]
    if len(coerce):
        return f"{_check_label('coerce_dtype')} {_examples(coerce, examples)}"
    if (checks == "not_all_missing").any():
        return _check_label("not_all_missing")
    parts = []
    for check, failed in group[~checks.str.startswith("dtype(")].groupby("check", sort=False):
        is_label_check = str(check).startswith("isin(")
        parts.append(f"{_check_label(str(check))} {_examples(failed, examples, labels=is_label_check)}")
    return "; ".join(parts)


_CHECK_LABELS = {
    "not_all_missing": "all values are missing",
    "finite": "infinite value(s)",
    "max_abs_value": "absolute value(s) above data.max_abs_value",
    "not_nullable": "missing value(s)",
}


def _check_label(check: str) -> str:
    if check in _CHECK_LABELS:
        return _CHECK_LABELS[check]
    if check.startswith("coerce_dtype"):
        return "wrong type, value(s) cannot be converted"
    if check.startswith("isin("):
        return f"unknown label(s), expected one of {check[len('isin(') : -1]}"
    return check


def _examples(group: pd.DataFrame, limit: int, labels: bool = False) -> str:
    shown = []
    for case, index in zip(group["failure_case"].head(limit), group["index"].head(limit), strict=True):
        where = f" at row {int(index) + 1}" if pd.notna(index) else ""
        if labels and isinstance(case, float) and case.is_integer():
            case = int(case)  # integer labels are validated as floats
        shown.append(f"{case!r}{where}")
    more = f" and {len(group) - limit} more" if len(group) > limit else ""
    return f"({', '.join(shown)}{more})"


def require_classes(
    targets: pd.Series, classes: Iterable[int | str], *, batch_number: int, file: str
) -> None:
    """Reject the batch when the cumulative training targets lack one of the classes."""
    absent = [label for label in classes if not (targets == label).any()]
    if absent:
        raise DataValidationError(
            batch_number,
            file,
            f"training data up to this batch would lack class(es) {absent}: both classes are required",
        )


# --------------------------------------------------------------------------- column kinds

BOOL, INTEGER, FLOAT = "bool", "integer", "float"
FEATURE_KINDS = (BOOL, INTEGER, FLOAT)
FEATURE_KINDS_KEY = b"retrain_pipeline.feature_kinds"  # Parquet schema metadata of processed batches
_KINDS_INFERRED = {"boolean": BOOL, "integer": INTEGER, "floating": FLOAT, "mixed-integer-float": FLOAT}


def column_kind(column: pd.Series) -> str | None:
    """``bool``, ``integer`` or ``float``: what a column arrived as, before the schema coerces it.

    Nullable dtypes (``boolean``, ``Int64``, ``Float64``) and object columns that hold only
    such values count the same. None for a column without values, or one holding text or
    other types: the schema's type check reports those.
    """
    if column.isna().all():
        return None
    return _KINDS_INFERRED.get(pd.api.types.infer_dtype(column, skipna=True))


def _whole_numbers(column: pd.Series) -> bool:
    """Whether every non-missing value of a numeric column is a whole number (or infinite:
    the schema reports infinite values itself)."""
    values = column.dropna().to_numpy(dtype=float)
    return bool(np.all(values == np.floor(values)))


def feature_kinds(frame: pd.DataFrame, features: Sequence[str]) -> dict[str, str]:
    """The kinds the first accepted batch fixes for its feature columns.

    A float column with missing values and only whole numbers otherwise counts as integer:
    that is how pandas reads an integer column with gaps. Columns without a kind are left out.
    """
    kinds: dict[str, str] = {}
    for name in (f for f in features if f in frame.columns):
        column = frame[name]
        kind = column_kind(column)
        if kind == FLOAT and column.isna().any() and _whole_numbers(column):
            kind = INTEGER
        if kind is not None:
            kinds[name] = kind
    return kinds


def check_feature_kinds(
    frame: pd.DataFrame,
    features: Sequence[str],
    fixed: Mapping[str, str] | None,
    *,
    batch_number: int,
    file: str,
    fixed_by: int,
) -> None:
    """Reject the batch when a feature column arrived as another kind than batch ``fixed_by`` fixed.

    The kind must match, except that a float column holding only whole numbers (and maybe
    gaps) is accepted where ``integer`` was fixed. Where no kind is recorded (``fixed`` is
    None: a processed file from before kinds were recorded), integer and float are accepted
    and bool is not. Columns without a kind are left to the schema.
    """
    problems = []
    for name in (f for f in features if f in frame.columns):
        found = column_kind(frame[name])
        expected = fixed.get(name) if fixed is not None else None
        if found is None or _kind_accepted(found, expected, frame[name]):
            continue
        wanted = f"{expected} (fixed by batch {fixed_by})" if expected else f"{INTEGER} or {FLOAT}"
        problems.append(f"column {name!r}: expected {wanted}, found {found}")
    if problems:
        raise DataValidationError(batch_number, file, "; ".join(problems))


def _kind_accepted(found: str, expected: str | None, column: pd.Series) -> bool:
    if expected is None:
        return found != BOOL
    if found == FLOAT and expected == INTEGER:
        return _whole_numbers(column)
    return found == expected


def recorded_feature_kinds(metadata: Mapping[bytes, bytes] | None) -> dict[str, str] | None:
    """The feature kinds in a processed batch's Parquet schema metadata.

    None when there are none (files written before kinds were recorded); ValueError when
    the entry is not a JSON object of column name to kind.
    """
    raw = (metadata or {}).get(FEATURE_KINDS_KEY)
    if raw is None:
        return None
    malformed = f"malformed {FEATURE_KINDS_KEY.decode()} metadata {raw[:200]!r}"
    try:
        kinds = json.loads(raw)
    except ValueError as exc:
        raise ValueError(malformed) from exc
    if not isinstance(kinds, dict) or not all(
        isinstance(name, str) and kind in FEATURE_KINDS for name, kind in kinds.items()
    ):
        raise ValueError(malformed)
    return kinds


# --------------------------------------------------------------------------- split and merge


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


# --------------------------------------------------------------------------- lineage manifest

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class BatchFile:
    """One processed batch file in a training set: its path (relative), md5 and rows."""

    batch: int
    file: str
    md5: str
    rows: int


def training_manifest(
    batch_number: int,
    files: Sequence[BatchFile],
    window_batches: int | None,
    lineage: Mapping[str, Any] | None = None,
) -> str:
    """JSON text naming the exact batch files (by md5) the model of ``batch_number`` trains on.

    Merged in this order, they are its training table: DVC keeps each batch file once and
    this small manifest per model, instead of a new copy of all history per batch.
    ``lineage`` (incremental training): which model it continued from and which batches it
    learned; the training data of a continued model is then its champion's and these.
    """
    payload = {
        "format": MANIFEST_FORMAT,
        "batch_number": batch_number,
        "window_batches": window_batches,
        "rows": sum(f.rows for f in files),
        "batches": [{"batch": f.batch, "file": f.file, "md5": f.md5, "rows": f.rows} for f in files],
        **(lineage or {}),
    }
    return json.dumps(payload, indent=2) + "\n"


def parse_training_manifest(text: str) -> list[BatchFile]:
    """The batch files a manifest names, in merge order; ValueError when it is not one."""
    payload = json.loads(text)
    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"not a training-data manifest (format {MANIFEST_FORMAT})")
    return [
        BatchFile(int(b["batch"]), str(b["file"]), str(b["md5"]), int(b["rows"])) for b in payload["batches"]
    ]


# --------------------------------------------------------------------------- file helpers


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as Parquet, atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_processed_batch(frame: pd.DataFrame, path: Path, kinds: Mapping[str, str]) -> None:
    """Write an accepted batch to ``path`` as Parquet, atomically, with its feature kinds.

    The kinds go into the schema metadata (``FEATURE_KINDS_KEY``, a JSON object); the
    table itself is what ``write_parquet_atomic`` writes.
    """
    table = pyarrow.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), FEATURE_KINDS_KEY: json.dumps(dict(kinds)).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
