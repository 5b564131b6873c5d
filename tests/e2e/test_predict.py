"""``make predict`` as a user runs it: a CSV and a Parquet file scored by the champion or a named
version of a real SQLite store; bad files end with exit 1 and one ``error:`` line naming them.

The store's two versions are trained and logged with the project's own plain functions (no
flow run needed: scoring reads only the registry).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from retrain_pipeline import model, tracking
from retrain_pipeline.config import Settings
from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Store:
    settings: Settings
    params: Path
    rows: pd.DataFrame


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("predict") / "project"
    root.mkdir()
    params = root / "params.yaml"
    params.write_text(
        yaml.safe_dump({"model": {"estimator": "logistic_regression", "hyperparameters": {"max_iter": 500}}}),
        encoding="utf-8",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = load_settings(params)
        raw = breast_cancer_dataset(seed=11, target_column="target")
        features, target = raw.drop(columns="target"), raw["target"]
        experiment = tracking.connect(settings.mlflow)
        for version, rows in (("1", 60), ("2", 300)):  # different training data: different models
            trained = model.train_model(settings.model, features.iloc[:rows], target.iloc[:rows])
            logged = tracking.log_training_run(
                settings.mlflow,
                experiment,
                run_name=f"batch-{version}",
                tags={tracking.BATCH_TAG: version},
                params={},
                metrics={},
                model=trained,
                input_example=features.head(5),
            )
            assert logged.model_version == version
        tracking.set_champion(settings.mlflow, "2")
    return Store(settings, params, features.iloc[400:450].reset_index(drop=True))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RETRAIN_", "MAKE"))}


@pytest.fixture
def predict(store: Store, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def _run(*args: str, make: bool = False, **variables: str) -> subprocess.CompletedProcess[str]:
        if make:
            argv = ["make", "--no-print-directory", "-C", str(REPO), "predict", f"PARAMS={store.params}"]
            argv += [f"{key}={value}" for key, value in variables.items()]
        else:
            argv = [
                sys.executable,
                "-m",
                "retrain_pipeline.cli",
                "predict",
                "--params",
                str(store.params),
                *args,
            ]
        return subprocess.run(
            argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180, check=False
        )

    return _run


def pyfunc(store: Store, version: str, rows: pd.DataFrame) -> list[int]:
    mlflow.set_tracking_uri(store.settings.mlflow.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{store.settings.mlflow.registered_model_name}/{version}")
    return [int(v) for v in loaded.predict(rows)]


def test_make_predict_scores_a_csv_with_the_champion(
    store: Store, predict: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    source = tmp_path / "new rows.csv"
    store.rows.to_csv(source, index=False)

    result = predict(make=True, INPUT=str(source))

    assert result.returncode == 0, result.stderr[-2000:]
    output = store.settings.root / "predictions" / "new rows.predictions.csv"
    name = store.settings.mlflow.registered_model_name
    assert (
        result.stdout.strip().splitlines()[-1]
        == f"wrote 50 predictions of model {name} version 2 to {output}"
    )
    scored = pd.read_csv(output)
    assert list(scored.columns) == [*store.rows.columns, "prediction", "model_version"]
    assert len(scored) == 50 and set(scored["model_version"]) == {2}
    assert scored["prediction"].tolist() == pyfunc(store, "2", store.rows)
    pd.testing.assert_frame_equal(scored[list(store.rows.columns)], store.rows)
    assert not list(output.parent.glob(".*.tmp")), "the atomic write left a temporary file"
    assert not (store.settings.data.landing_dir).exists(), "predictions must never land in data/landing"


def test_make_predict_scores_a_parquet_file_with_a_named_version(
    store: Store, predict: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    source = tmp_path / "rows.parquet"
    store.rows.to_parquet(source, index=False)
    target = tmp_path / "out" / "scored.parquet"

    result = predict(make=True, INPUT=str(source), OUTPUT=str(target), VERSION="1")

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(f"version 1 to {target}")
    scored = pd.read_parquet(target)
    assert list(scored.columns) == [*store.rows.columns, "prediction", "model_version"]
    assert scored["model_version"].unique().tolist() == ["1"]
    assert scored["prediction"].tolist() == pyfunc(store, "1", store.rows)
    assert pyfunc(store, "1", store.rows) != pyfunc(store, "2", store.rows)  # the version mattered


def test_make_predict_without_input_is_a_usage_error(
    predict: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = predict(make=True)
    assert result.returncode == 2 and "usage: make predict INPUT=" in result.stderr


def _bad_files(rows: pd.DataFrame, folder: Path) -> list[tuple[Path, str]]:
    missing = folder / "missing.csv"
    rows.drop(columns=["mean_radius"]).to_csv(missing, index=False)
    wrong = folder / "wrong.csv"
    rows.assign(mean_area="abc").to_csv(wrong, index=False)
    binary = folder / "picture.csv"
    binary.write_bytes(bytes(range(256)) * 20)
    empty = folder / "empty.csv"
    empty.write_text("")
    header_only = folder / "header.parquet"
    rows.head(0).to_parquet(header_only, index=False)
    text = folder / "rows.txt"
    rows.to_csv(text, index=False)
    return [
        (missing, "missing column(s) ['mean_radius']"),
        (wrong, "column 'mean_area': expected double, got string (row 0: 'abc')"),
        (binary, "cannot read it as csv"),
        (empty, "cannot read it as csv"),
        (header_only, "no rows"),
        (text, "expected a .csv or .parquet file"),
        (folder / "absent.csv", "cannot read it"),
    ]


def test_bad_files_end_with_one_error_line_naming_the_file(
    store: Store, predict: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    for path, words in _bad_files(store.rows, tmp_path):
        result = predict("--input", str(path))
        assert result.returncode == 1, (path.name, result.stdout, result.stderr[-2000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, (path.name, result.stderr[-2000:])
        assert errors[0].startswith(f"error: {path}: ") and words in errors[0], (path.name, errors[0])
    assert not (store.settings.root / "predictions" / "missing.predictions.csv").exists()

    source = tmp_path / "ok.csv"
    store.rows.to_csv(source, index=False)
    unknown = predict("--input", str(source), "--version", "9")
    assert unknown.returncode == 1
    assert "has no version '9'" in unknown.stderr.strip().splitlines()[-1]
