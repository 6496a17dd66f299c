"""The main job: stage 1, stage 2 and an evaluation in one command, on the embedded emoji by default.

    brics quickstart [--output_dir outputs/quickstart] [--autoencoder_steps 1500] [--diffusion_steps 1000]

Phases, each skipped when a previous run finished it (an interrupted training resumes from its last checkpoint):

1. *weights*: the LPIPS (AlexNet) and FID Inception-v3 weights the metrics need, prepared once into the cache;
2. *autoencoder*: `brics train-ae` trains a BRICS autoencoder (``--preset``) into ``runs/autoencoder/``;
3. *diffusion*: `brics train-diffusion` trains a UNet on its key codes into ``runs/diffusion/``;
4. *evaluation*: writes into ``--output_dir``

   - ``pipeline/``: the `BRICSPipeline` (``BRICSPipeline.from_pretrained("outputs/quickstart/pipeline")``),
   - ``reconstructions.png``: held-out originals over their reconstructions,
   - ``samples.png``: a grid of samples,
   - ``interpolation.png``: per row, key codes interpolated between two held-out images, decoded,
   - ``metrics.json``: held-out PSNR / SSIM / LPIPS and grid usage (stage 1's final evaluation), KID and FID of
     ``--num_samples`` samples against the held-out images, and timings.

Both trainings run a fixed number of steps with this package's short-run recipes (``--training_recipe auto``: the
``small`` stage-1 recipe for the small presets, the ``short`` stage-2 recipe), so that every machine trains the same
models from the same seed and reports the same figures, up to floating-point noise; the defaults take about 14 minutes
on 2 CPU cores (README "Quickstart"). ``--autoencoder_seconds`` / ``--diffusion_seconds`` stop a training earlier
when its time is spent (the learning-rate schedule still spans the steps). With a GPU, train longer, a larger model
(``--preset small-64``, ``--unet_preset``) or sample more; anything else goes straight to a training script with
``--autoencoder_args`` / ``--diffusion_args`` (one quoted string each).
"""

# The command line alone, importable without torch (so that `--help` answers at once); `quickstart` runs the job.

from __future__ import annotations

import argparse

from .console import ArgumentParser
from .files import check_folder
from .names import AUTOENCODER_PRESETS, SCHEDULERS, UNET_PRESETS
from .training.flags import positive_float, positive_int

# The main job's training steps (batches of 16 and 32): the README's figures are what they give.
AUTOENCODER_STEPS = 1500
DIFFUSION_STEPS = 1000


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="brics quickstart", description=__doc__)
    arg = p.add_argument
    arg("--output_dir", default="outputs/quickstart", help="where the runs and results go")
    arg("--preset", default="small-32", choices=AUTOENCODER_PRESETS, help="the autoencoder")
    arg("--autoencoder_steps", type=positive_int, default=AUTOENCODER_STEPS, help="stage-1 training steps")
    arg("--diffusion_steps", type=positive_int, default=DIFFUSION_STEPS, help="stage-2 training steps")
    arg("--autoencoder_seconds", type=positive_float, default=None,
        help="stop stage 1 after this much training time, even before --autoencoder_steps (default: no limit)")
    arg("--diffusion_seconds", type=positive_float, default=None,
        help="stop stage 2 after this much training time, even before --diffusion_steps (default: no limit)")
    arg("--unet_preset", default="small", choices=UNET_PRESETS, help="the UNet")
    arg("--num_samples", type=positive_int, default=256,
        help="samples for KID / FID against the held-out images")
    arg("--real_baseline", action="store_true",
        help="also measure the real-vs-real floor of KID / FID (as many training images as samples against the same "
        "held-out images; about 35 s more on 2 CPU cores)")
    arg("--num_inference_steps", type=positive_int, default=50, help="sampling steps")
    arg("--scheduler", default="ddim", choices=SCHEDULERS, help="the sampler")
    arg("--seed", type=int, default=0, help="training and sampling seed")
    arg("--dataset_name", help="train on a Hub dataset or saved dataset folder instead of the embedded emoji")
    arg("--train_data_dir", help="train on an image folder instead of the embedded emoji")
    arg("--autoencoder_args", default="", help="more stage-1 flags, one quoted string (see `brics train-ae --help`)")
    arg("--diffusion_args", default="", help="more stage-2 flags, one quoted string (see `brics train-diffusion "
        "--help`)")
    arg("--device", default=None, help="device of the evaluation (default: cuda if available, else cpu)")
    return p


def check_inputs(args: argparse.Namespace) -> None:
    """What the job reads exists, before the metrics' weights are prepared and the trainings start."""
    if args.train_data_dir is not None:
        check_folder(args.train_data_dir, "--train_data_dir")
