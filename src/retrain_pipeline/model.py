"""Plain model functions: build the scikit-learn Pipeline, train, evaluate, decide promotion.

No file I/O and no Prefect or MLflow here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from retrain_pipeline.config import ModelConfig
from retrain_pipeline.data import DataSummary
from retrain_pipeline.estimators import estimator_class

Metrics = dict[str, float | None]


def build_pipeline(config: ModelConfig, *, impute: bool = True) -> Pipeline:
    """Optional imputation and scaling, then the configured estimator, in one Pipeline.

    ``impute`` False leaves out the imputer: validation already guarantees there is
    nothing to impute (``data.allow_missing_values: false``), and it costs a full copy.
    """
    estimator = estimator_class(config.estimator)(**config.hyperparameters)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=config.random_state)
    steps: list[tuple[str, object]] = []
    if impute:
        steps.append(("impute", SimpleImputer(strategy=config.impute_strategy)))
    if config.scale_features:
        steps.append(("scale", StandardScaler()))
    steps.append(("model", estimator))
    return Pipeline(steps)


def train_model(
    config: ModelConfig, features: pd.DataFrame, target: pd.Series, *, impute: bool = True
) -> Pipeline:
    """A fitted Pipeline for ``features`` -> ``target``."""
    return build_pipeline(config, impute=impute).fit(features, target)


# --------------------------------------------------------------------------- incremental training

IncrementalMethod = Literal["partial_fit", "warm_start"]


def incremental_method(estimator: Any) -> IncrementalMethod | None:
    """How ``estimator`` learns more data without forgetting what it learned: ``partial_fit``
    (SGDClassifier, the naive Bayes classifiers, ...), ``warm_start`` (an ensemble that grows:
    forests, gradient boosting, bagging), or None."""
    if callable(getattr(estimator, "partial_fit", None)):
        return "partial_fit"
    if _growth_parameter(estimator) is not None:
        return "warm_start"
    return None


def _growth_parameter(estimator: Any) -> str | None:
    """The size parameter a ``warm_start`` ensemble grows by: ``n_estimators`` (forests,
    gradient boosting, bagging: more trees) or ``max_iter`` (HistGradientBoosting: more
    iterations). Not LogisticRegression's ``warm_start``, which only starts a new fit from
    the old coefficients and forgets the old data."""
    from sklearn.ensemble import BaseEnsemble, HistGradientBoostingClassifier

    params = estimator.get_params()
    if "warm_start" not in params:
        return None
    if isinstance(estimator, BaseEnsemble) and "n_estimators" in params:
        return "n_estimators"
    if isinstance(estimator, HistGradientBoostingClassifier):
        return "max_iter"
    return None


@dataclass(frozen=True)
class Trained:
    """A trained model and how: from scratch, or continued from the champion."""

    model: Pipeline
    continued_from: str | None  # the champion version it continued from; None: from scratch
    learned: tuple[int, ...]  # the batches whose train rows it learned in this run
    summary: DataSummary  # rows it learned (train) and was scored on (holdout)
    how: str  # one line for the run's log

    def lineage(self, training: str) -> dict[str, Any]:
        """What the training-data manifest and the MLflow run record of how it was trained."""
        return {
            "training": training,
            "continued_from": self.continued_from,
            "learned_batches": list(self.learned),
        }


def cannot_continue(
    config: ModelConfig, champion: Any, features: pd.DataFrame, *, impute: bool
) -> str | None:
    """Why the model cannot continue from ``champion`` (None: it can): no champion, another
    estimator, other preprocessing steps, hyperparameters or feature columns."""
    if champion is None:
        return "no champion yet"
    fresh = build_pipeline(config, impute=impute)
    if not isinstance(champion, Pipeline) or list(champion.named_steps) != list(fresh.named_steps):
        steps = list(champion.named_steps) if isinstance(champion, Pipeline) else type(champion).__name__
        return f"its steps are {steps}, the params give {list(fresh.named_steps)}"
    old, new = champion[-1], fresh[-1]
    if type(old) is not type(new):
        return f"it is a {type(old).__name__}, the params give {type(new).__name__}"
    ignored = (_growth_parameter(new), "warm_start", "n_jobs", "verbose")
    before, after = old.get_params(), new.get_params()
    changed = sorted(k for k in after if k not in ignored and repr(before.get(k)) != repr(after[k]))
    if changed:
        return f"its hyperparameters {changed} differ from the params'"
    names = getattr(champion, "feature_names_in_", None)
    if names is None or list(names) != [str(c) for c in features.columns]:
        return "it was trained on other feature columns"
    return None


def continue_training(
    config: ModelConfig,
    champion: Pipeline,
    features: pd.DataFrame,
    target: pd.Series,
    classes: Sequence[int | str],
) -> Pipeline:
    """A copy of ``champion`` that has also learned ``features`` -> ``target``; the champion
    itself is left as it was (it is still compared with).

    The preprocessing steps keep what they learned first (the new rows are transformed as the
    champion transforms them); the estimator learns the new rows by ``partial_fit``, or by
    ``warm_start`` growing its ensemble by the configured size (``n_estimators`` or
    ``max_iter`` of ``model.hyperparameters``, else scikit-learn's default).
    """
    model = copy.deepcopy(champion)
    estimator = model[-1]
    rows = model[:-1].transform(features) if len(model) > 1 else features
    if incremental_method(estimator) == "partial_fit":
        estimator.partial_fit(rows, target, classes=np.asarray(classes))
        return model
    growth = _growth_parameter(estimator)
    if growth is None:
        raise ValueError(f"{type(estimator).__name__} can neither partial_fit nor warm_start")
    default = build_pipeline(config)[-1].get_params()[growth]
    warm_start = estimator.get_params()["warm_start"]
    estimator.set_params(warm_start=True, **{growth: estimator.get_params()[growth] + default})
    estimator.fit(rows, target)
    estimator.set_params(warm_start=warm_start)
    return model


def evaluate_model(
    model: ClassifierMixin, features: pd.DataFrame, target: pd.Series, positive_label: int | str
) -> Metrics:
    """Accuracy, precision, recall, F1 and ROC AUC (None when undefined: one class only)."""
    classes = np.asarray(model.classes_)
    if hasattr(model, "predict_proba"):  # one pass: what predict() does, from the same probabilities
        probabilities = np.asarray(model.predict_proba(features))
        predicted = classes[probabilities.argmax(axis=1)]
        scores = probabilities[:, list(classes).index(positive_label)]
    else:
        predicted = np.asarray(model.predict(features))
        decision = np.asarray(model.decision_function(features))
        scores = decision if classes[1] == positive_label else -decision
    binary = {"pos_label": positive_label, "zero_division": 0}
    metrics: Metrics = {
        "accuracy": float(accuracy_score(target, predicted)),
        "precision": float(precision_score(target, predicted, **binary)),
        "recall": float(recall_score(target, predicted, **binary)),
        "f1": float(f1_score(target, predicted, **binary)),
        "roc_auc": None,
    }
    if target.nunique() == 2:
        metrics["roc_auc"] = float(roc_auc_score(target == positive_label, scores))
    return metrics


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(
    new: Mapping[str, float | None],
    champion: Mapping[str, float | None] | None,
    metric: str,
    tolerance: float,
) -> PromotionDecision:
    """Promote when ``new[metric] >= champion[metric] - tolerance``; always without a champion."""
    if champion is None:
        return PromotionDecision(True, "first model: no champion yet")
    new_score, champion_score = new.get(metric), champion.get(metric)
    if champion_score is None or _undefined(champion_score):
        return PromotionDecision(True, f"champion {metric} is undefined on this holdout")
    if new_score is None or _undefined(new_score):
        return PromotionDecision(False, f"new model {metric} is undefined on this holdout")
    threshold = champion_score - tolerance
    if new_score >= threshold or math.isclose(new_score, threshold, rel_tol=0, abs_tol=1e-12):
        return PromotionDecision(
            True, f"{metric} {new_score:.4f} >= champion {champion_score:.4f} - tolerance {tolerance:g}"
        )
    return PromotionDecision(
        False, f"{metric} {new_score:.4f} < champion {champion_score:.4f} - tolerance {tolerance:g}"
    )


def _undefined(value: float) -> bool:
    return math.isnan(value)


@dataclass(frozen=True)
class Evaluation:
    """The new model and the champion scored on the same holdout, and the promotion decision."""

    metrics: Metrics
    champion_metrics: Metrics | None
    decision: PromotionDecision
    champion_problem: str | None = None  # why the champion could not score the holdout


def evaluate_against_champion(
    new: ClassifierMixin,
    champion: ClassifierMixin | None,
    champion_version: str | None,
    features: pd.DataFrame,
    target: pd.Series,
    *,
    positive_label: int | str,
    metric: str,
    tolerance: float,
) -> Evaluation:
    """Score both models on the holdout and decide (:func:`decide_promotion`).

    A champion that cannot score this holdout at all (trained on other feature columns, say)
    cannot be compared with: the new model is promoted, and the reason says so.
    """
    metrics = evaluate_model(new, features, target, positive_label)
    if champion is None:
        return Evaluation(metrics, None, decide_promotion(metrics, None, metric, tolerance))
    try:
        champion_metrics = evaluate_model(champion, features, target, positive_label)
    except ValueError as exc:
        decision = PromotionDecision(True, f"champion v{champion_version} cannot score this data")
        return Evaluation(metrics, None, decision, str(exc))
    return Evaluation(
        metrics, champion_metrics, decide_promotion(metrics, champion_metrics, metric, tolerance)
    )
