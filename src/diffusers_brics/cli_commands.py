"""The `brics` commands that run in this module rather than in a module of their own (`cli` parses their flags):
reconstruct, encode, decode, sample, interpolate and examples. Each checks its input files and outputs before it
loads a model, and imports torch and diffusers only when it runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .files import check_file, check_image, check_output_folder, check_outputs, output_paths


def device_default() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
