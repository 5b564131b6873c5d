"""Operator commands (no Prefect run) behind the make targets: set-up, status, the MLflow UI,
lineage, rollback, restoring data, rebuilding the state.

    python -m retrain_pipeline.cli setup         --params params.yaml
    python -m retrain_pipeline.cli status        --params params.yaml [--json]
    python -m retrain_pipeline.cli mlflow-ui     --params params.yaml [--host H] [--port P]
    python -m retrain_pipeline.cli rebuild-state --params params.yaml
    python -m retrain_pipeline.cli lineage       --params params.yaml (--batch N | --version V) [--json]
    python -m retrain_pipeline.cli rollback      --params params.yaml --version V --reason TEXT
    python -m retrain_pipeline.cli restore-data  --params params.yaml --batch N [--out FILE]
    python -m retrain_pipeline.cli predict       --params params.yaml --input FILE [--output F] [--version V]

Exit codes: 0 done, 1 the command failed (one ``error:`` line), 2 bad arguments. Each command
imports only what it needs: ``status`` answers in well under a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrain_pipeline.arguments import (
    DEFAULT_HOST,
    DEFAULT_MLFLOW_PORT,
    batch_argument,
    host_argument,
    port_argument,
)
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import PipelineError
from retrain_pipeline.params import PROJECT_PARAMS, load_settings, params_for_command
from retrain_pipeline.prefect_runtime import exit_without_teardown
from retrain_pipeline.reporting import render_status
from retrain_pipeline.state import PipelineState, next_batch_number
from retrain_pipeline.state_stores import FileStateStore, state_store

Handler = Callable[[Settings, argparse.Namespace], int]


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


def version_argument(text: str) -> str:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"model version must be a positive integer, got {text!r}")
    return str(int(text))


def _mlflow_ui(settings: Settings, args: argparse.Namespace) -> int:
    """The MLflow server of ``make start-services``, in the foreground (one artifact scheme)."""
    from retrain_pipeline import service_specs, services

    if settings.mlflow.is_remote:
        print(f"tracking URI {settings.mlflow.tracking_uri} is a server: open it in a browser instead")
        return 0
    endpoints = service_specs.Endpoints(mlflow_host=args.host, mlflow_port=args.port)
    spec = service_specs.spec_for("mlflow", settings, endpoints)
    services.prepare(spec, settings)
    print(f"MLflow UI on {spec.url} over {settings.mlflow.tracking_uri} (Ctrl+C stops it)", flush=True)
    os.execve(spec.argv[0], spec.argv, spec.env)  # replaces this process; no shell involved
    return 0  # not reached


def _setup(settings: Settings, args: argparse.Namespace) -> int:
    from retrain_pipeline.project import prepare_project

    prepare_project(settings)
    print(f"Project ready in {settings.root}")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    payload = status_payload(settings, state_store(settings).load())
    print(json.dumps(payload, indent=2) if args.json else render_status(payload))
    return 0


def _rebuild_state(settings: Settings, args: argparse.Namespace) -> int:
    from retrain_pipeline.recovery import rebuild_state_store

    print(rebuild_state_store(settings))
    return 0


def _lineage(settings: Settings, args: argparse.Namespace) -> int:
    from retrain_pipeline import operations  # pandas, MLflow and DVC: imported only here

    payload = operations.lineage(settings, batch=args.batch, version=args.version)
    print(json.dumps(payload, indent=2) if args.json else operations.render_lineage(payload))
    return 0


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    from retrain_pipeline import operations

    entry = operations.rollback(settings, args.version, args.reason)
    print(
        f"champion: v{entry.from_version} -> v{entry.to_version} (batch {entry.to_batch}) "
        f"by {entry.by} at {entry.at}: {entry.reason}"
    )
    return 0


def _restore_data(settings: Settings, args: argparse.Namespace) -> int:
    from retrain_pipeline import operations

    target, md5 = operations.restore_data(settings, args.batch, args.out)
    print(f"restored the training data of batch {args.batch} (manifest md5 {md5}) to {target}")
    return 0


def _predict(settings: Settings, args: argparse.Namespace) -> int:
    """Score a file with the champion (or ``--version``), on the store the flow would use."""
    from retrain_pipeline import scoring, service_records

    mlflow = settings.mlflow
    running = service_records.running_urls(settings).get("mlflow")
    if running and not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        mlflow = mlflow.model_copy(update={"tracking_uri": running})
    source = args.input.expanduser().resolve()
    output = (
        args.output or settings.root / "predictions" / f"{source.stem}.predictions{source.suffix.lower()}"
    )
    scored = scoring.predict_file(mlflow, source, output.expanduser().resolve(), args.version)
    print(
        f"wrote {scored.rows} predictions of model {mlflow.registered_model_name} "
        f"version {scored.version} to {scored.output}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", help="params file (default: the project's params.yaml)")
    parser = argparse.ArgumentParser(prog="python -m retrain_pipeline.cli")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Handler, text: str, *, light: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.set_defaults(func=handler, light=light)
        return sub

    command("setup", _setup, "create folders, dvc init, write the raw demo data")
    status = command("status", _status, "table of batches and the champion", light=True)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ui = command("mlflow-ui", _mlflow_ui, "serve the MLflow UI over the project's store", light=True)
    ui.add_argument("--host", type=host_argument, default=DEFAULT_HOST)
    ui.add_argument("--port", type=port_argument, default=DEFAULT_MLFLOW_PORT)
    command("rebuild-state", _rebuild_state, "rebuild the batch state from MLflow and the quarantine")
    lineage = command("lineage", _lineage, "what ties a batch to its model and data")
    which = lineage.add_mutually_exclusive_group(required=True)
    which.add_argument("--batch", type=batch_argument)
    which.add_argument("--version", type=version_argument)
    lineage.add_argument("--json", action="store_true")
    rollback = command("rollback", _rollback, "move the champion back to a version")
    rollback.add_argument("--version", type=version_argument, required=True)
    rollback.add_argument("--reason", required=True)
    restore = command("restore-data", _restore_data, "training data of a batch from DVC")
    restore.add_argument("--batch", type=batch_argument, required=True)
    restore.add_argument("--out", type=Path, help="target file (default: data/processed/restored/...)")
    predict = command("predict", _predict, "score a CSV or Parquet file with the champion", light=True)
    predict.add_argument("--input", type=Path, required=True, help="a .csv or .parquet file")
    predict.add_argument("--output", type=Path, help="default: predictions/<name>.predictions.<ext>")
    predict.add_argument("--version", type=version_argument, help="default: the champion")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        params = params_for_command(args.params)
        settings = load_settings(params, default_root=PROJECT_PARAMS.parent, light=args.light)
        return int(args.func(settings, args))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Without the interpreter's teardown: 1-2 s after every command, and a C++ thread pool
    # destroyed in it once aborted `predict` ("terminate called without an active exception").
    exit_without_teardown(main())
