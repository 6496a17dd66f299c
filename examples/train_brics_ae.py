"""Stage 1: train a BRICS autoencoder (encoder + feature grids + decoder, with a StyleGAN2 discriminator).

    accelerate launch examples/train_brics_ae.py --preset small-32 --output_dir brics-emoji
    torchrun --nproc_per_node 2 examples/train_brics_ae.py --preset small-32 --output_dir brics-emoji

Without data flags it trains on the emoji images shipped with the package; `--help` lists every flag. The training
itself lives in `diffusers_brics.training.autoencoder` (task `AutoencoderStage`, run by the shared
`diffusers_brics.training.loop.Trainer`; the command line in `.autoencoder_args`, settings `AutoencoderTrainingConfig`).
"""

import os
import sys

from diffusers_brics.console import run_command
from diffusers_brics.training.autoencoder import AutoencoderStage, build_model, main  # noqa: F401
from diffusers_brics.training.autoencoder_args import parse_args  # noqa: F401 (the script's names)

if __name__ == "__main__":
    sys.exit(run_command(main, prog=os.path.basename(__file__)))
