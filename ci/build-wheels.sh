#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh, built here into shared/wheels/ (git-ignored; it travels with the repository
# to the GPU machine, which has no network).
#
#   bash ci/build-wheels.sh                 # then, on the GPU machine: bash benchmarks/gpu_check.sh
#   EXTRA_WHEELS="name==version ..." bash ci/build-wheels.sh
#
# The GPU machine's Python (3.12) has PyTorch, Triton, accelerate, transformers, huggingface_hub (1.33, within
# diffusers 0.42.1's >=1.32,<3), safetensors, torchmetrics, pillow, pytest and hypothesis, but not diffusers nor its
# importlib_metadata (with zipp and lazy-importer). The folder holds this package's wheel and those, at the versions
# of this checkout's environment (PYTHON, default .venv/bin/python): about 20 MiB, 14 of them the emoji images this
# package's wheel embeds. EXTRA_WHEELS (name==version ...) adds wheels for GPU_PYTHON on x86-64 Linux: name only what
# the machine lacks, with whatever of their own needs it lacks too.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
DEST="${DEST:-$ROOT/shared/wheels}"
GPU_PYTHON="${GPU_PYTHON:-3.12}"
PIP=("$PYTHON" -m pip --disable-pip-version-check)

version() { "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

rm -rf "$DEST"
mkdir -p "$DEST"
"${PIP[@]}" wheel --quiet --no-deps "$ROOT" -w "$DEST"
# shellcheck disable=SC2086
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" \
    "diffusers==$(version diffusers)" "importlib-metadata==$(version importlib-metadata)" "zipp==$(version zipp)" \
    "lazy-importer==$(version lazy-importer)" \
    ${EXTRA_WHEELS:-}

echo "$DEST ($(du -sh "$DEST" | cut -f1)):"
ls -1 "$DEST"
