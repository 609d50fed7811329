# The README's two commands: `make demo` runs the demo, `make test` runs every check.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit bench bench-balance bench-fallback models clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "edgemesh needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgemesh demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/rpc_overhead.py

# Work stealing on N = 2..16 emulated devices against Dask: about 15 minutes.
bench-balance: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/balance.py

# Cloud fallback: emulated mesh and gateway at 0.5x..3x the mesh's capacity,
# the fallback decision's cost, HTTP against RPC: about 2 minutes.
bench-fallback: $(STAMP)
	$(BIN)/python benchmarks/fallback.py

# Rebuild models/ from scikit-learn's bundled digits (build-time dependencies only).
models: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[models]'
	$(BIN)/python models/build.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build
