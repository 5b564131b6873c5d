"""The benchmark's measurements: both workers, the CLI per size, the cold start, the monitoring step.

:func:`measure` builds the projects and runs everything one after another (never two
measured processes at the same time); the cold start runs fresh processes and deployment runs
through the benchmark's own services (:mod:`benchmarks.cold_start`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

from benchmarks.cold_start import (
    NEVER,
    RUN_TIMEOUT_S,
    OwnServices,
    flow_run_of_batch,
    own_services,
    project_env,
)
from benchmarks.drift_check import measure_drift_check
from benchmarks.projects import build_runs, build_warmup, make_project
from benchmarks.records import (
    BaselineWorkerResult,
    CliRun,
    CliRunWithServices,
    ColdStart,
    DeploymentRun,
    FlowWorkerResult,
    ImportProbe,
    Machine,
    Measurements,
    PlainScriptResult,
    RunJob,
    ScheduledRuns,
    SkippedScheduledRuns,
    TriggerCommandRun,
    WorkerJob,
    from_dict,
)
from benchmarks.spec import (
    ESTIMATOR,
    HYPERPARAMETERS,
    N_FEATURES,
    PACKAGES,
    REPO_ROOT,
    SEED,
    BenchmarkError,
    ColdStartSpec,
    SizeSpec,
    mib,
)
from benchmarks.workers import child_env, run_worker
from retrain_pipeline.config import ModelConfig

logger = logging.getLogger(__name__)

# A fresh interpreter imports the flow module the way `python -m prefect.engine` loads a
# deployment's entrypoint: Prefect first, then the file as a module registered in sys.modules
# before it runs (its dataclasses need that), with its folder on sys.path.
IMPORT_PROBE = """\
import importlib.util, json, sys, time
from pathlib import Path
started = time.perf_counter()
import prefect
prefect_done = time.perf_counter()
path = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(path.parent))
spec = importlib.util.spec_from_file_location(path.stem, path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
done = time.perf_counter()
if not hasattr(module, "automated_training_flow"):
    raise SystemExit("the flow module has no automated_training_flow")
times = {"prefect_s": prefect_done - started, "flow_module_s": done - prefect_done}
print(json.dumps({**times, "import_s": done - started}))
"""
FLOW_FILE = "flows/automated_training_flow.py"


def measure(sizes: Sequence[SizeSpec], cold: ColdStartSpec, work: Path, smoke: bool) -> Measurements:
    """Build the projects, run both workers, the CLI and the cold start; the raw results."""
    env = child_env(work / "prefect-home")
    runs = build_runs(work, sizes)
    job = WorkerJob(build_warmup(work), runs)
    baseline = run_worker("baseline", job, BaselineWorkerResult, work, env)
    flow = run_worker("flow", job, FlowWorkerResult, work, env)
    # Memory and the CLI run for the sizes without a window (the peak RSS is the process's).
    first = {
        s.name: next(r for r in runs if r.size == s.name)
        for s in sizes
        if s.window is None and s.training == "full"
    }
    merged = {name: merged_table_bytes(run.params_file) for name, run in first.items()}
    cli = {name: run_cli(run.params_file, env) for name, run in first.items()}
    cold_start = measure_cold_start(cold, work, env)
    drift = measure_drift_check(
        work, smoke, ModelConfig(estimator=ESTIMATOR, hyperparameters=HYPERPARAMETERS)
    )
    return Measurements(baseline, flow, merged, cli, cold_start, drift)


def run_cli(params: Path, env: dict[str, str]) -> CliRun:
    """``python flows/automated_training_flow.py --params P`` as a user runs it: one batch."""
    out_file, err_file = params.parent / "cli-stdout.txt", params.parent / "cli-stderr.txt"
    peak_file = params.parent / "cli-peak-rss.txt"
    # The CLI script runs as __main__ under benchmarks.peak_rss, which records the peak RSS
    # of this process alone (not of Prefect's ephemeral API server subprocess).
    command = [sys.executable, "-m", "benchmarks.peak_rss", str(peak_file)]
    command += ["flows/automated_training_flow.py", "--params", str(params)]
    start = time.perf_counter()
    with out_file.open("wb") as out, err_file.open("wb") as err:
        process = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, check=False)
    wall = time.perf_counter() - start
    exit_code = process.returncode
    peak_rss = int(peak_file.read_text(encoding="utf-8"))
    lines = out_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if exit_code != 0 or not last.startswith("completed:"):
        stderr = err_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise BenchmarkError(f"CLI run failed (exit {exit_code}): {last}\n{stderr}")
    logger.info("CLI one batch: %.2f s, peak RSS %s (%s)", wall, mib(peak_rss), last)
    shown = ["python", "flows/automated_training_flow.py", "--params", str(params)]
    found = re.search(r"batch (\d+)", last)
    return CliRun(
        command=shlex.join(shown),
        wall_s=wall,
        exit_code=exit_code,
        last_line=last,
        batch=int(found.group(1)) if found else None,
        peak_rss_bytes=peak_rss,
        data_bytes=merged_table_bytes(params),
    )


def merged_table_bytes(params: Path) -> int:
    """In-memory size of the flow's final merged table (the batch files its manifest lists)."""
    import pandas as pd

    from retrain_pipeline.data import merge_batches
    from retrain_pipeline.manifests import parse_training_manifest
    from retrain_pipeline.params import load_settings

    settings = load_settings(params)
    processed = settings.data.processed_dir
    files = parse_training_manifest(settings.training_manifest_file.read_text(encoding="utf-8"))
    frame = merge_batches([pd.read_parquet(processed / f.file) for f in files])
    return int(frame.memory_usage(deep=True).sum())


# --------------------------------------------------------------------------- cold start


def measure_cold_start(spec: ColdStartSpec, work: Path, env: dict[str, str]) -> ColdStart:
    """Fresh processes and runs through the benchmark's own services, on one fresh small project.

    ``env`` is the children's environment of the in-process workers (for the import probe and
    the plain script); the CLI runs get the environment of a user's shell in the project.
    """
    from benchmarks.synthetic import make_batches

    started = time.perf_counter()
    folder = work / "cold-start"
    batches = make_batches(spec.batches, spec.rows, N_FEATURES, seed=SEED + 2)
    params = make_project(folder / "project", batches, spec.batches, cron=NEVER)
    logger.info("Cold start: project %s with %d batches of %d rows", params.parent, spec.batches, spec.rows)
    reps = range(1, spec.repetitions + 1)
    imports = [run_import_probe(env) for _ in reps]
    plain = [run_plain_script(params, folder / f"plain-{i}", env) for i in reps]
    cli_env = project_env(params)
    first: DeploymentRun | None = None
    scheduled: ScheduledRuns = SkippedScheduledRuns(0, [], [], skipped="the smoke variant does not wait")
    with own_services(params, spec.cron) as own:
        if spec.first_run:
            first = own.deployment_run()
        deployment_runs = [own.deployment_run() for _ in reps]
        make_trigger = [run_make_trigger(own, params, cli_env) for _ in reps]
        with_services = [run_cli_with_services(own, params, cli_env) for _ in reps]
        if spec.ticks:
            scheduled = own.scheduled_runs(spec.ticks)
    without_services = [run_cli(params, cli_env) for _ in reps]
    section_s = time.perf_counter() - started
    logger.info("Cold start measured in %.0f s", section_s)
    return ColdStart(
        section_s=section_s,
        rows_per_batch=spec.rows,
        repetitions=spec.repetitions,
        project=str(params.parent),
        services=own.info(),
        import_flow_module=imports,
        plain_script=plain,
        deployment_first_run=first,
        deployment_runs=deployment_runs,
        scheduled_runs=scheduled,
        cli_with_services=with_services,
        cli_without_services=without_services,
        make_trigger=make_trigger,
    )


def run_import_probe(env: dict[str, str]) -> ImportProbe:
    """The flow module's import time in a fresh ``python`` (and that whole process's wall time)."""
    command = [sys.executable, "-c", IMPORT_PROBE, FLOW_FILE]
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise BenchmarkError(
            f"importing {FLOW_FILE} failed (exit {process.returncode}):\n{process.stderr[-3000:]}"
        )
    times = json.loads(process.stdout.strip().splitlines()[-1])
    result = from_dict(ImportProbe, {**times, "process_wall_s": wall})
    logger.info(
        "Import of the flow module in a fresh process: %.2f s (%.2f s of it Prefect)",
        wall,
        result.prefect_s,
    )
    return result


def run_plain_script(params: Path, folder: Path, env: dict[str, str]) -> PlainScriptResult:
    """A fresh plain-script process doing one batch's ML work (the floor for a fresh process)."""
    folder.mkdir(parents=True)
    job = RunJob(
        size="cold-start", rep=folder.name, params=str(params), baseline_out=str(folder / "out"), n_batches=1
    )
    result = run_worker("plain", job, PlainScriptResult, folder, env)
    logger.info("Plain script, one batch in a fresh process: %.2f s", result.process_wall_s)
    return result


def run_make_trigger(own: OwnServices, params: Path, env: dict[str, str]) -> TriggerCommandRun:
    """``make trigger`` in the project's shell, as a user runs it while the services are up:
    the deployment registered again, one run started and waited for."""
    command = ["make", "--no-print-directory", "trigger"]
    run_env = {**env, "PARAMS": str(params), "WAIT": f"{RUN_TIMEOUT_S:.0f}"}
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_ROOT, env=run_env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    found = re.search(r"triggered flow run \S+ \(([0-9a-f-]{36})\)", process.stdout)
    if process.returncode != 0 or found is None:
        output = process.stdout[-2000:] + process.stderr[-2000:]
        raise BenchmarkError(f"make trigger failed (exit {process.returncode}):\n{output}")
    run = own.finished_run(found.group(1), wall)
    logger.info("make trigger: %.2f s in all", wall)
    return TriggerCommandRun(**asdict(run), command=f"make trigger PARAMS={params}", wall_s=wall)


def run_cli_with_services(own: OwnServices, params: Path, env: dict[str, str]) -> CliRunWithServices:
    """The CLI while the project's services run; its flow run must be on their Prefect server."""
    cli = run_cli(params, env)
    flow_run_id = flow_run_of_batch(own.settings, cli.batch) if cli.batch is not None else None
    if flow_run_id is None or not own.knows_flow_run(flow_run_id):
        raise BenchmarkError(f"the CLI run ({cli.last_line}) did not use {own.endpoints.prefect_api}")
    return CliRunWithServices(**asdict(cli), flow_run_id=flow_run_id, prefect_api=own.endpoints.prefect_api)


# --------------------------------------------------------------------------- the machine


def machine_info() -> Machine:
    """Cores, memory, Python, platform and the versions of the main packages."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return Machine(
        cpu_count=os.cpu_count(),
        memory_bytes=psutil.virtual_memory().total,
        python=platform.python_version(),
        platform=platform.platform(),
        packages=versions,
    )
