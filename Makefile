# Quickstart targets: `make demo` (the main job) and `make test` (the test suite).
# Both create ./.venv and install the package into it; set TORCH to choose the PyTorch build
# (for example TORCH="torch --index-url https://download.pytorch.org/whl/cu124" on a GPU machine).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install demo test benchmark

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m diffusers_brics.summary paper-64x64x4
	$(PY) benchmarks/decode_benchmark.py

test: install
	$(PY) -m pytest -q -m "not slow"

benchmark: install
	$(PY) benchmarks/decode_benchmark.py --markdown
