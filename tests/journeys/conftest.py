"""Journeys: the README's make targets run in the order users run them, on a copy of the project.

Each test gets a fresh copy of the committed project (what ``git clone`` gives a user) in a
temporary folder, with free loopback ports for the Prefect and MLflow servers. The copy
shares this checkout's installed ``.venv`` and ``.tools`` (symlinks), so ``make`` finds
them installed and does not install again.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from journeys_support import REPO, Project, copy_project, journey_env, kill_recorded_services


@pytest.fixture
def project(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Project]:
    """A fresh copy of the project; whatever it started is stopped afterwards."""
    root = copy_project(REPO, tmp_path / "project")
    ports = {"prefect": free_port(), "mlflow": free_port(), "serve": free_port()}
    home = tmp_path / "home"
    home.mkdir()
    proj = Project(root, journey_env(ports, home), ports)
    try:
        yield proj
    finally:
        # Cleanup, not a check: the journeys assert their own `make stop` steps. Whatever the
        # final stop leaves running (or a stop that hangs) is killed and reported, never leaked.
        try:
            stopped = proj.make("stop", check=False, timeout=300)
            outcome = f"make stop exited {stopped.returncode}"
        except subprocess.TimeoutExpired:
            outcome = "make stop did not finish within 300 s"
        leftovers = kill_recorded_services(root)
        print("\n".join(proj.log))
        if leftovers:
            warnings.warn(f"{outcome}; killed what it left running: {leftovers}", stacklevel=1)


@pytest.fixture
def journey(project: Project) -> Project:
    """A project copy whose cron does not fire: only the runs the journey starts happen."""
    project.without_cron_ticks()
    return project
