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
import json
import sys
from collections.abc import Callable
from pathlib import Path

# Light imports only: `brics --help` and every command's `--help` answer without importing torch or diffusers (each
# command imports what it needs when it runs; tests/test_cli.py checks).
from .console import DEBUG_FLAG, ArgumentParser, canonical_flags, document_debug, run_command
from .data.emoji import RESOLUTIONS
from .files import (
    OVERWRITE_HELP,
    check_file,
    check_image,
    check_output_folder,
    check_outputs,
    output_paths,
)
from .names import SCHEDULERS
from .training.config import non_negative_float, positive_int, unit_interval

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


def device_default() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a pipeline, autoencoder or training output: local folder or "
                        "Hub repo id")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def output_folder(path: str) -> Path:
    check_output_folder(path)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load(args: argparse.Namespace):
    from .pipelines.loading import load_model

    return load_model(args.model, args.device or device_default())


def check_images(paths: list[str], name: str = "images") -> None:
    """Each of ``paths`` a readable picture (the error names ``images[i]``), before any model loads."""
    for index, path in enumerate(paths):
        check_image(path, f"{name}[{index}]")


# ------------------------------------------------------------------------------------------------------ commands
def reconstruct(args: argparse.Namespace) -> int:
    """Each image's reconstruction (``NAME.png``) and a picture of its key codes (``NAME_key_codes.png``) in
    ``--output_dir``. Images of the same name (from different folders) give ``NAME.png``, ``NAME-1.png``, ... in the
    order given. An output never replaces an input image, nor a file already there unless ``--overwrite``."""
    check_images(args.images)
    check_output_folder(args.output_dir)
    outputs = output_paths(args.output_dir, [Path(path).stem for path in args.images], ("{}.png", "{}_key_codes.png"))
    check_outputs([path for pair in outputs for path in pair], args.images, args.overwrite, "--output_dir")

    from .metrics import psnr
    from .pipelines.key_codes import key_codes_to_image, to_pil
    from .pipelines.key_codes import reconstruct as reconstruct_images

    vae = load(args).require_vae()
    output_folder(args.output_dir)
    for path, (picture, codes_picture) in zip(args.images, outputs):
        original, codes, recon = reconstruct_images(vae, [path])
        to_pil(recon)[0].save(picture)
        key_codes_to_image(codes[0]).save(codes_picture)
        print(f"{path} -> {picture} (PSNR {float(psnr(recon, original)):.2f} dB; key codes "
              f"{tuple(codes.shape[1:])} -> {codes_picture})")
    return 0


def encode(args: argparse.Namespace) -> int:
    """The images' key codes as one safetensors file: ``key_codes`` ``(B, C_z, H_z, W_z)``, the file names in its
    metadata. An existing ``--output`` is replaced only with ``--overwrite`` (an input image never)."""
    check_images(args.images)
    check_outputs([args.output], args.images, args.overwrite, "--output")

    from safetensors.torch import save_file

    from .pipelines.key_codes import encode_images

    vae = load(args).require_vae()
    codes = encode_images(vae, args.images).float().cpu().contiguous()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({"key_codes": codes}, str(output), metadata={
        "images": json.dumps([Path(p).name for p in args.images]), "model": str(args.model),
        "model_class": type(vae).__name__})
    print(f"{len(args.images)} image(s) -> {output}: key_codes {tuple(codes.shape)}, range "
          f"[{codes.min():.3f}, {codes.max():.3f}]")
    return 0


def decode(args: argparse.Namespace) -> int:
    """Images from a file written by `brics encode` (or any safetensors file with a ``key_codes`` tensor), named
    after the images the file names in its metadata (``NAME.png``; two of the same name give ``NAME.png`` and
    ``NAME-1.png``), else ``000.png``, ``001.png``, ... An existing file is replaced only with ``--overwrite``."""
    check_file(args.key_codes, "key_codes")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(args.key_codes, framework="pt") as f:
            if "key_codes" not in f.keys():
                raise ValueError(f"key_codes: {args.key_codes!r} holds no 'key_codes' tensor (it has "
                                 f"{sorted(f.keys())}); write one with `brics encode`")
            codes, metadata = f.get_tensor("key_codes"), f.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"key_codes: {args.key_codes!r} is not a safetensors file ({error})") from None
    try:
        names = json.loads(metadata.get("images", "[]"))
    except json.JSONDecodeError:
        names = []
    count = codes.shape[0] if codes.ndim == 4 else 1
    if not (isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names)):
        names = []
    stems = [Path(name).stem or f"{index:03d}" for index, name in enumerate(names)] or [
        f"{index:03d}" for index in range(count)]
    check_output_folder(args.output_dir)
    outputs = [path for (path,) in output_paths(args.output_dir, stems)]
    check_outputs(outputs, [args.key_codes], args.overwrite, "--output_dir")

    from .pipelines.key_codes import decode_key_codes

    vae = load(args).require_vae()
    folder = output_folder(args.output_dir)
    pictures = decode_key_codes(vae, codes.to(vae.device, vae.dtype))
    for path, picture in zip(outputs, pictures):
        picture.save(path)
    print(f"{len(pictures)} image(s) decoded into {folder}/")
    return 0


def sample(args: argparse.Namespace) -> int:
    """``sample_000.png``, ... and ``grid.png`` in ``--output_dir`` (replacing earlier ones only with
    ``--overwrite``); image ``i`` comes from seed ``seed + i``.

    A text-to-image pipeline needs ``--prompt``; a class-conditional one ``--class_label``. ``--image`` edits an
    image instead of starting from noise: image-to-image to ``--strength`` (0: its reconstruction, 1: the image
    ignored), or with ``--mask`` inpainting (white: generated, black: kept; the mask has the image's size), each of
    the ``--num_images`` samples from its own seed. Images are resized and centre-cropped to the model's size."""
    if args.image is not None:
        check_image(args.image, "--image")
    if args.mask is not None:
        check_image(args.mask, "--mask")
    check_output_folder(args.output_dir)
    folder = Path(args.output_dir)
    outputs = [folder / f"sample_{index:03d}.png" for index in range(args.num_images)]
    check_outputs([*outputs, folder / "grid.png"], [args.image, args.mask], args.overwrite, "--output_dir")

    import torch
    from diffusers.utils import make_image_grid
    from PIL import Image

    from .pipelines.loading import swap_scheduler
    from .pipelines.sampling import inference_steps

    pipeline = swap_scheduler(load(args).require_pipeline(), args.scheduler)
    kwargs = sampling_arguments(args, pipeline)
    steps = inference_steps(pipeline, args.num_inference_steps)  # unset: the pipeline's own default
    output_folder(args.output_dir)
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    images = pipeline(generator=generators, num_inference_steps=steps, **kwargs).images
    for path, image in zip(outputs, images):
        image.save(path)
    columns = min(8, len(images))
    rows = -(-len(images) // columns)
    padding = [Image.new("RGB", images[0].size, "white")] * (rows * columns - len(images))
    make_image_grid(images + padding, rows=rows, cols=columns).save(folder / "grid.png")
    print(f"{len(images)} sample(s) -> {folder}/")
    return 0


def sampling_arguments(args: argparse.Namespace, pipeline) -> dict:
    """The pipeline's keyword arguments for the flags of `brics sample` (all but the seed and steps); a flag the
    pipeline cannot take raises a ValueError that names it."""
    from .pipelines import BRICSDiffusionPipeline, BRICSTextToImagePipeline
    from .pipelines.key_codes import open_image

    kind = type(pipeline).__name__
    text = isinstance(pipeline, BRICSTextToImagePipeline)
    editing = {"--image": args.image, "--strength": args.strength, "--mask": args.mask}
    if not isinstance(pipeline, BRICSDiffusionPipeline):
        given = [flag for flag, value in {"--prompt": args.prompt, "--negative_prompt": args.negative_prompt,
                                          "--guidance_scale": args.guidance_scale, "--class_label": args.class_label,
                                          **editing}.items() if value is not None]
        if given:
            raise ValueError(f"{given[0]} needs a BRICS pipeline; {args.model!r} is a {kind}, which only samples")
    if text:
        if args.prompt is None:
            raise ValueError(f"{args.model!r} is a text-to-image pipeline ({kind}): pass --prompt")
        if args.class_label is not None:
            raise ValueError(f"--class_label is for class-conditional pipelines; {args.model!r} is a text-to-image "
                             "pipeline: describe the image with --prompt")
        kwargs = {"prompt": args.prompt, "num_images_per_prompt": args.num_images}
        if args.negative_prompt is not None:
            kwargs["negative_prompt"] = args.negative_prompt
    else:
        for flag, value in (("--prompt", args.prompt), ("--negative_prompt", args.negative_prompt)):
            if value is not None:
                raise ValueError(f"{flag} needs a text-to-image pipeline; {args.model!r} is a {kind} without a text "
                                 "encoder (a class-conditional one takes --class_label)")
        kwargs = {"batch_size": args.num_images}
        if args.class_label is not None:
            kwargs["class_labels"] = args.class_label
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    if args.image is None:
        for flag in ("--strength", "--mask"):
            if editing[flag] is not None:
                raise ValueError(f"{flag} needs --image (the image to edit)")
        return kwargs
    image = open_image(args.image, "--image")
    kwargs["image"] = image
    if args.strength is not None:
        kwargs["strength"] = args.strength
    if args.mask is not None:
        mask = open_image(args.mask, "--mask")
        if mask.size != image.size:
            raise ValueError(f"--mask is {mask.size[0]}x{mask.size[1]} but --image is {image.size[0]}x"
                             f"{image.size[1]} (width x height): the mask must have the image's size")
        kwargs["mask_image"] = mask
    return kwargs


def interpolate(args: argparse.Namespace) -> int:
    """One row of ``--steps`` images decoded from key codes on the segment between the two images' (ends
    included). An existing ``--output`` is replaced only with ``--overwrite`` (an input image never)."""
    check_image(args.first, "A")
    check_image(args.second, "B")
    check_outputs([args.output], [args.first, args.second], args.overwrite, "--output")

    from diffusers.utils import make_image_grid

    from .pipelines.key_codes import interpolate_images

    vae = load(args).require_vae()
    pictures = interpolate_images(vae, args.first, args.second, args.steps)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(pictures, rows=1, cols=len(pictures)).save(output)
    print(f"{args.first} -> {args.second}: {len(pictures)} images -> {output}")
    return 0


def examples(args: argparse.Namespace) -> int:
    """Eight emoji of the embedded dataset's held-out split as ``NAME.png`` in ``--output_dir``
    (`diffusers_brics.data.example_images`), ``--resolution`` pixels square; prints each path written. A file
    already there is replaced only with ``--overwrite``."""
    from .data.examples import example_images, save_example_images

    check_output_folder(args.output_dir)
    outputs = [Path(args.output_dir) / source.name for source in example_images(args.resolution)]
    check_outputs(outputs, [], args.overwrite, "--output_dir")
    for path in save_example_images(args.output_dir, args.resolution, overwrite=True):
        print(path)
    return 0


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
