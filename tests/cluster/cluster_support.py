"""The client clone of a running local cluster, for the cluster tests."""

from __future__ import annotations

import shlex
from pathlib import Path

from journeys.journeys_support import Project
from retrain_pipeline.cluster import CLUSTER_ENV


class ClusterProject(Project):
    """The client clone of a running cluster."""

    def cluster_env(self) -> dict[str, str]:
        """``.cluster/env`` as a shell that sourced it has it."""
        env: dict[str, str] = {}
        for line in (self.root / ".cluster" / "env").read_text(encoding="utf-8").splitlines():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                env[key] = shlex.split(value)[0] if value else ""
        return env

    def client(self) -> dict[str, str]:
        return {**self.env, **self.cluster_env()}

    def worker_dir(self, name: str) -> Path:
        return self.root / ".cluster" / "workers" / name

    def cluster_processes(self) -> list[int]:
        marker = f"{CLUSTER_ENV}={self.root / '.cluster'}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if marker in environ.split(b"\0") and stat.rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        return found
