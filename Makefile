# Quickstart targets: `make demo` (the main job) and `make test` (the test suite).
# Both create ./.venv and install the package into it; set TORCH to choose the PyTorch build
# (for example TORCH="torch --index-url https://download.pytorch.org/whl/cu124" on a GPU machine).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
# The main job's training steps (stage 1 and stage 2; empty: the quickstart's defaults); raise them on a GPU machine.
AE_STEPS ?=
DIFFUSION_STEPS ?=

.PHONY: install demo test test-slow test-benchmarks test-minimum test-wheel test-browser lint benchmark docs

# The default suite (README, DEVELOPERS.md): neither the `slow` tests (`make test-slow`) nor the benchmark and browser
# ones (their own targets).
DEFAULT_TESTS := not slow and not benchmark and not browser
# pytest-xdist: two workers, each computing on one thread (OMP_NUM_THREADS here, torch.set_num_threads in
# tests/conftest.py), so that they share two cores without contention. A module's tests may run on either worker,
# but those of an `xdist_group` stay together (its module fixture is built once). XDIST= runs them in one process.
XDIST ?= -n 2 --dist loadgroup
# ruff, at the version whose rules pyproject.toml configures
RUFF ?= ruff==0.16.9

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed

# The main job needs only the training extra (no test or benchmark tools: a shorter first install).
$(VENV)/.installed-train: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[train]"
	touch $@

# The main job (`brics quickstart`): a BRICS autoencoder, then a diffusion UNet on its key codes, trained on the
# embedded emoji, then evaluated: outputs/quickstart/{pipeline/, reconstructions.png, samples.png, interpolation.png,
# metrics.json}. Run again, it reuses the finished phases.
demo: $(VENV)/.installed-train
	$(PY) -m diffusers_brics quickstart --output_dir outputs/quickstart \
		$(if $(AE_STEPS),--autoencoder_steps $(AE_STEPS)) $(if $(DIFFUSION_STEPS),--diffusion_steps $(DIFFUSION_STEPS))

test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "$(DEFAULT_TESTS)" $(XDIST) --durations=20

# The `slow` tests: the training scripts' two-process runs (torchrun, accelerate launch) and their runs stopped by
# signals (tests/test_interruptions.py), and a few more long subprocess runs; each has an in-process counterpart in
# the default suite (DEVELOPERS.md lists them).
test-slow: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "slow and not benchmark and not browser" $(XDIST) --durations=20

# The benchmark scripts end to end in their tiny modes (a few minutes).
test-benchmarks: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m benchmark $(XDIST) --durations=20

# The same suite with every dependency at the floor pyproject.toml admits (ci/minimum-versions.txt), in .venv-min.
.venv-min/.installed: pyproject.toml Makefile ci/minimum-versions.txt
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	.venv-min/bin/python -m pip install --quiet --disable-pip-version-check -c ci/minimum-versions.txt -e ".[test]"
	touch $@

test-minimum: .venv-min/.installed
	OMP_NUM_THREADS=1 .venv-min/bin/python -m pytest -q -m "$(DEFAULT_TESTS)" $(XDIST)

# The Space (space/app.py) end to end in a headless Chromium (Debian's chromium, installed as root).
test-browser: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[demo]"
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(PY) -m pytest -q -m browser

# ruff's checks (pyproject.toml) on every Python file, and its formatting on the files already formatted
# (ci/format-files.txt: keep a file there once `ruff format` has formatted it).
lint: install
	$(PY) -m pip install --quiet --disable-pip-version-check $(RUFF)
	$(PY) -m ruff check src tests benchmarks examples scripts space
	grep -v '^#' ci/format-files.txt | xargs $(PY) -m ruff format --check

# The documentation site (mkdocs.yml, docs/) into site/: --strict fails on any warning (a broken link, a docstring the
# API reference cannot read).
docs: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The built wheel in a new virtual environment: `brics info`, a few training steps of both stages, `brics sample`.
test-wheel:
	bash ci/test-wheel.sh

benchmark: install
	$(PY) -m diffusers_brics.summary paper-64x64x4
	$(PY) benchmarks/decode_benchmark.py --markdown
