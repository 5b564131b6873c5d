"""The scoring server for real: ``make serve``'s process on a free loopback port over a project
trained by the flow's own command line (SQLite store), started and stopped by these tests.

It answers what MLflow's pyfunc model predicts, follows the ``champion`` alias through a
promotion and a real rollback while a client keeps sending requests (none may fail), rejects
bad input with one-line JSON and keeps serving, and starts before any champion exists.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from retrain_pipeline import service_records, service_specs, services, tracking
from retrain_pipeline.config import Settings
from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset

REPO = Path(__file__).resolve().parents[2]
FLOW = REPO / "flows" / "automated_training_flow.py"
CLI = (sys.executable, "-m", "retrain_pipeline.cli")
SWITCH_LIMIT_S = 15.0
PARAMS = {
    "data": {"source": "sliced", "batch_size": 60},
    "model": {"estimator": "logistic_regression", "hyperparameters": {"max_iter": 500}},
    # Every new model is promoted: two batches give versions 1 and 2, the state's champion 2.
    "evaluation": {"promotion_tolerance": 1.0},
    "serving": {"poll_seconds": 0.5, "max_request_bytes": 200_000},
}


@dataclass
class Served:
    settings: Settings
    params: Path
    env: dict[str, str]
    host: str
    port: int
    rows: pd.DataFrame = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _clean_env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "RETRAIN_"))}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with exactly these headers (http.client adds no Content-Type)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def split_body(rows: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()


JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[Served]:
    """Two batches trained by the flow's command line, the alias put on version 1 by hand, and
    the scoring server started as ``make serve`` starts it (services.start)."""
    root = tmp_path_factory.mktemp("serving") / "project"
    root.mkdir()
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS), encoding="utf-8")
    env = _clean_env(root / ".prefect")
    for batch in (1, 2):
        run = subprocess.run(
            [sys.executable, str(FLOW), "--params", str(params)],
            env=env,
            cwd=tmp_path_factory.getbasetemp(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, (batch, run.stderr[-3000:])
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(("MLFLOW_", "RETRAIN_"))]:
            patch.delenv(key)
        settings = load_settings(params)
        assert tracking.champion_version(settings.mlflow) == "2"
        tracking.set_champion(settings.mlflow, "1")
        port = free_port()
        spec = service_specs.spec_for("serve", settings, service_specs.Endpoints(serve_port=port))
        assert spec.argv[1:3] == ["-m", "retrain_pipeline.serving"] and "MLFLOW_TRACKING_URI" not in spec.env
        started = services.start(spec, settings, timeout=90)
        assert started.startswith("serve: started"), started
        rows = breast_cancer_dataset(seed=3, target_column="target").drop(columns="target").head(25)
        try:
            yield Served(settings, params, env, "127.0.0.1", port, rows)
        finally:
            print(services.stop(settings, "serve", timeout=20))
            log = (service_records.run_dir(settings) / "serve.log").read_text()
            assert "Traceback" not in log, log[-3000:]


def pyfunc_predictions(settings: Settings, version: str, rows: pd.DataFrame) -> list[Any]:
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model_name}/{version}")
    return [int(v) for v in model.predict(rows)]


def test_answers_what_the_pyfunc_model_predicts(served: Served) -> None:
    expected = pyfunc_predictions(served.settings, "1", served.rows)

    status, headers, body = request(served.port, "POST", "/invocations", split_body(served.rows), JSON)
    assert status == 200, body
    assert headers["x-model-version"] == "1"
    assert json.loads(body)["predictions"] == expected

    records = json.dumps({"dataframe_records": served.rows.to_dict(orient="records")}).encode()
    assert (
        json.loads(request(served.port, "POST", "/invocations", records, JSON)[2])["predictions"] == expected
    )
    csv = served.rows.to_csv(index=False).encode()
    status, _, body = request(served.port, "POST", "/invocations", csv, {"Content-Type": "text/csv"})
    assert status == 200 and json.loads(body)["predictions"] == expected

    status, headers, body = request(served.port, "GET", "/model")
    document = json.loads(body)
    assert status == 200 and headers["x-model-version"] == "1"
    assert document["name"] == served.settings.mlflow.registered_model_name
    assert document["alias"] == "champion" and document["version"] == "1" and document["batch_number"] == 1
    assert document["run_id"] and document["loaded_at"] and document["last_error"] is None
    assert document["tracking_uri"] == served.settings.mlflow.tracking_uri
    for path in ("/ping", "/health", "/version"):
        status, headers, _ = request(served.port, "GET", path)
        assert status == 200 and headers["x-model-version"] == "1", path


def _bad_inputs(
    rows: pd.DataFrame, limit: int
) -> list[tuple[str, str, str, bytes | None, dict[str, str], int]]:
    columns = list(rows.columns)
    row = rows.iloc[0].tolist()

    def split(cols: list[str], data: list[list[Any]]) -> bytes:
        return json.dumps({"dataframe_split": {"columns": cols, "data": data}}).encode()

    infinite = split(columns, [[math.inf, *row[1:]]])  # json.dumps writes Infinity, which MLflow reads
    return [
        ("missing column", "POST", "/invocations", split(columns[1:], [row[1:]]), JSON, 400),
        ("wrong type", "POST", "/invocations", split(columns, [["abc", *row[1:]]]), JSON, 400),
        ("not JSON", "POST", "/invocations", b"{not json", JSON, 400),
        ("empty body", "POST", "/invocations", b"", JSON, 400),
        ("over the limit", "POST", "/invocations", b"{" + b" " * (limit + 10) + b"}", JSON, 413),
        (
            "wrong content type",
            "POST",
            "/invocations",
            split(columns, [row]),
            {"Content-Type": "text/plain"},
            415,
        ),
        ("no content type", "POST", "/invocations", split(columns, [row]), {}, 415),
        ("wrong top-level key", "POST", "/invocations", json.dumps({"rows": [row]}).encode(), JSON, 400),
        ("wrong shape", "POST", "/invocations", split(columns, [row[:3]]), JSON, 400),
        ("non-finite value", "POST", "/invocations", infinite, JSON, 400),
        ("a JSON list", "POST", "/invocations", json.dumps([row]).encode(), JSON, 400),
        ("no rows", "POST", "/invocations", split(columns, []), JSON, 400),
        (
            "CSV of the wrong type",
            "POST",
            "/invocations",
            b"mean_radius\nabc\n",
            {"Content-Type": "text/csv"},
            400,
        ),
        (
            "not Parquet",
            "POST",
            "/invocations",
            b"PAR1xx",
            {"Content-Type": "application/vnd.apache.parquet"},
            400,
        ),
        (
            "latin-1",
            "POST",
            "/invocations",
            b"{}",
            {"Content-Type": "application/json; charset=latin-1"},
            415,
        ),
        ("unknown path", "GET", "/predict", None, {}, 404),
        ("wrong method", "GET", "/invocations", None, {}, 405),
        ("wrong method on /model", "POST", "/model", b"{}", JSON, 405),
    ]


def test_bad_input_gets_one_line_4xx_and_the_server_goes_on(served: Served) -> None:
    limit = served.settings.serving.max_request_bytes
    expected_words = {
        "missing column": "missing column(s) ['mean_radius']",
        "wrong type": "column 'mean_radius': expected double, got string",
        "over the limit": "max_request_bytes",
        "non-finite value": "infinite",
        "no content type": "Content-Type",
        "empty body": "empty",
    }
    answers = {}
    for name, method, path, body, headers, status in _bad_inputs(served.rows, limit):
        got, response_headers, raw = request(served.port, method, path, body, headers)
        answers[name] = raw
        assert got == status, (name, got, raw)
        document = json.loads(raw)
        assert set(document) == {"error_code", "message"}, (name, document)
        message = document["message"]
        assert message and "\n" not in message and "Traceback" not in raw.decode(), (name, message)
        assert len(message) <= 300 and "DataFrame" not in message, (name, message)
        assert expected_words.get(name, "") in message, (name, message)
        assert response_headers["x-model-version"] == "1", name
        # still serving, right after each one
        assert request(served.port, "POST", "/invocations", split_body(served.rows.head(2)), JSON)[0] == 200
    print(json.dumps({k: json.loads(v)["message"] for k, v in answers.items()}, indent=1))


@dataclass
class Loop:
    """A client sending single-row requests back to back; each answer: (time, status, version)."""

    port: int
    body: bytes
    answers: list[tuple[float, int, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, headers, raw = request(self.port, "POST", "/invocations", self.body, JSON, timeout=20)
                self.answers.append((time.monotonic(), status, headers.get("x-model-version")))
                if status != 200:
                    self.errors.append(f"{status}: {raw[:300]!r}")
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.answers) >= count, len(self.answers)


def _wait_for_version(loop: Loop, served: Served, version: str, since: float) -> float:
    """Seconds from ``since`` until the loop's answers and /model say ``version``."""
    deadline = since + SWITCH_LIMIT_S
    while time.monotonic() < deadline:
        answered = [t for t, _, v in loop.answers if t > since and v == version]
        if answered and json.loads(request(served.port, "GET", "/model")[2])["version"] == version:
            return answered[0] - since
        time.sleep(0.1)
    raise AssertionError(f"version {version} did not answer within {SWITCH_LIMIT_S} s")


def test_follows_a_promotion_and_a_rollback_without_a_failed_request(served: Served) -> None:
    loop = Loop(served.port, split_body(served.rows.head(1)))
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        loop.wait_for(40)
        promoted_at = time.monotonic()
        tracking.set_champion(served.settings.mlflow, "2")  # what the flow's promotion step does
        to_two = _wait_for_version(loop, served, "2", promoted_at)
        loop.wait_for(len(loop.answers) + 40)

        # `make rollback` moves the alias at its very end; its process start (imports, seconds
        # on a loaded machine) is not the server's switch time: measured from its return.
        rollback = subprocess.run(
            [*CLI, "rollback", "--params", str(served.params), "--version", "1", "--reason", "serving test"],
            env=served.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert rollback.returncode == 0, rollback.stderr[-2000:]
        rolled_at = time.monotonic()
        to_one = _wait_for_version(loop, served, "1", rolled_at)
        loop.wait_for(max(200, len(loop.answers) + 40))
    finally:
        loop.stop.set()
        thread.join(30)

    print(f"{len(loop.answers)} requests; switch to 2 in {to_two:.2f} s, back to 1 in {to_one:.2f} s")
    assert loop.errors == [], loop.errors[:5]
    assert len(loop.answers) >= 200
    versions = [v for _, _, v in loop.answers]
    changes = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert changes == ["1", "2", "1"], changes  # each request answered by one version, in order
    assert versions[-1] == "1"
    assert to_two < SWITCH_LIMIT_S and to_one < SWITCH_LIMIT_S
    document = json.loads(request(served.port, "GET", "/model")[2])
    assert document["version"] == "1" and document["last_error"] is None


def test_starts_before_any_champion_and_picks_it_up(served: Served, free_port: Callable[[], int]) -> None:
    """A second registered model name on the same store: no version and no alias yet."""
    root = served.settings.root
    params = root / "late" / "params.yaml"
    params.parent.mkdir()
    late = {
        **PARAMS,
        "mlflow": {
            "tracking_uri": served.settings.mlflow.tracking_uri,
            "artifact_location": str(served.settings.mlflow.artifact_location),
            "registered_model_name": "late-model",
        },
    }
    params.write_text(yaml.safe_dump(late), encoding="utf-8")
    port = free_port()
    log = (params.parent / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "retrain_pipeline.serving", "--params", str(params), "--port", str(port)],
        env=served.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, headers, body = request(port, "GET", "/model")
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
                time.sleep(0.3)
        assert status == 200 and json.loads(body)["version"] is None and "x-model-version" not in headers
        for method, path in (("GET", "/ping"), ("GET", "/health"), ("POST", "/invocations")):
            status, _, body = request(port, method, path, split_body(served.rows.head(1)), JSON)
            assert status == 503, (path, body)
            assert json.loads(body)["message"].startswith("no champion yet for model 'late-model'"), body

        mlflow.set_tracking_uri(served.settings.mlflow.tracking_uri)
        registry = mlflow.MlflowClient(served.settings.mlflow.tracking_uri)
        source = registry.get_model_version(served.settings.mlflow.registered_model_name, "1")
        registry.create_registered_model("late-model")
        registry.create_model_version("late-model", source.source, run_id=source.run_id)
        registry.set_registered_model_alias("late-model", "champion", "1")
        appeared = time.monotonic()
        while request(port, "GET", "/ping")[0] != 200:
            assert time.monotonic() - appeared < SWITCH_LIMIT_S, "the first champion was not picked up"
            time.sleep(0.2)
        status, headers, body = request(port, "POST", "/invocations", split_body(served.rows), JSON)
        assert status == 200 and headers["x-model-version"] == "1"
        assert json.loads(body)["predictions"] == pyfunc_predictions(served.settings, "1", served.rows)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        log.close()
    text = (params.parent / "serve.log").read_text()
    # uvicorn shuts down gracefully on SIGTERM, then ends by the signal it caught (as it is
    # designed to: a supervisor sees why it stopped)
    assert code in (0, -signal.SIGTERM), text[-2000:]
    assert "Traceback" not in text and "Finished server process" in text, text[-2000:]
