"""Benchmark: the Prefect flow against a plain script doing the same work (the floor).

    python -m benchmarks.run_benchmark [--smoke] [--out-dir DIR]
    python benchmarks/run_benchmark.py [--smoke] [--out-dir DIR]     # the same

For each size (small: 50 rows per batch, large: 100,000 rows per batch; 30 features) it
builds fresh temporary projects with synthetic landing batches, then

* the **baseline** runs the plain functions the flow uses (read, validate, split, merge
  with every earlier accepted batch re-read from Parquet as the flow does, train, evaluate
  the new and the previous model, save the model and the data) in one Python process;
* the **pipeline** runs the real flow in-process, one call per batch, after a warm-up call
  on a throw-away project; its split by step comes from the task runs Prefect recorded;
* the **CLI** runs ``python flows/automated_training_flow.py --params P`` once per size;
* the **cold start** (small size) starts services of its own for a fresh project, as
  ``make start-services deploy start-worker-bg`` does but on free loopback ports and in the
  work folder (``benchmarks/cold_start.py``), and measures deployment runs through the
  worker, cron ticks to COMPLETED, the CLI with and without those services, the import of
  the flow module and a plain script doing one batch, each in a fresh process;

and writes ``benchmark.json`` (every raw number) and ``BENCHMARKS.md`` (tables, target
checks, where the time goes). Baseline and flow each run in a child process of this script
(hidden ``--worker`` flag) so their peak RSS can be read; the two never run at the same time.

This module is the entry point (arguments, the run, the files it writes, the worker
processes' ``main``). The work is in modules of its own: ``spec`` (sizes, targets),
``projects`` (the temporary projects), ``baseline`` (the plain script), ``flow_run`` (the flow
in process), ``workers`` (the child processes), ``measure`` (the CLI, the cold start, all of
it in order), ``analysis`` (summaries and target checks), ``report`` (BENCHMARKS.md) and
``records`` (the typed records, which ``benchmark.json`` is the JSON form of).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.analysis import analyse
from benchmarks.cold_start import ColdStartError
from benchmarks.measure import machine_info, measure
from benchmarks.records import BenchmarkConfig, Results, RunContext
from benchmarks.report import print_summary, render_report
from benchmarks.spec import (
    DEFAULT_JSON,
    DEFAULT_REPORT,
    ESTIMATOR,
    FULL_COLD_START,
    FULL_SIZES,
    HYPERPARAMETERS,
    SEED,
    SMOKE_COLD_START,
    SMOKE_SIZES,
    BenchmarkError,
)
from benchmarks.workers import WORKERS
from retrain_pipeline.errors import PipelineError

logger = logging.getLogger("benchmarks.run_benchmark")


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Where benchmark.json and BENCHMARKS.md go; --smoke never writes into the repository."""
    if args.out_dir is not None:
        out = Path(args.out_dir).resolve()
        return out / "benchmark.json", out / "BENCHMARKS.md"
    if args.smoke:
        out = Path(tempfile.mkdtemp(prefix="retrain-bench-smoke-"))
        return out / "benchmark.json", out / "BENCHMARKS.md"
    return DEFAULT_JSON, DEFAULT_REPORT


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the retraining flow against a plain script.")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one repetition, no cron wait (about 4 minutes)"
    )
    parser.add_argument("--out-dir", help="write benchmark.json and BENCHMARKS.md here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker_main(args: argparse.Namespace) -> int:
    """A worker process (``--worker KIND``): its JSON job file in, its JSON result file out."""
    job = json.loads(Path(args.job).read_text(encoding="utf-8"))
    result = WORKERS[args.worker](job)
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API request
    if args.worker:
        return worker_main(args)
    json_path, report_path = output_paths(args)
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    cold = SMOKE_COLD_START if args.smoke else FULL_COLD_START
    started = time.perf_counter()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    try:
        raw = measure(sizes, cold, work, args.smoke)
    except (BenchmarkError, ColdStartError, PipelineError):  # PipelineError: a service or the deployment
        logger.error("Benchmark failed; the temporary projects are kept in %s", work)
        raise
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    context = RunContext(
        date=date,
        command=shlex.join(getattr(sys, "orig_argv", sys.argv)),
        smoke=args.smoke,
        machine=machine_info(),
        config=BenchmarkConfig(estimator=ESTIMATOR, hyperparameters=HYPERPARAMETERS, seed=SEED),
    )
    results = Results.of(context, raw, analyse(sizes, raw), time.perf_counter() - started)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(asdict(results), indent=2) + "\n", encoding="utf-8")
    report_path.write_text(render_report(results), encoding="utf-8")
    print_summary(results)
    print(f"wrote {json_path} and {report_path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
