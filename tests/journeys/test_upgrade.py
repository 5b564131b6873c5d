"""A project folder made by the previous release keeps working after the code is upgraded.

The previous release (``PREVIOUS``, the last main before the one-store change) runs its own
``make demo`` in a project folder: its MLflow server had proxied artifacts, so batch 1's
model is registered with an ``mlflow-artifacts:`` URI that only that server could resolve.
Then ``make stop``, the code is replaced by this version's (what ``git pull`` does), and
the user goes on with ``make run``, ``make lineage`` and ``make rollback`` with no services:
the store is repaired in place, the champion loads, the next batch trains.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from journeys_support import REPO, Project, committed_files, keep_installed

PREVIOUS = "9004986"  # main before "one store in every mode"
MODEL = "breast-cancer-classifier"


def _previous_release(target: Path) -> None:
    """Unpack ``PREVIOUS`` into ``target`` (skip when this clone lacks that history)."""
    archive = subprocess.run(["git", "archive", PREVIOUS], cwd=REPO, capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.skip(f"this clone has no commit {PREVIOUS} (shallow?): {archive.stderr.decode()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    keep_installed(target)


def _upgrade(root: Path) -> None:
    """Lay this version's files over the project, as ``git pull`` would."""
    for name in committed_files(REPO):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    keep_installed(root)


def _proxied_uris(root: Path) -> int:
    with sqlite3.connect(root / "mlflow.db") as db:
        return int(
            db.execute(
                "SELECT count(*) FROM model_versions WHERE storage_location LIKE 'mlflow-artifacts:%'"
            ).fetchone()[0]
        )


def test_a_project_from_the_previous_demo_keeps_working(project: Project) -> None:
    p = project
    for name in committed_files(REPO):  # the fixture laid this version; start from the old one
        (p.root / name).unlink(missing_ok=True)
    _previous_release(p.root)
    p.without_cron_ticks()

    # The previous release's own code runs its demo (its modules shadow the installed ones).
    old_env = {**p.env, "PYTHONPATH": os.pathsep.join([str(p.root / "src"), str(p.root)])}
    new_env = p.env
    p.env = old_env
    demo = p.make("demo", timeout=900)
    assert "completed" in demo.stdout
    p.make("stop")
    assert _proxied_uris(p.root) == 1, "the previous release no longer writes what users have"

    # Upgrade, then carry on without services.
    p.env = new_env
    _upgrade(p.root)
    result = p.make("run")
    assert result.stdout.strip().splitlines()[-1].startswith("completed: batch 2: model v2")
    assert "Repaired" in result.stdout + result.stderr  # said once, in the run that did it
    assert _proxied_uris(p.root) == 0
    assert "batch 1" in p.make("lineage", VERSION="1").stdout
    p.make("rollback", VERSION="1", REASON="journey: upgraded project")

    mlflow.set_tracking_uri(f"sqlite:///{p.root / 'mlflow.db'}")
    try:
        model = mlflow.sklearn.load_model(f"models:/{MODEL}@champion")
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert (
        len(
            model.predict(
                pd.DataFrame([[0.0] * len(model.feature_names_in_)], columns=model.feature_names_in_)
            )
        )
        == 1
    )
    state = p.state()
    assert [state["batches"][str(n)]["status"] for n in (1, 2)] == ["completed"] * 2
    assert state["champion_version"] == "1"
