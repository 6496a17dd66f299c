"""Stage 1: train a BRICS autoencoder (encoder + feature grids + decoder, with a StyleGAN2 discriminator).

    accelerate launch examples/train_brics_ae.py --preset small-32 --output_dir brics-emoji
    torchrun --nproc_per_node 2 examples/train_brics_ae.py --preset small-32 --output_dir brics-emoji

Without data flags it trains on the emoji images shipped with the package; `--help` lists every flag. The training
itself lives in `diffusers_brics.training.autoencoder` (settings `AutoencoderTrainingConfig`, task
`AutoencoderStage`, run by the shared `diffusers_brics.training.loop.Trainer`).
"""

import os
import sys

from diffusers_brics.console import run_command
from diffusers_brics.training.autoencoder import (  # noqa: F401 (the script's names, as in diffusers' examples)
    AutoencoderStage,
    build_model,
    collate,
    evaluate,
    main,
    parse_args,
)

if __name__ == "__main__":
    sys.exit(run_command(main, prog=os.path.basename(__file__)))
