"""The cold floor of the cold-start rows: a fresh process doing one batch's ML work as a plain
script would, importing only what that work needs.

    python -m benchmarks.plain_script --job JOB.json --result RESULT.json

It imports the project's plain modules (pandas, scikit-learn, pandera, pyarrow with them) and
:mod:`benchmarks.baseline`, nothing else of the benchmark (its analysis, report and service
code would add about a second to the process, and to the denominator of every ratio against it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain_script")
    parser.add_argument("--job", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import joblib  # noqa: F401  (timed: the plain script's imports)

    from retrain_pipeline import data, model, params, sources  # noqa: F401

    imported = time.perf_counter()
    from benchmarks.baseline import run_baseline
    from benchmarks.records import PlainScriptOutput, RunJob

    job = RunJob(**json.loads(Path(args.job).read_text(encoding="utf-8")))
    batches = run_baseline(job)
    output = PlainScriptOutput(imported - started, time.perf_counter() - imported, batches)
    Path(args.result).write_text(json.dumps(asdict(output)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
