"""The warm start: what a run imports ahead of time, and where (each test in a fresh interpreter).

``import_mlflow``, ``import_dvc`` and ``import_plotting`` import the run's libraries; the flow
module calls them at import in a worker's flow-run process (``PREFECT__FLOW_RUN_ID`` set) and
nowhere else, so that ``make deploy`` and tests, which import the module too, stay light.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from retrain_pipeline.versioning import _DVC_LAZY_IMPORTS

FLOW_FILE = Path(__file__).resolve().parents[2] / "flows" / "automated_training_flow.py"
SQL_STORES = ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store")
RUN_LIBRARIES = ("mlflow.sklearn", "skops.io", "dvc.repo", "matplotlib.pyplot")

WARM_IMPORTS = """
import json, sys
import matplotlib
from retrain_pipeline.reporting import import_plotting
from retrain_pipeline.tracking import import_mlflow
from retrain_pipeline.versioning import import_dvc

stores = json.loads(sys.argv[1])
seen = {}
import_mlflow("http://127.0.0.1:1")
seen["server"] = {name: name in sys.modules for name in stores}
import_mlflow(None)
seen["local"] = {name: name in sys.modules for name in stores}
import_dvc()
import_plotting()
seen["modules"] = {name: name in sys.modules for name in json.loads(sys.argv[2])}
seen["backend"] = matplotlib.get_backend()
print(json.dumps(seen))
"""

# What Prefect's engine does with a deployment's entrypoint
# (prefect.utilities.importtools.load_script_as_module).
LOAD_FLOW_LIKE_PREFECT = """
import importlib.util, json, os, sys
from pathlib import Path

path = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location(
    path.stem, path, submodule_search_locations=[str(path.parent), os.getcwd()]
)
module = importlib.util.module_from_spec(spec)
sys.modules[path.stem] = module
sys.path.insert(0, os.getcwd())
sys.path.insert(0, str(path.parent))
spec.loader.exec_module(module)
assert module.automated_training_flow.name == "automated-training"
print(json.dumps({name: name in sys.modules for name in json.loads(sys.argv[2])}))
"""


def python_json(code: str, *args: str, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; returns the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    decoded: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return decoded


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without a flow run id or a tracking URI, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PREFECT__FLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MPLBACKEND")
    }
    return {**env, **extra}


def test_import_helpers_import_the_run_libraries(tmp_path: Path) -> None:
    modules = [*RUN_LIBRARIES, *_DVC_LAZY_IMPORTS]
    # MPLBACKEND=svg: the backend is Agg only because import_plotting chose it.
    seen = python_json(
        WARM_IMPORTS,
        json.dumps(SQL_STORES),
        json.dumps(modules),
        cwd=tmp_path,
        env=environment(MPLBACKEND="svg"),
    )

    assert seen["server"] == dict.fromkeys(SQL_STORES, False)  # a tracking server needs no SQL store
    assert seen["local"] == dict.fromkeys(SQL_STORES, True)
    assert seen["modules"] == dict.fromkeys(modules, True)
    assert str(seen["backend"]).lower() == "agg"


def test_the_flow_module_imports_the_run_libraries_only_in_a_flow_run_process(tmp_path: Path) -> None:
    checked = json.dumps(RUN_LIBRARIES)

    flow_run = python_json(
        LOAD_FLOW_LIKE_PREFECT,
        str(FLOW_FILE),
        checked,
        cwd=tmp_path,
        env=environment(PREFECT__FLOW_RUN_ID="0b6a43b5-9a52-4a48-9a4e-3d2f3c1d0a11"),
    )
    assert flow_run == dict.fromkeys(RUN_LIBRARIES, True)

    deploy = python_json(LOAD_FLOW_LIKE_PREFECT, str(FLOW_FILE), checked, cwd=tmp_path, env=environment())
    assert deploy == dict.fromkeys(RUN_LIBRARIES, False)
