"""Stage 2: train a UNet2DModel to generate BRICS key codes (latent diffusion on key codes).

    accelerate launch examples/train_brics_diffusion.py --autoencoder brics-emoji/autoencoder \
        --output_dir brics-emoji-ldm

The training images are encoded once by the trained autoencoder and the key codes cached in ``OUTPUT_DIR/key_codes``;
the whole `BRICSPipeline` is saved to ``OUTPUT_DIR`` at the end. `--help` lists every flag. The training itself
lives in `diffusers_brics.training.diffusion` (task `DiffusionStage`, run by the shared
`diffusers_brics.training.loop.Trainer`; the command line in `.diffusion_args`, settings `DiffusionTrainingConfig`).
"""

import os
import sys

from diffusers_brics.console import run_command
from diffusers_brics.training.diffusion import DiffusionStage, main  # noqa: F401 (the script's names)
from diffusers_brics.training.diffusion_args import parse_args  # noqa: F401 (as in diffusers' examples)
from diffusers_brics.training.latent_space import load_autoencoder  # noqa: F401
from diffusers_brics.training.unet import build_unet  # noqa: F401

if __name__ == "__main__":
    sys.exit(run_command(main, prog=os.path.basename(__file__)))
