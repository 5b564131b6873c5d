"""Scoring with a registered model version: MLflow's pyfunc model, its signature, MLflow's
own scoring app, one-line reasons when input does not fit.

With :mod:`retrain_pipeline.tracking` (runs and the registry), the only module that imports MLflow.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain_pipeline import tracking
from retrain_pipeline.config import MlflowConfig
from retrain_pipeline.errors import ScoringError, TrackingError
from retrain_pipeline.fileio import atomic_path
from retrain_pipeline.state import utc_now

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MAX_MESSAGE = 300  # characters of a one-line reason


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, loaded, with MLflow's scoring app built for it."""

    name: str
    version: str
    run_id: str | None
    batch_number: int | None
    pyfunc: Any
    app: Any  # mlflow.pyfunc.scoring_server.init(pyfunc): /invocations, /ping, /health, /version
    loaded_at: str

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "run_id": self.run_id,
            "batch_number": self.batch_number,
            "loaded_at": self.loaded_at,
        }


def use_store(config: MlflowConfig) -> None:
    """Point this process's MLflow at the configured store (``models:/`` URIs resolve there),
    with the flow's HTTP retry bound (:func:`tracking.point_mlflow_at`)."""
    tracking.create_sqlite_store(config)  # a store created whole, as the flow creates it
    tracking.point_mlflow_at(config)


def resolve_version(config: MlflowConfig, version: str | None) -> str:
    """``version`` if the registry has it, else (None) the champion's; ScoringError otherwise."""
    if version is None:
        champion = tracking.champion_version(config)
        if champion is None:
            raise ScoringError(
                f"model {config.registered_model_name!r} has no champion yet in {config.tracking_uri}: "
                "train a batch first (make run)"
            )
        return champion
    try:
        return tracking.version_info(config, version).version
    except TrackingError as exc:
        raise ScoringError(str(exc)) from exc


def load(config: MlflowConfig, version: str) -> LoadedModel:
    """Load ``models:/<name>/<version>`` and build MLflow's scoring app for it."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    uri = f"models:/{config.registered_model_name}/{version}"
    info = tracking.version_info(config, version)
    tracking.point_mlflow_at(config)  # models:/ resolves in this store, whatever was set last
    with tracking.mlflow_errors(config, f"cannot load {uri}: "):
        model = mlflow.pyfunc.load_model(uri)
        app = scoring_server.init(model)
    return LoadedModel(
        name=config.registered_model_name,
        version=str(version),
        run_id=info.run_id,
        batch_number=info.batch_number,
        pyfunc=model,
        app=app,
        loaded_at=utc_now(),
    )


def self_check(model: LoadedModel) -> None:
    """Score the model's own input example through MLflow's scoring function (what
    ``/invocations`` runs); ScoringError when it cannot answer."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    example = model.pyfunc.input_example
    if example is None:
        raise ScoringError(f"version {model.version} has no input example to check it with")
    body = json.dumps({"dataframe_split": json.loads(example.to_json(orient="split", index=False))})
    schema = model.pyfunc.metadata.get_input_schema()
    try:
        result = scoring_server.invocations(body, "application/json", model.pyfunc, schema)
    except MlflowException as exc:
        problem = one_line(exc.message)
        raise ScoringError(f"version {model.version} cannot score its input example: {problem}") from exc
    if result.status != 200 or len(json.loads(result.response)["predictions"]) != len(example):
        raise ScoringError(f"version {model.version} answered {result.status} to its input example")


@dataclass(frozen=True)
class Column:
    """One named input of a model's signature."""

    name: str
    type: str  # MLflow's type name: double, long, integer, float, string, boolean, ...
    required: bool


_NUMERIC = frozenset({"double", "float", "long", "integer"})


def signature_columns(model: LoadedModel) -> tuple[Column, ...]:
    """The named input columns of the model's signature; empty without one (or for a tensor spec)."""
    schema = model.pyfunc.metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return ()
    return tuple(
        Column(
            str(spec.name), str(getattr(spec.type, "name", spec.type)), bool(getattr(spec, "required", True))
        )
        for spec in schema.inputs
    )


def check_frame(frame: pd.DataFrame, columns: tuple[Column, ...]) -> None:
    """ScoringError (one line) when ``frame`` does not fit a signature of ``columns``.

    In order: no rows, missing required columns, a column given twice, a numeric column
    holding text that is not a number (named with its first row and value), infinite values
    (no scikit-learn estimator takes them). Extra columns are fine (the model ignores them);
    missing values are left to the model (its imputer fills them, or it says it cannot).
    """
    if len(frame) == 0:
        raise ScoringError("no rows to score")
    missing = [c.name for c in columns if c.required and c.name not in frame.columns]
    if missing:
        raise ScoringError(f"missing column(s) {missing}")
    for column in columns:
        if column.name not in frame.columns:
            continue
        values = frame[column.name]
        if values.ndim != 1:
            raise ScoringError(f"column {column.name!r} appears more than once")
        problem = _numeric_problem(values, column.type) if column.type in _NUMERIC else None
        if problem:
            raise ScoringError(f"column {column.name!r}: {problem}")


def _numeric_problem(values: pd.Series, expected: str) -> str | None:
    import pandas as pd

    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("float64")
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values[numbers.isna() & values.notna()]
        if len(bad):
            value = bad.iloc[0]
            kind = "string" if isinstance(value, str) else type(value).__name__
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            return f"expected {expected}, got {kind} (row {bad.index[0]}: {shown})"
    infinite = numbers[numbers.abs() == math.inf]
    if len(infinite):
        return f"infinite value(s) in row(s) {list(infinite.index[:3])}: the model takes finite numbers only"
    return None


def predict(model: LoadedModel, frame: pd.DataFrame) -> Any:
    """Predictions for ``frame``, checked against the signature first (:func:`check_frame`);
    ScoringError (one line) names what does not fit."""
    from mlflow.exceptions import MlflowException

    check_frame(frame, signature_columns(model))
    try:
        return model.pyfunc.predict(frame)
    except MlflowException as exc:
        raise ScoringError(one_line(exc.message)) from exc
    except (ValueError, TypeError) as exc:  # what the estimator refuses (infinity, ...)
        raise ScoringError(one_line(str(exc))) from exc


# --------------------------------------------------------------------------- one-line reasons

_REASONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Model is missing inputs (\[[^\]]*\])"), "missing column(s) {0}"),
    (
        re.compile(
            r"Failed to convert column (\S+) to type '([^']+)'.*?could not convert (.*?)['\"]\)", re.S
        ),
        "column {0}: expected {1}, could not convert {2}",
    ),
    (
        re.compile(r"Incompatible input types for column (\S+)\. Can not safely convert (\S+) to (\S+)\."),
        "column {0}: expected {2}, got {1}",
    ),
    (re.compile(r"valid JSON formatted string"), "the body is not valid JSON"),
    (
        re.compile(r"must be a JSON dictionary with exactly one of the input fields"),
        "the body must be a JSON object with exactly one of the keys dataframe_split, "
        "dataframe_records, instances, inputs",
    ),
    (
        re.compile(r"not a valid dataframe representation in '(\w+)' format\. Error: '(.*?)'", re.S),
        "not a valid {0} dataframe: {1}",
    ),
    (re.compile(r"valid UTF-8"), "the body is not valid UTF-8"),
    (
        re.compile(
            r"Failed to parse input as a Pandas DataFrame\. Ensure that the input is a valid (\w+)"
            r".*?Error: '(.*)'",
            re.S,
        ),
        "the body is not valid {0}: {1}",
    ),
)


def one_line(message: str, stack_trace: str | None = None) -> str:
    """What MLflow's scoring errors mean, in one short line without the data or a traceback.

    MLflow's messages embed the whole input (``Failed to predict data '<DataFrame>'``), the
    schema, and for estimator errors only a generic sentence whose cause is the last line of
    the stack trace.
    """
    for pattern, template in _REASONS:
        found = pattern.search(message)
        if found:
            return _clip(template.format(*found.groups()))
    if "unexpected error while evaluating the model" in message and stack_trace:
        last = stack_trace.strip().splitlines()[-1]
        return _clip(f"the model cannot score this input: {last}")
    return _clip(message.split("Error: ")[-1] if "Failed to predict data" in message else message)


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 3] + "..."


def error_body(error_code: str, message: str) -> bytes:
    return json.dumps({"error_code": error_code, "message": _clip(message)}).encode()


def rewrite_error(status: int, body: bytes, reason: str | None = None) -> bytes:
    """An MLflow error response as ``{"error_code", "message"}`` with a one-line message
    (``reason`` instead of MLflow's, when the caller found a better one)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "message" in payload:
        code = str(payload.get("error_class") or payload.get("error_code") or "BAD_REQUEST")
        return error_body(code, reason or one_line(str(payload["message"]), payload.get("stack_trace")))
    text = body.decode("utf-8", errors="replace")
    code = "UNSUPPORTED_MEDIA_TYPE" if status == 415 else "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
    return error_body(code, one_line(text))


def table_problem(body: bytes, content_type: str, columns: tuple[Column, ...]) -> str | None:
    """What :func:`check_frame` says about the table of a request MLflow's app rejected (the
    same words as ``make predict``); None when the body holds no table we can read loosely
    (not JSON, a tensor, unparsable) or the table fits (the reason is then MLflow's)."""
    import pandas as pd

    if not columns:
        return None
    mime = content_type.split(";", 1)[0].strip().lower()
    try:
        if mime == "text/csv":
            frame = pd.read_csv(io.BytesIO(body))
        elif mime == "application/vnd.apache.parquet":
            frame = pd.read_parquet(io.BytesIO(body))
        elif mime == "application/json":
            frame = _json_table(json.loads(body))
        else:
            return None
    except (ValueError, TypeError, OSError):  # JSON, pandas and pyarrow parse errors are ValueErrors
        return None
    if frame is None:
        return None
    try:
        check_frame(frame, columns)
    except ScoringError as exc:
        return str(exc)
    return None


def _json_table(document: Any) -> pd.DataFrame | None:
    """The table of a JSON request (``dataframe_split``, or records under another key), or None."""
    import pandas as pd

    if not isinstance(document, dict) or len(document) != 1:
        return None
    ((key, value),) = document.items()
    if key == "dataframe_split" and isinstance(value, dict):
        return pd.DataFrame(data=value.get("data"), columns=value.get("columns"))
    records = key in ("dataframe_records", "instances", "inputs") and isinstance(value, list) and value
    if records and all(isinstance(row, dict) for row in value):
        return pd.DataFrame.from_records(value)
    return None


def read_table(data: bytes, suffix: str) -> pd.DataFrame:
    """A CSV or Parquet file's rows (by its suffix); ScoringError for anything else."""
    import pandas as pd

    try:
        if suffix == ".csv":
            return pd.read_csv(io.BytesIO(data))
        if suffix == ".parquet":
            return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError) as exc:  # pandas' and pyarrow's parser errors are ValueErrors
        raise ScoringError(f"cannot read it as {suffix[1:]}: {one_line(str(exc))}") from exc
    raise ScoringError(f"expected a .csv or .parquet file, got {suffix or 'no suffix'!r}")


@dataclass(frozen=True)
class ScoredFile:
    output: Path
    rows: int
    version: str


def predict_file(config: MlflowConfig, source: Path, output: Path, version: str | None = None) -> ScoredFile:
    """Score a CSV or Parquet file with the champion (or ``version``): the rows plus
    ``prediction`` and ``model_version``, written atomically as CSV or Parquet by ``output``'s
    suffix (the input's by default). ScoringError names the file and the problem; nothing is
    written then."""
    suffix = source.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ScoringError(f"{source}: expected a .csv or .parquet file, got {suffix or 'no suffix'!r}")
    if output.suffix.lower() not in (".csv", ".parquet"):
        raise ScoringError(f"{output}: the output must be a .csv or .parquet file")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ScoringError(f"{source}: cannot read it: {exc.strerror or exc}") from exc
    try:
        frame = read_table(data, suffix)
        if frame.empty:
            raise ScoringError("it has no rows")
        use_store(config)
        model = load(config, resolve_version(config, version))
        predictions = predict(model, frame)
    except ScoringError as exc:
        raise ScoringError(f"{source}: {exc}") from exc
    scored = frame.assign(prediction=list(_flat(predictions)), model_version=model.version)
    with atomic_path(output) as tmp:
        if output.suffix.lower() == ".csv":
            scored.to_csv(tmp, index=False)
        else:
            scored.to_parquet(tmp, index=False)
    return ScoredFile(output, len(scored), model.version)


def _flat(predictions: Any) -> Any:
    """pyfunc's output (a Series, an array, a one-column frame) as one value per row."""
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return predictions.iloc[:, 0]
    return predictions
