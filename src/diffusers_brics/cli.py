"""The `brics` command line (also ``python -m diffusers_brics``).

    brics quickstart                                   train both stages on the embedded emoji, evaluate, save
    brics info PRESET | --model M                      parameters and decode GMACs of a configuration or a model
    brics reconstruct IMAGE... --model M               images through the autoencoder, with their key codes
    brics encode IMAGE... --model M --output Z.safetensors
    brics decode Z.safetensors --model M               key codes back to images
    brics sample --model M --num_images 8 --seed 0 [--num_inference_steps 50] --scheduler ddim
    brics sample --model M --prompt TEXT               a text-to-image pipeline (--guidance_scale, default 3)
    brics sample --model M --image IN.png --strength 0.6 [--mask MASK.png]     image-to-image, inpainting
    brics interpolate A B --model M --steps 8          decoded key codes between two images
    brics examples --output_dir DIR [--resolution 64]  held-out emoji as PNG files, to try the commands above on
    brics evaluate reconstruction|generation|neighbours ...
    brics train-ae ...                                 stage 1 (`accelerate launch -m diffusers_brics train-ae ...`)
    brics train-diffusion ...                          stage 2

``--model`` takes a local folder or a Hub repo id: a pipeline, an autoencoder, or a training output folder. Each
command has ``--help``. Flags are spelled with underscores, as in diffusers' training scripts (``--output_dir``);
the hyphen spelling (``--output-dir``) is read as the same flag. A command checks its input files before it loads
a model. Its outputs never replace one of its inputs, nor a file already there unless ``--overwrite`` is given; two
inputs of the same name (``a/x.png b/x.png``) give ``x.png`` and ``x-1.png``. An error is one line on stderr and
exit status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable

# Light imports only: `brics --help` and every command's `--help` answer without importing torch or diffusers (each
# command, in `cli_commands`, imports what it needs when it runs; tests/test_cli.py checks).
from .console import DEBUG_FLAG, ArgumentParser, canonical_flags, document_debug, run_command
from .data.emoji import RESOLUTIONS
from .cli_commands import decode, encode, examples, interpolate, reconstruct, sample
from .files import OVERWRITE_HELP
from .names import SCHEDULERS
from .training.flags import non_negative_float, positive_int, unit_interval

# Commands whose module has its own command line: name -> (module, one-line description). The parser comes from
# the light MODULE_args module where there is one (see `delegated_parser`).
DELEGATED = {
    "quickstart": ("diffusers_brics.quickstart", "the main job: both trainings on the embedded emoji, evaluation"),
    "info": ("diffusers_brics.summary", "parameters and decode GMACs of a preset or a model (the paper's counts "
             "beside them)"),
    "evaluate": ("diffusers_brics.evaluate", "PSNR / SSIM / LPIPS / FID / KID of an autoencoder or pipeline"),
    "train-ae": ("diffusers_brics.training.autoencoder", "stage 1: train a BRICS autoencoder (or a peer)"),
    "train-diffusion": ("diffusers_brics.training.diffusion", "stage 2: train a UNet on key codes"),
}


def model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a pipeline, autoencoder or training output: local folder or "
                        "Hub repo id")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 (the two ends included), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="brics", description=__doc__)
    parser.add_argument("--version", action="version", version=f"diffusers-brics {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, description) in DELEGATED.items():
        commands.add_parser(name, help=description + f" (`brics {name} --help`)", add_help=False)

    def command(name: str, fn: Callable, description: str, usage: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=description, usage=usage,
                                  description=f"{description}.\n\n{inspect.cleandoc(fn.__doc__)}")
        sub.set_defaults(run=fn)
        return sub

    p = command("reconstruct", reconstruct, "images through the autoencoder, with pictures of their key codes")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model_arguments(p)
    p.add_argument("--output_dir", default="reconstructions", help="where the pictures go")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    p = command("encode", encode, "images -> key codes (safetensors)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model_arguments(p)
    p.add_argument("--output", default="key_codes.safetensors", help="the safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    p = command("decode", decode, "key codes (safetensors) -> images")
    p.add_argument("key_codes", metavar="KEY_CODES", help="a safetensors file written by `brics encode`")
    model_arguments(p)
    p.add_argument("--output_dir", default="decoded", help="where the images go")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    p = command("sample", sample, "generate images with a pipeline, or edit an image with it (image-to-image, "
                "inpainting)", usage="%(prog)s --model M [FLAG VALUE ...]  (--help describes every flag)")
    model_arguments(p)
    p.add_argument("--num_images", type=positive_int, default=8, help="images to generate")
    p.add_argument("--seed", type=int, default=0, help="image i is drawn from seed + i")
    p.add_argument("--num_inference_steps", type=positive_int, default=None,
                   help="denoising steps (with --image: the last --strength of them run); default: the pipeline's "
                   "own (what its training recorded), else 50, or with --scheduler ddpm the training schedule's "
                   "num_train_timesteps")
    p.add_alias("--steps", "--num_inference_steps")  # its earlier name
    p.add_argument("--scheduler", choices=SCHEDULERS, default="ddim",
                   help="the sampler (ddpm: the training schedule; ddim; dpm: DPM-Solver++)")
    p.add_argument("--prompt", default=None, help="for a text-to-image pipeline (required there): the text to draw")
    p.add_argument("--negative_prompt", default=None, help="for a text-to-image pipeline: the text guidance steers "
                   "away from (default: the empty prompt)")
    p.add_argument("--guidance_scale", type=non_negative_float, default=None,
                   help="classifier-free guidance, 1 for none (default: the pipeline's own: 3 for a text-to-image "
                   "pipeline, 1 otherwise; a class-conditional pipeline needs a null class for other values)")
    p.add_argument("--class_label", default=None, help="for a class-conditional pipeline: a class name or id")
    p.add_argument("--image", default=None, metavar="PATH", help="edit this image instead of starting from noise "
                   "(image-to-image, or inpainting with --mask)")
    p.add_argument("--strength", type=unit_interval, default=None,
                   help="with --image: how much of it is noised away, in [0, 1] (0: its reconstruction; 1: ignored "
                   "where generated; default: 0.8, or 1 with --mask)")
    p.add_argument("--mask", default=None, metavar="PATH", help="with --image: inpaint where this picture of the "
                   "image's size is white, keep the image where it is black")
    p.add_argument("--output_dir", default="samples", help="where the images go")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    p = command("interpolate", interpolate, "a row of images decoded from key codes between two images")
    p.add_argument("first", metavar="A", help="the first image")
    p.add_argument("second", metavar="B", help="the second image")
    model_arguments(p)
    p.add_argument("--steps", type=at_least_two, default=8, help="images in the row, the two ends included")
    p.add_argument("--output", default="interpolation.png", help="the picture to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    p = command("examples", examples, "held-out emoji as PNG files, to try the other commands and the Space on")
    p.add_argument("--output_dir", default="example_images", help="where the images go")
    p.add_argument("--resolution", type=int, choices=RESOLUTIONS, default=32, help="their width and height in pixels")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def version() -> str:
    from . import __version__

    return __version__


def delegated_parser(name: str) -> argparse.ArgumentParser:
    """The parser of delegated command ``name``, named ``brics NAME``, with ``--debug`` in its help. It comes from
    the command's light ``MODULE_args`` module where there is one (importable without torch: ``--help`` answers at
    once), else from the module itself."""
    module = DELEGATED[name][0]
    try:
        source = importlib.import_module(module + "_args")
    except ModuleNotFoundError as error:
        if error.name != module + "_args":
            raise
        source = importlib.import_module(module)
    parser = source.build_parser()
    parser.prog = f"brics {name}"
    document_debug(parser)
    return parser


def run_delegated(name: str, argv: list[str]) -> int:
    """Run delegated command ``name``: its flags (hyphen aliases read as the flags) are parsed here first, so that
    ``--help`` and a usage error answer before the command's module, and torch, are imported; then the module's
    ``main`` runs on them."""
    parser = delegated_parser(name)
    argv = canonical_flags(parser, [arg for arg in argv if arg != DEBUG_FLAG])
    parser.parse_args(argv)
    module = importlib.import_module(DELEGATED[name][0])
    program, sys.argv[0] = sys.argv[0], f"brics {name}"  # the prog of the parser the command builds itself
    try:
        return module.main(argv) or 0
    finally:
        sys.argv[0] = program


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the process's arguments) to a command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "sample" and args.class_label is not None and args.class_label.isdigit():
        args.class_label = int(args.class_label)
    return args.run(args)


def console_main() -> None:
    """The ``brics`` console script."""
    sys.exit(run_command(main, prog="brics"))
