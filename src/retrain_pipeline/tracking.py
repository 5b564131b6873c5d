"""MLflow I/O: experiment, one run per batch attempt, model registry, the champion alias.

The only module that imports MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain_pipeline.config import MlflowConfig
from retrain_pipeline.errors import TrackingError
from retrain_pipeline.urls import is_remote_uri

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
# The tags of a batch's MLflow run (a contract: users query by them).
BATCH_TAG = "batch_number"
DATA_MD5_TAG = "data_md5"  # the training-data manifest in the DVC cache
MODEL_MD5_TAG = "model_md5"
FLOW_RUN_TAG = "prefect_flow_run_id"
DECISION_TAG = "promotion_decision"
TRAINED_TAG = "trained"  # "false" on the run of a batch accepted without training
SKIP_REASON_TAG = "skip_reason"
PROJECT_TAG = "pipeline_project"  # which project folder logged the run (see Settings.project_id)


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    model_version: str


def client(config: MlflowConfig) -> MlflowClient:
    """An MLflow client bound to the configured store and registry (never to whatever
    process-wide URI was set last)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


@contextlib.contextmanager
def mlflow_errors(config: MlflowConfig, doing: str = "") -> Iterator[None]:
    """Turn MLflow's exceptions into :class:`TrackingError` naming the store (and what failed)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {config.tracking_uri}: {doing}{exc.message}") from exc


def import_mlflow(tracking_uri: str | None) -> None:
    """Import what logging and loading a model need ahead of the first call (about 5 s on
    2 cores: MLflow, its scikit-learn flavour, skops and, unless ``tracking_uri`` is a
    server, MLflow's SQL store); see the flow's warm start."""
    import mlflow.sklearn
    import skops.io  # noqa: F401

    if tracking_uri is None or not is_remote_uri(tracking_uri):
        import mlflow.store.model_registry.sqlalchemy_store
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def point_mlflow_at(config: MlflowConfig) -> None:
    """Point this process's MLflow (tracking and registry, so ``models:/`` URIs and new model
    versions go to the same store) at the configured store, with the configured HTTP retries:
    an unreachable server fails a call after ``max_retries`` attempts, not minutes later."""
    import mlflow

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(config.max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(config.retry_backoff_factor)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(config.request_timeout_seconds)
    # Both setters also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which our config reads
    # as the user's override and child processes inherit: restore the environment, so a later
    # project in this process or a process it starts keeps its own store.
    previous = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def connect(config: MlflowConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (created if absent).

    MLflow's own HTTP retry settings get the configured bound and backoff, so an
    unreachable server fails after ``max_retries`` attempts instead of minutes later.
    A local store is first repaired of artifact URIs only a server could resolve
    (:func:`repair_proxied_artifact_uris`).
    """
    import mlflow

    create_sqlite_store(config)
    repair_proxied_artifact_uris(config)

    point_mlflow_at(config)
    with mlflow_errors(config):
        experiment = mlflow.get_experiment_by_name(config.experiment_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None if config.is_remote else config.artifact_location.as_uri()
        return str(mlflow.create_experiment(config.experiment_name, artifact_location=location))


# --------------------------------------------------------------------------- one artifact scheme

#: Where MLflow keeps artifact URIs in its database: (table, column).
_ARTIFACT_URI_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)
# mlflow-artifacts:/1/models/m-1/artifacts or mlflow-artifacts://host:port/1/models/m-1/artifacts
_PROXIED_URI = re.compile(r"^mlflow-artifacts:(?://[^/]*)?/(?P<path>.*)$")


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])


def create_sqlite_store(config: MlflowConfig) -> bool:
    """Create the project's SQLite store whole or not at all; True if this call created it.

    MLflow creates a new store's tables, then runs its schema migrations one by one, in the
    file itself: a process killed in between (kill -9, power loss) left a file that every later
    run refused (``table trace_metrics already exists``). Here the store is created in a
    temporary file beside it and linked into place only when complete; ``os.link`` fails if
    another process was first, and then that one's store is used.
    """
    db_file = sqlite_file(config.tracking_uri)
    if db_file is None or db_file.exists():
        return False
    db_file.parent.mkdir(parents=True, exist_ok=True)
    for stale in db_file.parent.glob(f".{db_file.name}.*.creating"):  # left by killed processes
        pid = stale.name.removeprefix(f".{db_file.name}.").removesuffix(".creating")
        if not pid.isdigit() or not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = db_file.with_name(f".{db_file.name}.{os.getpid()}.creating")
    tmp.unlink(missing_ok=True)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{tmp}", config.artifact_location.as_uri())
    store.engine.dispose()
    try:
        os.link(tmp, db_file)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("Created the MLflow store %s", db_file)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def repair_proxied_artifact_uris(config: MlflowConfig) -> int:
    """Rewrite ``mlflow-artifacts:`` URIs in the project's SQLite store as ``file:`` URIs.

    Before this project used ``file:`` artifact URIs in every mode, ``make start-services``
    ran MLflow with proxied artifacts (``--artifacts-destination``): everything logged
    through that server got an ``mlflow-artifacts:/<path>`` URI that only the running HTTP
    server can resolve, so without the services the champion could not be loaded. The
    files themselves are in ``<mlflow.artifact_location>/<path>``, so the URI is rewritten
    to point there. Idempotent and cheap when there is nothing to do; returns the number
    of rewritten rows. Stores other than the project's SQLite file are left alone.
    """
    db_file = sqlite_file(config.tracking_uri)
    if db_file is None or not db_file.is_file() or config.serve_artifacts:
        return 0  # serve_artifacts: proxied URIs are what the user chose
    root = config.artifact_location.as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(db_file, timeout=60)) as db, db:
        for table, column in _ARTIFACT_URI_COLUMNS:
            try:
                rows = db.execute(
                    f"SELECT DISTINCT {column} FROM {table} WHERE {column} LIKE 'mlflow-artifacts:%'"
                ).fetchall()
            except sqlite3.OperationalError:  # a store MLflow has not created yet
                continue
            for (old,) in rows:
                match = _PROXIED_URI.match(old)
                if match is None:
                    continue
                new = f"{root}/{match['path']}".rstrip("/")
                cursor = db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (new, old))
                changed += cursor.rowcount
    if changed:
        logger.warning(
            "Repaired %d MLflow artifact URI(s) in %s: mlflow-artifacts:/... (readable only through "
            "the MLflow server of an earlier version) -> %s/...",
            changed,
            db_file,
            root,
        )
    return changed


@contextlib.contextmanager
def _batch_run(
    config: MlflowConfig,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    documents: Mapping[str, Any],
) -> Iterator[Any]:
    """An active MLflow run with its tags, params, metrics (None skipped) and JSON documents
    logged; it ends FAILED if the body raises, and MLflow errors become TrackingError."""
    import mlflow

    with (
        mlflow_errors(config),
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags)) as run,
    ):
        mlflow.log_params(dict(params))
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        for name, document in documents.items():
            mlflow.log_dict(document, name)
        yield run


def log_training_run(
    config: MlflowConfig,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    model: Any,
    input_example: pd.DataFrame,
    documents: Mapping[str, Any] | None = None,
) -> LoggedModel:
    """Log one batch attempt: tags, params, metrics, JSON ``documents`` (file name -> content),
    the model, and register a new version.

    If anything fails the run is ended with status FAILED (``start_run`` context).
    """
    import mlflow

    with _batch_run(config, experiment_id, run_name, tags, params, metrics, documents or {}) as run:
        signature = mlflow.models.infer_signature(input_example, _labels_like(model, len(input_example)))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            registered_model_name=config.registered_model_name,
            pip_requirements=_pip_requirements(),
            skops_trusted_types=_own_types(model),
        )
        version = str(info.registered_model_version)
        registry = client(config)
        for key in (BATCH_TAG, DATA_MD5_TAG, MODEL_MD5_TAG):
            if key in tags:
                registry.set_model_version_tag(config.registered_model_name, version, key, tags[key])
        return LoggedModel(run.info.run_id, version)


def log_untrained_run(
    config: MlflowConfig,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    documents: Mapping[str, Any],
) -> str:
    """Log a batch accepted without training (its monitoring figures); returns the run id."""
    with _batch_run(config, experiment_id, run_name, tags, params, metrics, documents) as run:
        return str(run.info.run_id)


def _labels_like(model: Any, rows: int) -> Any:
    """Outputs shaped and typed like ``model.predict`` on ``rows`` rows, for the signature.

    A scikit-learn classifier predicts values of its ``classes_``; taking them from there
    spares a prediction pass (which costs more than it seems on tree ensembles).
    """
    import numpy as np

    return np.resize(np.asarray(model.classes_), rows)


def _pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference lists test tools installed alongside."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", "skops")]


def _own_types(model: Any) -> list[str]:
    """Types skops would refuse to load; we built this model ourselves, so we trust them."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def close_orphaned_runs(config: MlflowConfig, experiment_id: str, project_id: str) -> list[str]:
    """Mark this project's runs still RUNNING as KILLED; returns their ids.

    Call it only while holding the pipeline lock: then no other run of this project is
    alive, so a RUNNING run belongs to an attempt that was killed (SIGKILL, power loss).
    """
    tracking = client(config)
    query = f"attributes.status = 'RUNNING' and tags.{PROJECT_TAG} = '{project_id}'"
    with mlflow_errors(config):
        orphans = tracking.search_runs([experiment_id], filter_string=query, max_results=1000)
        for run in orphans:
            tracking.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in orphans]


def champion_version(config: MlflowConfig) -> str | None:
    """The registered version the ``champion`` alias points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        registry = client(config)
        return str(registry.get_model_version_by_alias(config.registered_model_name, CHAMPION_ALIAS).version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        if "not found" in str(exc.message).lower() or "does not exist" in str(exc.message).lower():
            return None
        raise TrackingError(f"MLflow at {config.tracking_uri}: {exc.message}") from exc


def load_version(config: MlflowConfig, version: str) -> Any:
    """Load a registered model version as a scikit-learn object."""
    import mlflow

    uri = f"models:/{config.registered_model_name}/{version}"
    with mlflow_errors(config, f"cannot load {uri}: "):
        return mlflow.sklearn.load_model(uri)


def set_champion(config: MlflowConfig, version: str) -> None:
    """Point the ``champion`` alias at ``version``."""
    with mlflow_errors(config):
        client(config).set_registered_model_alias(config.registered_model_name, CHAMPION_ALIAS, version)


COMMITTED_TAG = "state_committed"


def mark_committed(config: MlflowConfig, run_id: str) -> None:
    """Tag a run whose batch was recorded in batch_state.json (what rebuild-state trusts)."""
    with mlflow_errors(config):
        client(config).set_tag(run_id, COMMITTED_TAG, "true")


@dataclass(frozen=True)
class BatchRun:
    """What MLflow knows about one committed batch attempt."""

    run_id: str
    batch_number: int
    start_time_ms: int
    end_time_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    model_version: str | None


def committed_runs(config: MlflowConfig, project_id: str) -> list[BatchRun]:
    """Every run of this project whose batch was committed to the state file, oldest first."""
    tracking = client(config)
    with mlflow_errors(config):
        experiment = tracking.get_experiment_by_name(config.experiment_name)
        if experiment is None:
            return []
        query = f"tags.{PROJECT_TAG} = '{project_id}' and tags.{COMMITTED_TAG} = 'true'"
        runs = tracking.search_runs(
            [experiment.experiment_id], filter_string=query, max_results=50_000, order_by=["start_time ASC"]
        )
        versions = {
            v.run_id: str(v.version)
            for v in tracking.search_model_versions(
                f"name='{config.registered_model_name}'", max_results=10_000
            )
        }
    return [
        BatchRun(
            run_id=r.info.run_id,
            batch_number=int(r.data.tags[BATCH_TAG]),
            start_time_ms=r.info.start_time,
            end_time_ms=r.info.end_time,
            params=dict(r.data.params),
            metrics=dict(r.data.metrics),
            tags=dict(r.data.tags),
            model_version=versions.get(r.info.run_id),
        )
        for r in runs
        if r.data.tags.get(BATCH_TAG, "").isdigit()
    ]


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version and the run and batch it came from."""

    version: str
    run_id: str | None
    batch_number: int | None
    committed: bool
    tags: dict[str, str]
    run_params: dict[str, str]
    experiment_id: str | None


def version_info(config: MlflowConfig, version: str) -> VersionInfo:
    """Look a registered version up; TrackingError names an unknown version."""
    from mlflow.exceptions import MlflowException

    tracking = client(config)
    name = config.registered_model_name
    try:
        found = tracking.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(
                f"model {name!r} has no version {version!r} in {config.tracking_uri}"
            ) from exc
        raise TrackingError(f"MLflow at {config.tracking_uri}: {exc.message}") from exc
    params: dict[str, str] = {}
    run_tags: dict[str, str] = {}
    experiment_id = None
    if found.run_id:
        with mlflow_errors(config):
            run = tracking.get_run(found.run_id)
        params, run_tags, experiment_id = dict(run.data.params), dict(run.data.tags), run.info.experiment_id
    tags = {**run_tags, **dict(found.tags)}
    batch = tags.get(BATCH_TAG, "")
    return VersionInfo(
        version=str(found.version),
        run_id=found.run_id,
        batch_number=int(batch) if batch.isdigit() else None,
        committed=run_tags.get(COMMITTED_TAG) == "true",
        tags=tags,
        run_params=params,
        experiment_id=experiment_id,
    )


def record_rollback(config: MlflowConfig, version: str, note: str) -> None:
    """Tag the registered model and the version with the rollback (who, when, why)."""
    registry = client(config)
    with mlflow_errors(config):
        registry.set_registered_model_tag(config.registered_model_name, "last_rollback", note)
        registry.set_model_version_tag(config.registered_model_name, version, "rollback", note)


def log_file(config: MlflowConfig, run_id: str, path: str) -> None:
    """Attach a file (e.g. the metric plot) to a run, also after the run has ended."""
    try:
        with mlflow_errors(config, f"cannot log {path}: "):
            client(config).log_artifact(run_id, path)
    except OSError as exc:
        raise TrackingError(f"MLflow at {config.tracking_uri}: cannot log {path}: {exc}") from exc
