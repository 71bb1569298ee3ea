# Two commands set everything up on a fresh machine (see README.md):
#   make run    build/refresh .venv, then run the main job on the built-in default
#   make test   build/refresh .venv, then run the test suite
#
# GPU users: override the torch pin, e.g.
#   make run TORCH='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
DEEPSPEED   ?= deepspeed>=0.15
PYTEST_ARGS ?=

# Quiet, predictable CPU threads (small matmuls slow down 10-20x with busy-waiting OpenMP
# threads), no hub downloads, no telemetry.
export OMP_WAIT_POLICY ?= PASSIVE
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_AUTH_MODE := disabled

BIN   := $(VENV)/bin
STAMP := $(VENV)/.mmrm-installed

.PHONY: venv run test clean-venv

# torch first, pinned, so that nothing later pulls a CUDA build; DeepSpeed last, built
# against that torch (it needs torch at build time, hence --no-build-isolation).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-build-isolation "$(DEEPSPEED)"
	touch $@

venv: $(STAMP)

# The main job on the built-in default: the synthetic shortcut benchmark, the tiny grounded
# base (cached: built once), a standard RM and a shortcut-aware (two-stage SFC) RM trained on
# the POVID-like environment and tested on all three.
BASE := data/base/tiny/config.json

$(BASE): | $(STAMP)
	$(BIN)/mmrm base pretrain data/base/tiny

run: $(STAMP) $(BASE)
	$(BIN)/mmrm benchmark make data/benchmark
	$(BIN)/mmrm train configs/tiny/none.yaml --no-resume
	$(BIN)/mmrm train-proxy configs/tiny/sfc_two_stage.yaml
	$(BIN)/mmrm train configs/tiny/sfc_two_stage.yaml --no-resume
	@echo "results: runs/tiny/povid/{none,sfc_two_stage}/result.json (per-step logs: metrics.jsonl)"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
