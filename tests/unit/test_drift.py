"""Unit tests for retrain_pipeline.drift: column tests, dataset verdict, sampling, reports."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from retrain_pipeline.drift import (
    ColumnDrift,
    DriftReport,
    DriftRules,
    detect_drift,
    markdown_table,
)

NUMERIC = tuple(f"f{i}" for i in range(10))


def numeric_frame(rows: int, seed: int) -> pd.DataFrame:
    """Ten positive normal columns with different means and spreads."""
    rng = np.random.default_rng(seed)
    means = np.linspace(5.0, 50.0, len(NUMERIC))
    return pd.DataFrame(rng.normal(means, means / 5, size=(rows, len(NUMERIC))), columns=list(NUMERIC))


def by_column(report: DriftReport) -> dict[str, ColumnDrift]:
    return {c.column: c for c in report.columns}


def assert_scores_finite_or_none(report: DriftReport) -> None:
    for c in report.columns:
        assert c.score is None or (isinstance(c.score, float) and math.isfinite(c.score)), c
        assert (c.score is None) == (c.method == "none"), c


# --------------------------------------------------------------------------- numeric drift


def test_tripled_column_drifts_with_ks_on_a_small_reference() -> None:
    reference, current = numeric_frame(200, seed=1), numeric_frame(200, seed=2)
    current["f3"] = current["f3"] * 3

    report = detect_drift(reference, current, NUMERIC)

    f3 = by_column(report)["f3"]
    assert (f3.kind, f3.method, f3.threshold) == ("numeric", "ks", 0.05)
    assert f3.drifted and f3.score is not None and f3.score < 1e-10
    assert report.drifted_columns == ("f3",)
    assert report.drift_share == pytest.approx(0.1)
    assert not report.dataset_drift
    assert report.skipped_reason is None
    assert (report.reference_rows, report.current_rows) == (200, 200)
    assert not report.reference_sampled and not report.current_sampled


def test_tripled_column_drifts_with_wasserstein_on_a_large_reference() -> None:
    reference, current = numeric_frame(5000, seed=1), numeric_frame(2000, seed=2)
    current["f7"] = current["f7"] * 3

    report = detect_drift(reference, current, NUMERIC)

    columns = by_column(report)
    assert {c.method for c in report.columns} == {"wasserstein"}
    assert columns["f7"].drifted and columns["f7"].score is not None and columns["f7"].score > 1.0
    assert columns["f7"].threshold == 0.1
    assert report.drifted_columns == ("f7",)
    # The same data otherwise: every other normed distance is well under the threshold.
    assert all(c.score is not None and c.score < 0.1 for name, c in columns.items() if name != "f7")


def test_method_follows_the_row_counts_before_sampling() -> None:
    reference, current = numeric_frame(1500, seed=1), numeric_frame(1200, seed=2)
    rules = DriftRules(sample_rows=500)  # the samples (500 rows) are below large_sample_rows

    report = detect_drift(reference, current, NUMERIC, rules)

    assert report.reference_sampled and report.reference_rows == 1500
    assert {c.method for c in report.columns} == {"wasserstein"}


def test_boundary_of_large_sample_rows_chooses_ks_at_the_limit() -> None:
    current = numeric_frame(1001, seed=2)

    at_limit = detect_drift(numeric_frame(1000, seed=1), current, NUMERIC)
    above = detect_drift(numeric_frame(1001, seed=1), current, NUMERIC)

    assert {c.method for c in at_limit.columns} == {"ks"}
    assert {c.method for c in above.columns} == {"wasserstein"}


def test_a_small_batch_against_a_long_history_uses_ks() -> None:
    """Evidently picks the distance by the reference's size; its noise on a 50-row batch
    makes nearly every column drift. The smaller side decides here."""
    reference, current = numeric_frame(5000, seed=1), numeric_frame(50, seed=2)

    report = detect_drift(reference, current, NUMERIC)

    assert {c.method for c in report.columns} == {"ks"}
    assert not report.dataset_drift


# --------------------------------------------------------------------------- false alarms


def test_random_split_of_one_data_set_rarely_drifts_with_ks() -> None:
    """Every alarm here is false: reference and batch are a random split of the same rows.

    Measured: 17 of 600 column tests (2.8%) over these 20 seeds, at most 7 of 30 columns in
    one split, never the dataset. The bound allows twice alpha (0.05) for the columns'
    correlation and the finite number of tests.
    """
    features = load_breast_cancer(as_frame=True).data
    columns = list(features.columns)
    alarms = tests = 0
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(len(features))
        reference, current = features.iloc[order[:400]], features.iloc[order[400:]]

        report = detect_drift(reference, current, columns)

        assert {c.method for c in report.columns} == {"ks"}
        assert not report.dataset_drift, (seed, report.drifted_columns)
        alarms += len(report.drifted_columns)
        tests += report.tested_columns
    assert tests == 20 * 30
    assert alarms / tests <= 0.10


def test_random_split_of_one_data_set_does_not_drift_with_wasserstein() -> None:
    """Measured: no alarm in 200 column tests, largest normed distance 0.082 (threshold 0.1)."""
    rng = np.random.default_rng(123)
    data = pd.DataFrame(
        rng.normal(rng.uniform(-5, 5, 10), rng.uniform(0.5, 3, 10), size=(5000, 10)), columns=list(NUMERIC)
    )
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(len(data))

        report = detect_drift(data.iloc[order[:3000]], data.iloc[order[3000:]], NUMERIC)

        assert {c.method for c in report.columns} == {"wasserstein"}
        assert report.drifted_columns == (), seed
        assert not report.dataset_drift


# --------------------------------------------------------------------------- categorical drift


def categories(counts: dict[str, int], seed: int = 0) -> pd.Series:
    values = [label for label, n in counts.items() for _ in range(n)]
    return pd.Series(np.random.default_rng(seed).permutation(np.array(values, dtype=object)))


def test_new_category_in_the_batch_drifts_with_chi2() -> None:
    reference = pd.DataFrame({"colour": categories({"red": 200, "green": 120, "blue": 80})})
    current = pd.DataFrame({"colour": categories({"red": 48, "green": 29, "blue": 18, "purple": 5})})

    report = detect_drift(reference, current, ["colour"])

    colour = report.columns[0]
    assert (colour.kind, colour.method, colour.threshold) == ("categorical", "chi2", 0.05)
    assert colour.drifted and colour.score is not None and colour.score < 0.01
    assert report.drifted_columns == ("colour",)
    assert report.dataset_drift


def test_same_proportions_do_not_drift_with_chi2() -> None:
    reference = pd.DataFrame({"colour": categories({"red": 200, "green": 120, "blue": 80})})
    current = pd.DataFrame({"colour": categories({"red": 50, "green": 30, "blue": 20}, seed=1)})

    report = detect_drift(reference, current, ["colour"])

    assert report.columns[0].method == "chi2"
    assert report.columns[0].score == pytest.approx(1.0)
    assert not report.columns[0].drifted
    assert not report.dataset_drift


def test_single_category_on_both_sides_does_not_drift() -> None:
    reference = pd.DataFrame({"flag": ["x"] * 100})
    current = pd.DataFrame({"flag": ["x"] * 40})

    report = detect_drift(reference, current, ["flag"])

    assert report.columns[0].method == "chi2"
    assert report.columns[0].score == 1.0
    assert not report.columns[0].drifted


def test_categories_on_a_large_reference_use_jensen_shannon() -> None:
    reference = pd.DataFrame({"colour": categories({"red": 2000, "green": 1200, "blue": 800})})
    same = pd.DataFrame({"colour": categories({"red": 1000, "green": 600, "blue": 400})})
    shifted = pd.DataFrame({"colour": categories({"red": 600, "green": 400, "blue": 400, "purple": 600})})

    unchanged = detect_drift(reference, same, ["colour"]).columns[0]
    changed = detect_drift(reference, shifted, ["colour"]).columns[0]

    assert (unchanged.method, unchanged.threshold) == ("jensenshannon", 0.1)
    assert unchanged.score == pytest.approx(0.0, abs=1e-6) and not unchanged.drifted
    assert changed.method == "jensenshannon"
    assert changed.drifted and changed.score is not None and 0.1 <= changed.score <= 1.0


def test_column_kinds_from_dtype_and_distinct_values() -> None:
    n = 200

    def frame(seed: int) -> pd.DataFrame:
        r = np.random.default_rng(seed)
        return pd.DataFrame(
            {
                "level": r.integers(0, 5, n),  # 5 distinct numbers: categorical
                "count": r.integers(0, 6, n),  # 6 distinct numbers: numeric
                "flag": r.random(n) < 0.5,
                "text": pd.Series(r.choice(["a", "b"], n), dtype="string"),
                "cat": pd.Series(r.choice(["u", "v"], n), dtype="category"),
                "nullable_int": pd.Series(r.integers(0, 100, n), dtype="Int64"),
            }
        )

    report = detect_drift(frame(1), frame(2), list(frame(1).columns))

    kinds = {c.column: (c.kind, c.method) for c in report.columns}
    assert kinds == {
        "level": ("categorical", "chi2"),
        "count": ("numeric", "ks"),
        "flag": ("categorical", "chi2"),
        "text": ("categorical", "chi2"),
        "cat": ("categorical", "chi2"),
        "nullable_int": ("numeric", "ks"),
    }
    assert_scores_finite_or_none(report)


def test_low_cardinality_numeric_column_with_new_values_drifts() -> None:
    reference = pd.DataFrame({"level": np.tile([1.0, 2.0, 3.0], 100)})
    current = pd.DataFrame({"level": np.tile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 10)})

    column = detect_drift(reference, current, ["level"]).columns[0]

    assert (column.kind, column.method) == ("categorical", "chi2")
    assert column.drifted


# --------------------------------------------------------------------------- constants, NaN


@pytest.mark.parametrize(("reference_rows", "method"), [(300, "ks"), (3000, "wasserstein")])  # batch: half
def test_constant_columns(reference_rows: int, method: str) -> None:
    reference = pd.DataFrame({"same": 7.0, "moved": 7.0, "varies": 1.0}, index=range(reference_rows))
    reference["varies"] = np.random.default_rng(0).normal(size=reference_rows)
    current = pd.DataFrame({"same": 7.0, "moved": 8.0, "varies": 1.0}, index=range(reference_rows // 2))
    current["varies"] = np.random.default_rng(1).normal(size=reference_rows // 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (division by zero, NaN) may leak
        report = detect_drift(reference, current, ["same", "moved", "varies"])

    columns = by_column(report)
    # A constant column has one distinct value: within categorical_max_unique, so categorical.
    assert columns["same"].kind == "categorical" and not columns["same"].drifted
    assert columns["moved"].drifted
    assert_scores_finite_or_none(report)

    numeric = DriftRules(categorical_max_unique=0)  # the numeric tests on the same data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = detect_drift(reference, current, ["same", "moved", "varies"], numeric)

    columns = by_column(report)
    assert {c.method for c in report.columns} == {method}
    assert not columns["same"].drifted
    assert columns["moved"].drifted
    assert_scores_finite_or_none(report)


def test_missing_values_are_dropped_before_testing() -> None:
    reference, current = numeric_frame(300, seed=1), numeric_frame(300, seed=2)
    reference.loc[::3, "f0"] = np.nan
    current.loc[::2, "f0"] = np.nan
    current.loc[5, "f1"] = np.inf
    current["f2"] = current["f2"] * 3
    current.loc[::4, "f2"] = np.nan

    report = detect_drift(reference, current, NUMERIC)

    columns = by_column(report)
    assert columns["f0"].method == "ks" and not columns["f0"].drifted
    assert columns["f1"].method == "ks" and not columns["f1"].drifted
    assert columns["f2"].drifted
    assert_scores_finite_or_none(report)


def test_all_missing_column_is_not_tested() -> None:
    reference, current = numeric_frame(300, seed=1), numeric_frame(300, seed=2)
    current["f4"] = np.nan
    reference["f5"] = None
    reference["f6"], current["f6"] = np.nan, np.nan
    current["f9"] = current["f9"] * 3

    report = detect_drift(reference, current, NUMERIC)

    columns = by_column(report)
    for name, side in (("f4", "the batch"), ("f5", "the reference"), ("f6", "the reference and the batch")):
        assert columns[name].method == "none"
        assert columns[name].score is None and columns[name].threshold is None
        assert not columns[name].drifted
        assert columns[name].note == f"no non-missing values in {side}"
    assert report.tested_columns == 7
    assert report.drift_share == pytest.approx(1 / 7)
    assert report.drifted_columns == ("f9",)
    assert_scores_finite_or_none(report)


def test_categorical_missing_values_are_not_a_category() -> None:
    reference = pd.DataFrame({"colour": categories({"red": 200, "green": 100})})
    current = pd.DataFrame(
        {"colour": pd.concat([categories({"red": 60, "green": 30}), pd.Series([None] * 60)])}
    )

    column = detect_drift(reference, current, ["colour"]).columns[0]

    assert column.method == "chi2"
    assert column.score == pytest.approx(1.0)
    assert not column.drifted


# --------------------------------------------------------------------------- too few rows


def test_small_batch_is_not_tested() -> None:
    reference, current = numeric_frame(300, seed=1), numeric_frame(29, seed=2)
    current["f0"] = current["f0"] * 3

    report = detect_drift(reference, current, NUMERIC)

    assert not report.dataset_drift
    assert report.drift_share == 0.0 and report.drifted_columns == ()
    assert report.skipped_reason == "batch has 29 rows, fewer than min_rows 30"
    assert {c.method for c in report.columns} == {"none"}
    assert all(c.note == report.skipped_reason and c.score is None for c in report.columns)
    assert report.tested_columns == 0


def test_batch_of_exactly_min_rows_is_tested() -> None:
    reference, current = numeric_frame(300, seed=1), numeric_frame(30, seed=2)

    report = detect_drift(reference, current, NUMERIC)

    assert report.skipped_reason is None
    assert report.tested_columns == len(NUMERIC)


def test_small_reference_is_not_tested() -> None:
    report = detect_drift(numeric_frame(10, seed=1), numeric_frame(100, seed=2), NUMERIC)

    assert not report.dataset_drift
    assert report.skipped_reason == "reference has 10 rows, fewer than min_rows 30"
    assert {c.method for c in report.columns} == {"none"}


def test_missing_column_is_an_error() -> None:
    with pytest.raises(KeyError, match="f3"):
        detect_drift(numeric_frame(100, 1), numeric_frame(100, 2).drop(columns="f3"), NUMERIC)


# --------------------------------------------------------------------------- sampling


def test_large_reference_and_batch_are_sampled_deterministically() -> None:
    rules = DriftRules(sample_rows=2000)
    reference, current = numeric_frame(12_000, seed=1), numeric_frame(3000, seed=2)
    current["f2"] = current["f2"] * 3

    first = detect_drift(reference, current, NUMERIC, rules, seed=5)
    again = detect_drift(reference, current, NUMERIC, rules, seed=5)
    other = detect_drift(reference, current, NUMERIC, rules, seed=6)

    assert first.reference_sampled and first.current_sampled
    assert (first.reference_rows, first.current_rows) == (12_000, 3000)
    assert first.to_dict() == again.to_dict()
    assert [c.score for c in first.columns] != [c.score for c in other.columns]
    assert first.drifted_columns == other.drifted_columns == ("f2",)


def test_small_sides_are_not_sampled() -> None:
    report = detect_drift(
        numeric_frame(2000, 1), numeric_frame(100, 2), NUMERIC, DriftRules(sample_rows=1500)
    )

    assert report.reference_sampled and not report.current_sampled
    assert report.current_rows == 100


def test_inputs_are_not_modified() -> None:
    reference, current = numeric_frame(300, seed=1), numeric_frame(100, seed=2)
    reference.loc[::5, "f0"] = np.nan
    before = (reference.copy(), current.copy())

    detect_drift(reference, current, NUMERIC, DriftRules(sample_rows=200))

    pd.testing.assert_frame_equal(reference, before[0])
    pd.testing.assert_frame_equal(current, before[1])


# --------------------------------------------------------------------------- dataset verdict


def tripled(columns: int, drifted: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    reference, current = numeric_frame(300, seed=1), numeric_frame(300, seed=2)
    names = list(NUMERIC[:columns])
    for name in names[:drifted]:
        current[name] = current[name] * 3
    return reference, current, names


def test_share_exactly_at_the_threshold_is_dataset_drift() -> None:
    reference, current, names = tripled(columns=4, drifted=2)

    report = detect_drift(reference, current, names)

    assert report.drifted_columns == ("f0", "f1")
    assert report.drift_share == 0.5
    assert report.dataset_drift


def test_share_below_the_threshold_is_not_dataset_drift() -> None:
    reference, current, names = tripled(columns=4, drifted=1)

    report = detect_drift(reference, current, names)

    assert report.drift_share == 0.25
    assert not report.dataset_drift


def test_share_at_a_threshold_without_an_exact_binary_value() -> None:
    reference, current, names = tripled(columns=10, drifted=3)

    at = detect_drift(reference, current, names, DriftRules(drift_share=0.3))
    above = detect_drift(reference, current, names, DriftRules(drift_share=0.31))

    assert at.drifted_columns == ("f0", "f1", "f2")
    assert at.dataset_drift
    assert not above.dataset_drift


def test_drifted_columns_follow_the_given_order() -> None:
    reference, current, _ = tripled(columns=10, drifted=3)

    report = detect_drift(reference, current, ["f9", "f2", "f5", "f0", "f1"])

    assert [c.column for c in report.columns] == ["f9", "f2", "f5", "f0", "f1"]
    assert report.drifted_columns == ("f2", "f0", "f1")


# --------------------------------------------------------------------------- reports


def test_most_drifted_puts_drifted_and_stronger_columns_first() -> None:
    columns = (
        ColumnDrift("quiet", "numeric", "ks", 0.8, 0.05, drifted=False),
        ColumnDrift("untested", "numeric", "none", None, None, drifted=False, note="no values"),
        ColumnDrift("weak", "numeric", "ks", 0.04, 0.05, drifted=True),
        ColumnDrift("zero_p", "categorical", "chi2", 0.0, 0.05, drifted=True),
        ColumnDrift("far", "numeric", "wasserstein", 0.9, 0.1, drifted=True),
        ColumnDrift("near_miss", "categorical", "jensenshannon", 0.09, 0.1, drifted=False),
    )
    report = DriftReport(
        dataset_drift=True,
        drift_share=0.6,
        drifted_columns=("weak", "zero_p", "far"),
        columns=columns,
        reference_rows=100,
        current_rows=50,
        reference_sampled=False,
        current_sampled=False,
    )

    assert [c.column for c in report.most_drifted()] == [
        "zero_p",
        "far",
        "weak",
        "near_miss",
        "quiet",
        "untested",
    ]
    assert [c.column for c in report.most_drifted(2)] == ["zero_p", "far"]
    assert report.most_drifted(0) == []


def test_to_dict_is_json_ready_and_complete() -> None:
    reference, current = numeric_frame(300, seed=1), numeric_frame(300, seed=2)
    current["f1"] = current["f1"] * 3
    current["f8"] = np.nan

    report = detect_drift(reference, current, NUMERIC)
    document = json.loads(json.dumps(report.to_dict()))

    assert document["dataset_drift"] is False
    assert document["drifted_columns"] == ["f1"]
    assert document["tested_columns"] == 9
    assert [c["column"] for c in document["columns"]] == list(NUMERIC)
    assert document["columns"][8]["method"] == "none" and document["columns"][8]["score"] is None
    assert set(document["columns"][0]) == {
        "column",
        "kind",
        "method",
        "score",
        "threshold",
        "drifted",
        "note",
    }
    assert document["reference_rows"] == 300 and document["reference_sampled"] is False


def test_markdown_table_names_the_drifted_columns() -> None:
    reference, current, names = tripled(columns=4, drifted=2)

    text = markdown_table(detect_drift(reference, current, names), n=3)

    lines = text.splitlines()
    assert lines[0] == "Dataset drift: yes: 2 of 4 columns drifted (share 0.50, threshold 0.5)"
    assert "| column | kind | method | score | threshold | drifted |" in lines
    rows = [line for line in lines if line.startswith("| f")]
    assert len(rows) == 3
    assert {rows[0].split(" | ")[0], rows[1].split(" | ")[0]} == {"| f0", "| f1"}  # drifted first
    assert rows[0].endswith("| yes |") and rows[2].endswith("| no |")
    assert "e-" in rows[0]  # a tiny p-value in scientific notation


def test_markdown_table_says_why_nothing_was_tested() -> None:
    report = detect_drift(numeric_frame(300, 1), numeric_frame(12, 2), NUMERIC)

    text = markdown_table(report)

    assert text.splitlines()[0] == "Dataset drift: not tested: batch has 12 rows, fewer than min_rows 30"
    assert "| column | kind | method | score | threshold | drifted |" in text
