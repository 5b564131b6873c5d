"""The client clone of a running local cluster, for the cluster tests."""

from __future__ import annotations

import shlex
from pathlib import Path

from journeys.journeys_support import Project
from retrain_pipeline.cluster import cluster_processes


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
        return cluster_processes(self.root / ".cluster")

    def as_client(self) -> Project:
        """This clone in a shell that sourced ``.cluster/env`` (same log)."""
        return Project(self.root, self.client(), self.ports, self.log)
