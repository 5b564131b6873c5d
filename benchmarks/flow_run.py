"""The flow measured in process: one call per batch, and its split by step from Prefect's task runs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from benchmarks.records import FlowBatch, RunJob, TaskDuration
from benchmarks.spec import FLOW_STEPS, LAST_TASK, ORCHESTRATION, TASK_STEPS, UNMAPPED, BenchmarkError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import TaskRun

logger = logging.getLogger(__name__)


def children_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process's live children.

    For the flow worker that is Prefect's ephemeral API server, which shares the machine's
    cores with the flow while it records the run's states, events and logs.
    """
    total = 0.0
    for child in psutil.Process().children():
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:  # ended since it was listed
            continue
        total += times.user + times.system
    return total


def task_name(task_run_name: str) -> str:
    """The task's name from its task run's name ('<task name>-<3 hex digits>')."""
    return task_run_name.rsplit("-", 1)[0]


def read_task_durations(flow_run_id: str, timeout_s: float = 15.0) -> list[TaskDuration]:
    """The flow run's task runs with their durations, once Prefect has recorded all of them.

    Waits until every task run has ended and the flow's last task is there (or two reads
    0.2 s apart agree), or until ``timeout_s``: task run states reach the API as events.
    """
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
    deadline = time.monotonic() + timeout_s
    previous = -1
    while True:
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(flow_run_filter=run_filter)
        ended = all(r.start_time is not None and r.end_time is not None for r in task_runs)
        has_last = LAST_TASK in {task_name(r.name) for r in task_runs}
        if (ended and (has_last or len(task_runs) == previous)) or time.monotonic() > deadline:
            break
        previous = len(task_runs) if ended else -1
        time.sleep(0.2)
    return [TaskDuration(task_name(r.name), _task_seconds(r)) for r in task_runs]


def _task_seconds(task_run: TaskRun) -> float:
    if task_run.start_time is not None and task_run.end_time is not None:
        return float((task_run.end_time - task_run.start_time).total_seconds())
    return float(task_run.total_run_time.total_seconds())


def flow_steps(wall_s: float, tasks: Sequence[TaskDuration]) -> dict[str, float]:
    """Seconds per step; the remainder of the wall time is Prefect's orchestration."""
    steps = dict.fromkeys(FLOW_STEPS, 0.0)
    for task in tasks:
        steps[TASK_STEPS.get(task.name, UNMAPPED)] += task.seconds
    steps[ORCHESTRATION] = wall_s - sum(task.seconds for task in tasks)
    return steps


def run_flow_batch(flow_fn: Callable[..., Any], params: Path) -> FlowBatch:
    """One flow call (it takes the next batch); fails unless the batch completed."""
    start, cpu, server_cpu = time.perf_counter(), time.process_time(), children_cpu_seconds()
    state = flow_fn(params_path=str(params), return_state=True)
    wall = time.perf_counter() - start
    cpu, server_cpu = time.process_time() - cpu, children_cpu_seconds() - server_cpu
    outcome = state.result(raise_on_failure=False)
    status = outcome.get("status") if isinstance(outcome, dict) else f"{state.type}: {outcome!r}"
    if status != "completed":
        raise BenchmarkError(f"flow run on {params} ended with {status!r}: {outcome!r}")
    flow_run_id = str(state.state_details.flow_run_id)
    tasks = read_task_durations(flow_run_id)
    return FlowBatch(
        batch=outcome["batch_number"],
        wall_s=wall,
        process_cpu_s=cpu,
        api_server_cpu_s=server_cpu,
        status=status,
        flow_run_id=flow_run_id,
        tasks=tasks,
        steps=flow_steps(wall, tasks),
    )


def run_flow(flow_fn: Callable[..., Any], job: RunJob) -> list[FlowBatch]:
    """The flow over one project's batches 1..N, one call each.

    ``mlflow.set_tracking_uri`` (called by the flow) also exports ``MLFLOW_TRACKING_URI``,
    which the pipeline's settings then prefer over the params file: without removing it, a
    second project in the same process would log to the first project's store. Removing it
    before each project gives what a fresh process would see.
    """
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    batches = []
    for _ in range(job.n_batches):
        batches.append(run_flow_batch(flow_fn, job.params_file))
        last = batches[-1]
        logger.info("flow %s rep %s batch %s: %.2f s", job.size, job.rep, last.batch, last.wall_s)
    return batches
