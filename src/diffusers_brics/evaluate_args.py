"""Evaluation of autoencoders and generators on a dataset split, as JSON and images.

    brics evaluate reconstruction --model PATH_OR_HUB_ID [--split held-out] --output DIR
    brics evaluate generation --pipeline PATH_OR_HUB_ID --num_samples 1000 --output DIR
    brics evaluate neighbours --pipeline PATH_OR_HUB_ID --num_samples 8 --output DIR

*reconstruction*: PSNR, SSIM and LPIPS-alex of any of the three autoencoders (`BRICSAutoencoder`, diffusers'
`AutoencoderKL`, `VQModel`) on a split, FID and KID of the reconstructions against the originals, grid usage (BRICS)
or codebook usage (VQModel); ``reconstructions.png`` (originals over reconstructions).

*generation*: FID and KID of a pipeline's samples (a `BRICSPipeline` or any diffusers pipeline that takes
``batch_size``, such as `DDPMPipeline`) against the reference split, beside the real-vs-real baseline at the same
number of images (as many training images against the same reference), and the sampling time per image;
``samples.png``.

*neighbours*: for a few samples, their nearest training images by LPIPS-alex (paper Figure 8), as
``neighbours.png`` (one row per sample: the sample, then its neighbours, nearest first).

The data flags are those of the training scripts, and the held-out split is the one they hold out with the same
``--validation_fraction`` and ``--seed``. Images are streamed in batches: Inception features are kept (2,048 floats
per image), images are not, so 10,000 images fit in memory. FID and KID are torchmetrics' on the standard FID
Inception-v3 features (`diffusers_brics.metrics.InceptionFeatures`; see there for the weights).

(`python -m diffusers_brics.evaluate` is the same command.)
"""

# The command line alone, importable without torch (so that `--help` answers at once); `evaluate` evaluates.

from __future__ import annotations

import argparse

from .console import ArgumentParser
from .files import check_file, check_folder, check_model_reference
from .names import SCHEDULERS


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="brics evaluate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--output", required=True, help="folder for results.json and the images")
        p.add_argument("--dataset_name", help="a Hub dataset id or a saved/loadable dataset folder (default: the "
                       "embedded emoji)")
        p.add_argument("--dataset_config_name", help="the Hub dataset's configuration")
        p.add_argument("--train_data_dir", help="an image folder")
        p.add_argument("--cache_dir", help="the datasets cache")
        p.add_argument("--validation_fraction", type=float, default=0.05,
                       help="share held out where the data has no validation/test split (as the training scripts)")
        p.add_argument("--seed", type=int, default=0, help="the split's seed (as the training scripts), and sampling's")
        p.add_argument("--batch_size", type=int, default=64, help="images per batch")
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        p.add_argument("--inception_weights", help="a prepared FID Inception weight file (see "
                       "diffusers_brics.metrics.inception)")
        return p

    def sampling(p):
        p.add_argument("--pipeline", required=True, help="a pipeline folder or Hub id")
        p.add_argument("--num_inference_steps", type=int, default=100, help="sampling steps")
        p.add_argument("--scheduler", choices=SCHEDULERS, help="swap the pipeline's scheduler")
        return p

    rec = common(commands.add_parser("reconstruction", help="PSNR / SSIM / LPIPS / FID / KID of an autoencoder"))
    rec.add_argument("--model", required=True, help="a BRICSAutoencoder, AutoencoderKL or VQModel folder or Hub id "
                     "(a stage-1 output folder too)")
    rec.add_argument("--subfolder", help="the model's subfolder in a pipeline repo, e.g. 'vae'")
    rec.add_argument("--split", default="held-out", choices=["held-out", "train"], help="the images to reconstruct")
    rec.add_argument("--max_images", type=int, help="evaluate the first N images only")
    rec.add_argument("--no_fid", action="store_true", help="skip FID / KID (and the Inception network)")

    gen = sampling(common(commands.add_parser("generation", help="FID / KID of a pipeline's samples")))
    gen.add_argument("--num_samples", type=int, default=1000, help="samples to draw (and real images compared)")
    gen.add_argument("--reference", default="held-out", choices=["held-out", "train"], help="the real images")
    gen.add_argument("--max_reference_images", type=int, help="use the first N reference images only (default: all)")
    gen.add_argument("--no_baseline", action="store_true", help="skip the real-vs-real baseline")

    nn = sampling(common(commands.add_parser("neighbours", help="nearest training images of a few samples by LPIPS")))
    nn.add_argument("--num_samples", type=int, default=8, help="samples (rows of the grid)")
    nn.add_argument("--k", type=int, default=5, help="neighbours per sample")
    return parser


def check_inputs(args: argparse.Namespace) -> None:
    """The files and folders the command reads exist, and its output is not a file: checked before the Inception
    network or the model loads."""
    model = ("--model", args.model) if args.command == "reconstruction" else ("--pipeline", args.pipeline)
    check_model_reference(model[1], model[0])
    if args.train_data_dir is not None:
        check_folder(args.train_data_dir, "--train_data_dir")
    if args.inception_weights is not None:
        check_file(args.inception_weights, "--inception_weights")
