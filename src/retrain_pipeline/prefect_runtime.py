"""Prefect run-time helpers: one-line pipeline errors, quiet notices, the settings of CLI runs."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from retrain_pipeline.errors import PipelineError

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
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: How long a CLI run waits for Prefect's temporary API server (Prefect's default: 20 s).
#: Its first start migrates a new database, which took 15-25 s on 2 cores, longer under load.
EPHEMERAL_STARTUP_TIMEOUT_S = 120
_EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


@contextlib.contextmanager
def one_off_run_settings(prefect_home: Path | None = None, api_url: str | None = None) -> Iterator[None]:
    """Prefect settings for a flow run started from our command line (not by a worker).

    Each applies only where the user's environment does not set it:

    - ``PREFECT_HOME`` = ``prefect_home``: the project's own Prefect database, the one its
      Prefect server (``make start-services``) and UI use, not the user's ``~/.prefect``;
    - ``PREFECT_API_URL`` = ``api_url``: the project's running Prefect server, if any;
    - no anonymous usage telemetry (with no network it logs an ERROR on every run);
    - Prefect's temporary API server gets :data:`EPHEMERAL_STARTUP_TIMEOUT_S` to start;
    - no flow heartbeats: the heartbeat thread sleeps in 1-second steps and is joined when
      the run ends, which adds up to a second to every run. Heartbeats let a Prefect
      automation mark a vanished deployment run as crashed; a CLI run reports its own end.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    wanted: dict[Any, Any] = {
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_TIMEOUT_S,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
    }
    if prefect_home is not None:
        wanted[PREFECT_HOME] = prefect_home
    if api_url is not None:
        wanted[PREFECT_API_URL] = api_url
    updates = {setting: value for setting, value in wanted.items() if not os.environ.get(setting.name)}
    with temporary_settings(updates=updates):
        yield


def prefect_api_unreachable(exc: BaseException) -> str | None:
    """A one-line explanation when ``exc`` is Prefect's "temporary server did not start" error."""
    if not (isinstance(exc, RuntimeError) and _EPHEMERAL_TIMEOUT in str(exc)):
        return None
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return temporary_api_unreachable(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def temporary_api_unreachable(waited: float) -> str:
    """The one-line explanation of a temporary API server that did not answer in time."""
    return (
        f"Prefect's temporary API server did not answer within {waited:g} s (its first start "
        f"migrates a new database); set {STARTUP_TIMEOUT_ENV} to wait longer, "
        "or start the project's Prefect server once with `make start-services`"
    )


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


def pipeline_error_behind(exc: BaseException) -> BaseException | None:
    """The pipeline error that was being handled when ``exc`` (a Prefect API failure) was raised.

    When a run fails because a shared store went away (PostgreSQL stopped), Prefect then
    fails to record the Failed state on a server that uses the same database: the user must
    see the store's error, not the API's traceback.
    """
    from retrain_pipeline.errors import PipelineError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PipelineError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def prefect_api_failure(exc: BaseException) -> str | None:
    """One line for an error of Prefect's API (HTTP status or connection), else None."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        request = exc.request
        return f"Prefect API {request.method} {request.url} answered {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):
        return f"Prefect API unreachable: {type(exc).__name__}: {exc}"
    return None


def exit_without_teardown(code: int) -> NoReturn:
    """End a command-line run now: what a normal exit does, minus the interpreter's teardown.

    Non-daemon threads are joined, every ``atexit`` handler runs (Prefect's last log and event
    delivery, the temporary API server's stop), logging and the standard streams are flushed;
    only the destruction of the some 5,000 loaded modules is skipped, which took 1.4-2 s
    after every run (MLflow, Prefect, DVC, scikit-learn). Nothing is written there.
    """
    # What the interpreter's exit does first: threading's exit hooks (which also wake idle
    # thread-pool workers so they can end), then join the non-daemon threads.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    else:  # pragma: no cover - every CPython has it
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
