"""Operator commands that need no Prefect.

python -m retrain_pipeline.cli setup     --params params.yaml
python -m retrain_pipeline.cli status    --params params.yaml [--json]
python -m retrain_pipeline.cli mlflow-ui --params params.yaml [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from retrain_pipeline.arguments import host_argument, port_argument
from retrain_pipeline.config import MAX_BATCH_NUMBER, Settings, load_settings
from retrain_pipeline.errors import PipelineError
from retrain_pipeline.reporting import drift_cell
from retrain_pipeline.state import PipelineState, next_batch_number
from retrain_pipeline.state_stores import FileStateStore, state_store


def status_payload(settings: Settings, state: PipelineState) -> dict[str, Any]:
    """What ``status --json`` prints: the state document itself (the ``batch_state.json``
    schema, whichever store holds it) plus what the schedule does next.

    Added keys: ``state_file`` (None when the state lives in PostgreSQL), ``state_store``
    (which store, password hidden), ``primary_metric``, ``next_batch``, ``max_batches``.
    """
    store = state_store(settings)
    upcoming = next_batch_number(state)
    return {
        **state.model_dump(mode="json"),
        "state_file": str(settings.paths.state_file) if isinstance(store, FileStateStore) else None,
        "state_store": store.description,
        "primary_metric": settings.evaluation.primary_metric,
        "next_batch": upcoming if upcoming <= settings.automation.max_batches else None,
        "max_batches": settings.automation.max_batches,
    }


def render_status(payload: dict[str, Any]) -> str:
    """The status payload as a fixed-width table."""
    metric = payload["primary_metric"]
    headers = [
        "batch",
        "status",
        "rows",
        "train+holdout",
        metric,
        f"champion {metric}",
        "promoted",
        "version",
        "drift",
        f"champion {metric} on batch",
        "finished at",
    ]
    rows = [
        [
            key,
            b["status"],
            _cell(b["rows"]),
            _cell(b["training_rows_total"]),
            _cell((b["metrics"] or {}).get(metric)),
            _cell((b["champion_metrics"] or {}).get(metric)),
            _cell(b["promoted"]),
            "not trained" if b.get("trained") is False else _cell(b["model_version"]),
            drift_cell(b.get("drift")),
            _cell((b.get("drift") or {}).get("champion_score_on_batch")),
            _cell(b["finished_at"]),
        ]
        for key, b in payload["batches"].items()
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if not rows:
        lines.append("(no batches processed yet)")
    for key, b in payload["batches"].items():
        if b["error"]:
            lines.append(f"batch {key} {b['status']}: {b['error']}")
        elif b.get("trained") is False:
            lines.append(f"batch {key} not trained: {b.get('skip_reason')}")
    champion = payload["champion_version"]
    lines.append("")
    for rollback in payload["rollbacks"][-3:]:
        lines.append(
            f"rollback: v{rollback['from_version']} -> v{rollback['to_version']} by {rollback['by']} "
            f"at {rollback['at']}: {rollback['reason']}"
        )
    if payload.get("state_file") is None and payload.get("state_store"):
        lines.append(f"state: {payload['state_store']}")
    lines.append(f"champion: {'model version ' + champion if champion else 'none yet'}")
    nxt = payload["next_batch"]
    lines.append(
        f"next batch: {nxt}"
        if nxt is not None
        else f"next batch: none (all {payload['max_batches']} batches done)"
    )
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def batch_argument(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH_NUMBER:
        raise argparse.ArgumentTypeError(
            f"batch must be an integer between 1 and {MAX_BATCH_NUMBER}, got {text!r}"
        )
    return int(text)


def version_argument(text: str) -> str:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"model version must be a positive integer, got {text!r}")
    return str(int(text))


def _mlflow_ui(settings: Settings, host: str, port: int) -> int:
    """The MLflow server of ``make start-services``, in the foreground (one artifact scheme)."""
    from retrain_pipeline import services

    if settings.mlflow.is_remote:
        print(f"tracking URI {settings.mlflow.tracking_uri} is a server: open it in a browser instead")
        return 0
    spec = services.spec_for("mlflow", settings, services.Endpoints(mlflow_host=host, mlflow_port=port))
    services.prepare(spec, settings)
    print(f"MLflow UI on {spec.url} over {settings.mlflow.tracking_uri} (Ctrl+C stops it)", flush=True)
    os.execve(spec.argv[0], spec.argv, spec.env)  # replaces this process; no shell involved
    return 0  # not reached


def _rebuild_state(settings: Settings) -> str:
    """Reconstruct the state under the store's lock; the old state is kept as a backup."""
    from retrain_pipeline import recovery, tracking

    store = state_store(settings)
    with store.lock({"flow_run_id": "rebuild-state"}):
        tracking.connect(settings.mlflow)
        runs = tracking.committed_runs(settings.mlflow, settings.project_id)
        rejected = recovery.rejected_from_quarantine(settings.data.quarantine_dir)
        state = recovery.rebuild_state(runs, rejected, tracking.champion_version(settings.mlflow))
        backup = store.backup()
        store.save(state, what="the rebuilt state")
    rejected_numbers = [int(k) for k, r in state.batches.items() if r.status == "rejected"]
    return (
        f"Rebuilt {store.description} from {len(runs)} committed MLflow run(s): "
        f"completed {state.processed_batches}, rejected {rejected_numbers}, champion {state.champion_version}"
        + (f"; the previous state is kept as {backup}" if backup else "")
    )


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    parser = argparse.ArgumentParser(prog="python -m retrain_pipeline.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", parents=[common], help="create folders, dvc init, write the raw demo data")
    status = commands.add_parser("status", parents=[common], help="table of batches and the champion")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ui = commands.add_parser(
        "mlflow-ui", parents=[common], help="serve the MLflow UI over the project's store"
    )
    ui.add_argument("--host", type=host_argument, default="127.0.0.1")
    ui.add_argument("--port", type=port_argument, default=5000)
    commands.add_parser(
        "rebuild-state", parents=[common], help="rebuild the batch state from MLflow and the quarantine"
    )
    lineage = commands.add_parser("lineage", parents=[common], help="what ties a batch to its model and data")
    which = lineage.add_mutually_exclusive_group(required=True)
    which.add_argument("--batch", type=batch_argument)
    which.add_argument("--version", type=version_argument)
    lineage.add_argument("--json", action="store_true")
    rollback = commands.add_parser("rollback", parents=[common], help="move the champion back to a version")
    rollback.add_argument("--version", type=version_argument, required=True)
    rollback.add_argument("--reason", required=True)
    restore = commands.add_parser("restore-data", parents=[common], help="training data of a batch from DVC")
    restore.add_argument("--batch", type=batch_argument, required=True)
    restore.add_argument("--out", type=Path, help="target file (default: data/processed/restored/...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = load_settings(args.params, light=args.command in ("status", "mlflow-ui"))
        if args.command == "setup":
            from retrain_pipeline.project import prepare_project

            prepare_project(settings)
            print(f"Project ready in {settings.root}")
        elif args.command == "status":
            payload = status_payload(settings, state_store(settings).load())
            print(json.dumps(payload, indent=2) if args.json else render_status(payload))
        elif args.command == "mlflow-ui":
            return _mlflow_ui(settings, args.host, args.port)
        elif args.command == "rebuild-state":
            print(_rebuild_state(settings))
        elif args.command in ("lineage", "rollback", "restore-data"):
            return _operation(settings, args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _operation(settings: Settings, args: argparse.Namespace) -> int:
    """lineage, rollback and restore-data: they need pandas, MLflow and DVC, so import late.
    Called inside :func:`main`'s ``try``, which reports a :class:`PipelineError`."""
    from retrain_pipeline import operations

    if args.command == "lineage":
        payload = operations.lineage(settings, batch=args.batch, version=args.version)
        print(json.dumps(payload, indent=2) if args.json else operations.render_lineage(payload))
    elif args.command == "rollback":
        entry = operations.rollback(settings, args.version, args.reason)
        print(
            f"champion: v{entry.from_version} -> v{entry.to_version} (batch {entry.to_batch}) "
            f"by {entry.by} at {entry.at}: {entry.reason}"
        )
    elif args.command == "restore-data":
        target, md5 = operations.restore_data(settings, args.batch, args.out)
        print(f"restored the training data of batch {args.batch} (manifest md5 {md5}) to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
