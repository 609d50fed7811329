# The README's two commands: `make demo` runs the demo, `make test` runs every check.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit core-minimal bench bench-balance bench-fallback bench-chaos models clean

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
		'pytest>=8.0' 'pytest-asyncio>=0.23' 'pytest-timeout>=2.2' 'hypothesis>=6.100'
	touch $(CORE_STAMP)

core-minimal: $(CORE_STAMP)
	$(CORE_VENV)/bin/python -m pytest tests/core

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

# Chaos: 4 emulated nodes under steady load, a SIGKILL, SIGTERM or SIGSTOP
# every 5 s; sent / ok / wrong / lost / doubled, detection and recovery:
# about 80 seconds.
bench-chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos.py

# Rebuild models/ from scikit-learn's bundled digits (build-time dependencies only).
models: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[models]'
	$(BIN)/python models/build.py

clean:
	rm -rf $(VENV) $(CORE_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build
