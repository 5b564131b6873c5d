"""Scoring and the server's dispatcher without a server: MLflow's messages cut to one line, the
signature check, the body limit, routing and error rewriting, and the alias follower's retries
(with a stand-in model app and registry: the real ones are in tests/integration/test_serving.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import pandas as pd
import pytest

from retrain_pipeline import scoring, serving
from retrain_pipeline.errors import ScoringError, TrackingError
from retrain_pipeline.params import settings_from_mapping

COLUMNS = (scoring.Column("a", "double", True), scoring.Column("b", "long", True))
DATA_REPR = "   a  b\\n0  1  2\\n\\n[1 rows x 2 columns]"


@pytest.mark.parametrize(
    ("message", "stack_trace", "expected"),
    [
        (
            f"Failed to predict data '{DATA_REPR}'. \nError: Failed to enforce schema of data '{DATA_REPR}' "
            "with schema '['a': double (required)]'. Error: Model is missing inputs ['a'].",
            None,
            "missing column(s) ['a']",
        ),
        (
            "Invalid input. Data is not compatible with model signature. Failed to convert column a to "
            "type 'float64'. Error: 'ValueError(\"could not convert string to float: 'abc'\")'",
            None,
            "column a: expected float64, could not convert string to float: 'abc'",
        ),
        (
            "Invalid input. Ensure that input is a valid JSON formatted string. Error: "
            "'JSONDecodeError('Expecting value: line 1 column 1 (char 0)')'\nInput: \nb'{x'\n",
            None,
            "the body is not valid JSON",
        ),
        (
            "The input must be a JSON dictionary with exactly one of the input fields {'inputs'}. "
            "Received dictionary with input fields: []. IMPORTANT: The MLflow Model scoring protocol ...",
            None,
            "the body must be a JSON object with exactly one of the keys dataframe_split, "
            "dataframe_records, instances, inputs",
        ),
        (
            "Encountered an unexpected error while evaluating the model. Verify that the serialized input",
            'Traceback (most recent call last):\n  File "x.py"\nValueError: Input X contains infinity.\n',
            "the model cannot score this input: ValueError: Input X contains infinity.",
        ),
        (
            "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid Parquet Pandas "
            "DataFrame produced using the `pandas.DataFrame.to_parquet()` method. Error: 'too short'",
            "Traceback ...",
            "the body is not valid Parquet: too short",
        ),
    ],
)
def test_mlflow_messages_become_one_line(message: str, stack_trace: str | None, expected: str) -> None:
    assert scoring.one_line(message, stack_trace) == expected


def test_a_long_message_is_clipped_to_one_line() -> None:
    text = scoring.one_line("first\nsecond " + "x" * 1000)
    assert "\n" not in text and len(text) == scoring.MAX_MESSAGE and text.endswith("...")


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (pd.DataFrame({"a": [1.0], "b": [2]}), None),
        (pd.DataFrame({"a": [1.0], "b": [2], "extra": ["x"]}), None),
        (pd.DataFrame({"a": [float("nan")], "b": [2]}), None),  # missing values: the model's imputer
        (pd.DataFrame({"a": ["1.5"], "b": [True]}), None),  # numbers as text convert
        (pd.DataFrame({"a": [], "b": []}), "no rows to score"),
        (pd.DataFrame({"b": [2]}), "missing column(s) ['a']"),
        (
            pd.DataFrame({"a": [1.0, "abc"], "b": [2, 3]}),
            "column 'a': expected double, got string (row 1: 'abc')",
        ),
        (pd.DataFrame({"a": [1.0], "b": [-math.inf]}), "column 'b': infinite value(s) in row(s) [0]"),
        (pd.DataFrame([[1.0, 2.0, 3]], columns=["a", "a", "b"]), "column 'a' appears more than once"),
    ],
)
def test_check_frame(frame: pd.DataFrame, expected: str | None) -> None:
    if expected is None:
        scoring.check_frame(frame, COLUMNS)
    else:
        with pytest.raises(ScoringError) as caught:
            scoring.check_frame(frame, COLUMNS)
        assert str(caught.value).startswith(expected)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (
            b'{"dataframe_split": {"columns": ["b"], "data": [[1]]}}',
            "application/json",
            "missing column(s) ['a']",
        ),
        (b'{"dataframe_records": [{"a": "x", "b": 1}]}', "application/json", "column 'a': expected double"),
        (b"a,b\nx,1\n", "text/csv; charset=utf-8", "column 'a': expected double"),
        (b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}', "application/json", None),
        (b"{not json", "application/json", None),
        (b'{"inputs": [[1, 2]]}', "application/json", None),  # a tensor: MLflow's reason stands
        (b"xx", "application/vnd.apache.parquet", None),
    ],
)
def test_table_problem_explains_a_rejected_table(
    body: bytes, content_type: str, expected: str | None
) -> None:
    found = scoring.table_problem(body, content_type, COLUMNS)
    assert found == expected if expected is None else (found or "").startswith(expected)


def test_rewrite_error_keeps_one_line_and_drops_the_stack_trace() -> None:
    mlflow_body = json.dumps(
        {"error_code": "BAD_REQUEST", "message": "Invalid input.\nline two", "stack_trace": "Traceback ..."}
    ).encode()
    assert json.loads(scoring.rewrite_error(400, mlflow_body)) == {
        "error_code": "BAD_REQUEST",
        "message": "Invalid input. line two",
    }
    assert json.loads(scoring.rewrite_error(400, mlflow_body, "missing column(s) ['a']"))["message"] == (
        "missing column(s) ['a']"
    )
    plain = json.loads(scoring.rewrite_error(415, b"The scoring server only supports UTF-8"))
    assert plain == {
        "error_code": "UNSUPPORTED_MEDIA_TYPE",
        "message": "The scoring server only supports UTF-8",
    }


# --------------------------------------------------------------------------- the dispatcher


def _receive(chunks: list[bytes]) -> serving.Receive:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


@pytest.mark.parametrize(
    ("chunks", "declared", "expected"),
    [
        ([b"ab", b"cd"], None, b"abcd"),
        ([b"abcdef"], b"6", b"abcdef"),
        ([b"abc", b"defgh"], None, None),  # counted while reading: 8 > 6
        ([b"x" * 10], b"10", None),  # declared too large: drained, not kept
        ([b"x" * 10], b"999", None),  # declared far too large: not even read
        ([], None, b""),
    ],
)
def test_read_body_limit(chunks: list[bytes], declared: bytes | None, expected: bytes | None) -> None:
    headers = {b"content-length": declared} if declared else {}
    assert asyncio.run(serving._read_body(_receive(chunks), headers, limit=6)) == expected


class _FakeModel:
    """What ScoringApp needs of a LoadedModel: a version and an ASGI app (MLflow's, here a stand-in)."""

    def __init__(self, version: str, status: int = 200, body: bytes = b'{"predictions": [1]}') -> None:
        self.version = version
        self.name = "m"
        self.pyfunc = None
        self.status, self.body = status, body

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if self.status == 599:
            raise RuntimeError("boom")
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-type", b"x")]}
        )
        await send({"type": "http.response.body", "body": self.body})

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "run_id": "r", "batch_number": 1, "loaded_at": "t"}


def _call(
    app: serving.ScoringApp,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[bytes, bytes] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list((headers or {}).items())}
    asyncio.run(app(scope, _receive([body]), send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def app(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> serving.ScoringApp:
    monkeypatch.setattr(scoring, "signature_columns", lambda model: COLUMNS)
    settings = settings_from_mapping({"serving": {"max_request_bytes": 2048}}, tmp_path)
    return serving.ScoringApp(settings, serving.Champion())


JSON = {b"content-type": b"application/json"}


def test_no_champion_yet_answers_503_in_one_line(app: serving.ScoringApp) -> None:
    for method, path in (("GET", "/ping"), ("GET", "/health"), ("POST", "/invocations")):
        status, headers, body = _call(app, method, path, b"{}", JSON)
        assert status == 503 and b"x-model-version" not in headers
        assert json.loads(body)["message"].startswith("no champion yet for model 'breast-cancer-classifier'")
    status, _, body = _call(app, "GET", "/model")
    assert status == 200 and json.loads(body)["version"] is None


def test_routes_and_errors_carry_the_version(app: serving.ScoringApp) -> None:
    app.champion.model = _FakeModel("7")  # type: ignore[assignment]
    cases = [
        ("POST", "/invocations", b"{}", JSON, 200),
        ("GET", "/nope", b"", {}, 404),
        ("DELETE", "/model", b"", {}, 405),
        ("POST", "/invocations", b"{}", {}, 415),
        ("POST", "/invocations", b"  ", JSON, 400),
        ("POST", "/invocations", b"x" * 3000, JSON, 413),
        ("GET", "/model", b"", {}, 200),
    ]
    for method, path, body, headers, expected in cases:
        status, sent, answer = _call(app, method, path, body, headers)
        assert (status, sent[b"x-model-version"]) == (expected, b"7"), (method, path, answer)
        if status >= 400:
            assert set(json.loads(answer)) == {"error_code", "message"}
    assert json.loads(_call(app, "GET", "/model")[2])["version"] == "7"


def test_mlflow_rejections_are_explained_and_failures_are_one_line_500(
    app: serving.ScoringApp, caplog: pytest.LogCaptureFixture
) -> None:
    rejected = json.dumps({"error_code": "BAD_REQUEST", "message": "long\nMLflow text", "stack_trace": "T"})
    app.champion.model = _FakeModel("3", 400, rejected.encode())  # type: ignore[assignment]
    body = b'{"dataframe_split": {"columns": ["b"], "data": [[1]]}}'
    status, _, answer = _call(app, "POST", "/invocations", body, JSON)
    assert status == 400 and json.loads(answer)["message"] == "missing column(s) ['a']"

    app.champion.model = _FakeModel("3", 599)  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR):
        status, _, answer = _call(app, "POST", "/invocations", b"{}", JSON)
    assert status == 500 and json.loads(answer)["error_code"] == "INTERNAL_ERROR"
    assert "RuntimeError: boom" in caplog.text  # the traceback goes to the server's log


# --------------------------------------------------------------------------- the alias follower


def test_follower_retries_a_broken_version_with_backoff_and_logs_an_outage_once(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from_mapping({}, tmp_path)
    champion = serving.Champion()
    follower = serving.AliasFollower(settings, champion)
    alias: list[Any] = ["1"]
    loads: list[str] = []

    def champion_version(config: Any) -> str | None:
        if isinstance(alias[0], Exception):
            raise alias[0]
        return str(alias[0])

    def load(config: Any, version: str) -> Any:
        loads.append(version)
        if version == "2":
            raise ScoringError("version 2: cannot load")
        return _FakeModel(version)

    monkeypatch.setattr(serving.tracking, "champion_version", champion_version)
    monkeypatch.setattr(serving.scoring, "load", load)
    monkeypatch.setattr(serving.scoring, "self_check", lambda model: None)

    assert follower.check() and champion.model is not None and champion.model.version == "1"
    alias[0] = "2"
    assert not follower.check() and not follower.check()
    assert loads == ["1", "2"]  # not reloaded on the next poll: retried after 5 s
    assert champion.model.version == "1" and "version 2: cannot load" in (champion.last_error or "")

    alias[0] = TrackingError("MLflow at http://x: connection refused at 0x7f01")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            follower.check()
    assert caplog.text.count("cannot read the alias") == 1  # once a minute, not once per poll
    assert champion.model.version == "1"

    alias[0] = "1"
    follower.check()
    follower.check()
    assert champion.last_error is None  # in step with the alias again
