"""Plain model functions: build the scikit-learn Pipeline, train, evaluate, decide promotion.

No file I/O and no Prefect or MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from retrain_pipeline.config import ModelConfig, estimator_class

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
