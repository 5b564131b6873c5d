# Automated ML retraining pipeline. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
PARAMS ?= $(CURDIR)/params.yaml
BATCH ?=
VERSION ?=
REASON ?=
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 5050
INPUT ?=
OUTPUT ?=
WAIT ?= 600
# make test: test files run in this many processes at once (pytest-xdist). Most of a test's time
# is spent waiting for servers, workers and subprocesses, so more than the 2 cores pays off.
TEST_WORKERS ?= 3
# make start-cluster: ports of its PostgreSQL, Prefect and MLflow (not those of start-services)
CLUSTER_HOST ?= 127.0.0.1
CLUSTER_POSTGRES_PORT ?= 15432
CLUSTER_PREFECT_PORT ?= 4300
CLUSTER_MLFLOW_PORT ?= 5300
CLUSTER_WORKERS ?= 2

# Poetry lives in its own virtual environment under .tools/; the project's in .venv/.
POETRY_VERSION := 2.5.1
TOOLS := $(CURDIR)/.tools
POETRY := $(TOOLS)/poetry/bin/poetry
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Values from the command line reach recipes through the environment ("$$VAR"), never by
# pasting them into shell text.
export PARAMS BATCH VERSION REASON PREFECT_HOST PREFECT_PORT MLFLOW_HOST MLFLOW_PORT WAIT TEST_WORKERS \
	SERVE_HOST SERVE_PORT INPUT OUTPUT \
	CLUSTER_HOST CLUSTER_POSTGRES_PORT CLUSTER_PREFECT_PORT CLUSTER_MLFLOW_PORT CLUSTER_WORKERS

# Prefect's home (.prefect/ beside the params file) and its other settings are chosen by the
# code, so `python flows/automated_training_flow.py` and every target below use the same ones.
export PYTHONUNBUFFERED := 1

.PHONY: help install setup run run-manual run-all status demo mlflow-ui clean test lint \
	start-services stop-services services-status deploy start-worker start-agent start-worker-bg \
	stop-worker trigger stop rebuild-state lineage rollback restore-data bench bench-smoke \
	start-cluster stop-cluster cluster-status serve predict

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(POETRY):
	@echo ">> installing Poetry $(POETRY_VERSION) into $(TOOLS)/poetry"
	$(PYTHON) -m venv $(TOOLS)/poetry
	$(TOOLS)/poetry/bin/pip install --quiet "poetry==$(POETRY_VERSION)" poetry-plugin-pypi-mirror

# Poetry resolves through the same simple index pip uses (computed, never written to a file).
$(STAMP): pyproject.toml poetry.lock | $(POETRY)
	@index="$$($(PYTHON) -m pip config get global.index-url 2>/dev/null || $(PYTHON) -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')"; \
	POETRY_PYPI_MIRROR_URL="$$index" $(POETRY) install --no-interaction --sync
	@# Bytecode for every installed module, once: where PYTHONDONTWRITEBYTECODE is set (CI images,
	@# containers) Python otherwise compiles them from source in every process: the flow's imports
	@# took 13 s instead of 5 (BENCHMARKS.md, cold start).
	$(PY) -m compileall -q -j 0 "$(VENV)/lib" src flows deployments >/dev/null
	@touch $(STAMP)

install: $(STAMP) ## Install Poetry (if absent) and the locked environment into .venv

setup: install ## Create folders, `dvc init` once and write the raw demo data
	$(PY) -m retrain_pipeline.cli setup --params "$$PARAMS"

SERVICES := $(PY) -m retrain_pipeline.services
ENDPOINTS := --prefect-host "$$PREFECT_HOST" --prefect-port "$$PREFECT_PORT" \
	--mlflow-host "$$MLFLOW_HOST" --mlflow-port "$$MLFLOW_PORT" --serve-host "$$SERVE_HOST" --serve-port "$$SERVE_PORT"
# Deploying and triggering talk to the running services. (Flow runs find them by themselves.)
SERVICES_ENV = $$($(SERVICES) env --params "$$PARAMS")

run: install ## Process the next batch once (no services needed; uses them when they run)
	$(PY) flows/automated_training_flow.py --params "$$PARAMS"

run-manual: install ## Process batch BATCH=N (add FORCE=1 to retrain a completed batch)
	@test -n "$$BATCH" || { echo "usage: make run-manual BATCH=N [FORCE=1]" >&2; exit 2; }
	$(PY) flows/automated_training_flow.py "$$BATCH" --params "$$PARAMS" $(if $(FORCE),--force,)

run-all: install ## Process every pending batch now, one flow run each, without the schedule
	$(PY) flows/automated_training_flow.py --all --params "$$PARAMS"

start-services: setup ## Start Prefect (PREFECT_HOST:PREFECT_PORT) and MLflow (MLFLOW_HOST:MLFLOW_PORT) servers
	$(SERVICES) start prefect mlflow --params "$$PARAMS" $(ENDPOINTS)

stop-services: stop ## Alias of make stop (the scoring server, the worker and both servers)

services-status: install ## Which of prefect, mlflow, worker, serve are running
	@$(SERVICES) status --params "$$PARAMS"

deploy: install ## Register the cron deployment and its crashed-run automation (needs start-services)
	env $(SERVICES_ENV) $(PY) deployments/setup_deployment.py --params "$$PARAMS"

start-worker: install ## Run a process worker for the pool in the foreground (Ctrl+C stops it)
	$(SERVICES) run worker --params "$$PARAMS"

start-agent: ## Old name: Prefect 3 has workers, not agents; starts a worker
	@echo "Prefect 3 replaced agents with workers: starting a process worker (make start-worker)."
	@$(MAKE) --no-print-directory start-worker

start-worker-bg: install ## Start a process worker in the background (pid and log in .services/)
	$(SERVICES) start worker --params "$$PARAMS"

stop-worker: install ## Stop the background worker
	$(SERVICES) stop worker --params "$$PARAMS"

trigger: install ## Start one deployment run now and wait for it (WAIT=seconds)
	env $(SERVICES_ENV) $(PY) deployments/setup_deployment.py --params "$$PARAMS" --run-now --wait "$$WAIT"

stop: install ## Stop everything: scoring server, worker, MLflow and Prefect servers
	$(SERVICES) stop serve worker mlflow prefect --params "$$PARAMS"

status: install ## Table of batches, metrics, promotions and the champion (JSON=1 for JSON)
	@$(PY) -m retrain_pipeline.cli status --params "$$PARAMS" $(if $(JSON),--json,)

demo: setup ## The full story: services, deployment, worker, a first run now, then every 2 minutes
	$(SERVICES) start prefect mlflow worker --params "$$PARAMS" $(ENDPOINTS)
	$(MAKE) --no-print-directory trigger
	$(SERVICES) start serve --params "$$PARAMS" $(ENDPOINTS)
	@$(MAKE) --no-print-directory status
	@echo
	@echo "Prefect UI:  http://$$PREFECT_HOST:$$PREFECT_PORT   (deployment automated-training/...)"
	@echo "MLflow UI:   http://$$MLFLOW_HOST:$$MLFLOW_PORT   (experiment and registered model)"
	@echo "Champion:    http://$$SERVE_HOST:$$SERVE_PORT/invocations   (follows the champion alias), e.g."
	@echo "  head -3 data/raw/breast_cancer.csv | curl -s -H 'Content-Type: text/csv' --data-binary @- http://$$SERVE_HOST:$$SERVE_PORT/invocations"
	@echo "The worker keeps running: the schedule trains the next batch every 2 minutes"
	@echo "until automation.max_batches, then pauses itself. 'make status' shows progress;"
	@echo "'make stop' stops the scoring server, the worker and both servers."

serve: install ## Serve the champion on SERVE_HOST:SERVE_PORT (127.0.0.1:5050) in the background; follows the alias
	$(SERVICES) start serve --params "$$PARAMS" $(ENDPOINTS)

predict: install ## Score INPUT=file.csv|parquet with the champion (VERSION=V) into OUTPUT (default predictions/)
	@test -n "$$INPUT" || { echo "usage: make predict INPUT=path.csv|parquet [OUTPUT=path] [VERSION=V]" >&2; exit 2; }
	@$(PY) -m retrain_pipeline.cli predict --params "$$PARAMS" --input "$$INPUT" \
	  $(if $(OUTPUT),--output "$$OUTPUT",) $(if $(VERSION),--version "$$VERSION",)

CLUSTER := $(PY) -m retrain_pipeline.cluster

start-cluster: install ## Local trial of several machines under .cluster/: PostgreSQL, servers, DVC remote, 2 workers; writes .cluster/env
	$(CLUSTER) start --params "$$PARAMS" --host "$$CLUSTER_HOST" --postgres-port "$$CLUSTER_POSTGRES_PORT" \
	  --prefect-port "$$CLUSTER_PREFECT_PORT" --mlflow-port "$$CLUSTER_MLFLOW_PORT" --workers "$$CLUSTER_WORKERS"

stop-cluster: install ## Stop everything start-cluster started (workers, their runs, servers, PostgreSQL); keeps the data
	$(CLUSTER) stop --params "$$PARAMS"

cluster-status: install ## Which pieces of the local cluster are running
	@$(CLUSTER) status --params "$$PARAMS"

lineage: install ## Lineage of BATCH=N (run, version, md5s, params, Prefect run) or VERSION=V (JSON=1)
	@test -n "$$BATCH$$VERSION" || { echo "usage: make lineage BATCH=N | VERSION=V" >&2; exit 2; }
	@$(PY) -m retrain_pipeline.cli lineage --params "$$PARAMS" \
	  $(if $(BATCH),--batch "$$BATCH",--version "$$VERSION") $(if $(JSON),--json,)

rollback: install ## Move the champion alias back to VERSION=V, recorded with REASON="..."
	@test -n "$$VERSION" || { echo 'usage: make rollback VERSION=V REASON="why"' >&2; exit 2; }
	$(PY) -m retrain_pipeline.cli rollback --params "$$PARAMS" --version "$$VERSION" \
	  --reason "$${REASON:-rollback requested by $$USER}"

restore-data: install ## Copy the exact merged training data of BATCH=N out of the DVC cache
	@test -n "$$BATCH" || { echo "usage: make restore-data BATCH=N" >&2; exit 2; }
	$(PY) -m retrain_pipeline.cli restore-data --params "$$PARAMS" --batch "$$BATCH"

rebuild-state: install ## Rebuild batch_state.json from MLflow runs and the quarantine (keeps a backup)
	$(PY) -m retrain_pipeline.cli rebuild-state --params "$$PARAMS"

mlflow-ui: install ## MLflow UI over the project's store on MLFLOW_HOST:MLFLOW_PORT (127.0.0.1:5000)
	$(PY) -m retrain_pipeline.cli mlflow-ui --params "$$PARAMS" --host "$$MLFLOW_HOST" --port "$$MLFLOW_PORT"

clean: ## Stop the services, remove generated outputs (keeps data/raw, data/landing, params, .venv)
	@if [ -x "$(PY)" ]; then $(SERVICES) stop serve worker mlflow prefect --params "$$PARAMS"; fi
	rm -rf data/processed data/quarantine mlflow.db mlartifacts mlruns .prefect .services predictions \
	  batch_state.json batch_state.json.* .dvc/cache .dvc/tmp .pytest_cache
	find models metrics -mindepth 1 ! -name .gitkeep -delete 2>/dev/null || true
	@echo "Cleaned generated outputs; data/raw, data/landing and .venv are kept."

test: install ## Run the whole test suite (unit, flow, e2e, integration, robustness, journeys, cluster, bench smoke)
	$(PY) -m pytest -n "$$TEST_WORKERS" --dist loadfile --no-loadscope-reorder --cov --cov-report=term

bench: install ## Benchmark the flow against a plain script (writes BENCHMARKS.md and benchmarks/results/)
	$(PY) -m benchmarks.run_benchmark

bench-smoke: install ## The benchmark on tiny sizes (about 3 minutes: service start-ups dominate)
	$(PY) -m benchmarks.run_benchmark --smoke --out-dir "$$(mktemp -d)"

lint: install ## ruff (lint + format check), mypy, and no file over 500 KB in git (data belongs to DVC)
	$(VENV)/bin/ruff check src flows deployments tests benchmarks
	$(VENV)/bin/ruff format --check src flows deployments tests benchmarks
	$(VENV)/bin/mypy
	@git ls-files -z 2>/dev/null | xargs -0 -r stat -c '%s %n' 2>/dev/null \
	  | awk '$$2 != "poetry.lock" && $$1 > 512000 { print "too large for git (version it with DVC): " $$2 " (" $$1 " bytes)"; bad = 1 } END { exit bad }'
