"""Unit tests for retrain_pipeline.model: pipeline construction, training, metrics, promotion."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from retrain_pipeline.config import METRIC_NAMES, ModelConfig
from retrain_pipeline.model import (
    PromotionDecision,
    build_pipeline,
    cannot_continue,
    continue_training,
    decide_promotion,
    evaluate_model,
    incremental_method,
    train_model,
)


def separable(n: int = 80, seed: int = 0, labels: tuple = (0, 1)) -> tuple[pd.DataFrame, pd.Series]:
    """Two features; the label is the sign of x0 (with a margin), so any sane model gets it right."""
    rng = np.random.default_rng(seed)
    x0 = np.concatenate([rng.uniform(-3, -0.5, n // 2), rng.uniform(0.5, 3, n - n // 2)])
    features = pd.DataFrame({"x0": x0, "x1": rng.normal(size=n)})
    target = pd.Series(np.where(x0 > 0, labels[1], labels[0]), name="target")
    order = rng.permutation(n)
    return features.iloc[order].reset_index(drop=True), target.iloc[order].reset_index(drop=True)


FAST_FOREST = {"n_estimators": 10, "max_depth": 3, "n_jobs": 1}


# --------------------------------------------------------------------------- build_pipeline


def test_build_pipeline_default_steps() -> None:
    pipeline = build_pipeline(ModelConfig(hyperparameters=FAST_FOREST, random_state=7))

    assert [name for name, _ in pipeline.steps] == ["impute", "scale", "model"]
    assert isinstance(pipeline.named_steps["impute"], SimpleImputer)
    assert pipeline.named_steps["impute"].strategy == "median"
    assert isinstance(pipeline.named_steps["scale"], StandardScaler)
    model = pipeline.named_steps["model"]
    assert isinstance(model, RandomForestClassifier)
    assert model.random_state == 7
    assert (model.n_estimators, model.max_depth, model.n_jobs) == (10, 3, 1)


def test_build_pipeline_without_scaler() -> None:
    pipeline = build_pipeline(ModelConfig(scale_features=False, impute_strategy="most_frequent"))
    assert [name for name, _ in pipeline.steps] == ["impute", "model"]
    assert pipeline.named_steps["impute"].strategy == "most_frequent"


def test_build_pipeline_logistic_regression() -> None:
    config = ModelConfig(estimator="logistic_regression", hyperparameters={"C": 0.5}, random_state=3)
    model = build_pipeline(config).named_steps["model"]
    assert isinstance(model, LogisticRegression)
    assert (model.C, model.random_state) == (0.5, 3)


def test_build_pipeline_estimator_without_random_state() -> None:
    config = ModelConfig(
        estimator="sklearn.neighbors.KNeighborsClassifier", hyperparameters={"n_neighbors": 3}
    )
    model = build_pipeline(config).named_steps["model"]
    assert isinstance(model, KNeighborsClassifier)
    assert "random_state" not in model.get_params()


def test_build_pipeline_returns_a_fresh_unfitted_pipeline() -> None:
    config = ModelConfig(hyperparameters=FAST_FOREST)
    first, second = build_pipeline(config), build_pipeline(config)
    assert first.named_steps["model"] is not second.named_steps["model"]
    assert not hasattr(first.named_steps["model"], "classes_")


# --------------------------------------------------------------------------- train and evaluate


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(hyperparameters=FAST_FOREST),
        ModelConfig(estimator="logistic_regression"),
        ModelConfig(estimator="sklearn.svm.LinearSVC"),  # no predict_proba: decision_function scores
    ],
    ids=["random_forest", "logistic_regression", "linear_svc"],
)
def test_train_and_evaluate_on_separable_data(config: ModelConfig) -> None:
    features, target = separable(seed=1)
    holdout_features, holdout_target = separable(n=40, seed=2)

    model = train_model(config, features, target)
    metrics = evaluate_model(model, holdout_features, holdout_target, positive_label=1)

    assert list(metrics) == list(METRIC_NAMES)
    for name, value in metrics.items():
        assert isinstance(value, float), name
        assert 0.0 <= value <= 1.0, name
    assert metrics["accuracy"] >= 0.9
    assert metrics["roc_auc"] >= 0.9


def test_training_is_reproducible() -> None:
    features, target = separable(seed=3)
    config = ModelConfig(hyperparameters=FAST_FOREST, random_state=5)
    first = train_model(config, features, target).predict_proba(features)
    second = train_model(config, features, target).predict_proba(features)
    np.testing.assert_array_equal(first, second)


def test_training_handles_missing_values_by_imputation() -> None:
    features, target = separable(seed=4)
    features.loc[::5, "x1"] = np.nan
    model = train_model(ModelConfig(hyperparameters=FAST_FOREST), features, target)
    assert len(model.predict(features)) == len(features)


def test_roc_auc_is_none_when_the_holdout_has_one_class() -> None:
    features, target = separable(seed=5)
    model = train_model(ModelConfig(hyperparameters=FAST_FOREST), features, target)
    positives = target == 1

    metrics = evaluate_model(model, features[positives], target[positives], positive_label=1)

    assert metrics["roc_auc"] is None
    assert metrics["accuracy"] == 1.0
    assert metrics["recall"] == 1.0


def test_precision_is_zero_not_an_error_without_positive_predictions() -> None:
    features, target = separable(seed=6)
    model = train_model(ModelConfig(hyperparameters=FAST_FOREST), features, target)
    negatives = target == 0

    metrics = evaluate_model(model, features[negatives], target[negatives], positive_label=1)

    assert metrics["precision"] == 0.0
    assert metrics["recall"] == 0.0
    assert metrics["f1"] == 0.0
    assert metrics["roc_auc"] is None


@pytest.mark.parametrize(
    "config",
    [ModelConfig(hyperparameters=FAST_FOREST), ModelConfig(estimator="sklearn.svm.LinearSVC")],
    ids=["predict_proba", "decision_function"],
)
def test_string_class_labels(config: ModelConfig) -> None:
    features, target = separable(seed=7, labels=("no", "yes"))
    holdout_features, holdout_target = separable(n=40, seed=8, labels=("no", "yes"))

    model = train_model(config, features, target)
    metrics = evaluate_model(model, holdout_features, holdout_target, positive_label="yes")

    assert set(model.predict(holdout_features)) <= {"no", "yes"}
    assert metrics["accuracy"] >= 0.9
    assert metrics["roc_auc"] >= 0.9


@pytest.mark.parametrize(
    "config",
    [ModelConfig(hyperparameters=FAST_FOREST), ModelConfig(estimator="sklearn.svm.LinearSVC")],
    ids=["predict_proba", "decision_function"],
)
def test_positive_label_orients_scores(config: ModelConfig) -> None:
    """ROC AUC is symmetric: scoring class 0 as positive must give the same AUC, not 1 - AUC."""
    features, target = separable(seed=9)
    noisy = target.where(np.random.default_rng(0).random(len(target)) > 0.15, 1 - target)
    model = train_model(config, features, noisy)

    auc_for_1 = evaluate_model(model, features, noisy, positive_label=1)["roc_auc"]
    auc_for_0 = evaluate_model(model, features, noisy, positive_label=0)["roc_auc"]

    assert auc_for_1 == pytest.approx(auc_for_0)
    assert auc_for_1 > 0.5


def test_positive_label_changes_precision_and_recall() -> None:
    class Constant:
        """Always predicts 1; a stand-in model with the classifier interface evaluate_model uses."""

        classes_ = np.array([0, 1])

        def predict(self, features: pd.DataFrame) -> np.ndarray:
            return np.ones(len(features), dtype=int)

        def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
            return np.tile([0.2, 0.8], (len(features), 1))

    features = pd.DataFrame({"x": range(4)})
    target = pd.Series([1, 1, 1, 0])

    for_1 = evaluate_model(Constant(), features, target, positive_label=1)
    for_0 = evaluate_model(Constant(), features, target, positive_label=0)

    assert for_1 == {
        "accuracy": 0.75,
        "precision": 0.75,
        "recall": 1.0,
        "f1": pytest.approx(6 / 7),
        "roc_auc": 0.5,
    }
    assert (for_0["precision"], for_0["recall"], for_0["f1"]) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- decide_promotion

NAN = float("nan")


@pytest.mark.parametrize(
    ("new", "champion", "tolerance", "promote", "reason"),
    [
        pytest.param(0.1, None, 0.0, True, "first model: no champion yet", id="no-champion"),
        pytest.param(0.8, 0.8, 0.0, True, "f1 0.8000 >= champion 0.8000 - tolerance 0", id="equal"),
        pytest.param(0.9, 0.8, 0.0, True, "f1 0.9000 >= champion 0.8000", id="better"),
        pytest.param(0.79, 0.8, 0.0, False, "f1 0.7900 < champion 0.8000 - tolerance 0", id="worse"),
        pytest.param(
            0.78, 0.8, 0.05, True, "f1 0.7800 >= champion 0.8000 - tolerance 0.05", id="within-tolerance"
        ),
        pytest.param(
            0.74, 0.8, 0.05, False, "f1 0.7400 < champion 0.8000 - tolerance 0.05", id="below-tolerance"
        ),
        pytest.param(0.85, 0.9, 0.05, True, "f1 0.8500 >= champion", id="at-tolerance-exact-float"),
        pytest.param(0.0, 1.0, 1.0, True, ">=", id="tolerance-1"),
        pytest.param(
            0.5, None, 0.0, True, "champion f1 is undefined on this holdout", id="champion-metric-none"
        ),
        pytest.param(
            0.5, NAN, 0.0, True, "champion f1 is undefined on this holdout", id="champion-metric-nan"
        ),
        pytest.param(
            None, 0.5, 0.0, False, "new model f1 is undefined on this holdout", id="new-metric-none"
        ),
        pytest.param(NAN, 0.5, 0.0, False, "new model f1 is undefined on this holdout", id="new-metric-nan"),
        pytest.param(None, None, 0.0, True, "champion f1 is undefined", id="both-none"),
    ],
)
def test_decide_promotion(
    new: float | None, champion: float | None, tolerance: float, promote: bool, reason: str
) -> None:
    champion_metrics = None if champion is None and reason.startswith("first") else {"f1": champion}

    decision = decide_promotion({"f1": new, "accuracy": 1.0}, champion_metrics, "f1", tolerance)

    assert isinstance(decision, PromotionDecision)
    assert decision.promote is promote
    assert reason in decision.reason


def test_decide_promotion_uses_only_the_primary_metric() -> None:
    new = {"accuracy": 0.5, "roc_auc": 0.95}
    champion = {"accuracy": 0.99, "roc_auc": 0.9}
    assert decide_promotion(new, champion, "roc_auc", 0.0).promote is True
    assert decide_promotion(new, champion, "accuracy", 0.0).promote is False


def test_decide_promotion_metric_missing_from_champion() -> None:
    decision = decide_promotion({"f1": 0.5}, {"accuracy": 0.9}, "f1", 0.0)
    assert decision.promote is True
    assert "undefined" in decision.reason


@pytest.mark.parametrize(("new", "champion", "tolerance"), [(0.7, 0.8, 0.1), (0.6, 0.9, 0.3)])
def test_promotion_exactly_at_the_tolerance_boundary(new: float, champion: float, tolerance: float) -> None:
    assert not math.isclose(new, champion)  # a real boundary case, not equality
    decision = decide_promotion({"accuracy": new}, {"accuracy": champion}, "accuracy", tolerance)
    assert decision.promote is True, decision.reason


def test_pipeline_without_imputer_when_nothing_can_be_missing() -> None:
    from retrain_pipeline.config import ModelConfig as _ModelConfig

    config = _ModelConfig.model_validate({}, context={"root": Path("/tmp")})
    assert [name for name, _ in build_pipeline(config, impute=False).steps] == ["scale", "model"]
    assert [name for name, _ in build_pipeline(config).steps] == ["impute", "scale", "model"]


@pytest.mark.parametrize("estimator", ["random_forest", "logistic_regression", "sklearn.svm.LinearSVC"])
def test_evaluate_matches_predict(estimator: str) -> None:
    from sklearn.metrics import accuracy_score as _accuracy

    from retrain_pipeline.config import ModelConfig as _ModelConfig

    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(200, 4)), columns=list("abcd"))
    target = pd.Series((features["a"] + rng.normal(scale=0.8, size=200) > 0).astype(int))
    config = _ModelConfig.model_validate({"estimator": estimator}, context={"root": Path("/tmp")})
    fitted = train_model(config, features, target, impute=False)
    metrics = evaluate_model(fitted, features, target, 1)
    assert metrics["accuracy"] == pytest.approx(_accuracy(target, fitted.predict(features)))
    assert metrics["roc_auc"] is not None and 0.5 < metrics["roc_auc"] <= 1.0


# --------------------------------------------------------------------------- incremental training


@pytest.mark.parametrize(
    ("estimator", "method"),
    [
        ("sklearn.linear_model.SGDClassifier", "partial_fit"),
        ("sklearn.naive_bayes.GaussianNB", "partial_fit"),
        ("random_forest", "warm_start"),
        ("extra_trees", "warm_start"),
        ("gradient_boosting", "warm_start"),
        ("hist_gradient_boosting", "warm_start"),
        ("logistic_regression", None),  # its warm_start only starts a new fit from old coefficients
        ("sklearn.neighbors.KNeighborsClassifier", None),
    ],
)
def test_incremental_method_of_each_estimator(estimator: str, method: str | None) -> None:
    assert incremental_method(build_pipeline(ModelConfig(estimator=estimator))[-1]) == method


def _halves() -> tuple[tuple[pd.DataFrame, pd.Series], tuple[pd.DataFrame, pd.Series]]:
    features, target = separable(n=160, seed=4)
    return (features.iloc[:80], target.iloc[:80]), (features.iloc[80:], target.iloc[80:])


@pytest.mark.parametrize(
    ("estimator", "hyperparameters", "size"),
    [
        ("random_forest", FAST_FOREST, lambda m: len(m[-1].estimators_)),
        ("hist_gradient_boosting", {"max_iter": 7}, lambda m: m[-1].n_iter_),
    ],
)
def test_a_warm_start_ensemble_grows_by_its_configured_size_and_the_champion_stays(
    estimator: str, hyperparameters: dict, size: Callable[[Pipeline], int]
) -> None:
    config = ModelConfig(estimator=estimator, hyperparameters=hyperparameters)
    (first_x, first_y), (new_x, new_y) = _halves()
    champion = train_model(config, first_x, first_y)
    before = size(champion)

    grown = continue_training(config, champion, new_x, new_y, (0, 1))

    assert size(champion) == before  # the champion is compared with: never changed
    assert size(grown) == 2 * before
    assert grown[-1].get_params()["warm_start"] is False
    assert (grown.predict(new_x) == new_y).mean() > 0.9
    assert cannot_continue(config, grown, new_x, impute=True) is None  # the next batch continues


def test_partial_fit_learns_the_new_rows_with_the_champions_scaling() -> None:
    config = ModelConfig(estimator="sklearn.linear_model.SGDClassifier", hyperparameters={"max_iter": 20})
    (first_x, first_y), (new_x, new_y) = _halves()
    champion = train_model(config, first_x, first_y)
    coefficients = champion[-1].coef_.copy()

    continued = continue_training(config, champion, new_x, new_y, (0, 1))

    np.testing.assert_array_equal(champion[-1].coef_, coefficients)
    assert not np.array_equal(continued[-1].coef_, coefficients)
    np.testing.assert_array_equal(continued.named_steps["scale"].mean_, champion.named_steps["scale"].mean_)
    assert (continued.predict(new_x) == new_y).mean() > 0.9


def test_cannot_continue_says_why() -> None:
    config = ModelConfig(estimator="random_forest", hyperparameters=FAST_FOREST)
    (first_x, first_y), _ = _halves()
    champion = train_model(config, first_x, first_y)
    deeper = ModelConfig(estimator="random_forest", hyperparameters={**FAST_FOREST, "max_depth": 5})
    trees = ModelConfig(estimator="extra_trees", hyperparameters=FAST_FOREST)
    unscaled = ModelConfig(estimator="random_forest", hyperparameters=FAST_FOREST, scale_features=False)

    assert cannot_continue(config, None, first_x, impute=True) == "no champion yet"
    assert cannot_continue(config, champion, first_x, impute=True) is None
    assert cannot_continue(deeper, champion, first_x, impute=True) == (
        "its hyperparameters ['max_depth'] differ from the params'"
    )
    assert cannot_continue(trees, champion, first_x, impute=True) == (
        "it is a RandomForestClassifier, the params give ExtraTreesClassifier"
    )
    assert "its steps are ['impute', 'scale', 'model']" in str(
        cannot_continue(unscaled, champion, first_x, impute=True)
    )
    assert cannot_continue(config, champion, first_x.rename(columns={"x1": "z"}), impute=True) == (
        "it was trained on other feature columns"
    )
    more_jobs = ModelConfig(estimator="random_forest", hyperparameters={**FAST_FOREST, "n_jobs": 2})
    assert cannot_continue(more_jobs, champion, first_x, impute=True) is None  # not the model itself
