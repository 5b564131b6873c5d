"""Unit-test fixtures: no Prefect server, MLflow or DVC; only plain modules and tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's MLFLOW_TRACKING_URI must not leak into config tests."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def write_params(folder: Path, raw: Any, name: str = "params.yaml") -> Path:
    """Write ``raw`` as YAML into ``folder/name`` (folders created) and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def params_writer():
    return write_params
