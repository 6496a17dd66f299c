#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it into a new virtual environment (no source tree on the
# path), and run the `brics` command: info, a few steps of both trainings (stage 1 through `accelerate launch -m`; stage 2
# unconditional and text-to-image), and sampling and editing with the trained pipelines.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps "$ROOT" -w "$WORK/dist"
WHEEL="$(ls "$WORK"/dist/diffusers_brics-*.whl)"
echo "built $(basename "$WHEEL")"
"$PYTHON" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" $TORCH
"${PIP[@]}" "$WHEEL[train]"
export PATH="$WORK/venv/bin:$PATH" OMP_NUM_THREADS=2
cd "$WORK"  # nothing of the source tree is importable from here

python -c "import diffusers_brics, sys; assert '$ROOT' not in diffusers_brics.__file__, diffusers_brics.__file__"
brics --version
brics info tiny > info.txt && head -n 3 info.txt
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no -m diffusers_brics \
    train-ae --preset tiny --output_dir ae --max_train_steps 3 --train_batch_size 4 --perceptual_weight 0 \
    --gan_weight 0 --max_eval_images 16 --num_validation_images 2 --report_to none
brics train-diffusion --autoencoder ae --output_dir ldm --unet_preset tiny --max_train_steps 3 --train_batch_size 8 \
    --num_validation_images 2 --num_inference_steps 2 --report_to none
brics sample --model ldm --num_images 2 --num_inference_steps 2 --output_dir samples
test -f ae/autoencoder/config.json -a -f ldm/model_index.json -a -f samples/sample_001.png -a -f samples/grid.png
brics info --model ldm > info-model.txt && grep -q "BRICSAutoencoder ldm" info-model.txt
brics train-diffusion --autoencoder ae --output_dir t2i --caption_column caption --text_encoder_preset tiny \
    --train_text_encoder --unet_preset tiny --max_train_steps 2 --train_batch_size 8 --num_validation_images 2 \
    --num_inference_steps 2 --report_to none
brics sample --model t2i --prompt "grinning, smileys and emotion" --num_images 2 --num_inference_steps 2 \
    --output_dir t2i-samples
brics sample --model t2i --prompt "red apple, food and drink" --image samples/sample_000.png --strength 0.5 \
    --num_images 1 --num_inference_steps 2 --output_dir t2i-edited
test -f t2i/text_encoder/config.json -a -f t2i/tokenizer/tokenizer.json -a -f t2i-samples/sample_001.png
test -f t2i-edited/sample_000.png
if brics sample --model ae --num_images 1 2> error.txt; then echo "sampling an autoencoder should fail"; exit 1; fi
grep -q "brics: error: " error.txt && ! grep -q Traceback error.txt
echo "wheel check passed: brics info, train-ae (accelerate launch -m), train-diffusion (unconditional, text), sample" \
    "(noise, prompt, image-to-image), one-line errors"
