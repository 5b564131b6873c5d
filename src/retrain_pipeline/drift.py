"""Data drift: how a new batch differs from the reference the champion model was trained on.

Plain functions on DataFrames; nothing here imports Prefect or MLflow. ``scipy.stats`` is
imported when ``detect_drift`` first runs (about 0.7 s on its own; the pipeline has usually
imported it already, through scikit-learn).

The rules are Evidently's defaults, so their thresholds mean what users expect. Each one
is a field of ``DriftRules``:

* **Column kind.** A column is ``categorical`` when its dtype (in the reference or in the
  batch) is bool, object, string, category or any other non-numeric dtype, or when it is
  numeric with at most ``categorical_max_unique`` (5) distinct non-missing values in the
  (sampled) reference. Otherwise it is ``numeric`` (also when the reference has no values).
* **Numeric columns.** While the batch or the reference has at most ``large_sample_rows``
  (1000) rows, a two-sample Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``): the score is
  its p-value, and the column drifted when ``p < ks_threshold`` (0.05). Once both are
  larger, the normed Wasserstein distance ``wasserstein_distance(ref, cur) / max(std(ref),
  0.001)``: drifted when ``score >= wasserstein_threshold`` (0.1). At 100k rows a KS test
  flags differences nobody cares about; the distance does not.
* **Categorical columns.** Likewise by size: a chi-square test of homogeneity
  (``scipy.stats.chi2_contingency``, with scipy's default Yates correction when there are
  exactly two categories) on the 2 x k table of counts, reference vs batch, over the union of
  the categories: a category seen only in the batch is a column of the table, so it can make
  the column drift. The score is the p-value, drifted when ``p < chi2_threshold`` (0.05); one
  single category on both sides is ``p = 1``. Once both sides are large, the Jensen–Shannon
  distance (base 2) of the two category-frequency vectors over the union, drifted when
  ``score >= jensenshannon_threshold`` (0.1).
* **Which test.** The smaller of the two row counts, counted before sampling, decides
  between the small- and the large-sample test, so sampling never changes the method.
  Evidently decides by the reference's size alone; that makes a small batch against a long
  history use the distance, whose noise grows as the batch shrinks (measured below: 50-row
  batches against a 3,000-row reference drifted every time on unchanged data).
* **Missing values.** NaN, None, NA (and, for numeric columns, ±inf) are dropped per column
  and per side before testing. A column with no values left on either side is not tested:
  method ``none``, score None, not drifted, and a note saying which side is empty.
* **Constant columns.** The same constant on both sides does not drift (KS p = 1, distance
  0); a reference constant and a different batch value drifts (KS p ~ 0; for Wasserstein
  the 0.001 floor on the standard deviation makes the distance large). Scores are always
  finite floats or None.
* **Too few rows.** When the batch, or the reference, has fewer than ``min_rows`` (30) rows,
  no column is tested (method ``none``, note ``batch has N rows, fewer than min_rows M``),
  ``dataset_drift`` is False and ``skipped_reason`` says why.
* **Dataset drift.** ``drift_share`` is drifted columns / tested columns (method other than
  ``none``; 0.0 when none was tested); the dataset drifted when at least one column was
  tested and ``share >= DriftRules.drift_share`` (0.5).
* **Sampling.** A reference with more than ``sample_rows`` (50,000) rows is replaced by a
  uniform random sample of ``sample_rows`` rows without replacement, drawn with
  ``numpy.random.default_rng(seed)``; the batch likewise, independently (the same generator
  draws the reference rows first, then the batch rows). The report keeps the row counts
  before sampling and says which side was sampled.

False alarms (measured, random splits of one data set, so every alarm is false): over 20
seeds of a 400/169-row split of scikit-learn's breast-cancer data (30 numeric columns, KS),
2.8% of the column tests drifted (17 of 600; the unit test's bound is 10%), at most 7 of the
30 columns in one split, and the dataset never. The normed Wasserstein distance has no
significance level and its noise shrinks with the *batch* size, while Evidently's rule picks
it by the *reference* size: against a 3,000-row reference of normal data (10 columns, 20
batches each), 2,000-row batches never alarmed (largest score 0.082), but 500-row batches
alarmed on 9% of the columns, 200-row batches on 34% (dataset drift 6 of 20 times) and
50-row batches on 97% (dataset drift 20 of 20). For small batches against a large
reference the KS test is therefore used (see "Which test").
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

Kind = Literal["numeric", "categorical"]
Method = Literal["ks", "wasserstein", "chi2", "jensenshannon", "none"]
P_VALUE_METHODS: frozenset[str] = frozenset({"ks", "chi2"})
_STD_FLOOR = 0.001  # Evidently's floor on the reference standard deviation (normed Wasserstein)


@dataclass(frozen=True)
class DriftRules:
    """Thresholds and sizes of the drift tests (Evidently's defaults); the config layer validates."""

    drift_share: float = 0.5
    ks_threshold: float = 0.05
    wasserstein_threshold: float = 0.1
    chi2_threshold: float = 0.05
    jensenshannon_threshold: float = 0.1
    large_sample_rows: int = 1000
    categorical_max_unique: int = 5
    min_rows: int = 30
    sample_rows: int = 50_000


@dataclass(frozen=True)
class ColumnDrift:
    """One column's test: p-value (``ks``, ``chi2``) or distance (``wasserstein``,
    ``jensenshannon``) as score, the threshold it was compared with, and the verdict."""

    column: str
    kind: Kind
    method: Method
    score: float | None
    threshold: float | None
    drifted: bool
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)

    def strength(self) -> float:
        """How far past its threshold the column is: ``threshold / score`` for p-values,
        ``score / threshold`` for distances (so above 1 means drifted, roughly), inf for
        a p-value of 0 and -inf for an untested column."""
        if self.method == "none" or self.score is None or self.threshold is None:
            return -math.inf
        if self.method in P_VALUE_METHODS:
            return self.threshold / self.score if self.score > 0 else math.inf
        if self.threshold > 0:
            return self.score / self.threshold
        return math.inf if self.score > 0 else 0.0


@dataclass(frozen=True)
class DriftReport:
    """The drift of every column checked, and the dataset-level verdict."""

    dataset_drift: bool
    drift_share: float
    drifted_columns: tuple[str, ...]
    columns: tuple[ColumnDrift, ...]
    reference_rows: int
    current_rows: int
    reference_sampled: bool
    current_sampled: bool
    skipped_reason: str | None = None
    drift_share_threshold: float = 0.5  # the DriftRules.drift_share the verdict used

    @property
    def tested_columns(self) -> int:
        """How many columns were tested (method other than ``none``)."""
        return sum(c.method != "none" for c in self.columns)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields, every column included."""
        return {
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
            "drifted_columns": list(self.drifted_columns),
            "tested_columns": self.tested_columns,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "reference_sampled": self.reference_sampled,
            "current_sampled": self.current_sampled,
            "skipped_reason": self.skipped_reason,
            "drift_share_threshold": self.drift_share_threshold,
            "columns": [c.to_dict() for c in self.columns],
        }

    def most_drifted(self, n: int = 10) -> list[ColumnDrift]:
        """The ``n`` most drifted columns: drifted ones first, then by ``ColumnDrift.strength``
        (largest first); untested columns last; ties keep the order of ``columns``."""
        if n <= 0:
            return []
        return sorted(self.columns, key=lambda c: (not c.drifted, -c.strength()))[:n]


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    rules: DriftRules = DriftRules(),
    *,
    seed: int = 0,
) -> DriftReport:
    """Test each of ``columns`` of ``current`` against ``reference`` (see the module docstring).

    Neither frame is modified. KeyError when a column is missing from either frame.
    """
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise KeyError(f"drift columns missing from the reference or the batch: {missing}")
    reference_rows, current_rows = len(reference), len(current)
    rng = np.random.default_rng(seed)
    reference_take = _sample(reference_rows, rules.sample_rows, rng)
    current_take = _sample(current_rows, rules.sample_rows, rng)

    skipped = [
        f"{side} has {rows} rows, fewer than min_rows {rules.min_rows}"
        for side, rows in (("batch", current_rows), ("reference", reference_rows))
        if rows < rules.min_rows
    ]
    skipped_reason = "; ".join(skipped) or None
    large = min(reference_rows, current_rows) > rules.large_sample_rows

    results = tuple(
        _column_drift(
            name,
            (reference[name], reference_take),
            (current[name], current_take),
            rules,
            large=large,
            skipped_reason=skipped_reason,
        )
        for name in columns
    )
    tested = [c for c in results if c.method != "none"]
    drifted = tuple(c.column for c in tested if c.drifted)
    share = len(drifted) / len(tested) if tested else 0.0
    report = DriftReport(
        dataset_drift=bool(tested) and share >= rules.drift_share,
        drift_share=share,
        drifted_columns=drifted,
        columns=results,
        reference_rows=reference_rows,
        current_rows=current_rows,
        reference_sampled=reference_take is not None,
        current_sampled=current_take is not None,
        skipped_reason=skipped_reason,
        drift_share_threshold=rules.drift_share,
    )
    logger.debug("drift: %d of %d tested columns drifted (share %.3f)", len(drifted), len(tested), share)
    return report


def markdown_table(report: DriftReport, n: int = 10) -> str:
    """Markdown: a verdict line, then a table of the ``n`` most drifted columns."""
    if report.skipped_reason is not None:
        verdict = f"Dataset drift: not tested: {report.skipped_reason}"
    else:
        verdict = (
            f"Dataset drift: {'yes' if report.dataset_drift else 'no'}: "
            f"{len(report.drifted_columns)} of {report.tested_columns} columns drifted "
            f"(share {report.drift_share:.2f}, threshold {_fmt(report.drift_share_threshold)})"
        )
    lines = [
        verdict,
        "",
        "| column | kind | method | score | threshold | drifted |",
        "|---|---|---|---|---|---|",
    ]
    for c in report.most_drifted(n):
        name = str(c.column).replace("|", "\\|")
        lines.append(
            f"| {name} | {c.kind} | {c.method} | {_fmt(c.score)} | {_fmt(c.threshold)} "
            f"| {'yes' if c.drifted else 'no'} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- helpers


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _sample(rows: int, limit: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted positions of a uniform sample of ``limit`` rows without replacement, or None."""
    if rows <= limit:
        return None
    return np.sort(rng.choice(rows, size=limit, replace=False))


def _take(series: pd.Series, positions: np.ndarray | None) -> pd.Series:
    return series if positions is None else series.iloc[positions]


def _non_numeric(dtype: object) -> bool:
    return bool(pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype))


def _sorted_finite(series: pd.Series, positions: np.ndarray | None) -> np.ndarray:
    """The finite values of a numeric column (rows at ``positions``), as sorted float64.

    Missing values and ±inf are dropped. Sorted once here, the values cost scipy's tests
    (which sort again) and the distinct count far less.
    """
    if isinstance(series.dtype, np.dtype):  # plain NumPy column: index it without pandas
        values = series.to_numpy()
        values = (values if positions is None else values[positions]).astype(np.float64, copy=False)
    else:  # nullable extension dtypes (Int64, Float64): NA becomes NaN
        values = _take(series, positions).to_numpy(dtype=np.float64, na_value=np.nan)
    return np.sort(values[np.isfinite(values)])


def _distinct_sorted(values: np.ndarray) -> int:
    """How many distinct values a sorted, non-empty array holds."""
    return int(np.count_nonzero(values[1:] != values[:-1])) + 1


def _column_drift(
    name: str,
    reference: tuple[pd.Series, np.ndarray | None],
    current: tuple[pd.Series, np.ndarray | None],
    rules: DriftRules,
    *,
    large: bool,
    skipped_reason: str | None,
) -> ColumnDrift:
    ref_values: np.ndarray
    cur_values: np.ndarray
    kind: Kind
    if _non_numeric(reference[0].dtype) or _non_numeric(current[0].dtype):
        kind = "categorical"
        ref_values = _take(*reference).dropna().to_numpy(dtype=object)
        cur_values = _take(*current).dropna().to_numpy(dtype=object)
    else:
        ref_values, cur_values = _sorted_finite(*reference), _sorted_finite(*current)
        few = ref_values.size > 0 and _distinct_sorted(ref_values) <= rules.categorical_max_unique
        kind = "categorical" if few else "numeric"

    def untested(note: str) -> ColumnDrift:
        return ColumnDrift(name, kind, "none", None, None, drifted=False, note=note)

    if skipped_reason is not None:
        return untested(skipped_reason)
    empty = [side for side, v in (("reference", ref_values), ("batch", cur_values)) if v.size == 0]
    if empty:
        return untested(f"no non-missing values in the {' and the '.join(empty)}")

    method: Method
    if kind == "numeric":
        if large:
            method, threshold = "wasserstein", rules.wasserstein_threshold
            score = _normed_wasserstein(ref_values, cur_values)
        else:
            method, threshold = "ks", rules.ks_threshold
            score = _ks_p_value(ref_values, cur_values)
    else:
        ref_counts, cur_counts = _category_counts(ref_values, cur_values)
        if large:
            method, threshold = "jensenshannon", rules.jensenshannon_threshold
            score = _jensen_shannon(ref_counts, cur_counts)
        else:
            method, threshold = "chi2", rules.chi2_threshold
            score = _chi2_p_value(ref_counts, cur_counts)
    drifted = score < threshold if method in P_VALUE_METHODS else score >= threshold
    return ColumnDrift(name, kind, method, score, threshold, drifted=bool(drifted))


def _ks_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    with warnings.catch_warnings():
        # "Exact calculation unsuccessful. Switching to method=asymp": the p-value is still valid.
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(ks_2samp(reference, current).pvalue)
    return _clip_unit(p_value)


def _normed_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    distance = float(wasserstein_distance(reference, current))
    score = distance / max(float(np.std(reference)), _STD_FLOOR)
    # Only an overflow (values near the float64 limit) can make it infinite: drifted, finite.
    return score if math.isfinite(score) else float(np.finfo(np.float64).max)


def _category_counts(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts per category over the union of both sides' categories, in the same order."""
    codes, categories = pd.factorize(np.concatenate([reference, current]))
    k = len(categories)
    split = reference.size
    return np.bincount(codes[:split], minlength=k), np.bincount(codes[split:], minlength=k)


def _chi2_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    if reference.size == 1:  # one category on both sides, in the same proportion: no drift
        return 1.0
    from scipy.stats import chi2_contingency

    p_value = float(chi2_contingency(np.vstack([reference, current])).pvalue)
    return _clip_unit(p_value)


def _jensen_shannon(reference: np.ndarray, current: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    with np.errstate(invalid="ignore"):  # sqrt of a rounding-error negative for equal vectors
        distance = float(jensenshannon(reference / reference.sum(), current / current.sum(), base=2))
    return min(distance, 1.0) if math.isfinite(distance) else 0.0


def _clip_unit(p_value: float) -> float:
    return min(max(p_value, 0.0), 1.0) if math.isfinite(p_value) else 1.0
