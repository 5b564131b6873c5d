"""What each library costs a fresh process: import seconds and resident MiB, one after another.

    python -m benchmarks.import_profile [--repeat N] [--json] [STAGE ...]
    python -m benchmarks.import_profile --importtime -- python flows/automated_training_flow.py --params P

The first form imports the stages in order (default :data:`CLI_STAGES`, what a command-line
training run imports, in the order it imports them), each in a fresh interpreter ``--repeat``
times, and prints per stage the median of the seconds it added and of the ``VmRSS`` it added.
A stage is a comma-separated list of modules; what an earlier stage already imported is free.

The second form runs a command with ``python -X importtime`` and sums the modules' own import
time by top-level package (``mlflow.store...`` counts as ``mlflow``), largest first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

#: What a command-line run imports, in its order (the flow module first, then the run's
#: libraries). Each row: a label and the modules of that stage.
CLI_STAGES: tuple[tuple[str, str], ...] = (
    ("prefect", "prefect,prefect.flows,prefect.runtime"),
    ("pandas", "pandas"),
    ("sklearn", "sklearn.pipeline,sklearn.ensemble,sklearn.metrics,sklearn.impute,sklearn.preprocessing"),
    ("pandera + pyarrow", "pandera.pandas,pyarrow,pyarrow.parquet"),
    ("scipy.stats (drift)", "scipy.stats"),
    ("our modules + the flow", "flows.automated_training_flow"),
    ("mlflow (+ sklearn flavour)", "mlflow,mlflow.sklearn"),
    (
        "mlflow SQL store",
        "mlflow.store.tracking.sqlalchemy_store,mlflow.store.model_registry.sqlalchemy_store",
    ),
    ("skops", "skops.io"),
    ("dvc", "dvc.repo,dvc.repo.add"),
    ("matplotlib", "matplotlib.pyplot"),
)

_CHILD = r"""
import importlib, json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
rows = [{"stage": "python", "seconds": 0.0, "rss": rss()}]
for label, modules in json.loads(sys.argv[1]):
    started, before = time.perf_counter(), rss()
    for name in modules.split(","):
        importlib.import_module(name)
    rows.append({"stage": label, "seconds": time.perf_counter() - started, "rss": rss() - before})
print(json.dumps(rows))
"""


def stage_costs(stages: tuple[tuple[str, str], ...], repeat: int) -> list[dict[str, float | str]]:
    """Median seconds and RSS bytes each stage adds, over ``repeat`` fresh interpreters."""
    samples: list[list[dict[str, float | str]]] = []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(stages)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for index, first in enumerate(samples[0]):
        rows.append(
            {
                "stage": first["stage"],
                "seconds": statistics.median(float(s[index]["seconds"]) for s in samples),
                "rss": statistics.median(float(s[index]["rss"]) for s in samples),
            }
        )
    return rows


def importtime_by_package(command: list[str]) -> dict[str, float]:
    """Seconds of own import time per top-level package while ``command`` (a python command) runs."""
    if not command or "python" not in Path(command[0]).name:
        raise SystemExit("the command must start with a python interpreter")
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True)
    totals: dict[str, float] = defaultdict(float)
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        totals[name.split(".")[0]] += int(self_us) / 1e6
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def _out(line: str) -> None:
    print(line)  # noqa: T201 - this tool's output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.import_profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--importtime", action="store_true", help="run the command after -- with -X importtime"
    )
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    if args.importtime:
        totals = importtime_by_package(args.rest)
        if args.json:
            _out(json.dumps(totals))
        else:
            for name, seconds in list(totals.items())[:25]:
                _out(f"{name:24s} {seconds:6.2f} s")
            _out(f"{'all':24s} {sum(totals.values()):6.2f} s")
        return 0
    stages = tuple((s, s) for s in args.rest) if args.rest else CLI_STAGES
    rows = stage_costs(stages, args.repeat)
    if args.json:
        _out(json.dumps(rows))
        return 0
    total_s = total_rss = 0.0
    for row in rows:
        total_s += float(row["seconds"])
        total_rss += float(row["rss"])
        _out(
            f"{row['stage']!s:32s} +{float(row['seconds']):5.2f} s  +{float(row['rss']) / 2**20:5.0f} MiB"
            f"   (total {total_s:5.2f} s, {total_rss / 2**20:4.0f} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
