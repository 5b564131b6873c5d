"""Seeded synthetic batches in the pipeline's landing format.

Each batch is a DataFrame with numeric feature columns ``f00``, ``f01``, ... and an integer
``target`` (0/1). The features are a realistic mix: gaussian, log-normal (skewed), uniform,
small integer counts and a few columns correlated with others. The target comes from a
noisy logistic function of some features, so a model can learn it but not perfectly; every
batch holds both classes (at least two rows of each). Batch ``N`` depends only on ``seed``
and ``N``, never on how many batches are made, and the feature means drift slightly from
batch to batch, as production data does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

TARGET = "target"
MIN_PER_CLASS = 2


@dataclass(frozen=True)
class FeatureLayout:
    """How many columns of each kind a batch has (in this order)."""

    gaussian: int
    lognormal: int
    uniform: int
    counts: int
    correlated: int

    @classmethod
    def for_features(cls, n_features: int) -> FeatureLayout:
        """The kinds in fixed proportions: 30 features = 10 + 6 + 4 + 5 + 5."""
        if n_features < 5:
            raise ValueError(f"need at least 5 features (one of each kind), got {n_features}")
        lognormal = max(1, n_features // 5)
        uniform = max(1, (n_features * 2) // 15)
        counts = max(1, n_features // 6)
        correlated = max(1, n_features // 6)
        gaussian = n_features - lognormal - uniform - counts - correlated
        return cls(gaussian, lognormal, uniform, counts, correlated)


def feature_names(n_features: int) -> list[str]:
    """``f00``, ``f01``, ... (zero-padded to at least two digits)."""
    width = max(2, len(str(n_features - 1)))
    return [f"f{i:0{width}d}" for i in range(n_features)]


def make_batches(n_batches: int, rows: int, n_features: int = 30, seed: int = 42) -> list[pd.DataFrame]:
    """``n_batches`` batches (batch 1 first) of ``rows`` rows each."""
    if rows < 2 * MIN_PER_CLASS:
        raise ValueError(f"a batch needs at least {2 * MIN_PER_CLASS} rows, got {rows}")
    layout = FeatureLayout.for_features(n_features)
    return [_make_batch(number, rows, layout, seed) for number in range(1, n_batches + 1)]


def _make_batch(number: int, rows: int, layout: FeatureLayout, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, number])
    drift = 0.02 * (number - 1)
    blocks = [
        _gaussian(rng, rows, layout.gaussian, drift),
        _lognormal(rng, rows, layout.lognormal),
        _uniform(rng, rows, layout.uniform),
        _counts(rng, rows, layout.counts),
    ]
    base = np.column_stack(blocks)
    features = np.column_stack([base, _correlated(rng, base, layout)])
    frame = pd.DataFrame(features, columns=feature_names(features.shape[1]))
    count_start = layout.gaussian + layout.lognormal + layout.uniform
    for name in frame.columns[count_start : count_start + layout.counts]:
        frame[name] = frame[name].astype("int64")  # counts arrive as integers
    frame[TARGET] = _target(rng, features, layout)
    return frame


def _gaussian(rng: np.random.Generator, rows: int, k: int, drift: float) -> np.ndarray:
    means = np.linspace(-2.0, 5.0, k) + drift
    scales = np.linspace(0.5, 3.0, k)
    return rng.normal(means, scales, size=(rows, k))


def _lognormal(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return rng.lognormal(mean=np.linspace(0.0, 2.0, k), sigma=np.linspace(0.4, 1.2, k), size=(rows, k))


def _uniform(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return rng.uniform(low=np.linspace(-1.0, 0.0, k), high=np.linspace(1.0, 100.0, k), size=(rows, k))


def _counts(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return rng.poisson(lam=np.linspace(0.5, 6.0, k), size=(rows, k)).astype(np.float64)


def _correlated(rng: np.random.Generator, base: np.ndarray, layout: FeatureLayout) -> np.ndarray:
    """Each column is a noisy linear function of one earlier column (correlation about 0.9)."""
    sources = np.arange(layout.correlated) * 3 % base.shape[1]
    columns = []
    for j, source in enumerate(sources):
        x = base[:, source]
        spread = x.std() or 1.0
        sign = -1.0 if j % 2 else 1.0
        columns.append(sign * 1.5 * x + rng.normal(0.0, 0.8 * spread, size=len(x)) + j)
    return np.column_stack(columns)


def _target(rng: np.random.Generator, features: np.ndarray, layout: FeatureLayout) -> np.ndarray:
    """Bernoulli draws from a logistic function of a few standardised features."""
    g, ln, u = layout.gaussian, layout.lognormal, layout.uniform
    picks = {0: 1.2, min(2, g - 1): -0.8, g: 0.7, g + ln: 0.6, g + ln + u: 0.5}
    standardised = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-12)
    logit = sum(weight * standardised[:, col] for col, weight in picks.items())
    logit = logit + rng.normal(0.0, 0.5, size=len(features))
    labels = (rng.uniform(size=len(features)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return _both_classes(labels)


def _both_classes(labels: np.ndarray) -> np.ndarray:
    """Flip the fewest labels needed so each class has at least MIN_PER_CLASS rows."""
    labels = labels.copy()
    for label in (0, 1):
        missing = MIN_PER_CLASS - int((labels == label).sum())
        if missing > 0:
            flip = np.flatnonzero(labels != label)[:missing]
            labels[flip] = label
    return labels


def write_landing(folder: Path, batches: Sequence[pd.DataFrame], first: int = 1) -> list[Path]:
    """Write ``batch_<N>.parquet`` files (N from ``first``) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, frame in enumerate(batches, start=first):
        path = folder / f"batch_{number}.parquet"
        frame.to_parquet(path, index=False)
        paths.append(path)
    logger.debug("Wrote %d landing batches to %s", len(paths), folder)
    return paths
