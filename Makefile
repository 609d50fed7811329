# The README's two commands: `make demo` runs the demo, `make test` runs every check.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help demo test lint typecheck unit core-minimal bench bench-balance bench-fallback bench-chaos models clean

# A bare `make` says what there is to make (the targets below with a `## ` line).
.DEFAULT_GOAL := help

## help            this list
help:
	@echo 'make TARGET, where TARGET is one of:'
	@sed -n 's/^## /  /p' $(MAKEFILE_LIST)

# pip's own progress (what it fetches and builds), without the progress bar
# where CI=true: a log shows the lines, not a bar redrawn in place.
PIP_PROGRESS := $(if $(CI),--progress-bar off,)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "edgemesh needs Python 3.11 or newer"'
	@echo 'installing edgemesh and its dependencies into $(VENV) (first run only, about a minute)...'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(PIP_PROGRESS) -e '.[test]'
	touch $(STAMP)

## demo            three emulated devices and a cloud gateway classify digits (edgemesh demo)
demo: $(STAMP)
	$(BIN)/edgemesh demo

## test            what CI runs: ruff, mypy --strict, the whole test suite (a few minutes)
test: lint typecheck unit

## lint            ruff check and ruff format --check
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## typecheck       mypy --strict over mesh, tests and benchmarks
typecheck: $(STAMP)
	$(BIN)/mypy

## unit            pytest alone
unit: $(STAMP)
	$(BIN)/python -m pytest

# The pure core's tests in a venv holding only numpy, msgpack and the test
# tools, without edgemesh installed (mesh is imported from the checkout): it
# proves that mesh/core and its tests need none of the node's dependencies
# (onnxruntime, aiohttp, zeroconf), which a full venv would hide. The bounds
# are pyproject's.
CORE_VENV := .venv-core
CORE_STAMP := $(CORE_VENV)/.installed-stamp

$(CORE_STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "edgemesh needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CORE_VENV)/bin/python -m pip install --quiet 'numpy>=1.26' 'msgpack>=1.0.7' \
		'cryptography>=42' \
		'pytest>=8.0' 'pytest-asyncio>=0.23' 'pytest-timeout>=2.2' 'hypothesis>=6.100'
	touch $(CORE_STAMP)

## core-minimal    the pure core's tests in a venv with only numpy, msgpack, cryptography (sealing) and pytest
core-minimal: $(CORE_STAMP)
	$(CORE_VENV)/bin/python -m pytest tests/core

## bench           RPC overhead against direct onnxruntime and gRPC
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/rpc_overhead.py

# Work stealing on N = 2..16 emulated devices against Dask: about 15 minutes.
## bench-balance   work stealing on 2..16 emulated devices against Dask (about 15 minutes)
bench-balance: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/balance.py

# Cloud fallback: emulated mesh and gateway at 0.5x..3x the mesh's capacity,
# the fallback decision's cost, HTTP against RPC: about 2 minutes.
## bench-fallback  cloud fallback at 0.5x..3x the mesh's capacity (about 2 minutes)
bench-fallback: $(STAMP)
	$(BIN)/python benchmarks/fallback.py

# Chaos: 4 emulated nodes under steady load, a SIGKILL, SIGTERM or SIGSTOP
# every 5 s; sent / ok / wrong / lost / doubled, detection and recovery:
# about 80 seconds.
## bench-chaos     kills and stops nodes under load; lost, doubled, wrong (about 80 s)
bench-chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos.py

# Rebuild models/ from scikit-learn's bundled digits (build-time dependencies only).
## models          rebuild models/ from scikit-learn's digits
models: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[models]'
	$(BIN)/python models/build.py

## clean           remove the venvs and caches
clean:
	rm -rf $(VENV) $(CORE_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build
