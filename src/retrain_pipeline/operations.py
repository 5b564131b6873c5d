"""Operator actions: lineage of a batch or model version, rollback of the champion, restoring
the exact training data of a batch from the DVC cache."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pandas as pd

from retrain_pipeline import data, links, manifests, tracking, versioning
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import StateError
from retrain_pipeline.fileio import atomic_path, write_parquet_atomic
from retrain_pipeline.reporting import drift_summary
from retrain_pipeline.state import BatchRecord, Rollback, utc_now
from retrain_pipeline.state_stores import state_store


def _cache_state(settings: Settings, md5: str | None) -> str:
    if not md5:
        return "-"
    path = versioning.cached_file(settings.root, md5)
    shown = path.relative_to(settings.root) if path.is_relative_to(settings.root) else path  # cache.dir
    local = f"{shown} ({'present' if path.is_file() else 'missing'})"
    remote = settings.stores.dvc_remote
    if remote is None:
        return local
    held = versioning.remote_has(settings.root, remote, md5)  # one existence check
    return f"{local}; remote: {'unknown' if held is None else 'present' if held else 'missing'}"


def lineage(settings: Settings, *, batch: int | None = None, version: str | None = None) -> dict[str, Any]:
    """Everything that ties a batch to its model and data (or a model version to its batch)."""
    state = state_store(settings).load()
    experiment_id = tracking.connect(settings.mlflow)
    if version is not None:
        info = tracking.version_info(settings.mlflow, version)
        batch = info.batch_number
    if batch is None:
        raise StateError(f"model version {version} carries no batch_number tag")
    record = state.record(batch)
    if version is None and record is not None and record.status == "completed" and record.trained is False:
        return _untrained_lineage(settings, batch, record, experiment_id)
    if version is None:
        if record is None or record.status != "completed" or record.model_version is None:
            status = record.status if record else "not processed"
            raise StateError(f"batch {batch} has no model ({status}); see make status")
        version = record.model_version
        info = tracking.version_info(settings.mlflow, version)
    run_id = info.run_id
    flow_run_id = info.tags.get(tracking.FLOW_RUN_TAG)
    return {
        "batch": batch,
        "batch_status": record.status if record else "not in the state file",
        "source": record.source if record else None,
        "model_version": version,
        "registered_model": settings.mlflow.registered_model_name,
        "is_champion": state.champion_version == version,
        "is_batch_latest_model": bool(record and record.model_version == version),
        "mlflow_run_id": run_id,
        "mlflow_run_link": links.mlflow_run_link(settings, info.experiment_id, run_id),
        "data_md5": info.tags.get(tracking.DATA_MD5_TAG),
        "data_in_dvc_cache": _cache_state(settings, info.tags.get(tracking.DATA_MD5_TAG)),
        "model_md5": info.tags.get(tracking.MODEL_MD5_TAG),
        "model_in_dvc_cache": _cache_state(settings, info.tags.get(tracking.MODEL_MD5_TAG)),
        "prefect_flow_run_id": flow_run_id,
        "prefect_flow_run_link": links.flow_run_link(settings, flow_run_id),
        "params": info.run_params,
        "trained": True,
        "skip_reason": None,
        "drift": record.drift.model_dump(mode="json") if record and record.drift else None,
    }


def _untrained_lineage(
    settings: Settings, batch: int, record: BatchRecord, experiment_id: str
) -> dict[str, Any]:
    """A batch accepted without training (``monitoring.retrain_policy: on_change``): its data
    and its MLflow run, no model."""
    run_id = record.mlflow_run_id
    flow_run_id = record.prefect_flow_run_id
    return {
        "batch": batch,
        "batch_status": record.status,
        "source": record.source,
        "model_version": None,
        "registered_model": settings.mlflow.registered_model_name,
        "is_champion": False,
        "is_batch_latest_model": True,
        "mlflow_run_id": run_id,
        "mlflow_run_link": links.mlflow_run_link(settings, experiment_id, run_id),
        "data_md5": record.data_md5,
        "data_in_dvc_cache": _cache_state(settings, record.data_md5),
        "model_md5": None,
        "model_in_dvc_cache": None,
        "prefect_flow_run_id": flow_run_id,
        "prefect_flow_run_link": links.flow_run_link(settings, flow_run_id),
        "params": {},
        "trained": False,
        "skip_reason": record.skip_reason,
        "drift": record.drift.model_dump(mode="json") if record.drift else None,
    }


def render_lineage(payload: dict[str, Any]) -> str:
    if payload["model_version"] is None:
        head = f"batch {payload['batch']} ({payload['batch_status']}): no model, accepted without training"
    else:
        head = (
            f"batch {payload['batch']} ({payload['batch_status']}) <-> "
            f"{payload['registered_model']} v{payload['model_version']}"
            + (" [champion]" if payload["is_champion"] else "")
        )
    lines = [head]
    labels = [
        ("source", "source"),
        ("mlflow_run_id", "MLflow run"),
        ("mlflow_run_link", "MLflow link"),
        ("data_md5", "data md5"),
        ("data_in_dvc_cache", "data in DVC"),
        ("model_md5", "model md5"),
        ("model_in_dvc_cache", "model in DVC"),
        ("prefect_flow_run_id", "Prefect run"),
        ("prefect_flow_run_link", "Prefect link"),
    ]
    lines += [f"  {label:<13} {payload[key] if payload[key] is not None else '-'}" for key, label in labels]
    if not payload["is_batch_latest_model"]:
        lines.append("  note:         a later --force retrain replaced this batch's model in the state")
    if payload["skip_reason"]:
        lines.append(f"  not trained   {payload['skip_reason']}")
    lines.append(f"  drift         {drift_summary(payload['drift'])}")
    params = ", ".join(f"{k}={v}" for k, v in sorted(payload["params"].items()))
    lines.append(f"  params        {params or '-'}")
    return "\n".join(lines)


def rollback(settings: Settings, version: str, reason: str) -> Rollback:
    """Move the champion alias to an earlier committed version; record who, when and why."""
    if not reason.strip():
        raise StateError("a rollback needs a reason (REASON=...)")
    store = state_store(settings)
    with store.lock({"flow_run_id": "rollback"}):
        state = store.load()
        tracking.connect(settings.mlflow)
        info = tracking.version_info(settings.mlflow, version)
        if not info.committed or info.batch_number is None:
            raise StateError(
                f"version {version} did not complete (its run was never recorded in the state); "
                "only versions of completed batches can become champion"
            )
        if state.champion_version == version:
            raise StateError(f"version {version} is already the champion")
        entry = Rollback(
            at=utc_now(),
            by=getpass.getuser(),
            reason=reason.strip(),
            from_version=state.champion_version,
            to_version=version,
            to_batch=info.batch_number,
        )
        store.save(state.with_rollback(entry), what=f"the rollback to version {version}")
        tracking.set_champion(settings.mlflow, version)
        tracking.record_rollback(settings.mlflow, version, json.dumps(entry.model_dump()))
    return entry


def restore_data(settings: Settings, batch: int, out: Path | None = None) -> tuple[Path, str]:
    """Rebuild the exact training table of a completed batch from the DVC cache.

    The batch's ``data_md5`` names its training-data manifest; every batch file it lists
    is taken from the cache, checked against its md5 and merged in the recorded order.
    With ``stores.dvc_remote`` set, objects missing from the local cache are fetched from
    the remote first (the batch files in one fetch), so this works on any machine.
    Returns the written file and the manifest's md5.
    """
    record = state_store(settings).load().record(batch)
    if record is None or record.status != "completed" or not record.data_md5:
        raise StateError(f"batch {batch} is not completed: it has no training data to restore")
    what = f"the training-data manifest of batch {batch}"
    payload = manifests.cached_bytes(settings, record.data_md5, what)
    target = out or settings.data.processed_dir / "restored" / f"training_data_batch_{batch}.parquet"
    if payload.startswith(_PARQUET_MAGIC):  # projects from before manifests cached the whole table
        with atomic_path(target) as tmp:
            tmp.write_bytes(payload)
        return target, record.data_md5
    files = manifests.parse_listing(payload, record.data_md5, f"batch {batch}")
    cached = manifests.cached_files(settings, {f.md5: f"{f.file} (batch {f.batch})" for f in files})
    frames = [pd.read_parquet(cached[f.md5]) for f in files]
    write_parquet_atomic(data.merge_batches(frames), target)
    return target, record.data_md5


_PARQUET_MAGIC = b"PAR1"
