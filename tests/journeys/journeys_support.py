"""Helpers of the journey tests: a copy of the project and its make commands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retrain_pipeline import service_records, service_specs
from retrain_pipeline.params import load_settings

REPO = Path(__file__).resolve().parents[2]
NEVER = "0 0 1 1 *"  # a cron that does not fire during a test: only the runs a journey starts


def committed_files(repo: Path) -> list[str]:
    """The project's files as a clone has them (tracked or staged)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "-z"],
        cwd=repo,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def copy_project(repo: Path, target: Path) -> Path:
    """Copy the project's files to ``target``; link the installed environment and Poetry."""
    for name in committed_files(repo):
        source = repo / name
        if not source.is_file():  # deleted in the work tree but still in the index
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)  # keeps mtimes: the install stamp stays newer
    for installed in (".venv", ".tools"):
        (target / installed).symlink_to(repo / installed, target_is_directory=True)
    keep_installed(target)
    return target


def keep_installed(root: Path) -> None:
    """Date the copy's dependency files before the shared install stamp.

    Otherwise a ``pyproject.toml`` edited after ``make install`` makes every ``make`` in the
    copy run ``poetry install --sync`` into the shared ``.venv`` while other tests use it.
    """
    stamp = (root / ".venv" / ".installed").stat().st_mtime
    for name in ("pyproject.toml", "poetry.lock"):
        os.utime(root / name, (stamp - 1, stamp - 1))


@dataclass
class Project:
    """A copy of the project and the environment its make commands run in."""

    root: Path
    env: dict[str, str]
    ports: dict[str, int]
    log: list[str] = field(default_factory=list)

    def make(
        self, *targets: str, timeout: float = 600, check: bool = True, **variables: str
    ) -> subprocess.CompletedProcess[str]:
        """``make TARGET... VAR=value...`` in the project; fails with its output unless ``check`` is off."""
        argv = ["make", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())]
        started = time.monotonic()
        result = subprocess.run(
            argv,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        took = time.monotonic() - started
        self.log.append(f"$ {' '.join(argv)}  -> exit {result.returncode} in {took:.1f} s")
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                f"\n--- stderr\n{result.stderr[-4000:]}"
            )
        return result

    def without_cron_ticks(self) -> None:
        """Set the schedule to a cron that does not fire during the test."""
        params_file = self.root / "params.yaml"
        params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        params["automation"]["cron_schedule"] = NEVER
        params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.root / "batch_state.json").read_text(encoding="utf-8")))

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.make("status", JSON="1").stdout))


#: What the Makefile exports to its recipes (and make to its children). ``make test`` runs
#: pytest with them set for *this* checkout: a journey must not inherit them, or its make
#: commands would act on this checkout (``PARAMS``) instead of the copy.
MAKE_VARIABLES = (
    "PARAMS",
    "BATCH",
    "VERSION",
    "REASON",
    "WAIT",
    "FORCE",
    "JSON",
    "PREFECT_HOST",
    "SERVE_HOST",
    "SERVE_PORT",
    "INPUT",
    "OUTPUT",
    "PREFECT_PORT",
    "MLFLOW_HOST",
    "MLFLOW_PORT",
    "CLUSTER_HOST",
    "CLUSTER_POSTGRES_PORT",
    "CLUSTER_PREFECT_PORT",
    "CLUSTER_MLFLOW_PORT",
    "CLUSTER_WORKERS",
    "TEST_WORKERS",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEOVERRIDES",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def journey_env(ports: dict[str, int], home: Path) -> dict[str, str]:
    """The user's shell: no Prefect, MLflow or make settings, an empty home; the ports as make variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "PREFECT_", "RETRAIN_")) and k not in MAKE_VARIABLES
    }
    env["HOME"] = str(home)
    env.update(
        PREFECT_PORT=str(ports["prefect"]),
        MLFLOW_PORT=str(ports["mlflow"]),
        # make demo and make serve start the scoring server: on its own port, never 5050.
        SERVE_PORT=str(ports.get("serve") or _free_port()),
        # The worker asks for new runs every 2 s instead of 10 s: shorter tests, same code paths.
        PREFECT_WORKER_QUERY_SECONDS="2",
    )
    return env


def kill_recorded_services(root: Path) -> list[str]:
    """SIGKILL the process group of every live service whose pid file ``make stop`` left behind.

    A journey must never leave servers running, even when its ``make stop`` failed. Only
    processes that pass the services' own liveness check (pid alive and its marker in the
    command line) are killed, never a reused pid.
    """
    settings = load_settings(root / "params.yaml")
    killed = []
    for name in service_specs.SERVICE_NAMES:
        record = service_records.recorded(settings, name)
        if record is None:
            continue
        pid = int(str(record["pid"]))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        killed.append(f"{name} (pid {pid})")
    return killed
