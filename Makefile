# Two commands set everything up on a fresh machine (see README.md):
#   make run    build/refresh .venv, then run the main job on the built-in default
#   make test   build/refresh .venv, then run the whole test suite (what CI runs)
# and one for every edit:
#   make test-fast   the unit tier only (tests/unit, minutes)
#
# GPU users: override the torch pin, e.g.
#   make run TORCH='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
DEEPSPEED   ?= deepspeed>=0.15
PYTEST_ARGS ?=
# make test runs the test files on this many pytest-xdist workers (each file whole on one,
# so a module's fixtures are built once); 1 runs them in this process, one after another
TEST_WORKERS ?= 2

# Quiet, predictable CPU threads (small matmuls slow down 10-20x with busy-waiting OpenMP
# threads), no hub downloads, no telemetry.
export OMP_WAIT_POLICY ?= PASSIVE
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_API_URL ?= http://127.0.0.1:4200/api
# a flow run without a server starts an ephemeral one, whose first start migrates sqlite:
# ~20 s on an idle 2-core machine, Prefect's default limit
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
# dvc runs each stage as `mmrm stage ...`: the venv's commands come first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

BIN   := $(VENV)/bin
STAMP := $(VENV)/.mmrm-installed

.PHONY: venv run test test-fast clean-venv mlflow-ui prefect-up prefect-run services-down

# torch first, pinned, so that nothing later pulls a CUDA build; DeepSpeed last, built
# against that torch (it needs torch at build time, hence --no-build-isolation).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev,rl]"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-build-isolation "$(DEEPSPEED)"
	touch $@

venv: $(STAMP)

# The main job on the built-in default: the DVC pipeline (dvc.yaml over params.yaml) -
# the synthetic shortcut benchmark in the released formats, converted by the real converters;
# the tiny grounded base (built once, cached by DVC); per environment a text-only proxy, a
# standard RM, a group-balanced RM and their weight interpolation (the default by the shortcut
# study's rule); the cross-distribution matrix; best-of-N scoring of a sample with the
# champion on Ray. MLflow records it all in ./mlflow.db.
run: $(STAMP)
	$(BIN)/dvc repro
	@echo
	@cat runs/pipeline/matrix/matrix.md
	@echo
	@echo "matrix:   runs/pipeline/matrix/{matrix.md,matrix.json,shortcut.json,champion.json}"
	@echo "metrics:  metrics/{pipeline.json,best_of_n.json,matrix.png} (dvc metrics show / diff)"
	@echo "scores:   runs/pipeline/scores/scores.jsonl (best-of-N sample, champion RM)"
	@echo "MLflow:   make mlflow-ui, then http://127.0.0.1:5000 (experiment mmrm)"
	@echo "Prefect:  make prefect-up, then make prefect-run (prefect deployment run 'mmrm-pipeline/builtin')"

# Local servers on 127.0.0.1, each stopped by its own pid (scripts/services.py).
mlflow-ui: $(STAMP)
	$(BIN)/python scripts/services.py start mlflow

prefect-up: $(STAMP)
	$(BIN)/python scripts/services.py start prefect

# Trigger the served pipeline deployment on the local server and wait for it.
prefect-run: $(STAMP)
	$(BIN)/prefect deployment run 'mmrm-pipeline/builtin' --watch

services-down:
	$(BIN)/python scripts/services.py stop all

# every tier (tests/{unit,data,integration} and the studies' tests), a file per worker at a
# time with one torch thread each; the 25 slowest listed
test: export OMP_NUM_THREADS := 1
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit tests/unit $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
