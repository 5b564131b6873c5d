"""The plain-script process, the denominator of the cold-start ratios, imports only what its work needs."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.spec import REPO_ROOT

PLAIN_SCRIPT_IMPORTS = """
import sys
from benchmarks import baseline, plain_script, records  # what the plain-script process imports
from retrain_pipeline import data, model, params, sources
ours = {"benchmarks.plain_script", "benchmarks.baseline", "benchmarks.records", "benchmarks.spec"}
benchmark = sorted(m for m in sys.modules if m.startswith("benchmarks.") and m not in ours)
print(benchmark, [m for m in ("prefect", "mlflow", "dvc", "matplotlib") if m in sys.modules])
"""


def test_the_plain_script_process_imports_none_of_the_benchmark_nor_the_services() -> None:
    # Neither the benchmark's own machinery (analysis, report, services: about a second) nor a
    # library the plain script does without may land in the process the flow is compared with.
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT_IMPORTS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] []"
