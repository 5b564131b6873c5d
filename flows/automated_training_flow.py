"""The retraining flow, run by a deployment or from its command line:

    python flows/automated_training_flow.py [N] [--params PATH] [--force] [--debug]
    python flows/automated_training_flow.py --all [--params PATH]   # every pending batch

Exit codes: 0 trained, or nothing to do (no new data, all batches done, another run busy);
1 the batch was rejected or the run failed; 2 bad arguments or params.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # A command-line run with no Prefect server: start Prefect's temporary API server first, so
    # that it boots on the other core while this process imports the libraries below.
    from retrain_pipeline.api_server import start_for_command_line

    start_for_command_line(sys.argv[1:], default_params=Path(__file__).resolve().parents[1] / "params.yaml")

import argparse
import os
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run

from retrain_pipeline import tracking
from retrain_pipeline.alert_tasks import RunAlerts
from retrain_pipeline.api_server import TemporaryApiServer
from retrain_pipeline.api_server import started as started_api_server
from retrain_pipeline.arguments import batch_argument
from retrain_pipeline.batch_manager import choose_batch, pause_schedule, record_batch
from retrain_pipeline.config import Settings
from retrain_pipeline.data_tasks import (
    BatchInput,
    TrainingData,
    Versioned,
    load_batch,
    quarantine_batch,
    save_and_version,
    validate_and_merge,
)
from retrain_pipeline.errors import (
    ConfigError,
    DataValidationError,
    PipelineBusyError,
    PipelineError,
    TemporaryApiTimeoutError,
)
from retrain_pipeline.model_tasks import (
    Champion,
    evaluate,
    load_champion,
    log_run,
    log_untrained,
    publish_reports,
    tag_and_promote,
    train,
)
from retrain_pipeline.monitoring import DRIFT_REPORT_FILE, mlflow_metrics, report_document
from retrain_pipeline.monitoring_tasks import BatchMonitoring, monitor_batch
from retrain_pipeline.params import load_settings, params_for_command, resolve_params_file
from retrain_pipeline.prefect_runtime import (
    exit_without_teardown,
    one_off_run_settings,
    pipeline_error_behind,
    prefect_api_failure,
    prefect_api_unreachable,
    quiet_pipeline_tracebacks,
    quiet_temporary_server_notices,
    send_pending_prefect_records,
    temporary_api_unreachable,
)
from retrain_pipeline.project import prepare_project
from retrain_pipeline.reporting import import_plotting, training_report
from retrain_pipeline.service_records import prefect_home, running_urls
from retrain_pipeline.state import BatchRecord, PipelineState, utc_now
from retrain_pipeline.state_stores import LockHandle, StateStore, state_store
from retrain_pipeline.tracking import import_mlflow
from retrain_pipeline.versioning import import_dvc


def import_run_libraries(tracking_uri: str | None) -> None:
    """Import what every training run needs (MLflow, skops, DVC, matplotlib: about 6 s on
    2 cores) ahead of the run, where that time would otherwise be idle.

    A worker starts a scheduled run's process up to ``automation.worker_prefetch_seconds``
    before the tick; the process loads this module, then Prefect holds the run until its
    scheduled time: importing here moves the cost before the tick. A command-line run imports
    them while Prefect's temporary API server boots on the other core. MLflow's SQL store is
    imported unless ``tracking_uri`` names a server.
    """
    import_mlflow(tracking_uri)
    import_dvc()
    import_plotting()


# A worker's flow-run process (PREFECT__FLOW_RUN_ID: the run the worker gave it); not when
# `make deploy` or a test imports this module.
if os.environ.get("PREFECT__FLOW_RUN_ID"):
    import_run_libraries(os.environ.get("MLFLOW_TRACKING_URI"))  # its params are not read yet

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"

Outcome = dict[str, Any]


def _outcome(status: str, batch_number: int | None, message: str, **extra: Any) -> Outcome:
    return {"status": status, "batch_number": batch_number, "message": message, **extra}


def resolve_params(params_path: str | None) -> Path | None:
    """The params file in use (:func:`retrain_pipeline.params.resolve_params_file`)."""
    return resolve_params_file(params_path, DEFAULT_PARAMS)


@flow(name="automated-training")
def automated_training_flow(
    batch_number: int | None = None,
    params_path: str | None = None,
    force: bool = False,
    debug: bool = False,
) -> Outcome:
    """Take the next (or the given) batch through validation, training, gating and versioning.

    ``debug``: log the tracebacks of pipeline errors too (by default their one-line message).
    """
    if not debug:
        quiet_pipeline_tracebacks()
    logger = get_run_logger()
    settings = load_settings(resolve_params(params_path), default_root=PROJECT_ROOT)
    logger.info(
        "Params: %s; tracking: %s", settings.params_file or "built-in defaults", settings.mlflow.tracking_uri
    )
    alerts = RunAlerts(settings)
    try:
        store = state_store(settings)
        with store.lock({"flow_run_id": flow_run.id}) as holder:
            # Under the lock: two first runs must not both initialise DVC.
            prepare_project(settings)
            return _process_batch(settings, store, batch_number, force, holder, alerts)
    except PipelineBusyError as exc:
        logger.warning("Nothing done: %s", exc)
        return _outcome("busy", batch_number, str(exc))
    except DataValidationError:
        raise  # rejected: its alert went out once the rejection was recorded
    except Exception as exc:
        # Any failure, before the batch was chosen too (the state store or a server unreachable).
        alerts.failed(exc)
        raise


def _process_batch(
    settings: Settings,
    store: StateStore,
    requested: int | None,
    force: bool,
    holder: LockHandle,
    alerts: RunAlerts,
) -> Outcome:
    logger = get_run_logger()
    state, choice = choose_batch(settings, store, requested, force)
    n = choice.batch_number
    if n is None:
        logger.info("Nothing to do: %s", choice.reason)
        if choice.all_done and settings.automation.pause_when_done and deployment.id:
            pause_schedule(str(deployment.id))
            alerts.paused(str(deployment.name), choice.reason)
        return _outcome("nothing_to_do", None, choice.reason)
    holder.update({"batch": n})
    alerts.chose(n)
    logger.info("Processing batch %d (%s)", n, choice.reason)
    started = utc_now()
    batch: BatchInput | None = None
    try:
        batch = load_batch(settings, n)
        if batch is None:
            logger.info("Nothing to do: no data for batch %d yet", n)
            return _outcome("nothing_to_do", n, f"no data for batch {n} yet")
        training = validate_and_merge(settings, state, batch)
    except DataValidationError as exc:
        quarantine_batch(settings, exc, batch)
        record = BatchRecord(
            status="rejected", started_at=started, finished_at=utc_now(), source=exc.file, error=str(exc)
        )
        rejected_state = record_batch(settings, store, state, n, record, state.champion_version)
        publish_reports(settings, rejected_state, None, None, n)
        alerts.rejected(exc)
        raise
    try:
        experiment_id, champion = load_champion(settings, state)
        checked = monitor_batch(settings, state, training, champion, force)
        run = _Run(settings, store, state, batch, training, started, experiment_id, checked)
        committed = _train_and_commit(run, champion) if checked.decision.train else _accept_untrained(run)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        record = BatchRecord(
            status="failed", started_at=started, finished_at=utc_now(), source=batch.source, error=error
        )
        record_batch(settings, store, state, n, record, state.champion_version)
        raise
    # The state file is the commit point; the alias follows it (and is repaired from it).
    promoted_version = committed.record.model_version if committed.record.promoted else None
    tag_and_promote(settings, committed.run_id, promoted_version, committed.model_file)
    publish_reports(settings, committed.state, committed.run_id, committed.report, n)
    alerts.completed(n, committed.record, experiment_id)
    return _completed(n, committed.record)


def _completed(n: int, record: BatchRecord) -> Outcome:
    """The outcome of a completed batch: trained (promoted or not) or accepted untrained."""
    if record.trained is False:
        message = f"batch {n}: accepted without training ({record.skip_reason})"
    else:
        verdict = "promoted to champion" if record.promoted else "not promoted"
        message = f"batch {n}: model v{record.model_version} {verdict}"
    return _outcome(
        "completed",
        n,
        message,
        trained=record.trained,
        model_version=record.model_version,
        promoted=record.promoted,
        metrics=record.metrics,
        drift=record.drift.dataset_drift if record.drift else None,
    )


@dataclass(frozen=True)
class _Run:
    """What a batch that passed validation carries into training or acceptance."""

    settings: Settings
    store: StateStore
    state: PipelineState
    batch: BatchInput
    training: TrainingData
    started: str
    experiment_id: str
    checked: BatchMonitoring

    def tags(self, versioned: Versioned) -> dict[str, str]:
        tags = {
            tracking.BATCH_TAG: str(self.batch.batch_number),
            tracking.DATA_MD5_TAG: versioned.data_md5,
            tracking.FLOW_RUN_TAG: str(flow_run.id),
            tracking.PROJECT_TAG: self.settings.project_id,
        }
        if versioned.model_md5:
            tags[tracking.MODEL_MD5_TAG] = versioned.model_md5
        return tags

    def documents(self) -> dict[str, Any]:
        return {DRIFT_REPORT_FILE: report_document(self.checked.record, self.checked.report)}


@dataclass(frozen=True)
class _Committed:
    state: PipelineState
    record: BatchRecord
    run_id: str
    model_file: Path | None
    report: str


def _train_and_commit(run: _Run, champion: Champion | None) -> _Committed:
    """Train, evaluate, version, log and record the batch as completed in the state store."""
    settings, training, n = run.settings, run.training, run.batch.batch_number
    trained = train(settings, training, champion)
    evaluation = evaluate(settings, trained.model, champion, training)
    incremental = settings.model.training == "incremental"
    lineage = trained.lineage(settings.model.training) if incremental else None
    versioned = save_and_version(settings, training, trained.model, lineage)
    logged = log_run(
        settings,
        run.experiment_id,
        trained=trained,
        training=training,
        evaluation=evaluation,
        tags=run.tags(versioned),
        monitoring_metrics=mlflow_metrics(run.checked.record),
        documents=run.documents(),
    )
    previous = champion.version if champion else None
    promoted = evaluation.decision.promote
    summary = trained.summary
    record = BatchRecord(
        status="completed",
        started_at=run.started,
        finished_at=utc_now(),
        source=run.batch.source,
        rows=training.rows,
        train_rows=summary.train_rows,
        holdout_rows=summary.holdout_rows,
        training_rows_total=summary.rows,
        metrics=evaluation.metrics,
        champion_metrics=evaluation.champion_metrics,
        champion_version_before=previous,
        promoted=promoted,
        promotion_reason=evaluation.decision.reason,
        mlflow_run_id=logged.run_id,
        model_version=logged.model_version,
        data_md5=versioned.data_md5,
        model_md5=versioned.model_md5,
        prefect_flow_run_id=str(flow_run.id),
        trained=True,
        drift=run.checked.record,
        continued_from=trained.continued_from,
        learned_batches=list(trained.learned) if incremental else None,
    )
    new_state = record_batch(
        settings, run.store, run.state, n, record, logged.model_version if promoted else previous
    )
    report = training_report(
        batch_number=n,
        metrics=evaluation.metrics,
        champion_metrics=evaluation.champion_metrics,
        champion_version=previous,
        new_version=logged.model_version,
        promoted=promoted,
        reason=evaluation.decision.reason,
        primary_metric=settings.evaluation.primary_metric,
        summary=summary,
    )
    return _Committed(new_state, record, logged.run_id, versioned.model_file, report)


def _accept_untrained(run: _Run) -> _Committed:
    """``monitoring.retrain_policy: on_change`` and nothing changed: version the batch, log
    its monitoring figures and record it completed without training a model."""
    settings, training, n = run.settings, run.training, run.batch.batch_number
    reason = run.checked.decision.reason
    versioned = save_and_version(settings, training, None)
    run_id = log_untrained(
        settings,
        run.experiment_id,
        training=training,
        skip_reason=reason,
        tags=run.tags(versioned),
        monitoring_metrics=mlflow_metrics(run.checked.record),
        documents=run.documents(),
    )
    record = BatchRecord(
        status="completed",
        started_at=run.started,
        finished_at=utc_now(),
        source=run.batch.source,
        rows=training.rows,
        training_rows_total=training.parts.summary.rows,
        champion_version_before=run.state.champion_version,
        mlflow_run_id=run_id,
        data_md5=versioned.data_md5,
        prefect_flow_run_id=str(flow_run.id),
        trained=False,
        skip_reason=reason,
        drift=run.checked.record,
    )
    new_state = record_batch(settings, run.store, run.state, n, record, run.state.champion_version)
    report = f"# Batch {n}: accepted without training\n\n{reason}\n"
    return _Committed(new_state, record, run_id, None, report)


# --------------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="automated_training_flow.py",
        description="Run the retraining flow once: the given batch N, or the next one.",
    )
    parser.add_argument(
        "batch", nargs="?", type=batch_argument, help="batch number (default: the next batch)"
    )
    parser.add_argument("--params", help=f"params file (default: {DEFAULT_PARAMS})")
    parser.add_argument("--force", action="store_true", help="retrain a batch that is already completed")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of pipeline errors")
    parser.add_argument(
        "--all", action="store_true", help="process pending batches one flow run each until none is left"
    )
    args = parser.parse_args(argv)
    if args.all and args.batch is not None:
        parser.error("give a batch number or --all, not both")
    return args


def _wait_for_temporary_api(server: TemporaryApiServer, settings: Settings) -> str | None:
    """Import the run's libraries while Prefect's temporary API server boots, then its URL;
    None (after one ``error:`` line) when it does not answer or exits."""
    import_run_libraries(settings.mlflow.tracking_uri)
    try:
        return server.wait()
    except TemporaryApiTimeoutError as exc:
        if exc.exit_code is None:
            print(f"error: {temporary_api_unreachable(exc.waited_s)}", file=sys.stderr)
        else:
            print(
                f"error: Prefect's temporary API server exited with code {exc.exit_code} while "
                "starting (its messages are above)",
                file=sys.stderr,
            )
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    quiet_temporary_server_notices()
    # As typed (relative to the current folder); none: the flow's own rule, in the flow.
    params = str(params_for_command(args.params, DEFAULT_PARAMS)) if args.params else None
    try:
        # Fail fast, before Prefect starts.
        settings = load_settings(resolve_params(params), default_root=PROJECT_ROOT)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The project's servers, when `make start-services` runs them: the same run, same stores.
    running = running_urls(settings)
    if "mlflow" in running and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = running["mlflow"]
    api_url = running.get("prefect")
    temporary_api = started_api_server()
    if api_url is None and temporary_api is not None:
        api_url = _wait_for_temporary_api(temporary_api, settings)
        if api_url is None:
            return 1
    with one_off_run_settings(prefect_home(settings), api_url):
        while True:
            try:
                outcome = automated_training_flow(
                    batch_number=args.batch, params_path=params, force=args.force, debug=args.debug
                )
            except PipelineError as exc:
                send_pending_prefect_records()
                print(f"error: {exc}", file=sys.stderr)
                return 1
            except RuntimeError as exc:
                unreachable = prefect_api_unreachable(exc)
                if unreachable is None:
                    raise
                print(f"error: {unreachable}", file=sys.stderr)
                return 1
            except Exception as exc:
                api_failure = prefect_api_failure(exc)
                if api_failure is None:
                    raise
                # Logs that cannot reach the API are reported now, not after the result line.
                send_pending_prefect_records(timeout_s=10)
                cause = pipeline_error_behind(exc)
                message = f"{cause} (then {api_failure})" if cause else api_failure
                # Prefect's "--- Error logging to API ---" report ends without a newline.
                print(f"\nerror: {message}", file=sys.stderr)
                return 1
            send_pending_prefect_records()
            print(f"{outcome['status']}: {outcome['message']}", flush=True)
            if not (args.all and outcome["status"] == "completed"):
                return 0


if __name__ == "__main__":
    exit_without_teardown(main())
