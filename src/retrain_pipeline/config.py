"""The typed, frozen settings of ``params.yaml``: one pydantic model per section, under
:class:`Settings`, which also names every file the pipeline reads or writes.

Every relative path (including the SQLite file of a ``sqlite:///`` tracking URI) resolves
against the folder of the params file, which the loader (:mod:`retrain_pipeline.params`)
passes in as the validation context, never against the current directory. Build settings
with :func:`retrain_pipeline.params.load_settings`.
"""

from __future__ import annotations

import hashlib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from retrain_pipeline.estimators import instantiate
from retrain_pipeline.urls import (
    check_git_url,
    check_postgres_url,
    check_webhook_url,
    is_remote_uri,
    resolve_dvc_remote,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from retrain_pipeline.drift import DriftRules

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc")
Metric = Literal["accuracy", "precision", "recall", "f1", "roc_auc"]

MAX_SEED = 2**32 - 1 - MAX_BATCH_NUMBER  # seeds get the batch number added
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # pool and deployment names


def _root(info: ValidationInfo) -> Path:
    if not info.context or "root" not in info.context:
        raise ValueError("settings must be created with load_settings() or settings_from_mapping()")
    root: Path = info.context["root"]
    return root


def _light(info: ValidationInfo) -> bool:
    """Loaded with ``light=True``: skip the checks that import scikit-learn or Prefect."""
    return bool(info.context and info.context.get("light"))


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the params file's folder; normalise ``..`` away."""
    return (_root(info) / value.expanduser()).resolve()


ProjectPath = Annotated[Path, AfterValidator(_resolve_path)]


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

        if not is_classifier(instantiate(value)):
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
        instance = instantiate(name)
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

        if incremental_method(instantiate(name)) is None:
            raise ValueError(
                f"incremental training needs an estimator that can learn more data: one with "
                f"partial_fit (e.g. sklearn.linear_model.SGDClassifier, sklearn.naive_bayes.MultinomialNB) "
                f"or a warm_start ensemble (random_forest, extra_trees, gradient_boosting, "
                f"hist_gradient_boosting); {name!r} has neither (use training: full)"
            )
        return value


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
        return check_git_url(value.strip())

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
        return check_postgres_url(value.strip())

    @field_validator("dvc_remote")
    @classmethod
    def _remote(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        return resolve_dvc_remote(value.strip(), _root(info))


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
        return check_webhook_url(value.strip())

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
