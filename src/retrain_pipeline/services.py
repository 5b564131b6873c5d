"""Background services: Prefect server, MLflow server, process worker, scoring server.

Each service runs in its own session (process group) with a pid file and a log file in
the project's ``.services/`` folder. ``start`` is idempotent and waits until the service
answers (or fails with the tail of its log); ``stop`` stops exactly the process group that
``start`` recorded, and a stale pid file (dead or reused pid) is removed, not trusted.

    python -m retrain_pipeline.services start prefect mlflow worker serve --params params.yaml
    python -m retrain_pipeline.services stop serve worker mlflow prefect --params params.yaml
    python -m retrain_pipeline.services status --params params.yaml
    python -m retrain_pipeline.services env --params params.yaml   # for make: URLs of running services
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from retrain_pipeline import tracking
from retrain_pipeline.arguments import (
    DEFAULT_HOST,
    DEFAULT_MLFLOW_PORT,
    DEFAULT_PREFECT_PORT,
    DEFAULT_SERVE_PORT,
    host_argument,
    port_argument,
)
from retrain_pipeline.config import AutomationConfig, Settings
from retrain_pipeline.errors import PipelineError, ServiceError
from retrain_pipeline.fileio import write_text_atomic
from retrain_pipeline.params import PROJECT_PARAMS, load_settings, params_for_command

logger = logging.getLogger(__name__)

SERVICE_NAMES = ("prefect", "mlflow", "worker", "serve")


@dataclass(frozen=True)
class Endpoints:
    prefect_host: str = DEFAULT_HOST
    prefect_port: int = DEFAULT_PREFECT_PORT
    mlflow_host: str = DEFAULT_HOST
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    serve_host: str = DEFAULT_HOST
    serve_port: int = DEFAULT_SERVE_PORT

    @property
    def prefect_api(self) -> str:
        return f"http://{self.prefect_host}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.mlflow_host}:{self.mlflow_port}"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    ready: Callable[[str], bool]  # given what the service logged since this start
    stop_signal: signal.Signals
    marker: str  # must appear in the process's command line: guards against a reused pid
    cwd: Path | None = None  # default: the project folder


def run_dir(settings: Settings) -> Path:
    return settings.root / ".services"


def prefect_home(settings: Settings) -> Path:
    return settings.root / ".prefect"


def _bin(name: str) -> str:
    """An executable of this environment (the project's .venv)."""
    return str(Path(sys.executable).parent / name)


def _http_ok(url: str) -> Callable[[str], bool]:
    def check(_: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return check


def _log_says(text: str) -> Callable[[str], bool]:
    def check(log_text: str) -> bool:
        return text in log_text

    return check


def base_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(prefect_home(settings)),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def spec_for(name: str, settings: Settings, endpoints: Endpoints) -> ServiceSpec:
    """How to run one service for this project."""
    env = base_env(settings)
    if name == "prefect":
        env.pop("PREFECT_API_URL", None)
        return prefect_server_spec(endpoints.prefect_host, endpoints.prefect_port, env)
    if name == "mlflow":
        store = settings.mlflow.tracking_uri
        if settings.mlflow.is_remote:
            raise ServiceError(f"mlflow.tracking_uri is already a server ({store}); nothing to start")
        return mlflow_server_spec(
            store, mlflow_artifact_args(settings), endpoints.mlflow_host, endpoints.mlflow_port, env
        )
    if name == "worker":
        env.update(worker_env(settings))
        return worker_spec(name, settings.automation, env)
    if name == "serve":
        return serve_spec(settings, endpoints.serve_host, endpoints.serve_port, env)
    raise ServiceError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")


def prefect_server_spec(host: str, port: int, env: dict[str, str], cwd: Path | None = None) -> ServiceSpec:
    """``prefect server start``; its database is whatever ``env`` configures (SQLite by default)."""
    url = f"http://{host}:{port}/api"
    argv = [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)]
    return ServiceSpec("prefect", argv, env, url, _http_ok(f"{url}/health"), signal.SIGTERM, "prefect", cwd)


def mlflow_server_spec(
    store: str, artifact_args: list[str], host: str, port: int, env: dict[str, str], cwd: Path | None = None
) -> ServiceSpec:
    """``mlflow server`` over ``store`` with one web worker (2 cores); see :func:`mlflow_artifact_args`."""
    url = f"http://{host}:{port}"
    argv = [
        _bin("mlflow"),
        "server",
        "--backend-store-uri",
        store,
        *artifact_args,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # MLflow's job runner (GenAI scorers and prompt optimisation, which this pipeline does not
    # use) starts about 8 more processes, each importing MLflow: seconds of CPU at every start.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env}
    return ServiceSpec("mlflow", argv, env, url, _http_ok(f"{url}/health"), signal.SIGTERM, "mlflow", cwd)


def worker_spec(
    name: str,
    automation: AutomationConfig,
    env: dict[str, str],
    extra_args: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> ServiceSpec:
    """A Prefect process worker for the work pool, talking to ``env["PREFECT_API_URL"]``.

    It polls every ``automation.worker_poll_seconds`` and starts a scheduled run's process
    ``automation.worker_prefetch_seconds`` early: the process loads the flow (the imports, about
    10 s on 2 cores) and Prefect holds it until the scheduled time, so the run itself starts
    on the tick. Prefect's own settings in the environment win.
    """
    env = {
        "PREFECT_WORKER_QUERY_SECONDS": f"{automation.worker_poll_seconds:g}",
        "PREFECT_WORKER_PREFETCH_SECONDS": f"{automation.worker_prefetch_seconds:g}",
        **env,
    }
    pool = automation.work_pool
    argv = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", *extra_args]
    return ServiceSpec(
        name,
        argv,
        env,
        env["PREFECT_API_URL"],
        _log_says("started!"),
        signal.SIGINT,  # a Prefect worker ignores SIGTERM for a long time; SIGINT stops it
        "worker",
        cwd,
    )


def serve_spec(settings: Settings, host: str, port: int, env: dict[str, str]) -> ServiceSpec:
    """The scoring server (:mod:`retrain_pipeline.serving`) over the project's tracking store:
    ``MLFLOW_TRACKING_URI`` if set, else the project's running MLflow server, else the
    params' store. Ready once ``/model`` answers (the champion, if any, is loaded by then)."""
    url = f"http://{host}:{port}"
    argv = [sys.executable, "-m", "retrain_pipeline.serving", "--host", host, "--port", str(port)]
    if settings.params_file is not None:
        argv += ["--params", str(settings.params_file)]
    mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or running_urls(settings).get("mlflow")
    if mlflow_uri:
        env = {**env, "MLFLOW_TRACKING_URI": mlflow_uri}
    return ServiceSpec(
        "serve", argv, env, url, _http_ok(f"{url}/model"), signal.SIGTERM, "retrain_pipeline.serving"
    )


def mlflow_artifact_args(settings: Settings) -> list[str]:
    """How the MLflow server started here stores artifacts (``mlflow.serve_artifacts``).

    Default: one artifact scheme in every mode. Clients read and write the files under
    ``mlflow.artifact_location`` themselves, so what the server logged loads without it (no
    proxied ``mlflow-artifacts:`` URIs, which only this server could resolve). With
    ``serve_artifacts: true`` the server proxies them (stored under ``artifact_location``), so
    clients on other machines need only its http URI.
    """
    location = settings.mlflow.artifact_location
    if settings.mlflow.serve_artifacts:
        return ["--artifacts-destination", location.as_uri(), "--serve-artifacts"]
    return ["--default-artifact-root", location.as_uri(), "--no-serve-artifacts"]


def worker_env(settings: Settings) -> dict[str, str]:
    """Where the worker and its flow runs find the servers and this project's params file.

    ``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` from the environment win (a worker on
    another machine, or a shell that sourced ``.cluster/env``); otherwise the servers that
    ``make start-services`` runs for this project.
    """
    urls = running_urls(settings)
    env: dict[str, str] = {}
    prefect_url = os.environ.get("PREFECT_API_URL", "").strip() or urls.get("prefect")
    if not prefect_url:
        raise ServiceError(
            "no Prefect server: run `make start-services` first, or set PREFECT_API_URL to your server"
        )
    env["PREFECT_API_URL"] = prefect_url
    mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or urls.get("mlflow")
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    if settings.params_file is not None:
        # Runs of a deployment whose code comes from Git name no params file: they use the worker's.
        env["RETRAIN_PARAMS"] = str(settings.params_file)
    return env


# --------------------------------------------------------------------------- pid files


def _pid_file(settings: Settings, name: str, folder: Path | None = None) -> Path:
    return (folder or run_dir(settings)) / f"{name}.pid"


def _log_file(settings: Settings, name: str, folder: Path | None = None) -> Path:
    return (folder or run_dir(settings)) / f"{name}.log"


def _alive(pid: int, marker: str) -> bool:
    """The process ``pid`` runs, is not a zombie, and its command line holds ``marker``."""
    try:
        process = psutil.Process(pid)
        return marker in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def recorded(settings: Settings, name: str, folder: Path | None = None) -> dict[str, object] | None:
    """The pid file's record if its process is alive; a stale pid file is removed.

    ``folder`` holds the pid and log files (default: the project's ``.services/``).
    """
    pid_file = _pid_file(settings, name, folder)
    try:
        record = json.loads(pid_file.read_text(encoding="utf-8"))
        pid, marker = int(record["pid"]), str(record["marker"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("Removing unreadable pid file %s", pid_file)
        pid_file.unlink(missing_ok=True)
        return None
    if not _alive(pid, marker):
        logger.info("Removing stale pid file %s (pid %d is not %s)", pid_file, pid, name)
        pid_file.unlink(missing_ok=True)
        return None
    return dict(record)


def running_urls(settings: Settings) -> dict[str, str]:
    urls = {}
    for name in ("prefect", "mlflow"):
        record = recorded(settings, name)
        if record is not None:
            urls[name] = str(record["url"])
    return urls


# --------------------------------------------------------------------------- start / stop


def prepare(spec: ServiceSpec, settings: Settings) -> None:
    """What a service needs before it starts: MLflow's store, complete and in today's artifact scheme."""
    if spec.name == "mlflow":
        tracking.create_sqlite_store(settings.mlflow)  # whole, even if the server is killed early
    if spec.name == "mlflow" and not settings.mlflow.serve_artifacts:
        tracking.repair_proxied_artifact_uris(settings.mlflow)


def start(spec: ServiceSpec, settings: Settings, timeout: float = 120.0, folder: Path | None = None) -> str:
    """Start ``spec`` in the background unless it runs already; wait until it is ready."""
    record = recorded(settings, spec.name, folder)
    if record is not None:
        running = f"{spec.name}: already running (pid {record['pid']}, {record['url']})"
        argv = record.get("argv")
        if argv != spec.argv:
            shown = shlex.join(map(str, argv)) if isinstance(argv, list) else "an unknown command"
            running += (
                f"; it was started as `{shown}`, not as this version starts it: "
                "`make stop` and start it again"
            )
        return running
    prepare(spec, settings)
    pid_file = _pid_file(settings, spec.name, folder)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_file = _log_file(settings, spec.name, folder)
    with log_file.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(spec.argv)}\n".encode())
        log.flush()
        offset = log.tell()
        process = subprocess.Popen(
            spec.argv,
            env=spec.env,
            cwd=spec.cwd or settings.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_default_stop_signals,
        )
    record = {
        "pid": process.pid,
        "marker": spec.marker,
        "url": spec.url,
        "argv": spec.argv,
        "stop_signal": spec.stop_signal.name,
    }
    write_text_atomic(pid_file, json.dumps(record))
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise ServiceError(
                f"{spec.name} exited with code {process.returncode}:\n{_tail(log_file, offset)}"
            )
        if spec.ready(_read_from(log_file, offset)):
            return (
                f"{spec.name}: started (pid {process.pid}, {spec.url}) in {time.monotonic() - started:.1f} s"
            )
        time.sleep(0.5)
    _stop_group(process.pid, spec.stop_signal, 10)
    pid_file.unlink(missing_ok=True)
    raise ServiceError(f"{spec.name} did not become ready within {timeout:.0f} s:\n{_tail(log_file, offset)}")


def _default_stop_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM back to their default actions.

    A shell starts background jobs (``make start-cluster &``, nohup, CI steps) with SIGINT
    ignored, exec keeps ignored signals ignored, and Python then never installs its
    KeyboardInterrupt handler: the worker would shrug off the SIGINT that stops it and be
    killed only after the stop timeout.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop(settings: Settings, name: str, timeout: float = 30.0, folder: Path | None = None) -> str:
    """Stop the recorded process group of ``name``; removes its pid file."""
    record = recorded(settings, name, folder)
    if record is None:
        return f"{name}: not running"
    pid = int(str(record["pid"]))
    stop_signal = signal.Signals[str(record.get("stop_signal", "SIGTERM"))]
    how = _stop_group(pid, stop_signal, timeout)
    _pid_file(settings, name, folder).unlink(missing_ok=True)
    return f"{name}: stopped (pid {pid}, {how})"


def _stop_group(pid: int, stop_signal: signal.Signals, timeout: float) -> str:
    try:
        os.killpg(pid, stop_signal)
    except ProcessLookupError:
        return "already gone"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return stop_signal.name
        time.sleep(0.25)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return stop_signal.name
    return f"SIGKILL after {stop_signal.name} timed out"


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process in the process group ``pgid``."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _read_from(log_file: Path, offset: int) -> str:
    try:
        with log_file.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(log_file: Path, offset: int, lines: int = 30) -> str:
    text = _read_from(log_file, offset)
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", help="params file (default: the project's params.yaml)")
    common.add_argument("--prefect-host", type=host_argument, default=DEFAULT_HOST)
    common.add_argument("--prefect-port", type=port_argument, default=DEFAULT_PREFECT_PORT)
    common.add_argument("--mlflow-host", type=host_argument, default=DEFAULT_HOST)
    common.add_argument("--mlflow-port", type=port_argument, default=DEFAULT_MLFLOW_PORT)
    common.add_argument("--serve-host", type=host_argument, default=DEFAULT_HOST)
    common.add_argument("--serve-port", type=port_argument, default=DEFAULT_SERVE_PORT)
    common.add_argument("--timeout", type=float, default=120.0)
    parser = argparse.ArgumentParser(prog="python -m retrain_pipeline.services")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("start", "stop"):
        sub = commands.add_parser(command, parents=[common])
        sub.add_argument("names", nargs="+", choices=SERVICE_NAMES)
    commands.add_parser("run", parents=[common], help="run a service in the foreground").add_argument(
        "name", choices=SERVICE_NAMES
    )
    commands.add_parser("status", parents=[common])
    commands.add_parser("env", parents=[common])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = load_settings(
            params_for_command(args.params), default_root=PROJECT_PARAMS.parent, light=True
        )
        endpoints = Endpoints(
            args.prefect_host,
            args.prefect_port,
            args.mlflow_host,
            args.mlflow_port,
            args.serve_host,
            args.serve_port,
        )
        if args.command == "start":
            for name in args.names:
                print(start(spec_for(name, settings, endpoints), settings, args.timeout), flush=True)
        elif args.command == "run":
            spec = spec_for(args.name, settings, endpoints)
            prepare(spec, settings)
            print(f"{spec.name}: {shlex.join(spec.argv)} (Ctrl+C stops it)", flush=True)
            os.execve(spec.argv[0], spec.argv, spec.env)  # replaces this process; no shell
        elif args.command == "stop":
            for name in args.names:
                print(stop(settings, name, args.timeout), flush=True)
        elif args.command == "status":
            for name in SERVICE_NAMES:
                record = recorded(settings, name)
                print(
                    f"{name}: " + (f"running (pid {record['pid']}, {record['url']})" if record else "stopped")
                )
        elif args.command == "env":
            urls = running_urls(settings)
            exports = {"PREFECT_API_URL": urls.get("prefect"), "MLFLOW_TRACKING_URI": urls.get("mlflow")}
            # What the environment already sets (e.g. from .cluster/env) is not overridden.
            print(
                " ".join(
                    f"{key}={value}" for key, value in exports.items() if value and not os.environ.get(key)
                )
            )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
