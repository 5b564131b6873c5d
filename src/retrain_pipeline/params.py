"""How a command gets its :class:`~retrain_pipeline.config.Settings`: the params file it uses
(``--params``, ``RETRAIN_PARAMS``, the project's), read as YAML, with the environment
variables that override its keys applied on top.

Those variables are read by pydantic-settings (:class:`EnvironmentOverrides`): a blank value
counts as unset, and a bad one is a ConfigError naming the variable and the key it sets.
Every other problem is a ConfigError naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrain_pipeline.config import Settings
from retrain_pipeline.errors import ConfigError
from retrain_pipeline.urls import (
    check_dvc_remote,
    check_git_url,
    check_postgres_url,
    check_tracking_uri,
    check_webhook_url,
    redact_url,
    redact_webhook,
)

PARAMS_ENV = "RETRAIN_PARAMS"  # a worker's own params file, for runs that name none


def _blank_is_unset(value: object) -> object:
    return (value.strip() or None) if isinstance(value, str) else value


def _when_set(check: Callable[[str], str]) -> AfterValidator:
    return AfterValidator(lambda value: None if value is None else check(value))


Variable = Annotated[str | None, BeforeValidator(_blank_is_unset)]
_ENVIRONMENT = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)


class EnvironmentOverrides(BaseSettings):
    """The environment variables that override ``params.yaml`` keys (how ``.cluster/env``
    points a clone at a cluster, and how secrets stay out of the file). Each field is named
    after the key it sets, in the section :data:`SECTION_OF` gives."""

    model_config = _ENVIRONMENT

    tracking_uri: Annotated[Variable, _when_set(check_tracking_uri)] = Field(
        default=None, validation_alias="MLFLOW_TRACKING_URI"
    )
    state_database_url: Annotated[Variable, _when_set(check_postgres_url)] = Field(
        default=None, validation_alias="RETRAIN_STATE_DATABASE_URL"
    )
    dvc_remote: Annotated[Variable, _when_set(check_dvc_remote)] = Field(
        default=None, validation_alias="RETRAIN_DVC_REMOTE"
    )
    code_source: Annotated[Variable, _when_set(check_git_url)] = Field(
        default=None, validation_alias="RETRAIN_CODE_SOURCE"
    )
    webhook_url: Annotated[Variable, _when_set(check_webhook_url)] = Field(
        default=None, validation_alias="RETRAIN_ALERT_WEBHOOK_URL"
    )


SECTION_OF = {
    "tracking_uri": "mlflow",
    "state_database_url": "stores",
    "dvc_remote": "stores",
    "code_source": "automation",
    "webhook_url": "alerts",
}


class _ParamsVariable(BaseSettings):
    model_config = _ENVIRONMENT

    params: Variable = Field(default=None, validation_alias=PARAMS_ENV)


def environment_overrides() -> EnvironmentOverrides:
    """The overriding variables set now; ConfigError naming the first bad one's variable."""
    try:
        return EnvironmentOverrides()
    except ValidationError as exc:
        variables = {
            str(field.validation_alias): f"environment variable {field.validation_alias}, which sets "
            f"{SECTION_OF[name]}.{name}"
            for name, field in EnvironmentOverrides.model_fields.items()
        }
        raise ConfigError(_describe(exc, variables)) from exc


def settings_from_mapping(
    raw: dict[str, Any], root: Path, params_file: Path | None = None, *, light: bool = False
) -> Settings:
    """Validate a params mapping whose relative paths belong to ``root``, with the
    environment's overrides applied (``light``: see :func:`load_settings`)."""
    source = str(params_file) if params_file else "built-in defaults"
    reserved = sorted({"root", "params_file"} & set(raw))
    if reserved:
        raise ConfigError(f"{source}: unknown key(s) {reserved}")
    data = dict(raw)
    for key, value in environment_overrides().model_dump(exclude_none=True).items():
        section = data.get(SECTION_OF[key])
        if section is None or isinstance(section, dict):  # else: the model reports the section
            data[SECTION_OF[key]] = {**(section or {}), key: value}
    root = root.resolve()
    try:
        return Settings.model_validate(
            {**data, "root": root, "params_file": params_file}, context={"root": root, "light": light}
        )
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc


def _describe(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """One line for all of pydantic's errors: the key (or ``names[key]``), the problem and the
    value, its secrets redacted."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        key = (names or {}).get(key, key)
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
            continue
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if isinstance(value, dict):
            problems.append(f"{key}: {message}")
            continue
        if isinstance(value, str):  # never a password, nor a webhook's secret path
            value = redact_webhook(value) if key.endswith("alerts.webhook_url") else redact_url(value)
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        problems.append(f"{key}: {message} (got {shown})")
    return "; ".join(problems)


def resolve_params_file(given: str | None, default_params: Path) -> Path | None:
    """The params file a run uses: ``given`` (relative to the project folder of
    ``default_params``), else the worker's ``RETRAIN_PARAMS`` (set by ``make start-worker``: a
    deployment whose code workers clone from Git runs on each worker's own project folder),
    else ``default_params`` if it exists; None means the built-in defaults."""
    given = given or _ParamsVariable().params
    if given:
        path = Path(given).expanduser()
        return path if path.is_absolute() else default_params.parent / path
    return default_params if default_params.is_file() else None


#: ``params.yaml`` of the project this code runs from (the folder that holds ``src/`` and
#: ``flows/``): what a command uses when it is given no params file.
PROJECT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def params_for_command(given: str | None, default_params: Path = PROJECT_PARAMS) -> Path | None:
    """The params file of a command line: ``--params`` as typed (a relative path from the
    current folder), else the flow's rule (:func:`resolve_params_file`): ``RETRAIN_PARAMS``,
    else ``default_params`` if it exists, else None (the built-in defaults). Every entry point
    (the flow, cli, services, cluster, setup_deployment) finds its params file this way."""
    if given:
        return Path(given).expanduser().resolve()
    return resolve_params_file(None, default_params)


def load_settings(
    params_file: Path | str | None, default_root: Path | None = None, *, light: bool = False
) -> Settings:
    """Load and validate a params file.

    ``params_file`` None means the built-in defaults, with relative paths under
    ``default_root`` (required then). ``light`` skips the three checks that import
    scikit-learn or Prefect (about 5 s): the estimator, its hyperparameters and the cron
    expression. Commands that neither train nor schedule (services, status) load light;
    every run and ``make deploy`` check everything.
    """
    if params_file is None:
        if default_root is None:
            raise ConfigError("no params file given and no project root to apply defaults to")
        return settings_from_mapping({}, default_root, None, light=light)
    path = Path(params_file).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return settings_from_mapping(raw, path.parent, path, light=light)
