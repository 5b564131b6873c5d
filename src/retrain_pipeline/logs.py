"""Prefect run-time helpers: one-line pipeline errors, quiet notices, lean one-off runs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from retrain_pipeline.errors import PipelineError

DEBUG_ENV = "RETRAIN_DEBUG"
_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine")


class DropPipelineTracebacks(logging.Filter):
    """Strip the traceback from records about a :class:`PipelineError`.

    Prefect logs every task or flow exception with its traceback. A rejected batch or an
    unreachable server is an expected outcome whose message already names the file,
    batch or URI, so the traceback only hides it. Unexpected exceptions keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_pipeline_tracebacks() -> None:
    """Install :class:`DropPipelineTracebacks` on Prefect's run loggers (idempotent)."""
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropPipelineTracebacks) for f in logger.filters):
            logger.addFilter(DropPipelineTracebacks())


class DropTemporaryServerNotices(logging.Filter):
    """Drop Prefect's "Starting/Stopping temporary server" notices.

    A one-off CLI run talks to a throw-away local API whose address is useless once the
    process ends; the "stopping" notice would also land after the run's one-line result.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "temporary server" not in record.getMessage()


def quiet_temporary_server_notices() -> None:
    """Install :class:`DropTemporaryServerNotices` on Prefect's root logger (idempotent)."""
    logger = logging.getLogger("prefect")
    if not any(isinstance(f, DropTemporaryServerNotices) for f in logger.filters):
        logger.addFilter(DropTemporaryServerNotices())


HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


@contextlib.contextmanager
def one_off_run_settings() -> Iterator[None]:
    """Prefect settings for a flow run started from our command line (not by a worker).

    Prefect's flow heartbeat thread sleeps in 1-second steps and is joined when the run
    ends, which adds up to a second to every run. Heartbeats let a Prefect automation mark
    a vanished deployment run as crashed; deployment runs keep them. A CLI run reports its
    own end, so it turns them off, unless ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set.
    """
    if os.environ.get(HEARTBEAT_ENV):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def send_pending_prefect_records(timeout_s: float = 60.0) -> None:
    """Send the events and logs Prefect still queues for its API, and wait until they are sent.

    Prefect does this at interpreter exit and warns ("Still processing items: N items
    remaining...") when the API is slow; a CLI calls this before printing its result so
    that its one-line result stays the last line.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=timeout_s, at_exit=False)
