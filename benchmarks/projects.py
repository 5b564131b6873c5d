"""Temporary projects for the benchmark: a params file and synthetic landing batches, and their jobs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from benchmarks.records import RunJob
from benchmarks.spec import ESTIMATOR, HYPERPARAMETERS, N_FEATURES, SEED, SizeSpec

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def write_params(
    root: Path, max_batches: int, window: int | None = None, cron: str | None = None, training: str = "full"
) -> Path:
    """A params.yaml for a landing-source project; MLflow stays at sqlite:///mlflow.db."""
    automation: dict[str, Any] = {"max_batches": max_batches}
    if cron is not None:
        automation["cron_schedule"] = cron
    params = {
        "data": {"source": "landing", "target_column": "target", "classes": [0, 1], "window_batches": window},
        "model": {"estimator": ESTIMATOR, "hyperparameters": dict(HYPERPARAMETERS), "training": training},
        "automation": automation,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def make_project(
    root: Path,
    batches: Sequence[pd.DataFrame],
    max_batches: int,
    window: int | None = None,
    cron: str | None = None,
    training: str = "full",
) -> Path:
    """A project folder with params.yaml and the batches in data/landing; returns params."""
    from benchmarks.synthetic import write_landing

    root.mkdir(parents=True)
    write_landing(root / "data" / "landing", batches)
    return write_params(root, max_batches, window, cron, training)


def build_runs(work: Path, sizes: Sequence[SizeSpec]) -> list[RunJob]:
    """Fresh projects for every repetition; extra landing batches for the CLI and deployment runs."""
    from benchmarks.synthetic import make_batches

    runs: list[RunJob] = []
    for spec in sizes:
        batches = make_batches(spec.batches + 2, spec.rows, N_FEATURES, seed=SEED)
        for rep in range(1, spec.repetitions + 1):
            folder = work / f"{spec.name}-rep{rep}"
            params = make_project(
                folder / "project", batches, spec.batches + 2, spec.window, training=spec.training
            )
            runs.append(RunJob(spec.name, rep, str(params), str(folder / "baseline"), spec.batches))
        logger.info("Wrote %d project(s) for size %s (%d rows/batch)", spec.repetitions, spec.name, spec.rows)
    return runs


def build_warmup(work: Path) -> RunJob:
    """A throw-away project with one small batch, for the warm-up calls."""
    from benchmarks.synthetic import make_batches

    folder = work / "warmup"
    params = make_project(folder / "project", make_batches(1, 50, N_FEATURES, seed=SEED + 1), 1)
    return RunJob("warmup", 0, str(params), str(folder / "baseline"), 1)
