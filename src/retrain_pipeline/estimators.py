"""The scikit-learn estimators ``model.estimator`` can name: a short name or a dotted class path,
imported only when asked for (scikit-learn is heavy)."""

from __future__ import annotations

import importlib
from typing import Any

#: Short estimator names accepted in ``model.estimator``; a dotted class path also works.
ESTIMATORS: dict[str, str] = {
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "extra_trees": "sklearn.ensemble.ExtraTreesClassifier",
    "gradient_boosting": "sklearn.ensemble.GradientBoostingClassifier",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
}


def instantiate(name: str) -> Any:
    """An estimator with default arguments; one that needs arguments cannot be configured."""
    cls = estimator_class(name)
    try:
        return cls()
    except TypeError as exc:
        raise ValueError(f"estimator {name!r} cannot be created without arguments: {exc}") from exc


def estimator_class(name: str) -> type:
    """The classifier class for a short name from :data:`ESTIMATORS` or a dotted class path."""
    dotted = ESTIMATORS.get(name, name)
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(
            f"unknown estimator {name!r}: use one of {sorted(ESTIMATORS)} "
            "or a dotted class path such as sklearn.svm.SVC"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import estimator {dotted!r}: {exc}") from exc
    if not isinstance(cls, type):
        raise ValueError(f"estimator {dotted!r} is not a class")
    return cls
