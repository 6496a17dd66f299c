#!/usr/bin/env bash
# The GPU check, in one go on a CUDA machine without a network (DEVELOPERS.md): install the wheels of shared/wheels
# (ci/build-wheels.sh), run the CUDA tests and the GPU benchmarks. Under 8 minutes (GPU_CHECK_BUDGET seconds for the
# steps, default 450); every output is a file under $OUT (default gpu_check_out/), at most eight of them:
#
#   summary.txt                   versions, then each step's exit status and seconds (124: its time limit)
#   gpu_check.log                 every step's output
#   junit_cuda.xml                pytest -k "cuda or triton or tcnn" -m "not slow and not benchmark and not browser"
#                                 over tests/ but tests/test_grid_triton.py, which the next one runs in full
#   junit_triton.xml              tests/test_grid_triton.py on the real kernels (no TRITON_INTERPRET)
#   grid_backends/results.json    benchmarks/grid_backend_benchmark.py: torch against Triton, equality and time
#   grid_backends/report.md
#   decode.json                   benchmarks/decode_benchmark.py --compile: decode latency against AutoencoderKL
#   train_steps.json              benchmarks/gpu_train_steps.py: bf16 training steps against AutoencoderKL (SD)
#
# A step that fails or runs out of time is recorded and the next one runs. The code under test is this checkout's
# src/ (PYTHONPATH); the installed wheels provide its dependencies.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHON="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
rm -rf "$OUT/junit_cuda.xml" "$OUT/junit_triton.xml" "$OUT/grid_backends" "$OUT/decode.json" "$OUT/train_steps.json" \
    "$OUT/gpu_check.tar.gz"  # a previous run's
: > "$LOG"
: > "$SUMMARY"
START=$SECONDS
FAILED=()
unset TRITON_INTERPRET  # the Triton kernels run on the GPU, not under the interpreter
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# step NAME SECONDS COMMAND...: run COMMAND within SECONDS (and the budget left), output to the log, status to
# the summary.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        printf '%-13s skipped: the %ss budget is spent\n' "$name" "$BUDGET" >> "$SUMMARY"
        FAILED+=("$name")
        return
    fi
    printf '\n===== %s (limit %ss): %s\n' "$name" "$limit" "$*" >> "$LOG"
    local t0=$SECONDS rc note=""
    if declare -F "$1" > /dev/null; then  # a function of this script
        timeout --kill-after=10 "$limit" bash -c "$(declare -f "$1"); $*" >> "$LOG" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    fi
    rc=$?
    ((rc == 124 || rc == 137)) && note="  (time limit)"
    printf '%-13s rc %3d  %4ds%s\n' "$name" "$rc" $((SECONDS - t0)) "$note" >> "$SUMMARY"
    ((rc == 0)) || FAILED+=("$name")
}

# (1) the package and the dependencies the machine lacks, from shared/wheels; if pip cannot resolve them against what
# is installed, the wheels alone, without their dependencies.
install() {
    "$PYTHON" -m pip install --no-index --find-links shared/wheels diffusers-brics && return 0
    echo "--- resolving failed: installing the wheels of shared/wheels without their dependencies"
    "$PYTHON" -m pip install --no-index --no-deps shared/wheels/*.whl
}

# name and version lines of the GPU, Python and the packages the check uses
versions() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu /'
    "$PYTHON" - <<'EOF'
import importlib.metadata as metadata
import platform
import sys

import torch

print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for name in ("triton", "diffusers", "diffusers-brics", "accelerate", "huggingface_hub", "safetensors",
             "torchmetrics", "pillow", "pytest", "tinycudann"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
import diffusers_brics

print("diffusers_brics from", diffusers_brics.__file__)
EOF
}

if [ -d shared/wheels ]; then
    step install 45 install
    grep -q '^--- resolving failed' "$LOG" &&
        echo "install: pip could not resolve against the installed packages; wheels installed with --no-deps" >> "$SUMMARY"
else
    echo "install       skipped: no shared/wheels (run ci/build-wheels.sh first)" >> "$SUMMARY"
    FAILED+=(install)
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
timeout 60 bash -c "$(declare -f versions); versions" >> "$SUMMARY" 2>&1
{ printf '\n===== nvidia-smi\n'; timeout 20 nvidia-smi; printf '\n===== pip list\n'; timeout 30 "$PYTHON" -m pip list; } \
    >> "$LOG" 2>&1

# (2) the tests that need a GPU (those of tests/test_grid_triton.py, all of which -k selects, run next), then
# tests/test_grid_triton.py in full on the real kernels
step tests_cuda 70 "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow and not benchmark and not browser" \
    -k "cuda or triton or tcnn" --ignore=tests/test_grid_triton.py --continue-on-collection-errors -rs \
    --junitxml "$OUT/junit_cuda.xml" tests/
step tests_triton 90 "$PYTHON" -m pytest -q -p no:cacheprovider -rs --junitxml "$OUT/junit_triton.xml" \
    tests/test_grid_triton.py
# (3) the feature-grid backends: torch against Triton (equality, forward and forward + backward)
step grid_backends 60 "$PYTHON" benchmarks/grid_backend_benchmark.py --device cuda --results_dir "$OUT/grid_backends"
# (4) decode latency of paper-64x64x4 against AutoencoderKL, eager and compiled
step decode 80 "$PYTHON" benchmarks/decode_benchmark.py --device cuda --compile --markdown --output "$OUT/decode.json"
# (5) bf16 training steps against AutoencoderKL in Stable Diffusion's layout, eager and compiled: the rest of the
# budget (the JSON keeps the runs finished if it runs out)
step train_steps "$BUDGET" "$PYTHON" benchmarks/gpu_train_steps.py --output "$OUT/train_steps.json"

printf 'total %ds; %s\n' $((SECONDS - START)) \
    "$( ((${#FAILED[@]})) && echo "not passed: ${FAILED[*]}" || echo "all steps passed")" >> "$SUMMARY"
# at most eight files, of at most 16 MiB, come back: the log keeps its end, and any surplus is packed into one file
if [ "$(stat -c %s "$LOG")" -gt $((15 * 1024 * 1024)) ]; then
    tail -c $((15 * 1024 * 1024)) "$LOG" > "$LOG.tmp" && mv "$LOG.tmp" "$LOG"
fi
if [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
    tar -C "$OUT" -czf /tmp/gpu_check.tar.gz --exclude ./summary.txt . &&
        find "$OUT" -mindepth 1 ! -name summary.txt -delete && mv /tmp/gpu_check.tar.gz "$OUT/" &&
        echo "more than eight output files: all but this summary packed into gpu_check.tar.gz" >> "$SUMMARY"
fi
cat "$SUMMARY"
((${#FAILED[@]} == 0))
