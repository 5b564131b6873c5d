"""Unit tests for retrain_pipeline.config, .params and .urls: defaults, paths, tracking URIs, failures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from retrain_pipeline.config import ALERT_EVENTS, Settings
from retrain_pipeline.errors import ConfigError
from retrain_pipeline.estimators import ESTIMATORS, estimator_class
from retrain_pipeline.params import load_settings, settings_from_mapping
from retrain_pipeline.urls import redact_url, redact_webhook, resolve_tracking_uri

# (section, key, default relative value) of every path setting in params.yaml
PATH_SETTINGS = [
    ("data", "raw_file", "data/raw/breast_cancer.csv"),
    ("data", "landing_dir", "data/landing"),
    ("data", "processed_dir", "data/processed"),
    ("data", "quarantine_dir", "data/quarantine"),
    ("mlflow", "artifact_location", "mlartifacts"),
    ("paths", "state_file", "batch_state.json"),
    ("paths", "models_dir", "models"),
    ("paths", "metrics_dir", "metrics"),
]


def setting(settings: Settings, section: str, key: str) -> Any:
    return getattr(getattr(settings, section), key)


# --------------------------------------------------------------------------- defaults


def test_defaults_without_params_file(tmp_path: Path) -> None:
    settings = load_settings(None, default_root=tmp_path)

    root = tmp_path.resolve()
    assert settings.root == root
    assert settings.params_file is None
    assert settings.data.source == "sliced"
    assert settings.data.batch_size == 50
    assert settings.data.target_column == "target"
    assert settings.data.classes == (0, 1)
    assert settings.data.feature_columns is None
    assert settings.data.allow_missing_values is False
    assert settings.data.max_abs_value == 1e12
    assert settings.model.estimator == "random_forest"
    assert settings.model.hyperparameters == {}
    assert settings.model.random_state == 42
    assert settings.model.impute_strategy == "median"
    assert settings.model.scale_features is True
    assert settings.evaluation.holdout_fraction == 0.2
    assert settings.evaluation.primary_metric == "f1"
    assert settings.evaluation.promotion_tolerance == 0.0
    assert settings.mlflow.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert settings.mlflow.is_remote is False
    assert settings.automation.cron_schedule == "*/2 * * * *"
    assert settings.automation.timezone == "UTC"
    assert settings.automation.max_batches == 8


@pytest.mark.parametrize(("section", "key", "relative"), PATH_SETTINGS)
def test_default_paths_are_under_the_default_root(
    tmp_path: Path, section: str, key: str, relative: str
) -> None:
    settings = load_settings(None, default_root=tmp_path)
    assert setting(settings, section, key) == tmp_path.resolve() / relative


def test_no_params_file_and_no_root_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no params file given and no project root"):
        load_settings(None)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_params_file_means_defaults(tmp_path: Path, text: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text, encoding="utf-8")

    settings = load_settings(params)

    assert settings.params_file == params.resolve()
    assert settings.root == tmp_path.resolve()
    assert settings.data.batch_size == 50


def test_values_from_the_file_are_used(tmp_path: Path, params_writer) -> None:
    params = params_writer(
        tmp_path,
        {
            "data": {
                "source": "landing",
                "batch_size": 7,
                "target_column": "label",
                "classes": ["no", "yes"],
                "feature_columns": ["a", "b"],
                "allow_missing_values": True,
                "max_abs_value": None,
            },
            "model": {
                "estimator": "logistic_regression",
                "hyperparameters": {"C": 0.5, "max_iter": 200},
                "random_state": 3,
                "scale_features": False,
            },
            "evaluation": {"holdout_fraction": 0.3, "primary_metric": "roc_auc", "promotion_tolerance": 0.01},
            "automation": {"cron_schedule": "0 * * * *", "timezone": "Europe/Berlin", "max_batches": 3},
        },
    )

    settings = load_settings(params)

    assert settings.data.source == "landing"
    assert settings.data.batch_size == 7
    assert settings.data.classes == ("no", "yes")
    assert settings.data.feature_columns == ("a", "b")
    assert settings.data.max_abs_value is None
    assert settings.model.hyperparameters == {"C": 0.5, "max_iter": 200}
    assert settings.evaluation.primary_metric == "roc_auc"
    assert settings.automation.timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    "estimator", ["random_forest", "hist_gradient_boosting", "sklearn.linear_model.SGDClassifier"]
)
def test_incremental_training_with_an_estimator_that_can_learn_more(tmp_path: Path, estimator: str) -> None:
    settings = settings_from_mapping({"model": {"estimator": estimator, "training": "incremental"}}, tmp_path)
    assert settings.model.training == "incremental"
    assert settings_from_mapping({}, tmp_path).model.training == "full"


def test_dotted_estimator_class_path_is_accepted(tmp_path: Path) -> None:
    settings = settings_from_mapping({"model": {"estimator": "sklearn.svm.SVC"}}, tmp_path)
    assert settings.model.estimator == "sklearn.svm.SVC"


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_short_estimator_name_is_a_class(name: str) -> None:
    assert isinstance(estimator_class(name), type)


# --------------------------------------------------------------------------- path resolution


@pytest.mark.parametrize(("section", "key", "relative"), PATH_SETTINGS)
def test_relative_paths_resolve_against_the_params_folder_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer, section: str, key: str, relative: str
) -> None:
    project = tmp_path / "project" / "nested"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    params = params_writer(project, {section: {key: f"sub/../custom/{Path(relative).name}"}})
    monkeypatch.chdir(elsewhere)

    settings = load_settings(params)

    expected = project.resolve() / "custom" / Path(relative).name
    assert setting(settings, section, key) == expected
    assert settings.root == project.resolve()


@pytest.mark.parametrize(("section", "key", "relative"), PATH_SETTINGS)
def test_default_paths_follow_the_params_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer, section: str, key: str, relative: str
) -> None:
    project = tmp_path / "project"
    params = params_writer(project, {})
    monkeypatch.chdir(tmp_path)

    settings = load_settings(params)

    assert setting(settings, section, key) == project.resolve() / relative


def test_relative_params_path_is_taken_from_cwd_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer
) -> None:
    params_writer(tmp_path / "proj", {})
    monkeypatch.chdir(tmp_path)

    settings = load_settings("proj/params.yaml")

    assert settings.params_file == (tmp_path / "proj" / "params.yaml").resolve()
    assert settings.paths.state_file == (tmp_path / "proj" / "batch_state.json").resolve()


def test_absolute_paths_are_kept(tmp_path: Path, params_writer) -> None:
    quarantine = tmp_path / "somewhere" / "quarantine"
    params = params_writer(tmp_path / "proj", {"data": {"quarantine_dir": str(quarantine)}})
    assert load_settings(params).data.quarantine_dir == quarantine


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    params = params_writer(tmp_path / "proj", {"data": {"raw_file": "~/raw.csv"}})
    assert load_settings(params).data.raw_file == home / "raw.csv"


def test_catalog_paths_derive_from_config(tmp_path: Path) -> None:
    settings = settings_from_mapping({}, tmp_path)
    root = tmp_path.resolve()

    assert settings.lock_file == root / "batch_state.json.lock"
    assert settings.processed_batch_file(3) == root / "data/processed/batches/batch_3.parquet"
    assert settings.training_manifest_file == root / "data/processed/training_data.json"
    assert settings.model_file(4) == root / "models/batch_4.joblib"
    assert settings.champion_model_file == root / "models/champion.joblib"
    assert settings.metrics_file(5) == root / "metrics/batch_5.json"
    assert settings.latest_metrics_file == root / "metrics/latest.json"


# --------------------------------------------------------------------------- tracking URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:///{root}/mlflow.db"),
        ("sqlite:///sub/../db/m.db", "sqlite:///{root}/db/m.db"),
        ("  sqlite:///mlflow.db  ", "sqlite:///{root}/mlflow.db"),
        ("sqlite:////var/lib/mlflow/m.db", "sqlite:////var/lib/mlflow/m.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://mlflow.example.com", "https://mlflow.example.com"),
        ("postgresql://user@db/mlflow", "postgresql://user@db/mlflow"),
        ("postgresql+psycopg2://user@db/mlflow", "postgresql+psycopg2://user@db/mlflow"),
        ("mysql://user@db/mlflow", "mysql://user@db/mlflow"),
        ("databricks://profile", "databricks://profile"),
    ],
)
def test_resolve_tracking_uri(tmp_path: Path, uri: str, expected: str) -> None:
    root = tmp_path.resolve()
    assert resolve_tracking_uri(uri, root) == expected.format(root=root)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///tmp/mlruns", "unsupported tracking URI 'file:///tmp/mlruns'"),
        ("mlflow.db", "unsupported tracking URI 'mlflow.db'"),
        ("ftp://host/x", "unsupported tracking URI"),
        ("", "unsupported tracking URI ''"),
        ("sqlite://", "sqlite URIs look like sqlite:///mlflow.db"),
        ("sqlite:///", "sqlite URIs look like sqlite:///mlflow.db"),
        ("sqlite://relative.db", "sqlite URIs look like sqlite:///mlflow.db"),
    ],
)
def test_resolve_tracking_uri_rejects(tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_tracking_uri(uri, tmp_path)


def test_relative_sqlite_uri_in_file_resolves_against_params_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer
) -> None:
    project = tmp_path / "project"
    params = params_writer(project, {"mlflow": {"tracking_uri": "sqlite:///store/mlflow.db"}})
    monkeypatch.chdir(tmp_path)

    settings = load_settings(params)

    assert settings.mlflow.tracking_uri == f"sqlite:///{project.resolve()}/store/mlflow.db"


def test_absolute_sqlite_uri_in_file_is_kept(tmp_path: Path, params_writer) -> None:
    db = tmp_path / "shared" / "mlflow.db"
    params = params_writer(tmp_path / "proj", {"mlflow": {"tracking_uri": f"sqlite:///{db}"}})
    assert load_settings(params).mlflow.tracking_uri == f"sqlite:///{db}"


def test_environment_overrides_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer
) -> None:
    params = params_writer(tmp_path, {"mlflow": {"tracking_uri": "sqlite:///file.db", "max_retries": 5}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    settings = load_settings(params)

    assert settings.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert settings.mlflow.is_remote is True
    assert settings.mlflow.max_retries == 5  # the rest of the section is kept


def test_environment_sqlite_uri_resolves_against_params_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer
) -> None:
    project = tmp_path / "project"
    params = params_writer(project, {})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")

    assert load_settings(params).mlflow.tracking_uri == f"sqlite:///{project.resolve()}/env.db"


def test_blank_environment_value_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer
) -> None:
    params = params_writer(tmp_path, {"mlflow": {"tracking_uri": "https://mlflow.example.com"}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "   ")
    assert load_settings(params).mlflow.tracking_uri == "https://mlflow.example.com"


def test_without_environment_the_file_value_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = params_writer(tmp_path, {"mlflow": {"tracking_uri": "https://mlflow.example.com"}})
    assert load_settings(params).mlflow.tracking_uri == "https://mlflow.example.com"


def test_invalid_environment_uri_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer
) -> None:
    params = params_writer(tmp_path, {})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri: unsupported tracking URI"):
        load_settings(params)


@pytest.mark.parametrize("section", [5, [1, 2], "sqlite:///x.db"])
def test_environment_override_does_not_hide_a_malformed_mlflow_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_writer, section: Any
) -> None:
    params = params_writer(tmp_path, {"mlflow": section})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(ConfigError, match="mlflow"):
        load_settings(params)


# --------------------------------------------------------------------------- failures

FAILURES = [
    pytest.param({"data": {"bogus": 1}}, "data.bogus: unknown key", id="unknown-key"),
    pytest.param({"extras": {"a": 1}}, "extras: unknown key", id="unknown-section"),
    pytest.param({"data": None}, "data: Input should be a valid dictionary", id="section-not-a-mapping"),
    pytest.param(
        {"data": {"batch_size": "fifty"}}, "data.batch_size: Input should be a valid integer", id="wrong-type"
    ),
    pytest.param({"data": {"batch_size": 2.5}}, "data.batch_size", id="fractional-int"),
    pytest.param(
        {"data": {"batch_size": 0}}, "data.batch_size: Input should be greater than 0", id="batch-size-0"
    ),
    pytest.param({"data": {"allow_missing_values": [1]}}, "data.allow_missing_values", id="bool-wrong-type"),
    pytest.param({"data": {"source": "ftp"}}, "data.source", id="bad-source"),
    pytest.param(
        {"data": {"window_batches": 0}}, "data.window_batches: Input should be greater than 0", id="window-0"
    ),
    pytest.param({"data": {"window_batches": "last"}}, "data.window_batches", id="window-not-int"),
    pytest.param({"data": {"target_column": ""}}, "data.target_column", id="empty-target"),
    pytest.param({"data": {"max_abs_value": 0}}, "data.max_abs_value", id="max-abs-0"),
    pytest.param(
        {"evaluation": {"holdout_fraction": 1.0}},
        "evaluation.holdout_fraction: Input should be less than 1",
        id="holdout-1.0",
    ),
    pytest.param({"evaluation": {"holdout_fraction": 0}}, "evaluation.holdout_fraction", id="holdout-0"),
    pytest.param({"evaluation": {"primary_metric": "auc"}}, "evaluation.primary_metric", id="bad-metric"),
    pytest.param(
        {"evaluation": {"promotion_tolerance": -0.1}}, "evaluation.promotion_tolerance", id="neg-tolerance"
    ),
    pytest.param(
        {"automation": {"cron_schedule": "every minute"}},
        "automation.cron_schedule: invalid cron expression 'every minute'",
        id="bad-cron",
    ),
    pytest.param(
        {"automation": {"timezone": "Mars/Olympus_Mons"}},
        "automation.timezone: unknown IANA time zone 'Mars/Olympus_Mons'",
        id="bad-timezone",
    ),
    pytest.param({"automation": {"max_batches": 0}}, "automation.max_batches", id="max-batches-0"),
    pytest.param(
        {"model": {"estimator": "nope"}}, "model.estimator: unknown estimator 'nope'", id="bad-estimator"
    ),
    pytest.param(
        {"model": {"estimator": "logistic_regression", "training": "incremental"}},
        "model.training: incremental training needs an estimator that can learn more data",
        id="incremental-without-partial-fit-or-warm-start",
    ),
    pytest.param(
        {"model": {"training": "online"}},
        "model.training: Input should be 'full' or 'incremental'",
        id="bad-training",
    ),
    pytest.param(
        {"model": {"estimator": "sklearn.linear_model.LinearRegression"}},
        "model.estimator: estimator 'sklearn.linear_model.LinearRegression' is not a scikit-learn classifier",
        id="not-a-classifier",
    ),
    pytest.param(
        {"model": {"estimator": "sklearn.no_such_module.Thing"}},
        "model.estimator: cannot import estimator",
        id="estimator-not-importable",
    ),
    pytest.param(
        {"model": {"estimator": "os.sep"}},
        "model.estimator: estimator 'os.sep' is not a class",
        id="not-a-class",
    ),
    pytest.param(
        {"model": {"hyperparameters": {"no_such_param": 1}}},
        "model.hyperparameters: estimator 'random_forest' has no hyperparameter(s) ['no_such_param']",
        id="unknown-hyperparameter",
    ),
    pytest.param(
        {"model": {"hyperparameters": {"n_estimators": -3}}},
        "model.hyperparameters: invalid for 'random_forest'",
        id="invalid-hyperparameter-value",
    ),
    pytest.param(
        {"model": {"estimator": "logistic_regression", "hyperparameters": {"C": "strong"}}},
        "model.hyperparameters: invalid for 'logistic_regression'",
        id="invalid-hyperparameter-type",
    ),
    pytest.param(
        {"model": {"hyperparameters": {"random_state": 1}}},
        "model.hyperparameters: set model.random_state",
        id="random-state-in-hyperparameters",
    ),
    pytest.param({"model": {"impute_strategy": "zero"}}, "model.impute_strategy", id="bad-impute"),
    pytest.param(
        {"data": {"classes": [0, "1"]}},
        "data.classes: both class labels must be integers or both strings",
        id="classes-mixed-type",
    ),
    pytest.param(
        {"data": {"classes": [1, 1]}}, "data.classes: the two class labels must differ", id="classes-equal"
    ),
    pytest.param({"data": {"classes": [0, 1, 2]}}, "data.classes", id="three-classes"),
    pytest.param({"data": {"feature_columns": []}}, "data.feature_columns", id="no-features"),
    pytest.param(
        {"data": {"feature_columns": ["a", "a"]}},
        "data.feature_columns: duplicate feature columns",
        id="dup-features",
    ),
    pytest.param(
        {"data": {"feature_columns": ["a", "target"]}},
        "target column 'target' is also listed as a feature",
        id="target-is-feature",
    ),
    pytest.param(
        {"data": {"processed_dir": "../outside"}},
        "data.processed_dir",
        id="processed-dir-outside-root",
    ),
    pytest.param(
        {"paths": {"models_dir": "/elsewhere/models"}}, "paths.models_dir", id="models-dir-outside-root"
    ),
    pytest.param(
        {"mlflow": {"tracking_uri": "file:///tmp/mlruns"}},
        "mlflow.tracking_uri: unsupported tracking URI 'file:///tmp/mlruns'",
        id="bad-tracking-scheme",
    ),
    pytest.param({"mlflow": {"max_retries": 21}}, "mlflow.max_retries", id="too-many-retries"),
    pytest.param({"mlflow": {"experiment_name": ""}}, "mlflow.experiment_name", id="empty-experiment"),
]


@pytest.mark.parametrize(("raw", "message"), FAILURES)
def test_invalid_params_file_names_file_and_key(
    tmp_path: Path, params_writer, raw: dict[str, Any], message: str
) -> None:
    params = params_writer(tmp_path / "proj", raw)

    with pytest.raises(ConfigError, match=re.escape(message)) as excinfo:
        load_settings(params)

    assert str(params.resolve()) in str(excinfo.value)


def test_outside_root_message_names_both_folders(tmp_path: Path, params_writer) -> None:
    params = params_writer(tmp_path / "proj", {"data": {"processed_dir": "../outside"}})
    with pytest.raises(ConfigError) as excinfo:
        load_settings(params)
    message = str(excinfo.value)
    assert f"({(tmp_path / 'outside').resolve()}) must be inside the project folder" in message
    assert str((tmp_path / "proj").resolve()) in message


def test_several_problems_are_reported_together(tmp_path: Path, params_writer) -> None:
    params = params_writer(
        tmp_path, {"data": {"batch_size": 0, "bogus": 1}, "evaluation": {"holdout_fraction": 2}}
    )
    with pytest.raises(ConfigError) as excinfo:
        load_settings(params)
    message = str(excinfo.value)
    for key in ("data.batch_size", "data.bogus", "evaluation.holdout_fraction"):
        assert key in message


def test_long_values_are_shortened_in_the_message(tmp_path: Path, params_writer) -> None:
    params = params_writer(tmp_path, {"evaluation": {"primary_metric": "x" * 200}})
    with pytest.raises(ConfigError, match=r"evaluation\.primary_metric: .*\(got 'x+\.\.\.\)") as excinfo:
        load_settings(params)
    assert "x" * 100 not in str(excinfo.value)


@pytest.mark.parametrize("key", ["root", "params_file"])
def test_reserved_keys_are_refused(tmp_path: Path, params_writer, key: str) -> None:
    params = params_writer(tmp_path, {key: "/somewhere"})
    with pytest.raises(ConfigError, match=re.escape(f"unknown key(s) ['{key}']")) as excinfo:
        load_settings(params)
    assert str(params.resolve()) in str(excinfo.value)


def test_from_mapping_without_file_says_built_in_defaults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^built-in defaults: data\.batch_size"):
        settings_from_mapping({"data": {"batch_size": 0}}, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "- data\n- model\n", "top level must be a mapping of sections, got list", id="yaml-list"
        ),
        pytest.param("just a string\n", "top level must be a mapping of sections, got str", id="yaml-scalar"),
        pytest.param("data: [unclosed\n", "cannot read YAML", id="invalid-yaml"),
        pytest.param("data:\n  batch_size: 1\n bad_indent: 2\n", "cannot read YAML", id="bad-indentation"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, message: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)) as excinfo:
        load_settings(params)
    assert str(params.resolve()) in str(excinfo.value)


def test_non_utf8_yaml(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_bytes(b"data:\n  target_column: caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read YAML") as excinfo:
        load_settings(params)
    assert str(params.resolve()) in str(excinfo.value)


@pytest.mark.parametrize("make_dir", [False, True], ids=["missing", "directory"])
def test_missing_params_file(tmp_path: Path, make_dir: bool) -> None:
    params = tmp_path / "params.yaml"
    if make_dir:
        params.mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"params file not found: {params.resolve()}")):
        load_settings(params)


# --------------------------------------------------------------------------- bugs


@pytest.mark.parametrize(
    "estimator", ["sklearn.ensemble.VotingClassifier", "sklearn.multiclass.OneVsRestClassifier"]
)
def test_estimator_needing_constructor_arguments_is_a_config_error(
    tmp_path: Path, params_writer, estimator: str
) -> None:
    params = params_writer(tmp_path, {"model": {"estimator": estimator}})
    with pytest.raises(ConfigError, match=r"model\.estimator"):
        load_settings(params)


def test_absolute_path_with_dotdot_cannot_escape_the_project(tmp_path: Path, params_writer) -> None:
    root = tmp_path / "proj"
    params = params_writer(root, {"data": {"processed_dir": f"{root.resolve()}/../outside"}})
    with pytest.raises(ConfigError, match=r"data\.processed_dir"):
        load_settings(params)


@pytest.mark.parametrize(
    "raw",
    [
        {"data": {"shuffle_seed": -1}},
        {"model": {"random_state": -1}},
        {"evaluation": {"split_seed": -5}},
        {"data": {"shuffle_seed": 2**32}},
    ],
    ids=["shuffle_seed", "random_state", "split_seed", "shuffle_seed-too-big"],
)
def test_seeds_outside_numpy_range_are_refused(tmp_path: Path, params_writer, raw: dict[str, Any]) -> None:
    params = params_writer(tmp_path, raw)
    with pytest.raises(ConfigError):
        load_settings(params)


# --------------------------------------------------------------------------- immutability


@pytest.mark.parametrize(
    ("target", "attribute", "value"),
    [
        ("settings", "root", Path("/elsewhere")),
        ("settings", "data", None),
        ("data", "batch_size", 1),
        ("model", "estimator", "extra_trees"),
        ("evaluation", "holdout_fraction", 0.5),
        ("mlflow", "tracking_uri", "http://x"),
        ("automation", "max_batches", 1),
        ("paths", "state_file", Path("/tmp/x.json")),
    ],
)
def test_settings_are_frozen(tmp_path: Path, target: str, attribute: str, value: Any) -> None:
    settings = settings_from_mapping({}, tmp_path)
    obj = settings if target == "settings" else getattr(settings, target)
    before = getattr(obj, attribute)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(obj, attribute, value)
    assert getattr(obj, attribute) == before


def test_settings_cannot_be_built_without_a_root_context() -> None:
    with pytest.raises(ValidationError, match="load_settings"):
        Settings.model_validate({"root": "/tmp", "params_file": None})


# --------------------------------------------------------------------------- shared stores


def test_stores_default_to_local(tmp_path: Path) -> None:
    settings = load_settings(None, default_root=tmp_path)
    assert settings.stores.state_database_url is None
    assert settings.stores.dvc_remote is None
    assert settings.automation.code_source is None
    assert settings.mlflow.serve_artifacts is False


def test_store_settings_come_from_the_environment_over_params(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = make_project(
        stores={"state_database_url": "postgresql://a@h:1/params_db", "dvc_remote": "remote"}
    )
    settings = load_settings(params)
    assert settings.stores.state_database_url == "postgresql://a@h:1/params_db"
    assert settings.stores.dvc_remote == str(
        params.parent.resolve() / "remote"
    )  # relative to the params file

    monkeypatch.setenv("RETRAIN_STATE_DATABASE_URL", "postgresql://u:secret@db:5432/env_db")
    monkeypatch.setenv("RETRAIN_DVC_REMOTE", "s3://bucket/path")
    monkeypatch.setenv("RETRAIN_CODE_SOURCE", "https://git.example.com/team/retrain.git")
    settings = load_settings(params)
    assert settings.stores.state_database_url == "postgresql://u:secret@db:5432/env_db"
    assert settings.stores.dvc_remote == "s3://bucket/path"
    assert settings.automation.code_source == "https://git.example.com/team/retrain.git"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("state_database_url", "mysql://u@h/db", "expected a postgresql://"),
        ("state_database_url", "postgresql://u@h:1/", "names no database"),
        ("state_database_url", "postgresql://u@h:99999/db", "Port out of range"),
        ("dvc_remote", "s3 ://bad", "whitespace"),
        ("dvc_remote", "1x://host/path", "invalid URL scheme"),
    ],
)
def test_bad_store_settings_name_the_key(make_project: Any, key: str, value: str, message: str) -> None:
    params = make_project(stores={key: value})
    with pytest.raises(ConfigError, match=rf"stores\.{key}") as excinfo:
        load_settings(params)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("variable", "value", "key", "message"),
    [
        ("MLFLOW_TRACKING_URI", "file:///tmp/mlruns", "mlflow.tracking_uri", "unsupported tracking URI"),
        (
            "RETRAIN_STATE_DATABASE_URL",
            "mysql://u@h/db",
            "stores.state_database_url",
            "expected a postgresql://",
        ),
        ("RETRAIN_DVC_REMOTE", "1x://host/path", "stores.dvc_remote", "invalid URL scheme"),
        ("RETRAIN_CODE_SOURCE", "-upload-pack=evil", "automation.code_source", "must not contain whitespace"),
        ("RETRAIN_ALERT_WEBHOOK_URL", "ftp://host/hook", "alerts.webhook_url", "http:// or https://"),
    ],
)
def test_a_bad_environment_value_names_the_variable_and_the_key_it_sets(
    make_project: Any, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str, message: str
) -> None:
    params = make_project()
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(params)
    text = str(excinfo.value)
    assert text.startswith(f"environment variable {variable}, which sets {key}: "), text
    assert message in text
    assert str(params) not in text  # the file is not what is wrong


def test_a_bad_environment_value_is_reported_without_its_secrets(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = make_project()
    monkeypatch.setenv("RETRAIN_STATE_DATABASE_URL", "postgresql://u:topsecret@h:99999/db")
    with pytest.raises(ConfigError, match="RETRAIN_STATE_DATABASE_URL") as excinfo:
        load_settings(params)
    assert "topsecret" not in str(excinfo.value)
    monkeypatch.delenv("RETRAIN_STATE_DATABASE_URL")
    monkeypatch.setenv("RETRAIN_ALERT_WEBHOOK_URL", "https://hooks.example.com/T0/secret path")
    with pytest.raises(ConfigError, match="RETRAIN_ALERT_WEBHOOK_URL") as excinfo:
        load_settings(params)
    assert "secret" not in str(excinfo.value)


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_environment_overrides_are_unset(
    make_project: Any, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    params = make_project(
        stores={"dvc_remote": "s3://bucket/params"}, alerts={"webhook_url": "http://127.0.0.1:9/h"}
    )
    for variable in (
        "RETRAIN_STATE_DATABASE_URL",
        "RETRAIN_DVC_REMOTE",
        "RETRAIN_CODE_SOURCE",
        "RETRAIN_ALERT_WEBHOOK_URL",
    ):
        monkeypatch.setenv(variable, blank)
    settings = load_settings(params)
    assert settings.stores.dvc_remote == "s3://bucket/params"
    assert settings.stores.state_database_url is None
    assert settings.automation.code_source is None
    assert settings.alerts.webhook_url == "http://127.0.0.1:9/h"


def test_a_password_never_shows_in_a_config_error(make_project: Any) -> None:
    params = make_project(stores={"state_database_url": "postgresql://u:topsecret@h:99999/db"})
    with pytest.raises(ConfigError) as excinfo:
        load_settings(params)
    assert "topsecret" not in str(excinfo.value)


@pytest.mark.parametrize(
    "url",
    ["https://git.example.com/a/b.git", "ssh://git@host/a.git", "git@host:team/repo.git", "file:///srv/repo"],
)
def test_code_source_accepts_git_urls(make_project: Any, url: str) -> None:
    assert load_settings(make_project(automation={"code_source": url})).automation.code_source == url


@pytest.mark.parametrize("url", ["--upload-pack=evil", "not a url", "/local/path", "ftp://host/repo"])
def test_code_source_refuses_what_is_not_a_git_url(make_project: Any, url: str) -> None:
    with pytest.raises(ConfigError, match=r"automation\.code_source"):
        load_settings(make_project(automation={"code_source": url}))


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h:5/db") == "postgresql://u@h:5/db"


# --------------------------------------------------------------------------- light loading

LIGHT_SKIPS = [
    pytest.param({"model": {"estimator": "not_a_thing"}}, "model.estimator", id="estimator"),
    pytest.param(
        {"model": {"hyperparameters": {"no_such_param": 1}}}, "model.hyperparameters", id="hyperparameters"
    ),
    pytest.param({"automation": {"cron_schedule": "not a cron"}}, "automation.cron_schedule", id="cron"),
]


@pytest.mark.parametrize(("raw", "key"), LIGHT_SKIPS)
def test_light_loading_skips_the_checks_that_import_sklearn_or_prefect(
    tmp_path: Path, params_writer, raw: dict[str, Any], key: str
) -> None:
    params = params_writer(tmp_path, raw)

    settings = load_settings(params, light=True)
    section, name = key.split(".")
    assert setting(settings, section, name) == raw[section][name]

    with pytest.raises(ConfigError, match=re.escape(f"{key}: ")):
        load_settings(params)


def test_light_loading_of_an_unknown_estimator_and_a_bad_cron(tmp_path: Path, params_writer) -> None:
    params = params_writer(
        tmp_path, {"model": {"estimator": "not_a_thing"}, "automation": {"cron_schedule": "61 * * * *"}}
    )

    settings = load_settings(params, light=True)
    assert (settings.model.estimator, settings.automation.cron_schedule) == ("not_a_thing", "61 * * * *")

    with pytest.raises(ConfigError) as excinfo:
        load_settings(params)
    message = str(excinfo.value)
    assert "model.estimator: unknown estimator 'not_a_thing'" in message
    assert "automation.cron_schedule: invalid cron expression '61 * * * *'" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        pytest.param({"automation": {"timezone": "Mars/Olympus"}}, "automation.timezone", id="timezone"),
        pytest.param({"automation": {"worker_poll_seconds": 0}}, "automation.worker_poll_seconds", id="poll"),
        pytest.param({"data": {"batch_size": 0}}, "data.batch_size", id="batch-size"),
        pytest.param({"model": {"bogus": 1}}, "model.bogus", id="unknown-key"),
        pytest.param({"paths": {"models_dir": "/elsewhere"}}, "paths.models_dir", id="outside-root"),
    ],
)
def test_light_loading_still_checks_everything_else(
    tmp_path: Path, params_writer, raw: dict[str, Any], key: str
) -> None:
    params = params_writer(tmp_path, raw)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(params, light=True)


def run_python(code: str, *args: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter of this environment; returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


LOAD_LIGHT_THEN_FULL = """
import sys
from retrain_pipeline.params import load_settings, settings_from_mapping
load_settings(sys.argv[1], light=True)
print("sklearn" in sys.modules, "prefect" in sys.modules)
load_settings(sys.argv[1])
print("sklearn" in sys.modules, "prefect" in sys.modules)
"""


def test_light_loading_imports_neither_sklearn_nor_prefect(tmp_path: Path, params_writer) -> None:
    params = params_writer(
        tmp_path / "project",
        {
            "model": {"estimator": "random_forest", "hyperparameters": {"n_estimators": 5}},
            "automation": {"cron_schedule": "*/5 * * * *"},
        },
    )
    # The second line shows that the check sees those imports: a full load makes them.
    assert run_python(LOAD_LIGHT_THEN_FULL, str(params), cwd=tmp_path).splitlines() == [
        "False False",
        "True True",
    ]


HEAVY_MODULES = ("sklearn", "prefect", "mlflow", "pandas")


@pytest.mark.parametrize("module", ["retrain_pipeline.services", "retrain_pipeline.cli"])
def test_light_modules_import_no_heavy_library(tmp_path: Path, module: str) -> None:
    code = f"import sys, {module}\nprint(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))"
    assert run_python(code, cwd=tmp_path).strip() == "[]"


def test_every_command_finds_its_params_file_one_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrain_pipeline.params import PARAMS_ENV, params_for_command

    project = tmp_path / "project"
    project.mkdir()
    default = project / "params.yaml"
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    # As typed: relative to the current folder, even when it does not exist (load_settings says so).
    assert params_for_command("other/params.yaml", default) == tmp_path / "other" / "params.yaml"
    # Not given: the project's file only when it exists, else the built-in defaults (None).
    assert params_for_command(None, default) is None
    default.write_text("{}\n", encoding="utf-8")
    assert params_for_command(None, default) == default
    # A worker's own params file wins over the project's (RETRAIN_PARAMS, relative to the project).
    monkeypatch.setenv(PARAMS_ENV, "worker/params.yaml")
    assert params_for_command(None, default) == project / "worker" / "params.yaml"


# --------------------------------------------------------------------------- alerts and serving


def test_alerts_are_off_and_serving_polls_by_default(tmp_path: Path) -> None:
    settings = load_settings(None, default_root=tmp_path)
    assert settings.alerts.webhook_url is None
    assert settings.alerts.events == ALERT_EVENTS
    assert not any(settings.alerts.wants(event) for event in ALERT_EVENTS)
    assert settings.project_name == tmp_path.name
    assert settings.serving.poll_seconds == 2.0
    assert settings.serving.max_request_bytes == 10_000_000


def test_alerts_from_the_file_and_the_webhook_from_the_environment(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = make_project(
        alerts={
            "webhook_url": "http://127.0.0.1:9/hook",
            "events": ["batch_failed", "run_crashed"],
            "project_name": "fraud-model",
        }
    )
    settings = load_settings(params)
    assert settings.alerts.webhook_url == "http://127.0.0.1:9/hook"
    assert settings.alerts.wants("run_crashed")
    assert not settings.alerts.wants("model_promoted")
    assert settings.project_name == "fraud-model"
    monkeypatch.setenv("RETRAIN_ALERT_WEBHOOK_URL", "https://hooks.example.com/services/T0/B0/secret")
    assert load_settings(params).alerts.webhook_url == "https://hooks.example.com/services/T0/B0/secret"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"webhook_url": "ftp://host/hook"}, "http:// or https://"),
        ({"webhook_url": "http:///no-host"}, "with a host"),
        ({"webhook_url": "https://host/a b"}, "whitespace"),
        ({"webhook_url": "https://host:99999/x"}, "not a URL"),
        ({"events": ["batch_failed", "model_promoted", "batch_failed"]}, "listed twice"),
        ({"events": ["model_retired"]}, "alerts.events.0"),
        ({"timeout_seconds": 0}, "greater than 0"),
        ({"retries": 9}, "less than or equal to 5"),
        ({"color": "red"}, "unknown key"),
    ],
)
def test_bad_alert_settings_name_the_key(make_project: Any, section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"alerts\.") as excinfo:
        load_settings(make_project(alerts=section))
    assert message in str(excinfo.value)


def test_a_webhook_secret_never_shows_in_a_config_error(make_project: Any) -> None:
    params = make_project(alerts={"webhook_url": "ftp://hooks.example.com/services/T0/B0/topsecret"})
    with pytest.raises(ConfigError) as excinfo:
        load_settings(params)
    assert "topsecret" not in str(excinfo.value)
    assert "hooks.example.com" in str(excinfo.value)
    assert redact_webhook("https://hooks.example.com/services/x?token=y") == "https://hooks.example.com/..."
    assert redact_webhook("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"poll_seconds": 0.1}, "serving.poll_seconds"),
        ({"max_request_bytes": 10}, "serving.max_request_bytes"),
        ({"port": 5050}, "serving.port: unknown key"),
    ],
)
def test_bad_serving_settings_name_the_key(make_project: Any, section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(make_project(serving=section))
