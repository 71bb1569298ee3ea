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

run: $(STAMP)
	$(BIN)/mmrm sample data/sample

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
