"""A local trial of the several-machines topology, everything under ``.cluster/`` in the project.

    python -m retrain_pipeline.cluster start --params params.yaml   # make start-cluster
    python -m retrain_pipeline.cluster stop --params params.yaml    # make stop-cluster
    python -m retrain_pipeline.cluster status --params params.yaml

``start`` brings up, each as it would run on its own host (docs/several-machines.md):

- PostgreSQL (OS packages) in ``.cluster/postgres/`` with three databases: ``prefect``,
  ``mlflow`` and ``retrain`` (the batch state document and the run lock);
- the Prefect server on PostgreSQL and the MLflow server on PostgreSQL with proxied
  artifacts (``.cluster/mlflow-artifacts/``), so clients need only its http URI;
- a DVC remote folder, ``.cluster/dvc-remote/``;
- the deployment, registered with the project's Git repository as its code source;
- process workers, each in its own clone of the project's committed code
  (``.cluster/workers/worker-<i>/``) with its own working folder and params file, sharing
  nothing with the others but the servers, the DVC remote and the landing folder.

It writes ``.cluster/env``: ``export NAME=value`` lines that, sourced (``. .cluster/env``),
point every make target of this clone at the cluster. A second ``start`` reuses the data;
``stop`` stops every process the cluster started, in-flight flow runs included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import psutil
import yaml

from retrain_pipeline import service_records, service_specs, services
from retrain_pipeline.arguments import host_argument, port_argument
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import ClusterError, PipelineError
from retrain_pipeline.fileio import write_text_atomic
from retrain_pipeline.params import PROJECT_PARAMS, load_settings, params_for_command
from retrain_pipeline.postgres import LocalPostgres
from retrain_pipeline.urls import redact_url

logger = logging.getLogger(__name__)

CLUSTER_DIR = ".cluster"
CLUSTER_ENV = "RETRAIN_CLUSTER"  # set on every process the cluster starts (and their flow runs)
DATABASES = ("prefect", "mlflow", "retrain")


@dataclass(frozen=True)
class Ports:
    """Defaults differ from ``make start-services`` (4200, 5000) so both can run at once."""

    host: str = "127.0.0.1"
    postgres: int = 15432
    prefect: int = 4300
    mlflow: int = 5300


@dataclass(frozen=True)
class Cluster:
    settings: Settings
    ports: Ports
    workers: int = 2

    @property
    def folder(self) -> Path:
        return self.settings.root / CLUSTER_DIR

    @property
    def run_folder(self) -> Path:
        return self.folder / "run"

    @property
    def postgres(self) -> LocalPostgres:
        return LocalPostgres(self.folder / "postgres", self.ports.postgres, self.ports.host)

    @property
    def prefect_api(self) -> str:
        return f"http://{self.ports.host}:{self.ports.prefect}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.ports.host}:{self.ports.mlflow}"

    @property
    def dvc_remote(self) -> Path:
        return self.folder / "dvc-remote"

    @property
    def env_file(self) -> Path:
        return self.folder / "env"

    def worker_names(self) -> list[str]:
        return [f"worker-{i}" for i in range(1, self.workers + 1)]

    def worker_dir(self, name: str) -> Path:
        return self.folder / "workers" / name

    def client_env(self) -> dict[str, str]:
        """What points a clone (or a worker) at this cluster: the content of ``.cluster/env``."""
        return {
            "PREFECT_API_URL": self.prefect_api,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "RETRAIN_STATE_DATABASE_URL": self.postgres.url("retrain"),
            "RETRAIN_DVC_REMOTE": str(self.dvc_remote),
            # make deploy / make trigger from a client keep the deployment on the workers' code
            "RETRAIN_CODE_SOURCE": self.code_source,
        }

    @cached_property
    def code_source(self) -> str:
        """The project's Git repository as a URL workers clone (one ``git`` call per cluster)."""
        return _git_source(self.settings.root)


# --------------------------------------------------------------------------- start


def start(cluster: Cluster, timeout: float = 180.0) -> list[str]:
    """Start every piece that is not running yet; returns one line per piece."""
    settings = cluster.settings
    source = cluster.code_source
    _save_ports(cluster)
    lines = [cluster.postgres.start()]
    for database in DATABASES:
        if cluster.postgres.create_database(database):
            lines.append(f"postgres: created database {database}")
    cluster.dvc_remote.mkdir(parents=True, exist_ok=True)
    lines.append(services.start(_prefect_spec(cluster), settings, timeout, cluster.run_folder))
    lines.append(services.start(_mlflow_spec(cluster), settings, timeout, cluster.run_folder))
    lines.append(_deploy(cluster, source))
    for name in cluster.worker_names():
        lines.append(_prepare_worker_dir(cluster, name, source))
        lines.append(services.start(_worker_spec(cluster, name), settings, timeout, cluster.run_folder))
    _write_env(cluster)
    lines.append(f"env: {cluster.env_file} (`. {CLUSTER_DIR}/env` points this shell's make targets here)")
    return lines


def _git_source(root: Path) -> str:
    """The project's Git repository as a URL workers clone; its committed code is what runs."""
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(
            f"{root} is not a Git repository with a commit: the cluster's workers clone the "
            "project's committed code (git init && git add -A && git commit)"
        )
    top = result.stdout.splitlines()[0]
    return Path(top).resolve().as_uri()


def _save_ports(cluster: Cluster) -> None:
    cluster.folder.mkdir(parents=True, exist_ok=True)
    ports = {
        "host": cluster.ports.host,
        "postgres": cluster.ports.postgres,
        "prefect": cluster.ports.prefect,
        "mlflow": cluster.ports.mlflow,
        "workers": cluster.workers,
    }
    write_text_atomic(cluster.folder / "cluster.json", json.dumps(ports, indent=2) + "\n")


def load_cluster(settings: Settings, overrides: dict[str, Any]) -> Cluster:
    """The cluster of this project: the ports it was started with, unless given again."""
    saved: dict[str, Any] = {}
    try:
        saved = json.loads((settings.root / CLUSTER_DIR / "cluster.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    values = {
        **Ports().__dict__,
        "workers": 2,
        **saved,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    ports = Ports(
        host=str(values["host"]),
        postgres=int(values["postgres"]),
        prefect=int(values["prefect"]),
        mlflow=int(values["mlflow"]),
    )
    return Cluster(settings, ports, int(values["workers"]))


def _base_env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RETRAIN_"))}
    env.update(
        PYTHONUNBUFFERED="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **{CLUSTER_ENV: str(cluster.folder)},
    )
    for name in ("PREFECT_WORKER_QUERY_SECONDS", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def _prefect_spec(cluster: Cluster) -> service_specs.ServiceSpec:
    env = _base_env(cluster)
    env.update(
        PREFECT_HOME=str(cluster.folder / "prefect-home"),
        PREFECT_API_DATABASE_CONNECTION_URL=cluster.postgres.url("prefect", driver="asyncpg"),
    )
    return service_specs.prefect_server_spec(cluster.ports.host, cluster.ports.prefect, env, cluster.folder)


def _mlflow_spec(cluster: Cluster) -> service_specs.ServiceSpec:
    env = _base_env(cluster)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job consumers
    # Proxied artifacts: workers on other machines upload and download through this server.
    destination = (cluster.folder / "mlflow-artifacts").as_uri()
    artifacts = ["--artifacts-destination", destination, "--serve-artifacts"]
    store = cluster.postgres.url("mlflow")
    return service_specs.mlflow_server_spec(
        store, artifacts, cluster.ports.host, cluster.ports.mlflow, env, cluster.folder
    )


def _deploy(cluster: Cluster, source: str) -> str:
    """Register the deployment on the cluster's Prefect with the Git repository as code source."""
    settings = cluster.settings
    env = {**_base_env(cluster), **cluster.client_env()}
    argv = [sys.executable, str(_setup_deployment_script()), "--code-source", source]
    env.pop("RETRAIN_STATE_DATABASE_URL", None)  # registering needs no state store
    if settings.params_file is not None:
        argv += ["--params", str(settings.params_file)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise ClusterError(f"registering the deployment failed:\n{result.stderr.strip() or result.stdout}")
    summary = [line for line in result.stdout.splitlines() if line.startswith(("work pool", "automation"))]
    return "deploy: " + ("\n  ".join(summary) or result.stdout.strip())


def _setup_deployment_script() -> Path:
    import deployments.setup_deployment as module

    return Path(module.__file__).resolve()


def _prepare_worker_dir(cluster: Cluster, name: str, source: str) -> str:
    """A clone of the committed code with the project's params; reused (fast-forwarded) later."""
    folder = cluster.worker_dir(name)
    if (folder / ".git").is_dir():
        pulled = subprocess.run(
            ["git", "-C", str(folder), "pull", "--ff-only", "--quiet"], capture_output=True, text=True
        )
        done = "reused" if pulled.returncode == 0 else f"reused (not updated: {pulled.stderr.strip()})"
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        cloned = subprocess.run(
            ["git", "clone", "--quiet", source, str(folder)], capture_output=True, text=True, check=False
        )
        if cloned.returncode != 0:
            raise ClusterError(f"git clone {source} {folder} failed: {cloned.stderr.strip()}")
        done = "cloned"
    _write_worker_params(cluster, folder / "params.yaml")
    return f"{name}: {done} {folder}"


def _write_worker_params(cluster: Cluster, target: Path) -> None:
    """The project's params, with the landing folder shared (absolute); other paths stay the worker's."""
    settings = cluster.settings
    raw: dict[str, Any] = {}
    if settings.params_file is not None:
        raw = yaml.safe_load(settings.params_file.read_text(encoding="utf-8")) or {}
    data = dict(raw.get("data") or {})
    data["landing_dir"] = str(settings.data.landing_dir)
    raw["data"] = data
    header = f"# Written by make start-cluster from {settings.params_file or 'the defaults'}.\n"
    write_text_atomic(target, header + yaml.safe_dump(raw, sort_keys=False))


def _worker_spec(cluster: Cluster, name: str) -> service_specs.ServiceSpec:
    folder = cluster.worker_dir(name)
    env = _base_env(cluster)
    env.update(cluster.client_env())
    env.update(
        PREFECT_HOME=str(folder / ".prefect"),
        RETRAIN_PARAMS=str(folder / "params.yaml"),
        # This clone's code, not the interpreter's own copy of the project (shared .venv here;
        # a real other machine installs its own with `make install`).
        PYTHONPATH=str(folder / "src"),
    )
    name_args = ("--name", f"{cluster.folder.parent.name}-{name}")
    return service_specs.worker_spec(name, cluster.settings.automation, env, name_args, folder)


def _write_env(cluster: Cluster) -> None:
    lines = [
        "# Written by `make start-cluster`. `. .cluster/env` points this shell's make targets at the",
        "# local cluster (Prefect, MLflow, the state database, the DVC remote). It holds the",
        "# database password: keep it private.",
        *(f"export {key}={shlex.quote(value)}" for key, value in cluster.client_env().items()),
    ]
    cluster.folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(cluster.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- stop / status


def stop(cluster: Cluster, timeout: float = 60.0) -> list[str]:
    """Stop the workers, their flow runs, both servers and PostgreSQL; nothing is left running."""
    settings = cluster.settings
    lines = []
    for name in cluster.worker_names():
        lines.append(services.stop(settings, name, timeout, cluster.run_folder))
    servers = set()
    for name in ("mlflow", "prefect"):
        record = service_records.recorded(settings, name, cluster.run_folder)
        if record is not None:
            servers.add(int(str(record["pid"])))  # each server leads its own process group
    swept = _stop_leftovers(cluster, timeout=15, spare_groups=servers)
    if swept:
        lines.append(f"flow runs: stopped {len(swept)} process(es) of the cluster (pids {swept})")
    for name in ("mlflow", "prefect"):
        lines.append(services.stop(settings, name, timeout, cluster.run_folder))
    swept = _stop_leftovers(cluster, timeout=15)
    if swept:
        lines.append(f"leftovers: stopped {len(swept)} process(es) (pids {swept})")
    if cluster.postgres.initialised():
        lines.append(cluster.postgres.stop())
    return lines


def cluster_processes(folder: Path, spare_groups: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Live processes whose environment marks them as started by the cluster in ``folder``
    (flow runs included: a process worker starts each in a session of its own), except
    those in ``spare_groups``."""
    found = []
    for process in psutil.process_iter(["status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            marked = process.environ().get(CLUSTER_ENV) == str(folder)
            if marked and os.getpgid(process.pid) not in spare_groups:
                found.append(process.pid)
        except (OSError, psutil.Error):  # ended meanwhile, or not ours to read
            continue
    return found


def _stop_leftovers(
    cluster: Cluster, timeout: float, spare_groups: frozenset[int] | set[int] = frozenset()
) -> list[int]:
    pids = cluster_processes(cluster.folder, spare_groups)
    for pid in pids:
        _signal(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cluster_processes(cluster.folder, spare_groups):
        time.sleep(0.25)
    for pid in cluster_processes(cluster.folder, spare_groups):
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def status(cluster: Cluster) -> list[str]:
    lines = [
        f"postgres: {'running' if cluster.postgres.running() else 'stopped'} "
        f"({cluster.ports.host}:{cluster.ports.postgres})"
    ]
    for name in ("prefect", "mlflow", *cluster.worker_names()):
        record = service_records.recorded(cluster.settings, name, cluster.run_folder)
        lines.append(
            f"{name}: " + (f"running (pid {record['pid']}, {record['url']})" if record else "stopped")
        )
    return lines


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrain_pipeline.cluster", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=("start", "stop", "status", "env"))
    parser.add_argument("--params", help="params file (default: the project's params.yaml)")
    parser.add_argument("--host", type=host_argument, default=None)
    parser.add_argument("--postgres-port", type=port_argument, default=None)
    parser.add_argument("--prefect-port", type=port_argument, default=None)
    parser.add_argument("--mlflow-port", type=port_argument, default=None)
    parser.add_argument("--workers", type=int, choices=range(1, 9), default=None, metavar="1-8")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = load_settings(
            params_for_command(args.params), default_root=PROJECT_PARAMS.parent, light=True
        )
        overrides = {
            "host": args.host,
            "postgres": args.postgres_port,
            "prefect": args.prefect_port,
            "mlflow": args.mlflow_port,
            "workers": args.workers,
        }
        cluster = load_cluster(settings, overrides)
        if args.command == "start":
            started = time.monotonic()
            for line in start(cluster, args.timeout):
                print(line, flush=True)
            print(f"cluster: up in {time.monotonic() - started:.1f} s", flush=True)
        elif args.command == "stop":
            for line in stop(cluster):
                print(line, flush=True)
        elif args.command == "status":
            for line in status(cluster):
                print(line)
        else:
            for key, value in cluster.client_env().items():
                shown = redact_url(value) if key == "RETRAIN_STATE_DATABASE_URL" else value
                print(f"{key}={shown}")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
