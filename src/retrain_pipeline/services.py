"""The supervisor of a project's background services (``python -m retrain_pipeline.services``).

Each service (its spec: :mod:`retrain_pipeline.service_specs`) runs in its own session
(process group) with a pid file and a log file in the project's ``.services/`` folder
(:mod:`retrain_pipeline.service_records`). ``start`` is idempotent and waits until the
service answers (or fails with the tail of its log); ``stop`` stops exactly the process group
that ``start`` recorded.

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
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import PipelineError, ServiceError
from retrain_pipeline.fileio import write_text_atomic
from retrain_pipeline.params import PROJECT_PARAMS, load_settings, params_for_command
from retrain_pipeline.service_records import log_file, pid_file, recorded, running_urls
from retrain_pipeline.service_specs import SERVICE_NAMES, Endpoints, ServiceSpec, spec_for

logger = logging.getLogger(__name__)


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
    pid_path = pid_file(settings, spec.name, folder)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = log_file(settings, spec.name, folder)
    with log_path.open("ab") as log:
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
    write_text_atomic(pid_path, json.dumps(record))
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            pid_path.unlink(missing_ok=True)
            raise ServiceError(
                f"{spec.name} exited with code {process.returncode}:\n{_tail(log_path, offset)}"
            )
        if spec.ready(_read_from(log_path, offset)):
            return (
                f"{spec.name}: started (pid {process.pid}, {spec.url}) in {time.monotonic() - started:.1f} s"
            )
        time.sleep(0.5)
    _stop_group(process.pid, spec.stop_signal, 10)
    pid_path.unlink(missing_ok=True)
    raise ServiceError(f"{spec.name} did not become ready within {timeout:.0f} s:\n{_tail(log_path, offset)}")


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
    pid_file(settings, name, folder).unlink(missing_ok=True)
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


def _parser() -> argparse.ArgumentParser:
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
    return parser


def _run_command(args: argparse.Namespace, settings: Settings) -> None:
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
            print(f"{name}: " + (f"running (pid {record['pid']}, {record['url']})" if record else "stopped"))
    elif args.command == "env":
        urls = running_urls(settings)
        exports = {"PREFECT_API_URL": urls.get("prefect"), "MLFLOW_TRACKING_URI": urls.get("mlflow")}
        # What the environment already sets (e.g. from .cluster/env) is not overridden.
        print(
            " ".join(f"{key}={value}" for key, value in exports.items() if value and not os.environ.get(key))
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = load_settings(
            params_for_command(args.params), default_root=PROJECT_PARAMS.parent, light=True
        )
        _run_command(args, settings)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
