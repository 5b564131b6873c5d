"""Operator commands against a temporary project with a few real batches."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from flows.automated_training_flow import automated_training_flow
from retrain_pipeline.cli import main as cli
from retrain_pipeline.manifests import parse_training_manifest
from retrain_pipeline.params import load_settings
from retrain_pipeline.state import load_state
from retrain_pipeline.versioning import cached_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    params = make_project()
    for _ in range(3):
        assert automated_training_flow(params_path=str(params))["status"] == "completed"
    return params


def test_status_json_and_table(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["status", "--json", "--params", str(project)]) == 0
    payload = json.loads(capsys.readouterr().out)
    state = load_state(load_settings(project).paths.state_file)
    assert list(payload["batches"]) == ["1", "2", "3"]
    assert {k: payload[k] for k in state.model_dump()} == state.model_dump(mode="json")
    assert payload["champion_version"] == state.champion_version
    assert payload["next_batch"] == 4
    assert cli(["status", "--params", str(project)]) == 0
    table = capsys.readouterr().out
    assert f"champion: model version {state.champion_version}" in table and "next batch: 4" in table


def test_lineage_both_ways(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = load_state(load_settings(project).paths.state_file)
    record = state.batches["2"]

    assert cli(["lineage", "--batch", "2", "--json", "--params", str(project)]) == 0
    forward = json.loads(capsys.readouterr().out)
    assert forward["model_version"] == record.model_version
    assert forward["mlflow_run_id"] == record.mlflow_run_id
    assert forward["data_md5"] == record.data_md5 and forward["model_md5"] == record.model_md5
    assert forward["prefect_flow_run_id"] == record.prefect_flow_run_id
    assert forward["data_in_dvc_cache"].endswith("(present)")
    assert forward["params"]["batch_number"] == "2" and forward["params"]["estimator"] == "random_forest"
    assert forward["mlflow_run_link"].endswith(f"/runs/{record.mlflow_run_id}")

    assert cli(["lineage", "--version", str(record.model_version), "--json", "--params", str(project)]) == 0
    backward = json.loads(capsys.readouterr().out)
    assert backward["batch"] == 2 and backward["data_md5"] == record.data_md5

    assert cli(["lineage", "--batch", "2", "--params", str(project)]) == 0
    text = capsys.readouterr().out
    assert f"batch 2 (completed) <-> breast-cancer-classifier v{record.model_version}" in text


def test_rollback_moves_the_alias_and_records_it(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(project)
    before = load_state(settings.paths.state_file)
    target = next(v for v in ("1", "2", "3") if v != before.champion_version)

    assert (
        cli(["rollback", "--version", target, "--reason", "bad predictions", "--params", str(project)]) == 0
    )
    assert f"-> v{target}" in capsys.readouterr().out

    after = load_state(settings.paths.state_file)
    assert after.champion_version == target
    (entry,) = after.rollbacks
    assert (entry.from_version, entry.to_version, entry.reason) == (
        before.champion_version,
        target,
        "bad predictions",
    )
    assert entry.by and entry.at
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    name = settings.mlflow.registered_model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == target
    assert json.loads(client.get_registered_model(name).tags["last_rollback"])["to_version"] == target
    assert cli(["status", "--params", str(project)]) == 0
    assert f"rollback: v{before.champion_version} -> v{target}" in capsys.readouterr().out

    # The next batch is gated against the rolled-back champion.
    outcome = automated_training_flow(params_path=str(project))
    assert load_state(settings.paths.state_file).batches["4"].champion_version_before == target
    assert outcome["status"] == "completed"


@pytest.mark.parametrize(
    ("version", "message"),
    [("99", "has no version '99'"), ("abc", None)],
)
def test_rollback_refuses_unknown_versions(
    project: Path, capsys: pytest.CaptureFixture[str], version: str, message: str | None
) -> None:
    state_file = load_settings(project).paths.state_file
    before = state_file.read_bytes()
    if message is None:
        with pytest.raises(SystemExit) as exit_info:
            cli(["rollback", "--version", version, "--reason", "x", "--params", str(project)])
        assert exit_info.value.code == 2
        assert "model version must be a positive integer" in capsys.readouterr().err
    else:
        assert cli(["rollback", "--version", version, "--reason", "x", "--params", str(project)]) == 1
        assert message in capsys.readouterr().err
    assert state_file.read_bytes() == before


def test_rollback_to_the_current_champion_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = load_state(load_settings(project).paths.state_file).champion_version
    assert cli(["rollback", "--version", str(champion), "--reason", "x", "--params", str(project)]) == 1
    assert "already the champion" in capsys.readouterr().err


def test_restore_data_gives_the_exact_training_data(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(project)
    record = load_state(settings.paths.state_file).batches["2"]
    out = project.parent / "restored.parquet"

    assert cli(["restore-data", "--batch", "2", "--out", str(out), "--params", str(project)]) == 0
    restored = pd.read_parquet(out)
    batches = [pd.read_parquet(settings.processed_batch_file(n)) for n in (1, 2)]
    expected = pd.concat(batches, ignore_index=True)
    pd.testing.assert_frame_equal(restored, expected)
    assert len(restored) == 100 and record.data_md5 in capsys.readouterr().out

    # A cached batch file that no longer matches its md5 is refused, naming the object.
    manifest = cached_file(settings.root, record.data_md5).read_text()
    first = cached_file(settings.root, parse_training_manifest(manifest)[0].md5)
    first.chmod(0o644)
    first.write_bytes(first.read_bytes()[:-1] + b"x")
    assert cli(["restore-data", "--batch", "2", "--out", str(out), "--params", str(project)]) == 1
    assert "is corrupt" in capsys.readouterr().err
    assert cli(["restore-data", "--batch", "7", "--params", str(project)]) == 1
    assert "batch 7 is not completed" in capsys.readouterr().err


def test_plot_is_a_png_that_changes_with_each_batch(project: Path) -> None:
    settings = load_settings(project)
    plot = settings.metric_plot_file
    first = plot.read_bytes()
    assert first.startswith(PNG_MAGIC) and len(first) > 10_000

    automated_training_flow(params_path=str(project))

    second = plot.read_bytes()
    assert second.startswith(PNG_MAGIC) and second != first
    record = load_state(settings.paths.state_file).batches["4"]
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    assert "metric_history.png" in [a.path for a in client.list_artifacts(record.mlflow_run_id)]
