"""The command line as a user runs it: subprocesses in a temporary project (landing files).

Three good batches plus one malformed landing file; asserts on exit codes, stderr, the
state file, the MLflow store (runs by tag, registered versions, champion alias) and DVC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml

from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset

REPO = Path(__file__).resolve().parents[2]
FLOW = REPO / "flows" / "automated_training_flow.py"


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def cli(prefect_home: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false")

    def _run(*args: str, script: Path = FLOW) -> subprocess.CompletedProcess[str]:
        # Run from an unrelated folder: nothing may depend on the current directory.
        return subprocess.run(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return _run


def test_cli_three_batches_and_a_malformed_file(
    make_project: Callable[..., Path], cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    params = make_project(data={"source": "landing"})
    root = params.parent
    landing = root / "data" / "landing"
    landing.mkdir(parents=True)
    raw = breast_cancer_dataset(seed=7, target_column="target")
    raw.iloc[0:80].to_csv(landing / "batch_1.csv", index=False)
    raw.iloc[80:160].to_parquet(landing / "batch_2.parquet", index=False)
    bad = raw.iloc[160:240].copy()
    bad["mean_area"] = "abc"
    bad.to_csv(landing / "batch_3.csv", index=False)
    raw.iloc[240:320].to_csv(landing / "batch_4.csv", index=False)
    p = ["--params", str(params)]

    results = [cli(*p) for _ in range(4)]

    assert [r.returncode for r in results] == [0, 0, 1, 0], [r.stderr[-2000:] for r in results]
    assert results[0].stdout.strip().splitlines()[-1].startswith("completed: batch 1: model v1")
    rejected = results[2].stderr.strip().splitlines()[-1]
    assert rejected.startswith("error: batch 3 rejected: ")
    assert "batch_3.csv" in rejected and "mean_area" in rejected and "wrong type" in rejected
    assert "Traceback" not in results[2].stderr

    settings = load_settings(params)
    state = json.loads(settings.paths.state_file.read_text())
    assert state["schema_version"] == 1
    assert state["processed_batches"] == [1, 2, 4]
    assert state["last_batch"] == 4
    assert state["batches"]["3"]["status"] == "rejected"
    assert "batch_3.csv" in state["batches"]["3"]["error"]
    assert state["batches"]["4"]["training_rows_total"] == 240
    assert any(f.name.startswith("batch_3.") for f in settings.data.quarantine_dir.iterdir())

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["batch_number"] for r in runs) == ["1", "2", "4"]
    for r in runs:
        record = state["batches"][r.data.tags["batch_number"]]
        assert r.info.run_id == record["mlflow_run_id"]
        assert r.data.tags["data_md5"] == record["data_md5"]
        assert r.data.tags["model_md5"] == record["model_md5"]
    name = settings.mlflow.registered_model_name
    assert len(client.search_model_versions(f"name='{name}'")) == 3
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == state["champion_version"]
    assert champion.tags["batch_number"] in {"1", "2", "4"}

    dvc_file = settings.training_manifest_file.with_name(settings.training_manifest_file.name + ".dvc")
    assert yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"] == state["batches"]["4"]["data_md5"]
    model_dvc = settings.model_file(4).with_name("batch_4.joblib.dvc")
    assert yaml.safe_load(model_dvc.read_text())["outs"][0]["md5"] == state["batches"]["4"]["model_md5"]

    # Nothing left: exit 0. A completed batch again: refused without --force.
    again = cli(*p)
    assert again.returncode == 0 and again.stdout.strip().endswith("no data for batch 5 yet")
    before = settings.paths.state_file.read_bytes()
    refused = cli("2", *p)
    assert refused.returncode == 1
    assert "batch 2 is already completed" in refused.stderr.strip().splitlines()[-1]
    assert settings.paths.state_file.read_bytes() == before

    status = cli("status", "--json", *p, script=REPO / "src" / "retrain_pipeline" / "cli.py")
    assert status.returncode == 0, status.stderr
    payload = json.loads(status.stdout)
    assert payload["champion_version"] == state["champion_version"]
    assert list(payload["batches"]) == ["1", "2", "3", "4"]
    assert payload["batches"] == state["batches"]  # the state document itself


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["abc"], "batch number must be an integer, got 'abc'"),
        (["0"], "between 1 and"),
        (["-1"], ""),
        (["99999999999"], "between 1 and"),
        (["--params", "/nonexistent/params.yaml"], "params file not found: /nonexistent/params.yaml"),
    ],
)
def test_cli_rejects_bad_arguments_without_side_effects(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_params_names_key_and_file(
    make_project: Callable[..., Path], cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    params = make_project(data={"batch_size": 0, "colour": "red"})
    result = cli("--params", str(params))
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert str(params) in line and "data.batch_size" in line and "data.colour: unknown key" in line
    assert sorted(p.name for p in params.parent.iterdir()) == ["params.yaml"]
