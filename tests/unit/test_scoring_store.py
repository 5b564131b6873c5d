"""Scoring in-process on a real model: a scikit-learn pipeline logged and registered in a SQLite
MLflow store in tmp_path, loaded by ``scoring``, scored by ``make predict``'s command
(``cli.main``) and by the serving app through ASGI (no server process: the integration tests
start that one)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from retrain_pipeline import cli, scoring, serving, tracking
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import ScoringError
from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset

RAW = breast_cancer_dataset(seed=7, target_column="target")
FEATURES = RAW.drop(columns="target")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Any]:
    """A project whose store holds version 1 of the model, the champion."""
    root = tmp_path_factory.mktemp("scoring")
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "sliced"}}), encoding="utf-8")
    settings = load_settings(root / "params.yaml", light=True)
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=10, random_state=0))
    model.fit(FEATURES.iloc[:200], RAW["target"].iloc[:200])
    experiment = tracking.connect(settings.mlflow)
    tracking.log_training_run(
        settings.mlflow,
        experiment,
        run_name="batch-1",
        tags={tracking.BATCH_TAG: "1"},
        params={},
        metrics={},
        model=model,
        input_example=FEATURES.head(5),
    )
    tracking.set_champion(settings.mlflow, "1")
    return settings, model


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_command_scores_a_file_in_process(
    registered: tuple[Settings, Any], suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, model = registered
    rows = FEATURES.iloc[300:320].reset_index(drop=True)
    source = settings.root / f"rows{suffix}"
    rows.to_csv(source, index=False) if suffix == ".csv" else rows.to_parquet(source, index=False)
    assert cli.main(["predict", "--params", str(settings.params_file), "--input", str(source)]) == 0
    output = settings.root / "predictions" / f"rows.predictions{suffix}"
    assert (
        f"wrote 20 predictions of model breast-cancer-classifier version 1 to {output}"
        in capsys.readouterr().out
    )
    scored = pd.read_csv(output) if suffix == ".csv" else pd.read_parquet(output)
    assert scored["prediction"].tolist() == model.predict(rows).tolist()
    assert scored["model_version"].astype(str).unique().tolist() == ["1"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda f: f.drop(columns="mean_radius"), "missing column(s) ['mean_radius']"),
        (lambda f: f.assign(mean_radius="abc"), "column 'mean_radius': expected double, got string"),
        (lambda f: f.assign(mean_radius=float("inf")), "infinite value"),
        (lambda f: f.iloc[0:0], "no rows"),
    ],
)
def test_a_file_that_does_not_fit_the_signature_is_named_and_nothing_is_written(
    registered: tuple[Settings, Any], change: Any, says: str
) -> None:
    settings, _ = registered
    source = settings.root / "bad.csv"
    change(FEATURES.head(3)).to_csv(source, index=False)
    output = settings.root / "bad.out.csv"
    with pytest.raises(ScoringError) as excinfo:
        scoring.predict_file(settings.mlflow, source, output)
    assert str(excinfo.value).startswith(f"{source}: ") and says in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert not output.exists()


def test_an_unknown_version_is_a_scoring_error(registered: tuple[Settings, Any]) -> None:
    settings, _ = registered
    with pytest.raises(ScoringError, match="no version '7'"):
        scoring.resolve_version(settings.mlflow, "7")
    assert scoring.resolve_version(settings.mlflow, None) == "1"


async def _ask(app: serving.ScoringApp, method: str, path: str, body: bytes = b"") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serving.test") as client:
        headers = {"Content-Type": "application/json"} if body else {}
        return await client.request(method, path, content=body, headers=headers)


def test_the_follower_loads_the_champion_and_the_app_answers_with_it(
    registered: tuple[Settings, Any],
) -> None:
    settings, model = registered
    scoring.use_store(settings.mlflow)
    champion = serving.Champion()
    follower = serving.AliasFollower(settings, champion)
    assert follower.check() is True
    assert follower.check() is False  # the alias did not move
    app = serving.ScoringApp(settings, champion)
    rows = FEATURES.iloc[400:403]
    body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
    answer = asyncio.run(_ask(app, "POST", "/invocations", body))
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "1"
    assert answer.json()["predictions"] == model.predict(rows).tolist()
    bad = json.dumps(
        {"dataframe_split": json.loads(rows.drop(columns="mean_radius").to_json(orient="split"))}
    )
    refused = asyncio.run(_ask(app, "POST", "/invocations", bad.encode()))
    assert refused.status_code == 400 and "mean_radius" in refused.json()["message"]
    described = asyncio.run(_ask(app, "GET", "/model")).json()
    assert described["version"] == "1" and described["batch_number"] == 1
    assert asyncio.run(_ask(app, "GET", "/ping")).status_code == 200


def test_a_loaded_version_scores_its_own_input_example(registered: tuple[Settings, Any]) -> None:
    settings, _ = registered
    loaded = scoring.load(settings.mlflow, "1")
    scoring.self_check(loaded)  # raises when the model cannot score its own example
    assert [c.name for c in scoring.signature_columns(loaded)] == list(FEATURES.columns)


def test_the_serve_service_runs_this_module_on_the_projects_store(
    registered: tuple[Settings, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrain_pipeline import service_records, service_specs

    settings, _ = registered
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = service_specs.spec_for(
        "serve", settings, service_specs.Endpoints(serve_host="127.0.0.1", serve_port=5999)
    )
    assert spec.argv[1:3] == ["-m", "retrain_pipeline.serving"]
    assert spec.argv[spec.argv.index("--port") + 1] == "5999"
    assert spec.argv[spec.argv.index("--params") + 1] == str(settings.params_file)
    assert spec.url == "http://127.0.0.1:5999" and "MLFLOW_TRACKING_URI" not in spec.env  # the params' store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5300")  # e.g. from . .cluster/env
    spec = service_specs.spec_for("serve", settings, service_specs.Endpoints(serve_port=5999))
    assert spec.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5300"
    assert service_records.recorded(settings, "serve") is None  # nothing started: no pid file
