"""What a batch must satisfy: the pandera schema of params.yaml's ``data`` section, the
classes, the feature kinds (bool, integer, float) that the first accepted batch fixes.

Every rejection is a DataValidationError naming the batch, the file, the column and example
values. Plain functions on DataFrames: no Prefect, MLflow or DVC, inputs never modified.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from retrain_pipeline.config import DataConfig
from retrain_pipeline.errors import DataValidationError


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
