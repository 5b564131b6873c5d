"""Typed, frozen settings loaded once from ``params.yaml``.

Every relative path in the file (including the SQLite file inside ``sqlite:///`` tracking
URIs) is resolved against the folder that holds the params file, never against the
current directory. ``MLFLOW_TRACKING_URI`` in the environment overrides
``mlflow.tracking_uri``; ``RETRAIN_STATE_DATABASE_URL``, ``RETRAIN_DVC_REMOTE`` and
``RETRAIN_CODE_SOURCE`` override ``stores.state_database_url``, ``stores.dvc_remote`` and
``automation.code_source`` (:data:`ENV_OVERRIDES`). An unknown key, a wrong type or an
impossible value raises :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from retrain_pipeline.arguments import MAX_BATCH_NUMBER
from retrain_pipeline.errors import ConfigError

if TYPE_CHECKING:
    from retrain_pipeline.drift import DriftRules

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc")
Metric = Literal["accuracy", "precision", "recall", "f1", "roc_auc"]

MAX_SEED = 2**32 - 1 - MAX_BATCH_NUMBER  # seeds get the batch number added
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

#: Short estimator names accepted in ``model.estimator``; a dotted class path also works.
ESTIMATORS: dict[str, str] = {
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "extra_trees": "sklearn.ensemble.ExtraTreesClassifier",
    "gradient_boosting": "sklearn.ensemble.GradientBoostingClassifier",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
}

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # pool and deployment names
_TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_REMOTE_SCHEMES = ("http", "https", "databricks")
PARAMS_ENV = "RETRAIN_PARAMS"  # a worker's own params file, for runs that name none
#: Environment variables that override ``stores`` keys (how ``.cluster/env`` points a clone at a cluster).
ENV_OVERRIDES = {
    "RETRAIN_STATE_DATABASE_URL": ("stores", "state_database_url"),
    "RETRAIN_DVC_REMOTE": ("stores", "dvc_remote"),
    "RETRAIN_CODE_SOURCE": ("automation", "code_source"),
    "RETRAIN_ALERT_WEBHOOK_URL": ("alerts", "webhook_url"),
}


def _root(info: ValidationInfo) -> Path:
    if not info.context or "root" not in info.context:
        raise ValueError("settings must be created with load_settings() or Settings.from_mapping()")
    root: Path = info.context["root"]
    return root


def _light(info: ValidationInfo) -> bool:
    """Loaded with ``light=True``: skip the checks that import scikit-learn or Prefect."""
    return bool(info.context and info.context.get("light"))


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the params file's folder; normalise ``..`` away."""
    return (_root(info) / value.expanduser()).resolve()


ProjectPath = Annotated[Path, AfterValidator(_resolve_path)]


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """Validate a tracking URI and make a relative ``sqlite:///file`` absolute under ``root``."""
    uri = uri.strip()
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.split("+", 1)[0]  # e.g. postgresql+psycopg2
    if not sep or scheme not in _TRACKING_SCHEMES:
        raise ValueError(
            f"unsupported tracking URI {uri!r}: expected one of "
            + ", ".join(f"{s}://" for s in _TRACKING_SCHEMES)
        )
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"sqlite URIs look like sqlite:///mlflow.db, got {uri!r}")
        db_path = Path(rest[1:])  # sqlite:///rel.db -> "rel.db", sqlite:////abs.db -> "/abs.db"
        if not db_path.is_absolute():
            db_path = (root / db_path).resolve()
        return f"sqlite:///{db_path}"
    return uri


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(_Section):
    """Where batches come from and what a valid batch looks like."""

    source: Literal["sliced", "landing"] = "sliced"
    batch_size: int = Field(default=50, gt=0, le=10_000_000)
    target_column: str = Field(default="target", min_length=1)
    classes: tuple[int | str, int | str] = (0, 1)
    feature_columns: tuple[str, ...] | None = None
    allow_missing_values: bool = False
    max_abs_value: float | None = Field(default=1e12, gt=0)
    shuffle_seed: Seed = 42
    raw_file: ProjectPath = Path("data/raw/breast_cancer.csv")
    landing_dir: ProjectPath = Path("data/landing")
    processed_dir: ProjectPath = Path("data/processed")
    quarantine_dir: ProjectPath = Path("data/quarantine")
    # Train on the last N accepted batches (this one included); None: on all of them.
    window_batches: int | None = Field(default=None, gt=0, le=1_000_000)

    @field_validator("classes")
    @classmethod
    def _two_distinct_labels_of_one_type(
        cls, value: tuple[int | str, int | str]
    ) -> tuple[int | str, int | str]:
        negative, positive = value
        if type(negative) is not type(positive):
            raise ValueError("both class labels must be integers or both strings")
        if negative == positive:
            raise ValueError("the two class labels must differ")
        return value

    @field_validator("feature_columns")
    @classmethod
    def _unique_feature_columns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("declare at least one feature column, or leave it null")
            duplicates = sorted({c for c in value if value.count(c) > 1})
            if duplicates:
                raise ValueError(f"duplicate feature columns: {duplicates}")
        return value

    @model_validator(mode="after")
    def _target_is_not_a_feature(self) -> DataConfig:
        if self.feature_columns and self.target_column in self.feature_columns:
            raise ValueError(f"target column {self.target_column!r} is also listed as a feature")
        return self


class ModelConfig(_Section):
    """The scikit-learn estimator and its preprocessing."""

    estimator: str = "random_forest"
    # Passed to the estimator's constructor; empty means scikit-learn's defaults.
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    random_state: Seed = 42
    impute_strategy: Literal["median", "mean", "most_frequent"] = "median"
    scale_features: bool = True
    # full: every batch retrains on all accepted data of the window; incremental: the model
    # continues from the champion on the batches it has not learned (partial_fit or warm_start).
    training: Literal["full", "incremental"] = "full"

    @field_validator("estimator")
    @classmethod
    def _estimator_is_a_classifier(cls, value: str, info: ValidationInfo) -> str:
        if _light(info):
            return value
        from sklearn.base import is_classifier  # local: keep config import light

        if not is_classifier(_instantiate(value)):
            raise ValueError(f"estimator {value!r} is not a scikit-learn classifier")
        return value

    @field_validator("hyperparameters")
    @classmethod
    def _estimator_accepts_hyperparameters(
        cls, value: dict[str, Any], info: ValidationInfo
    ) -> dict[str, Any]:
        name = info.data.get("estimator")
        if name is None or _light(info):  # None: the estimator itself was invalid (reported)
            return value
        instance = _instantiate(name)
        accepted = instance.get_params()
        unknown = sorted(set(value) - set(accepted))
        if unknown:
            raise ValueError(
                f"estimator {name!r} has no hyperparameter(s) {unknown}; accepted: {sorted(accepted)}"
            )
        if "random_state" in value:
            raise ValueError("set model.random_state, not model.hyperparameters.random_state")
        try:
            instance.set_params(**value)
            # sklearn's own value checks, the ones fit() runs first. Private, feature-detected on
            # purpose: sklearn has no public way to check values without data (fit would need a
            # dataset, and a tiny one fails for reasons of its own). Without it, fit reports them.
            validate = getattr(instance, "_validate_params", None)
            if validate is not None:
                validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid for {name!r}: {exc}") from exc
        return value

    @field_validator("training")
    @classmethod
    def _estimator_can_learn_more(cls, value: str, info: ValidationInfo) -> str:
        name = info.data.get("estimator")
        if value == "full" or name is None or _light(info):
            return value
        from retrain_pipeline.model import incremental_method  # local: keep config import light

        if incremental_method(_instantiate(name)) is None:
            raise ValueError(
                f"incremental training needs an estimator that can learn more data: one with "
                f"partial_fit (e.g. sklearn.linear_model.SGDClassifier, sklearn.naive_bayes.MultinomialNB) "
                f"or a warm_start ensemble (random_forest, extra_trees, gradient_boosting, "
                f"hist_gradient_boosting); {name!r} has neither (use training: full)"
            )
        return value


def _instantiate(name: str) -> Any:
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


class EvaluationConfig(_Section):
    """How models are scored and when a new one replaces the champion."""

    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    primary_metric: Metric = "f1"
    promotion_tolerance: float = Field(default=0.0, ge=0, le=1)
    split_seed: Seed = 42


class MlflowConfig(_Section):
    """Tracking server, experiment and model registry."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment_name: str = Field(default="automated-retraining", min_length=1)
    registered_model_name: str = Field(default="breast-cancer-classifier", min_length=1)
    # Where a *local* store (sqlite, database) keeps artifacts of the experiment this
    # pipeline creates. Remote servers (http/https) choose their own artifact location.
    artifact_location: ProjectPath = Path("mlartifacts")
    max_retries: int = Field(default=3, ge=0, le=20)
    retry_backoff_factor: int = Field(default=2, ge=0, le=60)  # waits factor * 2**(n-1) s
    request_timeout_seconds: int = Field(default=30, gt=0, le=600)
    # For the MLflow server this project starts (make start-services / mlflow-ui): true
    # proxies artifacts (stored under artifact_location), so clients need only its http URI.
    serve_artifacts: bool = False

    @field_validator("tracking_uri")
    @classmethod
    def _resolve_tracking_uri(cls, value: str, info: ValidationInfo) -> str:
        return resolve_tracking_uri(value, _root(info))

    @property
    def is_remote(self) -> bool:
        return is_remote_uri(self.tracking_uri)


def is_remote_uri(tracking_uri: str) -> bool:
    """Whether an MLflow tracking URI names a server (no local database to open)."""
    return tracking_uri.partition("://")[0] in _REMOTE_SCHEMES


class AutomationConfig(_Section):
    """Scheduling of the deployment."""

    cron_schedule: str = "*/2 * * * *"
    timezone: str = "UTC"
    max_batches: int = Field(default=8, gt=0, le=MAX_BATCH_NUMBER)
    work_pool: str = Field(default="retraining-pool", pattern=_NAME_PATTERN)
    deployment_name: str = Field(default="automated-retraining", pattern=_NAME_PATTERN)
    pause_when_done: bool = True
    # How often a worker asks Prefect for runs (a run started now waits half of it on
    # average; each poll costs the API server a few milliseconds of CPU), and how early it
    # starts a scheduled run's process: that process imports the flow's libraries and then
    # waits for the tick.
    worker_poll_seconds: float = Field(default=1.0, ge=1, le=300)
    worker_prefetch_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Where workers get the flow's code: null = this project's folder (workers on this
    # machine); a Git URL (https://, ssh://, git@host:path, file://) that every worker clones.
    code_source: str | None = None
    code_branch: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,199}$")

    @field_validator("code_source")
    @classmethod
    def _git_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if any(ch.isspace() or ord(ch) < 32 for ch in value) or value.startswith("-"):
            raise ValueError("a Git URL must not contain whitespace or start with '-'")
        if not re.match(r"^(https?|ssh|git|file)://\S+$|^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+$", value):
            raise ValueError(
                "expected a Git URL: https://host/repo.git, ssh://git@host/repo.git, git@host:repo.git "
                "or file:///path/to/repo"
            )
        return value

    @field_validator("cron_schedule")
    @classmethod
    def _valid_cron(cls, value: str, info: ValidationInfo) -> str:
        if _light(info):
            return value
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError as exc:
            raise ValueError(f"invalid cron expression {value!r}") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


class StoresConfig(_Section):
    """Stores shared by several machines; None keeps today's local ones."""

    # postgresql://user[:password]@host[:port]/database: batch state and run lock in PostgreSQL
    state_database_url: str | None = None
    # A DVC remote (a path, or a URL DVC knows: s3://, gs://, ssh://, ...): every accepted
    # batch file, training-data manifest and model is pushed there in the run that made it.
    dvc_remote: str | None = None

    @field_validator("state_database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return validate_postgres_url(value.strip())

    @field_validator("dvc_remote")
    @classmethod
    def _remote(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if any(ch.isspace() or ord(ch) < 32 for ch in value):
            raise ValueError("a DVC remote must not contain whitespace or control characters")
        scheme, sep, _ = value.partition("://")
        if sep:
            if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
                raise ValueError(f"invalid URL scheme {scheme!r}")
            if scheme == "file":
                return str(Path(value[len("file://") :]).resolve())
            return value
        return str((_root(info) / Path(value).expanduser()).resolve())


def validate_postgres_url(url: str) -> str:
    """Accept ``postgresql://`` (or ``postgres://``, ``postgresql+psycopg2://``) URLs with a database."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ValueError("expected a postgresql://user@host:port/database URL")
    if not parts.path.strip("/"):
        raise ValueError(f"{redact_url(url)!r} names no database (postgresql://user@host:port/database)")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"{redact_url(url)!r}: {exc}") from None
    return url


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


RetrainPolicy = Literal["always", "on_change"]
Probability = Annotated[float, Field(gt=0, lt=1)]


class MonitoringConfig(_Section):
    """How each batch is compared with what the champion learned, and whether that decides
    training (rules: :mod:`retrain_pipeline.drift`)."""

    retrain_policy: RetrainPolicy = "always"
    drift_share: float = Field(default=0.5, gt=0, le=1)
    decay_tolerance: float = Field(default=0.05, ge=0, le=1)
    ks_threshold: Probability = 0.05
    chi2_threshold: Probability = 0.05
    wasserstein_threshold: float = Field(default=0.1, gt=0)
    jensenshannon_threshold: float = Field(default=0.1, gt=0, le=1)
    large_sample_rows: int = Field(default=1000, ge=1)
    categorical_max_unique: int = Field(default=5, ge=1)
    min_rows: int = Field(default=30, ge=2)
    sample_rows: int = Field(default=50_000, ge=100)

    @model_validator(mode="after")
    def _sampling_keeps_the_method(self) -> MonitoringConfig:
        if self.sample_rows <= self.large_sample_rows:
            raise ValueError(
                f"sample_rows ({self.sample_rows}) must exceed large_sample_rows ({self.large_sample_rows}): "
                "a sampled reference must not switch the numeric test from distance to KS"
            )
        return self

    def drift_rules(self) -> DriftRules:
        """The statistics' part of this section, for :func:`retrain_pipeline.drift.detect_drift`."""
        import dataclasses

        from retrain_pipeline.drift import DriftRules

        names = {field.name for field in dataclasses.fields(DriftRules)}
        return DriftRules(**self.model_dump(include=names))


AlertEvent = Literal[
    "batch_rejected",
    "batch_failed",
    "run_crashed",
    "dataset_drift",
    "champion_decay",
    "model_promoted",
    "schedule_paused",
]
#: The events ``alerts.events`` can name (a contract: users filter their channels by them).
ALERT_EVENTS: tuple[AlertEvent, ...] = typing.get_args(AlertEvent)


class AlertsConfig(_Section):
    """Who hears what happens: a Slack-compatible webhook and the events sent to it."""

    # http(s) URL of an incoming webhook (Slack, Teams, or anything that takes a JSON POST);
    # null: no messages. RETRAIN_ALERT_WEBHOOK_URL overrides it (keep secrets out of the file).
    webhook_url: str | None = None
    events: tuple[AlertEvent, ...] = ALERT_EVENTS
    project_name: str | None = Field(default=None, min_length=1, max_length=100)  # null: the folder's name
    timeout_seconds: float = Field(default=2.0, gt=0, le=30)  # per delivery attempt
    retries: int = Field(default=2, ge=0, le=5)  # attempts after the first, 0.5 s then 1 s apart

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return validate_webhook_url(value.strip())

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        duplicates = sorted({e for e in value if value.count(e) > 1})
        if duplicates:
            raise ValueError(f"events listed twice: {duplicates}")
        return value

    def wants(self, event: str) -> bool:
        """Whether ``event`` is delivered: a webhook is set and the event is chosen."""
        return self.webhook_url is not None and event in self.events


def validate_webhook_url(url: str) -> str:
    """Accept an ``http://`` or ``https://`` URL with a host and no whitespace."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("a webhook URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return url


def redact_webhook(url: str) -> str:
    """A webhook URL without its secret part (the path and query), for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    if not (parts.path.strip("/") or parts.query or "@" in parts.netloc):
        return url
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/..."


class ServingConfig(_Section):
    """The scoring server of ``make serve``, which follows the ``champion`` alias."""

    poll_seconds: float = Field(default=2.0, ge=0.2, le=60)  # how often it checks the alias
    max_request_bytes: int = Field(default=10_000_000, ge=1024, le=1_000_000_000)  # larger: 413


class PathsConfig(_Section):
    """Where the pipeline writes its outputs."""

    state_file: ProjectPath = Path("batch_state.json")
    models_dir: ProjectPath = Path("models")
    metrics_dir: ProjectPath = Path("metrics")


class Settings(_Section):
    """The whole validated configuration; build it with :func:`load_settings`."""

    root: Path
    params_file: Path | None
    data: DataConfig = Field(default_factory=dict)  # type: ignore[assignment]
    model: ModelConfig = Field(default_factory=dict)  # type: ignore[assignment]
    evaluation: EvaluationConfig = Field(default_factory=dict)  # type: ignore[assignment]
    mlflow: MlflowConfig = Field(default_factory=dict)  # type: ignore[assignment]
    automation: AutomationConfig = Field(default_factory=dict)  # type: ignore[assignment]
    paths: PathsConfig = Field(default_factory=dict)  # type: ignore[assignment]
    stores: StoresConfig = Field(default_factory=dict)  # type: ignore[assignment]
    monitoring: MonitoringConfig = Field(default_factory=dict)  # type: ignore[assignment]
    alerts: AlertsConfig = Field(default_factory=dict)  # type: ignore[assignment]
    serving: ServingConfig = Field(default_factory=dict)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _versioned_outputs_inside_root(self) -> Settings:
        # DVC can only track files inside its repository (the project root).
        for key, path in (
            ("data.processed_dir", self.data.processed_dir),
            ("paths.models_dir", self.paths.models_dir),
        ):
            if not path.is_relative_to(self.root):
                raise ValueError(f"{key} ({path}) must be inside the project folder {self.root}")
        return self

    # ---- the catalog: every file the pipeline reads or writes, derived from config

    @property
    def project_id(self) -> str:
        """A short stable id of the project folder, tagged on its MLflow runs."""
        return hashlib.sha256(str(self.root).encode()).hexdigest()[:16]

    @property
    def project_name(self) -> str:
        """What alerts call this project: ``alerts.project_name``, else the folder's name."""
        return self.alerts.project_name or self.root.name

    @property
    def lock_file(self) -> Path:
        return self.paths.state_file.with_name(self.paths.state_file.name + ".lock")

    @property
    def processed_batches_dir(self) -> Path:
        return self.data.processed_dir / "batches"

    def processed_batch_file(self, batch_number: int) -> Path:
        return self.processed_batches_dir / f"batch_{batch_number}.parquet"

    @property
    def training_manifest_file(self) -> Path:
        """Which batch files (by md5) the latest model was trained on (DVC keeps every version)."""
        return self.data.processed_dir / "training_data.json"

    def model_file(self, batch_number: int) -> Path:
        return self.paths.models_dir / f"batch_{batch_number}.joblib"

    @property
    def champion_model_file(self) -> Path:
        return self.paths.models_dir / "champion.joblib"

    def metrics_file(self, batch_number: int) -> Path:
        return self.paths.metrics_dir / f"batch_{batch_number}.json"

    @property
    def metric_plot_file(self) -> Path:
        return self.paths.metrics_dir / "metric_history.png"

    @property
    def latest_metrics_file(self) -> Path:
        return self.paths.metrics_dir / "latest.json"

    @classmethod
    def from_mapping(
        cls, raw: dict[str, Any], root: Path, params_file: Path | None = None, *, light: bool = False
    ) -> Settings:
        """Validate a params mapping whose relative paths belong to ``root`` (``light``: see
        :func:`load_settings`)."""
        source = str(params_file) if params_file else "built-in defaults"
        reserved = sorted({"root", "params_file"} & set(raw))
        if reserved:
            raise ConfigError(f"{source}: unknown key(s) {reserved}")
        data = {key: value for key, value in raw.items()}
        env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        section = data.get("mlflow")
        if env_uri and (section is None or isinstance(section, dict)):  # else: reported below
            data["mlflow"] = {**(section or {}), "tracking_uri": env_uri}
        for env_name, (section_name, key) in ENV_OVERRIDES.items():
            env_value = os.environ.get(env_name, "").strip()
            section = data.get(section_name)
            if env_value and (section is None or isinstance(section, dict)):  # else: reported below
                data[section_name] = {**(section or {}), key: env_value}
        root = root.resolve()
        try:
            return cls.model_validate(
                {**data, "root": root, "params_file": params_file}, context={"root": root, "light": light}
            )
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
            continue
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if isinstance(value, dict):
            problems.append(f"{key}: {message}")
            continue
        if isinstance(value, str):  # never a password, nor a webhook's secret path
            value = redact_webhook(value) if key == "alerts.webhook_url" else redact_url(value)
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        problems.append(f"{key}: {message} (got {shown})")
    return "; ".join(problems)


def resolve_params_file(given: str | None, default_params: Path) -> Path | None:
    """The params file a run uses: ``given`` (relative to the project folder of
    ``default_params``), else the worker's ``RETRAIN_PARAMS`` (set by ``make start-worker``: a
    deployment whose code workers clone from Git runs on each worker's own project folder),
    else ``default_params`` if it exists; None means the built-in defaults."""
    given = given or os.environ.get(PARAMS_ENV, "").strip() or None
    if given:
        path = Path(given).expanduser()
        return path if path.is_absolute() else default_params.parent / path
    return default_params if default_params.is_file() else None


#: ``params.yaml`` of the project this code runs from (the folder that holds ``src/`` and
#: ``flows/``): what a command uses when it is given no params file.
PROJECT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def params_for_command(given: str | None, default_params: Path = PROJECT_PARAMS) -> Path | None:
    """The params file of a command line: ``--params`` as typed (a relative path from the
    current folder), else the flow's rule (:func:`resolve_params_file`): ``RETRAIN_PARAMS``,
    else ``default_params`` if it exists, else None (the built-in defaults). Every entry point
    (the flow, cli, services, cluster, setup_deployment) finds its params file this way."""
    if given:
        return Path(given).expanduser().resolve()
    return resolve_params_file(None, default_params)


def load_settings(
    params_file: Path | str | None, default_root: Path | None = None, *, light: bool = False
) -> Settings:
    """Load and validate a params file.

    ``params_file`` None means the built-in defaults, with relative paths under
    ``default_root`` (required then). ``light`` skips the three checks that import
    scikit-learn or Prefect (about 5 s): the estimator, its hyperparameters and the cron
    expression. Commands that neither train nor schedule (services, status) load light;
    every run and ``make deploy`` check everything.
    """
    if params_file is None:
        if default_root is None:
            raise ConfigError("no params file given and no project root to apply defaults to")
        return Settings.from_mapping({}, default_root, None, light=light)
    path = Path(params_file).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return Settings.from_mapping(raw, path.parent, path, light=light)
