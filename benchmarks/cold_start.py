"""The benchmark's own services for its cold-start section, and the runs it measures through them.

:func:`own_services` does for a project in the benchmark's work folder what
``make start-services deploy start-worker-bg`` does for a user's project: the Prefect and
MLflow servers (``retrain_pipeline.services``, on free loopback ports, pid and log files in
that project's ``.services/``, Prefect's home in its ``.prefect/``), the deployment and its
crashed-run automation (``deployments/setup_deployment.py``), a process worker. It never reads
or writes anything of the repository's own project (its ``.services/``, ``mlflow.db``,
``.prefect/``) and stops all three services when it ends, also after an error, then checks that
no process of theirs is left.

While the manual runs are measured the deployment's cron never fires (the project's params say
:data:`NEVER`, so ``make trigger``, which registers the deployment again, keeps it);
:meth:`OwnServices.scheduled_runs` then registers it with the cron of the scheduled runs, as
``make deploy`` does, and measures the runs the scheduler creates.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.records import (
    DeploymentRun,
    FlowRunTimes,
    LeftoverProcess,
    ScheduledRun,
    ScheduledRuns,
    ServicesInfo,
)

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.client.schemas.objects import FlowRun

    from retrain_pipeline.config import Settings
    from retrain_pipeline.service_specs import Endpoints

logger = logging.getLogger("benchmarks.cold_start")

LOOPBACK = "127.0.0.1"
NEVER = "0 0 1 1 *"  # the cron while manual runs are measured: no tick collides with them
START_TIMEOUT_S = 180.0  # a server's start on a busy 2-core machine
STOP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 600.0  # one deployment run, trigger to final state
TICK_PERIOD_S = 60.0  # the benchmark project's cron fires every minute
# Variables of the caller that would point the services or the CLI at other servers:
# service_specs.worker_env prefers PREFECT_API_URL / MLFLOW_TRACKING_URI from the environment.
FOREIGN_ENV = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_PROFILE")
STOP_ORDER = ("worker", "mlflow", "prefect")
FINAL_TYPES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
ACTIVE_TYPES = ("PENDING", "RUNNING", "CANCELLING", "PAUSED")


class ColdStartError(RuntimeError):
    """A service did not start, or a measured run did not train its batch."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now (bound to port 0 together, then closed)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def project_env(params: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell in the project of ``params``: none of the caller's servers.

    ``PREFECT_HOME`` is the project's own ``.prefect/`` beside its params file, the one the
    command line and the services choose for it anyway (``service_records.prefect_home``); setting
    it also keeps Prefect from reading the user's ``~/.prefect`` profiles.
    """
    env = {k: v for k, v in (base if base is not None else os.environ).items() if k not in FOREIGN_ENV}
    env.update(PREFECT_HOME=str(Path(params).resolve().parent / ".prefect"), PYTHONUNBUFFERED="1")
    return env


@contextlib.contextmanager
def project_environ(params: Path) -> Iterator[None]:
    """This process's ``os.environ`` as :func:`project_env` (Prefect is imported in here first)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(project_env(params, saved))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return float((later - earlier).total_seconds())


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def flow_run_times(run: FlowRun) -> FlowRunTimes:
    """A finished flow run's timestamps and durations (the API server's clock)."""
    return FlowRunTimes(
        flow_run=run.name,
        flow_run_id=str(run.id),
        state=run.state_name,
        auto_scheduled=bool(run.auto_scheduled),
        created=_iso(run.created),
        expected_start_time=_iso(run.expected_start_time),
        start_time=_iso(run.start_time),
        end_time=_iso(run.end_time),
        flow_run_s=_seconds(run.end_time, run.start_time),
    )


def batch_of_run(settings: Settings, flow_run_id: str) -> int | None:
    """The batch the project's state records as completed by this flow run, if any."""
    from retrain_pipeline.state_stores import state_store

    state = state_store(settings).load()
    for key, record in state.batches.items():
        if record.status == "completed" and record.prefect_flow_run_id == flow_run_id:
            return int(key)
    return None


def flow_run_of_batch(settings: Settings, batch: int) -> str | None:
    """The Prefect flow run id the project's state records for a batch."""
    from retrain_pipeline.state_stores import state_store

    record = state_store(settings).load().record(batch)
    return record.prefect_flow_run_id if record is not None else None


def leftover_processes(marker: str) -> list[LeftoverProcess]:
    """Live processes (not this one) whose command line or environment contains ``marker``.

    Every process of the benchmark's services and of their flow runs has the project's
    folder in its environment (``PREFECT_HOME``) or command line.
    """
    needle, found = marker.encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if "State:\tZ" not in status and (needle in cmdline or needle in environ):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(LeftoverProcess(int(entry.name), command[:300]))
    return found


def _end(processes: list[LeftoverProcess], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the given processes (the benchmark's own, found by its folder)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p.pid}").exists() for p in processes):
        time.sleep(0.25)
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)


def _deployment_runs(deployment_id: UUID, state_types: Sequence[str]) -> FlowRunFilter:
    """A filter for the deployment's flow runs in one of ``state_types``."""
    from prefect.client.schemas import filters
    from prefect.client.schemas.objects import StateType

    return filters.FlowRunFilter(
        deployment_id=filters.FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=filters.FlowRunFilterState(
            type=filters.FlowRunFilterStateType(any_=[StateType(t) for t in state_types])
        ),
    )


def _log_tick(record: ScheduledRun) -> None:
    logger.info(
        "Scheduled run %s (tick %s): %s, tick to final %.2f s%s",
        record.flow_run,
        record.expected_start_time,
        record.state,
        record.tick_to_final_s or 0.0,
        f" (not counted: {record.reason})" if record.reason else "",
    )


@dataclass
class OwnServices:
    """The benchmark project's running services, its deployment, and what was measured of them."""

    settings: Settings
    endpoints: Endpoints
    scheduled_cron: str  # the cron of the scheduled runs (the project's params say NEVER)
    start_s: dict[str, float] = field(default_factory=dict)
    deploy_s: dict[str, float] = field(default_factory=dict)
    deployment_id: UUID | None = None
    stopped: list[str] = field(default_factory=list)
    leftovers: list[LeftoverProcess] = field(default_factory=list)

    @property
    def deployment_name(self) -> str:
        from deployments.setup_deployment import FLOW_NAME

        return f"{FLOW_NAME}/{self.settings.automation.deployment_name}"

    def info(self) -> ServicesInfo:
        """What the report says of these services: where they ran, their start, deployment and stop."""
        from retrain_pipeline import service_records

        return ServicesInfo(
            prefect_api=self.endpoints.prefect_api,
            mlflow_uri=self.endpoints.mlflow_uri,
            services_folder=str(service_records.run_dir(self.settings)),
            prefect_home=str(service_records.prefect_home(self.settings)),
            project=str(self.settings.root),
            deployment=self.deployment_name,
            deployment_id=str(self.deployment_id) if self.deployment_id else None,
            cron=self.scheduled_cron,
            cron_while_manual_runs=NEVER,
            start_s=self.start_s,
            deploy_s=self.deploy_s,
            stopped=self.stopped,
            leftover_processes=self.leftovers,
        )

    @contextlib.contextmanager
    def api(self) -> Iterator[SyncPrefectClient]:
        """A client of this project's Prefect server (whatever the caller's settings say)."""
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings(updates={PREFECT_API_URL: self.endpoints.prefect_api}),
            get_client(sync_client=True) as client,
        ):
            yield client

    def start(self, name: str) -> None:
        """``python -m retrain_pipeline.services start NAME`` for the benchmark project."""
        from retrain_pipeline import service_specs, services

        started = time.perf_counter()
        spec = service_specs.spec_for(name, self.settings, self.endpoints)
        message = services.start(spec, self.settings, START_TIMEOUT_S)
        self.start_s[name] = time.perf_counter() - started
        logger.info("%s", message)

    def deploy(self, phase: str, cron: str | None = None) -> None:
        """What ``make deploy`` does (setup_deployment.py), optionally with another cron."""
        from deployments import setup_deployment
        from retrain_pipeline import automations

        settings = self.settings
        if cron is not None:
            automation = settings.automation.model_copy(update={"cron_schedule": cron})
            settings = settings.model_copy(update={"automation": automation})
        auto = settings.automation
        heartbeat_s = setup_deployment.heartbeat_seconds(os.environ)
        started = time.perf_counter()
        shown = io.StringIO()  # Prefect prints a table of the deployments; the summary owns stdout
        with self.api(), contextlib.redirect_stdout(shown):
            setup_deployment.ensure_process_pool(auto.work_pool)
            self.deployment_id = setup_deployment.deploy(settings, self.endpoints.mlflow_uri, heartbeat_s)
            automation_core = automations.crash_automation(
                self.deployment_id, auto.deployment_name, heartbeat_s
            )
            automations.ensure_automation(automation_core)
        self.deploy_s[phase] = time.perf_counter() - started
        logger.debug("Prefect printed while deploying:\n%s", shown.getvalue())
        logger.info(
            "Deployment %s registered on %s (cron %r) in %.1f s",
            self.deployment_name,
            self.endpoints.prefect_api,
            auto.cron_schedule,
            self.deploy_s[phase],
        )

    def deployment_run(self, timeout_s: float = RUN_TIMEOUT_S) -> DeploymentRun:
        """One run created from the deployment (as ``make trigger``), waited for; it must train a batch."""
        from deployments.setup_deployment import wait_for

        if self.deployment_id is None:
            raise ColdStartError("no deployment registered")
        with self.api() as client:
            started = time.perf_counter()
            created = client.create_flow_run_from_deployment(self.deployment_id, tags=["benchmark"])
            finished = wait_for(created.id, timeout_s)
        return self._trained(finished, time.perf_counter() - started)

    def finished_run(self, flow_run_id: str, polled_s: float) -> DeploymentRun:
        """The record of a deployment run someone else started and waited for (``make trigger``)."""
        from uuid import UUID

        with self.api() as client:
            finished = client.read_flow_run(UUID(flow_run_id))
        return self._trained(finished, polled_s)

    def _trained(self, finished: FlowRun, polled_s: float) -> DeploymentRun:
        """A finished deployment run's record; ColdStartError unless it completed and trained a batch."""
        result = DeploymentRun(
            **asdict(flow_run_times(finished)),
            trigger_to_final_s=_seconds(finished.end_time, finished.created),
            trigger_to_start_s=_seconds(finished.start_time, finished.created),
            polled_wall_s=polled_s,
            prefect_api=self.endpoints.prefect_api,
            batch=batch_of_run(self.settings, str(finished.id)),
        )
        if result.state != "Completed" or result.batch is None:
            raise ColdStartError(
                f"flow run {result.flow_run} ended {result.state} without training a batch: {asdict(result)}"
            )
        logger.info(
            "Deployment run %s: %s, batch %s; trigger to final %.2f s, flow run %.2f s",
            finished.name,
            finished.state_name,
            result.batch,
            result.trigger_to_final_s or 0.0,
            result.flow_run_s or 0.0,
        )
        return result

    def knows_flow_run(self, flow_run_id: str) -> bool:
        """True when this project's Prefect server recorded the flow run (the CLI used it)."""
        from uuid import UUID

        from prefect.exceptions import ObjectNotFound

        with self.api() as client:
            try:
                client.read_flow_run(UUID(flow_run_id))
            except ObjectNotFound:
                return False
        return True

    def scheduled_runs(self, count: int, timeout_s: float | None = None) -> ScheduledRuns:
        """Register the deployment with the project's cron and measure ``count`` scheduled runs.

        A run counts when the scheduler created it before its tick, it completed and trained a
        batch, and no other flow run was active at its tick (the worker was idle). Then the
        schedule is paused (as ``automation.pause_when_done`` does), which deletes the runs
        still scheduled.
        """
        self.deploy("scheduled", cron=self.scheduled_cron)
        if self.deployment_id is None:
            raise ColdStartError("no deployment registered")
        registered = datetime.now(UTC)
        final_runs = _deployment_runs(self.deployment_id, FINAL_TYPES)
        deadline = time.monotonic() + (timeout_s or (count + 3) * TICK_PERIOD_S + 60)
        counted: list[ScheduledRun] = []
        not_counted: list[ScheduledRun] = []
        seen: set[str] = set()
        with self.api() as client:
            while len(counted) < count and time.monotonic() < deadline:
                for run in client.read_flow_runs(flow_run_filter=final_runs, limit=200):
                    if str(run.id) in seen or not run.auto_scheduled:
                        continue
                    seen.add(str(run.id))
                    record = self._tick_record(client, run, registered)
                    (not_counted if record.reason else counted).append(record)
                    _log_tick(record)
                time.sleep(2)
            client.pause_deployment(self.deployment_id)
        if len(counted) < count:
            logger.warning("Only %d of %d scheduled runs measured before the timeout", len(counted), count)
        return ScheduledRuns(count, counted, not_counted)

    def _tick_record(self, client: SyncPrefectClient, run: FlowRun, registered: datetime) -> ScheduledRun:
        """A scheduled run timed from its tick, and whether it counts (:meth:`_tick_verdict`)."""
        tick = run.expected_start_time
        reason, idle_for, batch = self._tick_verdict(client, run, registered)
        return ScheduledRun(
            **asdict(flow_run_times(run)),
            tick_to_final_s=_seconds(run.end_time, tick),
            tick_to_start_s=_seconds(run.start_time, tick),
            scheduled_ahead_s=_seconds(tick, run.created),
            worker_idle_for_s=idle_for,
            batch=batch,
            reason=reason,
        )

    def _tick_verdict(
        self, client: SyncPrefectClient, run: FlowRun, registered: datetime
    ) -> tuple[str, float | None, int | None]:
        """Why a scheduled run does not count ("" when it does), how long the worker had been
        idle at its tick, and the batch it trained."""
        from prefect.client.schemas import filters

        tick = run.expected_start_time
        if tick is None or run.created is None or run.created >= tick or tick <= registered:
            return "the scheduler created it after its tick", None, None
        if run.state_name != "Completed":
            return f"ended {run.state_name}", None, None
        started_before = filters.FlowRunFilter(start_time=filters.FlowRunFilterStartTime(before_=tick))
        others = [
            r for r in client.read_flow_runs(flow_run_filter=started_before, limit=200) if r.id != run.id
        ]
        if any(r.end_time is None or r.end_time > tick for r in others):
            return "another flow run was active at its tick", None, None
        ends = [r.end_time for r in others if r.end_time is not None]
        idle_for = _seconds(tick, max(ends)) if ends else None
        batch = batch_of_run(self.settings, str(run.id))
        return ("it trained no batch" if batch is None else ""), idle_for, batch

    def wait_idle(self, timeout_s: float = RUN_TIMEOUT_S) -> None:
        """Wait until no run of the deployment is pending or running (before the worker stops)."""
        from deployments.setup_deployment import wait_for

        if self.deployment_id is None:
            return
        active = _deployment_runs(self.deployment_id, ACTIVE_TYPES)
        with self.api() as client:
            for run in client.read_flow_runs(flow_run_filter=active, limit=50):
                logger.info(
                    "Waiting for flow run %s (%s) before stopping the worker", run.name, run.state_name
                )
                wait_for(run.id, timeout_s)

    def stop_all(self) -> None:
        """Stop worker, MLflow and Prefect; end any process of theirs that is still alive."""
        from retrain_pipeline import services

        for name in STOP_ORDER:
            try:
                self.stopped.append(services.stop(self.settings, name, STOP_TIMEOUT_S))
            except OSError as exc:
                self.stopped.append(f"{name}: could not stop: {exc}")
            logger.info("%s", self.stopped[-1])
        self.leftovers = leftover_processes(str(self.settings.root))
        if self.leftovers:
            logger.warning(
                "Processes of the benchmark's services still alive; ending them: %s", self.leftovers
            )
            _end(self.leftovers)


@contextlib.contextmanager
def own_services(params: Path, scheduled_cron: str) -> Iterator[OwnServices]:
    """Prefect, MLflow, the deployment (cron :data:`NEVER`) and a worker for the project of ``params``;
    :meth:`OwnServices.scheduled_runs` registers it again with ``scheduled_cron``.

    Everything is stopped when the block ends, also after an error; the deployment's runs
    are waited for first when the block ended normally.
    """
    from retrain_pipeline import service_records, service_specs
    from retrain_pipeline.params import load_settings

    with project_environ(params):
        settings = load_settings(params)
        if str(service_records.prefect_home(settings)) != os.environ["PREFECT_HOME"]:
            raise ColdStartError(f"{params}: Prefect's home is not beside the params file")
        prefect_port, mlflow_port = free_ports(2)
        endpoints = service_specs.Endpoints(LOOPBACK, prefect_port, LOOPBACK, mlflow_port)
        own = OwnServices(settings, endpoints, scheduled_cron)
        try:
            own.start("prefect")
            own.start("mlflow")
            own.deploy("manual", cron=NEVER)
            own.start("worker")
            yield own
            own.wait_idle()
        finally:
            own.stop_all()
