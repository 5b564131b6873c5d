"""Unit tests for retrain_pipeline.sources, .validation and .data: read, validate, split, merge."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pandera.errors import SchemaErrors

from retrain_pipeline import data, manifests, validation
from retrain_pipeline.data import HOLDOUT, SPLIT_COLUMN, TRAIN, DataSummary, merge_batches, split_batch
from retrain_pipeline.errors import DataValidationError, StateError
from retrain_pipeline.fileio import write_csv_atomic, write_parquet_atomic
from retrain_pipeline.sources import breast_cancer_dataset, find_landing_file, read_batch_file, slice_batch
from retrain_pipeline.validation import build_schema, describe_schema_errors, require_classes, validate_batch

FEATURES = ("a", "b")
TARGET = "target"


def assert_names_batch_and_file(error: DataValidationError, batch_number: int, file: str | Path) -> None:
    """Every rejection says which batch and which file."""
    message = str(error)
    assert f"batch {batch_number} rejected" in message
    assert str(file) in message
    assert error.batch_number == batch_number
    assert error.file == str(file)


def schema(*, allow_missing_values: bool = False, max_abs_value: float | None = 1e12, classes=(0, 1)):
    return build_schema(
        FEATURES, TARGET, classes, allow_missing_values=allow_missing_values, max_abs_value=max_abs_value
    )


def good_frame() -> pd.DataFrame:
    return pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], TARGET: [0, 1, 0]})


def labelled(n: int, positives: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    target = np.array([1] * positives + [0] * (n - positives))
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), TARGET: target})


# --------------------------------------------------------------------------- sources


def test_breast_cancer_dataset_shape_and_columns() -> None:
    frame = breast_cancer_dataset(seed=1, target_column="label")

    assert frame.shape == (569, 31)
    assert list(frame.columns)[-1] == "label"
    assert "target" not in frame.columns
    assert {"mean_radius", "worst_fractal_dimension", "radius_error"} <= set(frame.columns)
    for column in frame.columns:
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", column), column
    assert set(frame["label"].unique()) == {0, 1}
    assert list(frame.index) == list(range(569))


def test_breast_cancer_dataset_is_deterministic_per_seed() -> None:
    first = breast_cancer_dataset(seed=7, target_column="target")
    again = breast_cancer_dataset(seed=7, target_column="target")
    other = breast_cancer_dataset(seed=8, target_column="target")

    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    # a shuffle, not a resample: the same rows in another order
    pd.testing.assert_frame_equal(
        first.sort_values(list(first.columns)).reset_index(drop=True),
        other.sort_values(list(other.columns)).reset_index(drop=True),
    )


@pytest.fixture
def raw_120() -> pd.DataFrame:
    return pd.DataFrame({"x": range(120), TARGET: [0, 1] * 60})


@pytest.mark.parametrize(
    ("batch_number", "first", "rows"),
    [(1, 0, 50), (2, 50, 50), (3, 100, 20)],
    ids=["first", "middle", "last-partial"],
)
def test_slice_batch_rows(raw_120: pd.DataFrame, batch_number: int, first: int, rows: int) -> None:
    batch = slice_batch(raw_120, batch_number, 50)

    assert batch is not None
    assert len(batch) == rows
    assert list(batch["x"]) == list(range(first, first + rows))
    assert list(batch.index) == list(range(rows))


@pytest.mark.parametrize("batch_number", [4, 5, 100])
def test_slice_batch_past_the_end_is_none(raw_120: pd.DataFrame, batch_number: int) -> None:
    assert slice_batch(raw_120, batch_number, 50) is None


def test_slice_batch_exact_multiple(raw_120: pd.DataFrame) -> None:
    assert len(slice_batch(raw_120, 4, 30)) == 30
    assert slice_batch(raw_120, 5, 30) is None


# --------------------------------------------------------------------------- landing files


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_find_landing_file(landing: Path, suffix: str) -> None:
    path = landing / f"batch_3{suffix}"
    path.write_text("x", encoding="utf-8")
    (landing / "batch_4.csv").write_text("x", encoding="utf-8")  # another batch is ignored

    assert find_landing_file(landing, 3) == path


def test_find_landing_file_none(landing: Path) -> None:
    (landing / "batch_30.csv").write_text("x", encoding="utf-8")
    (landing / "batch_3.txt").write_text("x", encoding="utf-8")
    assert find_landing_file(landing, 3) is None


def test_find_landing_file_missing_folder(tmp_path: Path) -> None:
    assert find_landing_file(tmp_path / "no-such-folder", 1) is None


def test_find_landing_file_both_formats_is_ambiguous(landing: Path) -> None:
    (landing / "batch_3.csv").write_text("x", encoding="utf-8")
    (landing / "batch_3.parquet").write_text("x", encoding="utf-8")

    with pytest.raises(
        DataValidationError, match=re.escape("ambiguous: both batch_3.csv and batch_3.parquet exist")
    ) as e:
        find_landing_file(landing, 3)
    assert_names_batch_and_file(e.value, 3, landing / "batch_3.csv")


def test_find_landing_file_directory_is_rejected(landing: Path) -> None:
    (landing / "batch_3.csv").mkdir()
    with pytest.raises(DataValidationError, match="is a directory") as e:
        find_landing_file(landing, 3)
    assert_names_batch_and_file(e.value, 3, landing / "batch_3.csv")


def test_find_landing_file_symlink_outside_is_rejected(tmp_path: Path, landing: Path) -> None:
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("a,target\n1,0\n", encoding="utf-8")
    link = landing / "batch_3.csv"
    link.symlink_to(secret)

    with pytest.raises(DataValidationError, match="symlink points outside the landing folder") as e:
        find_landing_file(landing, 3)
    assert_names_batch_and_file(e.value, 3, link)
    assert str(secret.resolve()) in str(e.value)


def test_find_landing_file_symlink_via_dotdot_is_rejected(tmp_path: Path, landing: Path) -> None:
    (tmp_path / "secret.csv").write_text("a\n1\n", encoding="utf-8")
    (landing / "batch_2.csv").symlink_to("../secret.csv")
    with pytest.raises(DataValidationError, match="outside the landing folder"):
        find_landing_file(landing, 2)


def test_find_landing_file_symlink_inside_is_fine(landing: Path) -> None:
    archive = landing / "archive"
    archive.mkdir()
    (archive / "monday.csv").write_text("a,target\n1,0\n", encoding="utf-8")
    link = landing / "batch_3.csv"
    link.symlink_to(archive / "monday.csv")

    assert find_landing_file(landing, 3) == link


def test_find_landing_file_broken_symlink_is_rejected(landing: Path) -> None:
    link = landing / "batch_3.csv"
    link.symlink_to(landing / "gone.csv")
    with pytest.raises(DataValidationError, match="is not a regular file") as e:
        find_landing_file(landing, 3)
    assert_names_batch_and_file(e.value, 3, link)


# --------------------------------------------------------------------------- reading


def write_bytes(landing: Path, name: str, payload: bytes) -> Path:
    path = landing / name
    path.write_bytes(payload)
    return path


def test_read_csv(landing: Path) -> None:
    path = write_bytes(landing, "batch_1.csv", b"a,b,target\n1.5,2,0\n3,4,1\n")
    frame = read_batch_file(path, 1)
    assert list(frame.columns) == ["a", "b", "target"]
    assert frame["a"].tolist() == [1.5, 3.0]
    assert frame["target"].tolist() == [0, 1]


def test_read_csv_with_utf8_bom(landing: Path) -> None:
    path = write_bytes(landing, "batch_1.csv", "\ufeffa,target\n1,0\n".encode())
    assert list(read_batch_file(path, 1).columns) == ["a", "target"]


def test_read_parquet(landing: Path) -> None:
    path = landing / "batch_2.parquet"
    good_frame().to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_batch_file(path, 2), good_frame())


def test_header_only_csv_reads_as_empty_frame(landing: Path) -> None:
    path = write_bytes(landing, "batch_1.csv", b"a,b,target\n")
    frame = read_batch_file(path, 1)
    assert frame.empty
    assert list(frame.columns) == ["a", "b", "target"]


@pytest.mark.parametrize(
    ("name", "payload", "problem"),
    [
        pytest.param("batch_5.csv", b"", "file is empty", id="empty"),
        pytest.param("batch_5.csv", b"  \n\t\r\n ", "file is empty", id="whitespace-only"),
        pytest.param(
            "batch_5.csv", b"a,target\n1,\x000\n", "binary content (NUL bytes), not CSV text", id="nul"
        ),
        pytest.param(
            "batch_5.csv",
            b"a,target\ncaf\xe9,0\n",
            "not valid UTF-8 text (byte 0xe9 at offset 12)",
            id="latin-1",
        ),
        pytest.param(
            "batch_5.csv", b"a,b,a\n1,2,3\n", "duplicate column name(s) ['a']", id="duplicate-header"
        ),
        pytest.param(
            "batch_5.csv", b"a;b;target\n1;2;0\n", "header has one column and contains ';'", id="semicolon"
        ),
        pytest.param("batch_5.csv", b"a\tb\ttarget\n1\t2\t0\n", "contains '\\t'", id="tab"),
        pytest.param("batch_5.csv", b'a,target\n"1,0\n', "malformed CSV", id="unclosed-quote"),
        pytest.param(
            "batch_5.parquet", b"this is not parquet", "not a readable Parquet file", id="garbage-parquet"
        ),
        pytest.param("batch_5.parquet", b"", "not a readable Parquet file", id="empty-parquet"),
        pytest.param(
            "batch_5.parquet", b"a,target\n1,0\n", "not a readable Parquet file", id="csv-as-parquet"
        ),
    ],
)
def test_read_batch_file_rejects(landing: Path, name: str, payload: bytes, problem: str) -> None:
    path = write_bytes(landing, name, payload)

    with pytest.raises(DataValidationError, match=re.escape(problem)) as e:
        read_batch_file(path, 5)
    assert_names_batch_and_file(e.value, 5, path)


def test_rows_with_more_fields_than_the_header_are_not_silently_shifted(landing: Path) -> None:
    path = write_bytes(landing, "batch_2.csv", b"a,target\n10,1.5,0\n20,2.5,1\n30,3.5,0\n")
    with pytest.raises(DataValidationError, match="batch 2 rejected"):
        frame = read_batch_file(path, 2)
        validate_batch(
            frame,
            build_schema(["a"], TARGET, (0, 1), allow_missing_values=False, max_abs_value=None),
            batch_number=2,
            file=str(path),
        )


# --------------------------------------------------------------------------- validation


def test_valid_batch_is_coerced_and_ordered() -> None:
    frame = good_frame()[["target", "b", "a"]].assign(a=[1, 2, 3])  # ints, other column order

    valid = validate_batch(frame, schema(), batch_number=1, file="batch_1.csv")

    assert list(valid.columns) == ["a", "b", "target"]
    assert valid["a"].dtype == np.float64
    assert valid["b"].dtype == np.float64
    assert valid["target"].tolist() == [0, 1, 0]
    assert list(valid.index) == [0, 1, 2]


def test_validate_batch_does_not_modify_its_input() -> None:
    frame = good_frame().assign(a=[1, 2, 3])
    before = frame.copy()
    validate_batch(frame, schema(), batch_number=1, file="batch_1.csv")
    pd.testing.assert_frame_equal(frame, before)


def test_integer_column_with_index_offset_is_reset() -> None:
    frame = good_frame().set_axis([10, 11, 12])
    assert list(validate_batch(frame, schema(), batch_number=1, file="f").index) == [0, 1, 2]


def test_string_labels() -> None:
    frame = good_frame().assign(target=["no", "yes", "no"])
    valid = validate_batch(frame, schema(classes=("no", "yes")), batch_number=1, file="f.csv")
    assert valid["target"].tolist() == ["no", "yes", "no"]


def test_string_classes_accept_numeric_looking_labels_as_strings() -> None:
    frame = good_frame().assign(target=["0", "1", "0"])
    valid = validate_batch(frame, schema(classes=("0", "1")), batch_number=1, file="f.csv")
    assert valid["target"].tolist() == ["0", "1", "0"]


def test_float_labels_with_integer_values_are_accepted() -> None:
    frame = good_frame().assign(target=[0.0, 1.0, 0.0])  # what read_csv makes of "0.0"
    valid = validate_batch(frame, schema(), batch_number=1, file="f.csv")
    assert valid["target"].tolist() == [0, 1, 0]


def test_no_limit_on_absolute_value() -> None:
    frame = good_frame().assign(a=[1e300, -1e300, 0.0])
    valid = validate_batch(frame, schema(max_abs_value=None), batch_number=1, file="f.csv")
    assert valid["a"].tolist() == [1e300, -1e300, 0.0]


def test_value_at_the_limit_is_accepted() -> None:
    frame = good_frame().assign(a=[10.0, -10.0, 0.0])
    assert len(validate_batch(frame, schema(max_abs_value=10), batch_number=1, file="f.csv")) == 3


def test_missing_values_allowed() -> None:
    frame = good_frame().assign(a=[np.nan, 2.0, 3.0])
    valid = validate_batch(frame, schema(allow_missing_values=True), batch_number=1, file="f.csv")
    assert np.isnan(valid["a"].iloc[0])


INVALID_BATCHES = [
    pytest.param(good_frame().iloc[0:0], {}, ["no data rows (header only)"], id="header-only"),
    pytest.param(good_frame().drop(columns="b"), {}, ["missing column(s) ['b']"], id="missing-column"),
    pytest.param(good_frame().assign(c=1.0), {}, ["unexpected column(s) ['c']"], id="extra-column"),
    pytest.param(
        good_frame().rename(columns={"target": "label"}),
        {},
        ["missing column(s) ['target']", "unexpected column(s) ['label']"],
        id="renamed-target",
    ),
    pytest.param(
        good_frame().assign(a=["1.0", "abc", "3"]),
        {},
        ["column 'a': wrong type, value(s) cannot be converted ('abc' at row 2)"],
        id="string-in-float-column",
    ),
    pytest.param(
        good_frame().assign(target=[0, 2, 1]),
        {},
        ["column 'target': unknown label(s), expected one of [0, 1] (2 at row 2)"],
        id="unknown-label",
    ),
    pytest.param(
        good_frame().assign(target=[0, "yes", 1]),
        {},
        ["column 'target': wrong type", "'yes' at row 2"],
        id="string-label-for-int-classes",
    ),
    pytest.param(
        good_frame().assign(target=["no", "maybe", "yes"]),
        {"classes": ("no", "yes")},
        ["column 'target': unknown label(s), expected one of ['no', 'yes'] ('maybe' at row 2)"],
        id="unknown-string-label",
    ),
    pytest.param(
        good_frame().assign(target=[0, None, 1]),
        {},
        ["column 'target'", "at row 2"],
        id="missing-label",
    ),
    pytest.param(
        good_frame().assign(a=[np.nan] * 3),
        {},
        ["column 'a': all values are missing"],
        id="all-nan-column",
    ),
    pytest.param(
        good_frame().assign(a=[np.nan] * 3),
        {"allow_missing_values": True},
        ["column 'a': all values are missing"],
        id="all-nan-column-missing-allowed",
    ),
    pytest.param(
        good_frame().assign(b=[1.0, np.nan, 3.0]),
        {},
        ["column 'b': missing value(s) (nan at row 2)"],
        id="nan-not-allowed",
    ),
    pytest.param(
        good_frame().assign(a=[np.inf, 1.0, 2.0]),
        {},
        ["column 'a': infinite value(s) (inf at row 1)"],
        id="inf",
    ),
    pytest.param(
        good_frame().assign(a=[1.0, -np.inf, 2.0]),
        {"max_abs_value": None},
        ["column 'a': infinite value(s) (-inf at row 2)"],
        id="minus-inf-without-limit",
    ),
    pytest.param(
        good_frame().assign(b=[1.0, 2.0, -1e13]),
        {},
        ["column 'b': absolute value(s) above data.max_abs_value (-10000000000000.0 at row 3)"],
        id="huge-value",
    ),
]


@pytest.mark.parametrize(("frame", "options", "problems"), INVALID_BATCHES)
def test_validate_batch_rejects(frame: pd.DataFrame, options: dict, problems: list[str]) -> None:
    with pytest.raises(DataValidationError) as e:
        validate_batch(frame, schema(**options), batch_number=6, file="landing/batch_6.csv")

    assert_names_batch_and_file(e.value, 6, "landing/batch_6.csv")
    for problem in problems:
        assert problem in str(e.value)


def test_rejection_lists_three_examples_and_counts_the_rest() -> None:
    frame = pd.DataFrame({"a": [1.0] * 6, "b": [1.0] * 6, TARGET: [0, 5, 6, 7, 8, 9]})
    with pytest.raises(DataValidationError) as e:
        validate_batch(frame, schema(), batch_number=2, file="batch_2.csv")
    assert "(5 at row 2, 6 at row 3, 7 at row 4 and 2 more)" in str(e.value)


def test_non_integer_labels_are_rejected() -> None:
    frame = good_frame().assign(target=[0.0, 1.5, 0.7])
    with pytest.raises(DataValidationError, match="column 'target'"):
        validate_batch(frame, schema(), batch_number=4, file="batch_4.csv")


def test_string_in_float_column_is_reported_only_as_wrong_type() -> None:
    frame = good_frame().assign(a=["1.0", "abc", "3"])
    with pytest.raises(DataValidationError) as e:
        validate_batch(frame, schema(), batch_number=4, file="batch_4.csv")
    message = str(e.value)
    assert message.endswith("column 'a': wrong type, value(s) cannot be converted ('abc' at row 2)")
    assert "infinite" not in message
    assert "Error(" not in message


# --------------------------------------------------------------------------- describe_schema_errors


def failure_cases(frame: pd.DataFrame, **options) -> pd.DataFrame:
    with pytest.raises(SchemaErrors) as e:
        schema(**options).validate(frame, lazy=True)
    return e.value.failure_cases


def test_describe_schema_errors_no_failures() -> None:
    empty = pd.DataFrame(
        columns=["schema_context", "column", "check", "check_number", "failure_case", "index"]
    )
    assert describe_schema_errors(empty) == "failed schema validation"


def test_describe_schema_errors_one_line_per_problem() -> None:
    frame = good_frame().drop(columns="b").assign(extra=1, target=[0, 3, 1])
    message = describe_schema_errors(failure_cases(frame))

    assert message.split("; ") == [
        "missing column(s) ['b']",
        "unexpected column(s) ['extra']",
        "column 'target': unknown label(s), expected one of [0, 1] (3 at row 2)",
    ]
    assert "\n" not in message


def test_describe_schema_errors_example_limit() -> None:
    frame = good_frame().assign(target=[7, 8, 9])
    assert describe_schema_errors(failure_cases(frame), examples=1).endswith("(7 at row 1 and 2 more)")


def test_describe_schema_errors_hides_dtype_checks() -> None:
    frame = good_frame().assign(b=[1.0, np.nan, 3.0])
    message = describe_schema_errors(failure_cases(frame))
    assert "dtype(" not in message
    assert message == "column 'b': missing value(s) (nan at row 2)"


# --------------------------------------------------------------------------- column kinds


def kinds_frame(**columns: object) -> pd.DataFrame:
    """good_frame() with its feature columns replaced (a Series keeps its dtype)."""
    return good_frame().assign(**columns)


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        pytest.param(pd.Series([1.5, 2.0, 3.0]), "float", id="float64"),
        pytest.param(pd.Series([1.0, 2.0, 3.0]), "float", id="float64-whole"),
        pytest.param(pd.Series([1.5, np.nan, 3.0]), "float", id="float64-with-gap"),
        pytest.param(pd.Series([1, 2, 3]), "integer", id="int64"),
        pytest.param(pd.Series([1, 2, 3], dtype="uint8"), "integer", id="uint8"),
        pytest.param(pd.Series([True, True, True]), "bool", id="bool"),
        pytest.param(pd.Series([1, None, 3], dtype="Int64"), "integer", id="nullable-Int64"),
        pytest.param(pd.Series([True, None, False], dtype="boolean"), "bool", id="nullable-boolean"),
        pytest.param(pd.Series([1.5, None, 3.0], dtype="Float64"), "float", id="nullable-Float64"),
        pytest.param(pd.Series([True, np.nan, False], dtype=object), "bool", id="object-bools-with-gap"),
        pytest.param(pd.Series([1, 2.5, 3], dtype=object), "float", id="object-numbers"),
        pytest.param(pd.Series(["1.0", "abc", "3"]), None, id="text"),
        pytest.param(pd.Series([np.nan, np.nan, np.nan]), None, id="all-missing"),
        pytest.param(pd.Series([None, None, None], dtype=object), None, id="all-missing-object"),
    ],
)
def test_column_kind(column: pd.Series, kind: str | None) -> None:
    assert validation.column_kind(column) == kind


def test_column_kind_of_csv_columns(landing: Path) -> None:
    path = write_bytes(landing, "batch_1.csv", b"a,b,c,d,target\nTrue,1,1.5,1,0\nTrue,2,2.5,,1\n")
    frame = read_batch_file(path, 1)
    assert validation.feature_kinds(frame, ["a", "b", "c", "d"]) == {
        "a": "bool",
        "b": "integer",
        "c": "float",
        "d": "integer",  # an integer column with a gap, which pandas reads as float
    }


def test_feature_kinds_fixed_by_a_first_batch() -> None:
    frame = kinds_frame(
        a=pd.Series([1.0, np.nan, 3.0]),  # whole numbers and a gap: an integer column
        b=pd.Series([1.5, np.nan, 3.0]),
        c=pd.Series(["x", "y", "z"]),  # text has no kind: the schema rejects it
    )
    assert validation.feature_kinds(frame, ["a", "b", "c", "absent"]) == {"a": "integer", "b": "float"}


FIXED = {"a": "float", "b": "integer"}

KIND_MISMATCHES = [
    pytest.param(
        FIXED,
        kinds_frame(a=[True, True, True]),
        "column 'a': expected float (fixed by batch 1), found bool",
        id="float-to-bool",
    ),
    pytest.param(
        FIXED,
        kinds_frame(a=[1, 2, 3]),
        "column 'a': expected float (fixed by batch 1), found integer",
        id="float-to-int",
    ),
    pytest.param(
        FIXED,
        kinds_frame(b=[1.5, 2.0, 3.0]),
        "column 'b': expected integer (fixed by batch 1), found float",
        id="int-to-float",
    ),
    pytest.param(
        FIXED,
        kinds_frame(b=pd.Series([0.5, None, 1.0], dtype="Float64")),
        "column 'b': expected integer (fixed by batch 1), found float",
        id="int-to-nullable-float",
    ),
    pytest.param(
        FIXED,
        kinds_frame(b=[False, True, False]),
        "column 'b': expected integer (fixed by batch 1), found bool",
        id="int-to-bool",
    ),
    pytest.param(
        FIXED,
        kinds_frame(a=pd.Series([True, None, False], dtype="boolean")),
        "column 'a': expected float (fixed by batch 1), found bool",
        id="float-to-nullable-boolean",
    ),
    pytest.param(
        FIXED,
        kinds_frame(a=pd.Series([1, None, 3], dtype="Int64")),
        "column 'a': expected float (fixed by batch 1), found integer",
        id="float-to-nullable-Int64",
    ),
    pytest.param(
        {"a": "bool", "b": "integer"},
        kinds_frame(a=[1.0, 0.0, 1.0]),
        "column 'a': expected bool (fixed by batch 1), found float",
        id="bool-to-float",
    ),
    pytest.param(
        FIXED,
        kinds_frame(a=[True, False, True], b=[0.5, 1.5, 2.5]),
        "column 'a': expected float (fixed by batch 1), found bool; "
        "column 'b': expected integer (fixed by batch 1), found float",
        id="two-columns-one-line",
    ),
    pytest.param(
        None,
        kinds_frame(a=[True, True, True]),
        "column 'a': expected integer or float, found bool",
        id="legacy-bool",
    ),
    pytest.param(
        {"b": "integer"},
        kinds_frame(a=[True, True, True]),
        "column 'a': expected integer or float, found bool",
        id="no-kind-recorded-for-the-column",
    ),
]


@pytest.mark.parametrize(("fixed", "frame", "problem"), KIND_MISMATCHES)
def test_check_feature_kinds_rejects(fixed: dict[str, str] | None, frame: pd.DataFrame, problem: str) -> None:
    with pytest.raises(DataValidationError) as e:
        validation.check_feature_kinds(
            frame, FEATURES, fixed, batch_number=4, file="landing/batch_4.csv", fixed_by=1
        )

    assert_names_batch_and_file(e.value, 4, "landing/batch_4.csv")
    assert e.value.problem == problem


KIND_MATCHES = [
    pytest.param(FIXED, kinds_frame(a=[1.5, 2.5, 3.5], b=[1, 2, 3]), id="same-kinds"),
    pytest.param(FIXED, kinds_frame(a=[1.0, 2.0, 3.0]), id="whole-floats-where-float"),
    pytest.param(FIXED, kinds_frame(a=[1.0, np.nan, 3.0]), id="float-with-gap-of-whole-numbers"),
    pytest.param(FIXED, kinds_frame(b=[1.0, np.nan, 3.0]), id="int-with-gap-arrives-as-float"),
    pytest.param(FIXED, kinds_frame(b=[1.0, 2.0, 3.0]), id="whole-floats-where-int"),
    pytest.param(
        FIXED,
        kinds_frame(a=pd.Series([1.5, None, 2.5], dtype="Float64"), b=pd.Series([1, None, 3], dtype="Int64")),
        id="nullable-dtypes",
    ),
    pytest.param(
        {"a": "bool", "b": "bool"},
        kinds_frame(a=[True, False, True], b=pd.Series([True, None, False], dtype="boolean")),
        id="bools-where-bool",
    ),
    pytest.param(None, kinds_frame(a=[1.5, 2.5, 3.5], b=[1, 2, 3]), id="legacy-int-and-float"),
    pytest.param(FIXED, kinds_frame(a=["1.0", "abc", "3"]), id="text-is-left-to-the-schema"),
    pytest.param(FIXED, kinds_frame(a=[np.nan] * 3), id="all-missing-is-left-to-the-schema"),
    pytest.param(FIXED, good_frame().drop(columns="a"), id="missing-column-is-left-to-the-schema"),
    pytest.param(FIXED, good_frame().iloc[0:0], id="no-rows"),
]


@pytest.mark.parametrize(("fixed", "frame"), KIND_MATCHES)
def test_check_feature_kinds_accepts(fixed: dict[str, str] | None, frame: pd.DataFrame) -> None:
    validation.check_feature_kinds(frame, FEATURES, fixed, batch_number=4, file="batch_4.csv", fixed_by=1)


def test_check_feature_kinds_accepts_the_kinds_a_batch_fixes() -> None:
    frame = kinds_frame(a=[True, False, True], b=pd.Series([1, None, 3], dtype="Int64"))
    kinds = validation.feature_kinds(frame, FEATURES)
    validation.check_feature_kinds(frame, FEATURES, kinds, batch_number=2, file="f.csv", fixed_by=1)


def test_bool_csv_column_is_rejected_where_float_was_fixed(landing: Path) -> None:
    first = read_batch_file(write_bytes(landing, "batch_1.csv", b"a,b,target\n1.5,2.5,0\n2.5,3.5,1\n"), 1)
    path = write_bytes(landing, "batch_2.csv", b"a,b,target\nTrue,2.5,0\nTrue,3.5,1\n")
    second = read_batch_file(path, 2)
    # The schema alone coerces True to 1.0 and accepts the batch; the kind check does not.
    assert len(validate_batch(second, schema(), batch_number=2, file=str(path))) == 2

    with pytest.raises(DataValidationError) as e:
        validation.check_feature_kinds(
            second,
            FEATURES,
            validation.feature_kinds(first, FEATURES),
            batch_number=2,
            file=str(path),
            fixed_by=1,
        )
    assert (
        str(e.value) == f"batch 2 rejected: {path}: column 'a': expected float (fixed by batch 1), found bool"
    )


def test_processed_batch_keeps_its_data_and_records_the_kinds(tmp_path: Path) -> None:
    path = tmp_path / "batches" / "batch_1.parquet"
    frame = good_frame().assign(**{SPLIT_COLUMN: [TRAIN, HOLDOUT, TRAIN]})
    data.write_processed_batch(frame, path, {"a": "float", "b": "integer"})

    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    assert validation.recorded_feature_kinds(pq.read_schema(path).metadata) == {"a": "float", "b": "integer"}
    assert os.listdir(path.parent) == ["batch_1.parquet"]


def test_processed_file_without_kinds_is_legacy(tmp_path: Path) -> None:
    path = tmp_path / "batch_1.parquet"
    write_parquet_atomic(good_frame(), path)  # how processed batches were written before
    assert validation.recorded_feature_kinds(pq.read_schema(path).metadata) is None
    assert validation.recorded_feature_kinds(None) is None


@pytest.mark.parametrize(
    "raw", [b"not json", b'["a"]', b'{"a": "text"}', b'{"a": 1}'], ids=["not-json", "list", "kind", "number"]
)
def test_malformed_recorded_kinds_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"^malformed retrain_pipeline\.feature_kinds metadata"):
        validation.recorded_feature_kinds({validation.FEATURE_KINDS_KEY: raw})


# --------------------------------------------------------------------------- require_classes


@pytest.mark.parametrize(
    ("targets", "classes"),
    [([0, 1, 1], (0, 1)), (["yes", "no"], ("no", "yes")), ([1, 0], (0, 1))],
)
def test_require_classes_ok(targets: list, classes: tuple) -> None:
    assert require_classes(pd.Series(targets), classes, batch_number=1, file="f.csv") is None


@pytest.mark.parametrize(
    ("targets", "classes", "absent"),
    [
        ([0, 0, 0], (0, 1), "[1]"),
        ([1], (0, 1), "[0]"),
        ([], (0, 1), "[0, 1]"),
        (["no", "no"], ("no", "yes"), "['yes']"),
    ],
)
def test_require_classes_rejects(targets: list, classes: tuple, absent: str) -> None:
    with pytest.raises(DataValidationError, match=re.escape(f"would lack class(es) {absent}")) as e:
        require_classes(pd.Series(targets, dtype=object), classes, batch_number=9, file="batch_9.csv")
    assert_names_batch_and_file(e.value, 9, "batch_9.csv")


# --------------------------------------------------------------------------- split


def split(
    frame: pd.DataFrame, *, fraction: float = 0.2, seed: int = 42, batch_number: int = 1
) -> pd.DataFrame:
    return split_batch(
        frame, target_column=TARGET, holdout_fraction=fraction, seed=seed, batch_number=batch_number
    )


def test_split_is_deterministic() -> None:
    frame = labelled(100, 40)
    pd.testing.assert_frame_equal(split(frame), split(frame))


def test_split_differs_across_batch_numbers() -> None:
    frame = labelled(100, 40)
    assert not split(frame, batch_number=1)[SPLIT_COLUMN].equals(split(frame, batch_number=2)[SPLIT_COLUMN])


def test_split_differs_across_seeds() -> None:
    frame = labelled(100, 40)
    assert not split(frame, seed=1)[SPLIT_COLUMN].equals(split(frame, seed=1000)[SPLIT_COLUMN])


@pytest.mark.parametrize(
    ("rows", "fraction", "holdout"),
    [(100, 0.2, 20), (50, 0.2, 10), (50, 0.3, 15), (10, 0.01, 1), (3, 0.9, 2), (2, 0.5, 1), (2, 0.01, 1)],
)
def test_split_holdout_size(rows: int, fraction: float, holdout: int) -> None:
    result = split(labelled(rows, rows // 2), fraction=fraction)

    assert (result[SPLIT_COLUMN] == HOLDOUT).sum() == holdout
    assert (result[SPLIT_COLUMN] == TRAIN).sum() == rows - holdout
    assert set(result[SPLIT_COLUMN]) == {TRAIN, HOLDOUT}


def test_split_is_stratified() -> None:
    result = split(labelled(100, 30), fraction=0.2)
    holdout = result[result[SPLIT_COLUMN] == HOLDOUT]
    assert holdout[TARGET].value_counts().to_dict() == {0: 14, 1: 6}


def test_split_with_a_single_row_class_still_splits() -> None:
    result = split(labelled(10, 1), fraction=0.2)
    assert (result[SPLIT_COLUMN] == HOLDOUT).sum() == 2


def test_split_with_one_class() -> None:
    result = split(labelled(10, 0), fraction=0.2)
    assert (result[SPLIT_COLUMN] == HOLDOUT).sum() == 2


def test_split_one_row_batch_is_all_train() -> None:
    result = split(labelled(1, 1))
    assert result[SPLIT_COLUMN].tolist() == [TRAIN]


def test_split_does_not_mutate_input() -> None:
    frame = labelled(20, 8).set_axis(range(100, 120))
    before = frame.copy()

    result = split(frame)

    pd.testing.assert_frame_equal(frame, before)
    assert SPLIT_COLUMN not in frame.columns
    assert list(result.index) == list(frame.index)
    pd.testing.assert_frame_equal(result.drop(columns=SPLIT_COLUMN), frame)


# --------------------------------------------------------------------------- merge and summary


def merged_history() -> pd.DataFrame:
    first = pd.DataFrame({"a": [1.0, 2.0], TARGET: [0, 1], SPLIT_COLUMN: [TRAIN, HOLDOUT]})
    second = pd.DataFrame({"a": [3.0, 4.0, 5.0], TARGET: [1, 1, 0], SPLIT_COLUMN: [TRAIN, TRAIN, HOLDOUT]})
    return merge_batches([first, second])


def test_merge_batches_keeps_order_and_resets_index() -> None:
    merged = merged_history()
    assert merged["a"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert list(merged.index) == list(range(5))


def test_merge_batches_needs_a_batch() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        merge_batches([])


def _history(tmp_path: Path, labels: Any, new_counts_dtype: str) -> tuple[dict[int, Path], pd.DataFrame]:
    """Three processed files and a new split batch whose count column is ``new_counts_dtype``."""
    rng = np.random.default_rng(3)

    def batch(rows: int, k: int, counts_dtype: str = "int64") -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "x": rng.normal(size=rows),
                "count": rng.integers(0, 5, rows).astype(counts_dtype),
                "flag": rng.integers(0, 2, rows).astype(bool),
                TARGET: rng.choice(labels, rows),
            }
        )
        return split_batch(frame, target_column=TARGET, holdout_fraction=0.25, seed=1, batch_number=k)

    earlier = {}
    for k in (1, 2, 3):
        earlier[k] = tmp_path / f"batch_{k}.parquet"
        data.write_processed_batch(batch(40, k), earlier[k], {})
    return earlier, batch(20, 4, new_counts_dtype)


@pytest.mark.parametrize(("labels", "counts"), [([0, 1], "int64"), (["no", "yes"], "float64")])
def test_merge_train_holdout_equals_pandas_merge_and_cut(tmp_path: Path, labels: Any, counts: str) -> None:
    earlier, new = _history(tmp_path, labels, counts)
    parts = data.merge_train_holdout(earlier, new, TARGET)

    # What it replaces: every batch read, one merged table, then its train and holdout rows.
    merged = merge_batches([*(pd.read_parquet(p) for p in earlier.values()), new])
    for part, features, target in (
        (TRAIN, parts.train_features, parts.train_target),
        (HOLDOUT, parts.holdout_features, parts.holdout_target),
    ):
        rows = merged[merged[SPLIT_COLUMN] == part].reset_index(drop=True)
        pd.testing.assert_frame_equal(features, rows[["x", "count", "flag"]])
        pd.testing.assert_series_equal(target, rows[TARGET])
    assert parts.train_features["count"].dtype == np.dtype(counts)  # float in one batch: float
    balance = merged[TARGET].value_counts()
    assert parts.summary == DataSummary(
        rows=len(merged),
        train_rows=int((merged[SPLIT_COLUMN] == TRAIN).sum()),
        holdout_rows=int((merged[SPLIT_COLUMN] == HOLDOUT).sum()),
        class_counts={str(label): int(balance[label]) for label in sorted(balance.index)},
    )


def test_merge_train_holdout_trains_only_on_the_batches_to_learn(tmp_path: Path) -> None:
    earlier, new = _history(tmp_path, [0, 1], "int64")
    everything = data.merge_train_holdout(earlier, new, TARGET)
    learned = data.merge_train_holdout(earlier, new, TARGET, learn={3})

    third = pd.read_parquet(earlier[3])
    expected = pd.concat(
        [third[third[SPLIT_COLUMN] == TRAIN], new[new[SPLIT_COLUMN] == TRAIN]], ignore_index=True
    )
    pd.testing.assert_frame_equal(learned.train_features, expected[["x", "count", "flag"]])
    pd.testing.assert_frame_equal(learned.holdout_features, everything.holdout_features)  # the same holdout
    assert learned.summary.rows == learned.summary.train_rows + everything.summary.holdout_rows


def test_merge_train_holdout_names_a_batch_whose_columns_changed(tmp_path: Path) -> None:
    earlier, new = _history(tmp_path, [0, 1], "int64")
    with pytest.raises(StateError, match="accepted batch 1 has columns"):
        data.merge_train_holdout(earlier, new.rename(columns={"x": "y"}), TARGET)
    earlier[2].unlink()
    with pytest.raises(StateError, match="processed data of accepted batch 2 is missing"):
        data.merge_train_holdout(earlier, new, TARGET)


# --------------------------------------------------------------------------- atomic writers


def frame_for_files() -> pd.DataFrame:
    return pd.DataFrame({"a": [1.5, 2.5], "label": ["no", "yes"], "n": [1, 2]})


@pytest.mark.parametrize(
    ("writer", "reader", "name"),
    [(write_parquet_atomic, pd.read_parquet, "out.parquet"), (write_csv_atomic, pd.read_csv, "out.csv")],
    ids=["parquet", "csv"],
)
def test_atomic_writers_round_trip(tmp_path: Path, writer, reader, name: str) -> None:
    path = tmp_path / "nested" / "folder" / name
    writer(frame_for_files(), path)
    pd.testing.assert_frame_equal(reader(path), frame_for_files(), check_dtype=False)
    assert os.listdir(path.parent) == [name]


@pytest.mark.parametrize(
    ("writer", "name"),
    [(write_parquet_atomic, "out.parquet"), (write_csv_atomic, "out.csv")],
    ids=["parquet", "csv"],
)
def test_atomic_writers_replace_existing_file(tmp_path: Path, writer, name: str) -> None:
    path = tmp_path / name
    path.write_text("old", encoding="utf-8")
    writer(frame_for_files(), path)
    assert path.read_bytes() != b"old"
    assert os.listdir(tmp_path) == [name]


def test_failed_atomic_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    path.write_bytes(b"previous")
    bad = pd.DataFrame({"a": [object()]})  # pyarrow cannot serialise a bare object

    with pytest.raises(Exception):  # noqa: B017  (whatever pyarrow raises)
        write_parquet_atomic(bad, path)

    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.parquet"]


# --------------------------------------------------------------------------- window and manifest


@pytest.mark.parametrize(
    ("earlier", "window", "expected"),
    [
        ([1, 2, 3, 4], None, [1, 2, 3, 4]),
        ([1, 2, 3, 4], 3, [3, 4]),
        ([1, 2, 3, 4], 1, []),
        ([1, 3], 10, [1, 3]),
        ([], 2, []),
    ],
)
def test_training_window(earlier: list[int], window: int | None, expected: list[int]) -> None:
    assert data.training_window(earlier, window) == expected


def test_training_batches_are_the_window_before_the_batch_then_the_batch() -> None:
    accepted = [1, 2, 4, 5, 7]  # 3 and 6 rejected
    assert data.training_batches(accepted, 5, None) == [1, 2, 4, 5]
    assert data.training_batches(accepted, 5, 3) == [2, 4, 5]  # the batches after 5 play no part
    assert data.training_batches(accepted, 8, 1) == [8]
    assert data.training_batches([], 1, 2) == [1]


def test_training_manifest_round_trip() -> None:
    files = [
        manifests.BatchFile(1, "batches/batch_1.parquet", "a" * 32, 40),
        manifests.BatchFile(3, "x", "b" * 32, 10),
    ]
    text = manifests.training_manifest(3, files, window_batches=2)
    payload = json.loads(text)
    assert (payload["batch_number"], payload["window_batches"], payload["rows"]) == (3, 2, 50)
    assert manifests.parse_training_manifest(text) == files


@pytest.mark.parametrize("text", ['{"format": 99, "batches": []}', "[1, 2]", '{"format": 1}'])
def test_parse_training_manifest_refuses_other_json(text: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        manifests.parse_training_manifest(text)
