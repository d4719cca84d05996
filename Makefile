# Two entry points on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: venv sysdeps demo test lint unit integration fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(BIN)/python

## demo: install the package with all extras and run the end-to-end demo on a local sqlite store
demo: $(BIN)/python
	$(PIP) install --quiet -e ".[all]"
	$(BIN)/mlflow-safeflavor demo --dir demo-mlruns

## sysdeps: the Debian packages the tests need (Chromium, PostgreSQL), installed when missing
sysdeps:
	./scripts/system-deps.sh

## test: install dev dependencies and Debian packages, lint, run unit and integration tests, then
## the second MLflow leg (test-mlflow-next)
test: $(BIN)/python sysdeps
	$(PIP) install --quiet -e ".[dev]"
	$(BIN)/ruff check mlflow_safeflavor tests integration benchmarks
	$(BIN)/python -m pytest tests integration
	$(MAKE) test-mlflow-next

## lint: ruff (configuration in pyproject.toml)
lint: $(BIN)/python
	$(BIN)/ruff check mlflow_safeflavor tests integration benchmarks

unit: $(BIN)/python
	$(BIN)/python -m pytest tests

integration: $(BIN)/python
	$(BIN)/python -m pytest integration

## test-mlflow-next: the second CI leg — a subset (compat adapters; hardened mode: loaders, serve,
## Spark, promote + gate, convert, web page API; registry gate and webhook) on the newest MLflow
## release in its own venv (.venv-mlflow-$(MLFLOW_NEXT)); scripts/mlflow-leg.sh has the details
# The other end of the supported range from what the main venv resolved: 3.18.0 while the pin
# resolves to 3.17.x (mlflow-tracing 3.18 missing from the index), the 3.17 floor once it resolves 3.18.
MLFLOW_NEXT ?= $(shell $(BIN)/python -c "import importlib.metadata as m; print('3.17.2' if m.version('mlflow').startswith('3.18') else '3.18.0')" 2>/dev/null || echo 3.18.0)
.PHONY: test-mlflow-next
test-mlflow-next: sysdeps
	PYTHON=$(PYTHON) ./scripts/mlflow-leg.sh $(MLFLOW_NEXT)

## fuzz: the exploring profile: a random seed, FUZZ_PER_CODEC mutated models per codec (default
## 10000), failures appended to tests/fuzz_corpus/ (which `make test` replays)
fuzz: $(BIN)/python
	$(PIP) install --quiet -e ".[dev]"
	$(BIN)/python tests/fuzz_campaign.py --per-codec $${FUZZ_PER_CODEC:-10000} --jobs $${FUZZ_JOBS:-2} $${FUZZ_SEED:+--seed $$FUZZ_SEED}

## bench: print the save/load/predict comparison table (not a test)
bench: $(BIN)/python
	$(PIP) install --quiet -e ".[all]"
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) demo-mlruns build dist *.egg-info .pytest_cache .hypothesis
