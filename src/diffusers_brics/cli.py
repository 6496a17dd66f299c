"""The `brics` command line (also ``python -m diffusers_brics``).

    brics quickstart                                   train both stages on the embedded emoji, evaluate, save
    brics info PRESET                                  parameters and decode GMACs of a configuration
    brics reconstruct IMAGE... --model M               images through the autoencoder, with their key codes
    brics encode IMAGE... --model M --output Z.safetensors
    brics decode Z.safetensors --model M               key codes back to images
    brics sample --model M --num-images 8 --seed 0 --steps 50 --scheduler ddim
    brics sample --model M --prompt TEXT               a text-to-image pipeline (--guidance-scale, default 3)
    brics sample --model M --image IN.png --strength 0.6 [--mask MASK.png]     image-to-image, inpainting
    brics interpolate A B --model M --steps 8          decoded key codes between two images
    brics evaluate reconstruction|generation|neighbours ...
    brics train-ae ...                                 stage 1 (`accelerate launch -m diffusers_brics train-ae ...`)
    brics train-diffusion ...                          stage 2

``--model`` takes a local folder or a Hub repo id: a pipeline, an autoencoder, or a training output folder. Each
command has ``--help``. An error is one line on stderr and exit status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .console import HelpFormatter, run_command
from .training.config import non_negative_float, positive_int, unit_interval

# Commands whose module has its own command line: name -> (module, one-line description).
DELEGATED = {
    "quickstart": ("diffusers_brics.quickstart", "the main job: both trainings on the embedded emoji, evaluation"),
    "info": ("diffusers_brics.summary", "parameters and decode GMACs of a preset (the paper's counts beside them)"),
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
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--output-dir {path!r} is a file; expected a folder (created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load(args: argparse.Namespace):
    from .pipelines.loading import load_model

    return load_model(args.model, args.device or device_default())


# ------------------------------------------------------------------------------------------------------ commands
def reconstruct(args: argparse.Namespace) -> int:
    """Each image's reconstruction (``NAME.png``) and a picture of its key codes (``NAME_key_codes.png``)."""
    from .metrics import psnr
    from .pipelines.key_codes import key_codes_to_image, to_pil
    from .pipelines.key_codes import reconstruct as reconstruct_images

    vae = load(args).require_vae()
    folder = output_folder(args.output_dir)
    for path in args.images:
        original, codes, recon = reconstruct_images(vae, [path])
        stem = Path(path).stem
        to_pil(recon)[0].save(folder / f"{stem}.png")
        key_codes_to_image(codes[0]).save(folder / f"{stem}_key_codes.png")
        print(f"{path} -> {folder / f'{stem}.png'} (PSNR {float(psnr(recon, original)):.2f} dB; key codes "
              f"{tuple(codes.shape[1:])} -> {folder / f'{stem}_key_codes.png'})")
    return 0


def encode(args: argparse.Namespace) -> int:
    """The images' key codes as one safetensors file: ``key_codes`` ``(B, C_z, H_z, W_z)``, the file names in its
    metadata."""
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
    """Images from a file written by `brics encode` (or any safetensors file with a ``key_codes`` tensor)."""
    from safetensors import SafetensorError, safe_open

    from .pipelines.key_codes import decode_key_codes

    if not Path(args.key_codes).is_file():
        raise FileNotFoundError(f"key_codes: no such file {args.key_codes!r}")
    try:
        with safe_open(args.key_codes, framework="pt") as f:
            if "key_codes" not in f.keys():
                raise ValueError(f"key_codes: {args.key_codes!r} holds no 'key_codes' tensor (it has "
                                 f"{sorted(f.keys())}); write one with `brics encode`")
            codes, metadata = f.get_tensor("key_codes"), f.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"key_codes: {args.key_codes!r} is not a safetensors file ({error})") from None
    vae = load(args).require_vae()
    names = json.loads(metadata.get("images", "[]"))
    folder = output_folder(args.output_dir)
    pictures = decode_key_codes(vae, codes.to(vae.device, vae.dtype))
    for index, picture in enumerate(pictures):
        stem = Path(names[index]).stem if len(names) == len(pictures) else f"{index:03d}"
        picture.save(folder / f"{stem}.png")
    print(f"{len(pictures)} image(s) decoded into {folder}/")
    return 0


def sample(args: argparse.Namespace) -> int:
    """``sample_000.png``, ... and ``grid.png``; image ``i`` comes from seed ``seed + i``.

    A text-to-image pipeline needs ``--prompt``; a class-conditional one ``--class-label``. ``--image`` edits an
    image instead of starting from noise: image-to-image to ``--strength`` (0: its reconstruction, 1: the image
    ignored), or with ``--mask`` inpainting (white: generated, black: kept; the mask has the image's size), each of
    the ``--num-images`` samples from its own seed. Images are resized and centre-cropped to the model's size."""
    import torch
    from diffusers.utils import make_image_grid
    from PIL import Image

    from .pipelines.loading import swap_scheduler

    pipeline = swap_scheduler(load(args).require_pipeline(), args.scheduler)
    kwargs = sampling_arguments(args, pipeline)
    folder = output_folder(args.output_dir)
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    images = pipeline(generator=generators, num_inference_steps=args.steps, **kwargs).images
    for index, image in enumerate(images):
        image.save(folder / f"sample_{index:03d}.png")
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
        given = [flag for flag, value in {"--prompt": args.prompt, "--negative-prompt": args.negative_prompt,
                                          "--guidance-scale": args.guidance_scale, "--class-label": args.class_label,
                                          **editing}.items() if value is not None]
        if given:
            raise ValueError(f"{given[0]} needs a BRICS pipeline; {args.model!r} is a {kind}, which only samples")
    if text:
        if args.prompt is None:
            raise ValueError(f"{args.model!r} is a text-to-image pipeline ({kind}): pass --prompt")
        if args.class_label is not None:
            raise ValueError(f"--class-label is for class-conditional pipelines; {args.model!r} is a text-to-image "
                             "pipeline: describe the image with --prompt")
        kwargs = {"prompt": args.prompt, "num_images_per_prompt": args.num_images}
        if args.negative_prompt is not None:
            kwargs["negative_prompt"] = args.negative_prompt
    else:
        for flag, value in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt)):
            if value is not None:
                raise ValueError(f"{flag} needs a text-to-image pipeline; {args.model!r} is a {kind} without a text "
                                 "encoder (a class-conditional one takes --class-label)")
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
    included)."""
    from diffusers.utils import make_image_grid

    from .pipelines.key_codes import interpolate_images

    vae = load(args).require_vae()
    pictures = interpolate_images(vae, args.first, args.second, args.steps)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(pictures, rows=1, cols=len(pictures)).save(output)
    print(f"{args.first} -> {args.second}: {len(pictures)} images -> {output}")
    return 0


def at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 (the two ends included), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brics", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"diffusers-brics {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, description) in DELEGATED.items():
        commands.add_parser(name, help=description + f" (`brics {name} --help`)", add_help=False)

    def command(name: str, fn: Callable, description: str, usage: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=description, formatter_class=HelpFormatter, usage=usage,
                                  description=f"{description}.\n\n{inspect.cleandoc(fn.__doc__)}")
        sub.set_defaults(run=fn)
        return sub

    p = command("reconstruct", reconstruct, "images through the autoencoder, with pictures of their key codes")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model_arguments(p)
    p.add_argument("--output-dir", default="reconstructions", help="where the pictures go")

    p = command("encode", encode, "images -> key codes (safetensors)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    model_arguments(p)
    p.add_argument("--output", default="key_codes.safetensors", help="the safetensors file to write")

    p = command("decode", decode, "key codes (safetensors) -> images")
    p.add_argument("key_codes", metavar="KEY_CODES", help="a safetensors file written by `brics encode`")
    model_arguments(p)
    p.add_argument("--output-dir", default="decoded", help="where the images go")

    p = command("sample", sample, "generate images with a pipeline, or edit an image with it (image-to-image, "
                "inpainting)", usage="%(prog)s --model M [FLAG VALUE ...]  (--help describes every flag)")
    model_arguments(p)
    p.add_argument("--num-images", type=positive_int, default=8, help="images to generate")
    p.add_argument("--seed", type=int, default=0, help="image i is drawn from seed + i")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps (with --image: the last "
                   "--strength of them run)")
    p.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm"], default="ddim",
                   help="the sampler (ddpm: the training schedule; ddim; dpm: DPM-Solver++)")
    p.add_argument("--prompt", default=None, help="for a text-to-image pipeline (required there): the text to draw")
    p.add_argument("--negative-prompt", default=None, help="for a text-to-image pipeline: the text guidance steers "
                   "away from (default: the empty prompt)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=None,
                   help="classifier-free guidance, 1 for none (default: the pipeline's own: 3 for a text-to-image "
                   "pipeline, 1 otherwise; a class-conditional pipeline needs a null class for other values)")
    p.add_argument("--class-label", default=None, help="for a class-conditional pipeline: a class name or id")
    p.add_argument("--image", default=None, metavar="PATH", help="edit this image instead of starting from noise "
                   "(image-to-image, or inpainting with --mask)")
    p.add_argument("--strength", type=unit_interval, default=None,
                   help="with --image: how much of it is noised away, in [0, 1] (0: its reconstruction; 1: ignored "
                   "where generated; default: 0.8, or 1 with --mask)")
    p.add_argument("--mask", default=None, metavar="PATH", help="with --image: inpaint where this picture of the "
                   "image's size is white, keep the image where it is black")
    p.add_argument("--output-dir", default="samples", help="where the images go")

    p = command("interpolate", interpolate, "a row of images decoded from key codes between two images")
    p.add_argument("first", metavar="A", help="the first image")
    p.add_argument("second", metavar="B", help="the second image")
    model_arguments(p)
    p.add_argument("--steps", type=at_least_two, default=8, help="images in the row, the two ends included")
    p.add_argument("--output", default="interpolation.png", help="the picture to write")
    return parser


def version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the process's arguments) to a command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        sys.argv[0] = f"brics {argv[0]}"  # the delegated parser's prog
        return module.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    if args.command == "sample" and args.class_label is not None and args.class_label.isdigit():
        args.class_label = int(args.class_label)
    return args.run(args)


def console_main() -> None:
    """The ``brics`` console script."""
    sys.exit(run_command(main, prog="brics"))
