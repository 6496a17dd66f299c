"""Stage 2: train a UNet2DModel to generate BRICS key codes (latent diffusion on key codes).

    accelerate launch examples/train_brics_diffusion.py --autoencoder brics-emoji/autoencoder \
        --output_dir brics-emoji-ldm

The training images are encoded once by the trained autoencoder and the key codes cached in ``OUTPUT_DIR/key_codes``;
the whole `BRICSPipeline` is saved to ``OUTPUT_DIR`` at the end. `--help` lists every flag. The training itself
lives in `diffusers_brics.training.diffusion` (settings `DiffusionTrainingConfig`, task `DiffusionStage`, run by the
shared `diffusers_brics.training.loop.Trainer`).
"""

import os
import sys

from diffusers_brics.console import run_command
from diffusers_brics.training.diffusion import (  # noqa: F401 (the script's names, as in diffusers' examples)
    DiffusionStage,
    build_unet,
    load_autoencoder,
    main,
    parse_args,
)

if __name__ == "__main__":
    sys.exit(run_command(main, prog=os.path.basename(__file__)))
