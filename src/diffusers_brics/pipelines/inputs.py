"""What the BRICS pipelines check and prepare before sampling: the components and sampling arguments, and the images
and masks of image-to-image and inpainting.

* *image-to-image* takes pictures, image files or a tensor in ``[-1, 1]``, resized and centre-cropped to the VAE's
  ``sample_size`` and encoded to key codes (`prepare_image`, `prepare_edit`).
* *inpainting* takes a pixel mask (white: generate, black: keep) of each image's own size, which becomes a mask on
  the key-code grid: a position is generated when any pixel of its cell is masked (`prepare_mask`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from ..models.adapters import latent_shape as latent_shape_of
from ..utils import is_integer
from .key_codes import encode_images, images_to_tensor, open_image, sample_size_of

ImageInput = Image.Image | str | os.PathLike | torch.Tensor | Sequence[Image.Image | str | os.PathLike]
MaskInput = Image.Image | str | os.PathLike | np.ndarray | torch.Tensor | Sequence[Image.Image | str | os.PathLike]


def count_images(image: ImageInput) -> int:
    """How many images ``image`` holds (a list's length, a 4-d tensor's batch, else 1)."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[0]) if image.ndim == 4 else 1
    return 1 if isinstance(image, (Image.Image, str, os.PathLike)) else len(image)


# ---------------------------------------------------------------------- checks
def check_components(unet: torch.nn.Module, vae: torch.nn.Module) -> None:
    """Raise a ValueError unless the UNet's samples have the shape of the VAE's key codes."""
    config = unet.config
    size = config.sample_size
    size = (size, size) if is_integer(size) else None if size is None else tuple(size)
    latent_shape = latent_shape_of(vae)
    if config.in_channels != latent_shape[0] or config.out_channels != latent_shape[0] or (
        size is not None and size != latent_shape[1:]
    ):
        raise ValueError(
            f"the unet does not fit the vae: unet (in_channels, out_channels, sample_size) = "
            f"({config.in_channels}, {config.out_channels}, {size}), but the vae's key codes have "
            f"(C_z, H_z, W_z) = {latent_shape}; both channel counts must be C_z and sample_size (H_z, W_z)"
        )


def check_sampling_inputs(
    pipeline,
    batch_size: int,
    num_inference_steps: int,
    latents: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
    output_type: str,
    eta: float,
    callback_on_step_end: Callable | None,
    guidance_scale: float,
) -> None:
    """Raise a ValueError naming the first sampling argument (or component of ``pipeline``) that cannot work."""
    check_components(pipeline.unet, pipeline.vae)
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    steps_limit = pipeline.scheduler.config.num_train_timesteps
    if not is_integer(num_inference_steps) or not 1 <= num_inference_steps <= steps_limit:
        raise ValueError(
            f"num_inference_steps must be an integer in [1, {steps_limit}] (the scheduler's num_train_timesteps),"
            f" got {num_inference_steps!r}"
        )
    if latents is not None:
        shape = (batch_size, *latent_shape_of(pipeline.vae))
        if not isinstance(latents, torch.Tensor):
            raise ValueError(f"latents must be a torch.Tensor (or numpy array) of shape {shape}, got "
                             f"{type(latents).__name__}")
        if tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} (batch_size, C_z, H_z, W_z), got {tuple(latents.shape)}"
            )
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("latents must be finite, got NaN or infinite values")
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"a list of generators must have batch_size ({batch_size}) entries, got {len(generator)}")
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
    if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or not 0 <= eta < math.inf:
        raise ValueError(f"eta must be a non-negative number (0 for deterministic DDIM), got {eta!r}")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
    if not isinstance(guidance_scale, numbers.Real) or isinstance(guidance_scale, bool) or not (
        0 <= guidance_scale < math.inf
    ):
        raise ValueError(f"guidance_scale must be a number >= 0 (1: no guidance), got {guidance_scale!r}")


def check_editing_inputs(image, strength: float | None, mask_image) -> float | None:
    """``strength`` checked (default: 0.8 for image-to-image, 1 for inpainting); a ValueError for a strength or
    a mask without an image."""
    if image is None:
        if strength is not None:
            raise ValueError("strength applies to image-to-image: pass image= (or leave strength out)")
        if mask_image is not None:
            raise ValueError("mask_image needs the image to inpaint: pass image=")
        return None
    if strength is None:
        return 1.0 if mask_image is not None else 0.8
    if not isinstance(strength, numbers.Real) or isinstance(strength, bool) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1] (0: the image's reconstruction, 1: the image "
                         f"ignored), got {strength!r}")
    return float(strength)


# ---------------------------------------------------------------------- image-to-image and inpainting inputs
def prepare_image(image: ImageInput, vae: torch.nn.Module) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``(pixels, sizes)``: the images as ``(N, 3, S, S)`` in ``[-1, 1]`` (resized and centre-cropped to the
    ``sample_size`` ``S`` of ``vae``) and each one's ``(width, height)`` as given, which a mask must match.

    ``image``: a picture, an image file, a list of them, or a ``(N, 3, S, S)`` / ``(3, S, S)`` tensor in
    ``[-1, 1]``."""
    size = sample_size_of(vae)
    if isinstance(image, torch.Tensor):
        pixels = image[None] if image.ndim == 3 else image
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (size, size):
            raise ValueError(f"image: expected a tensor of shape (N, 3, {size}, {size}) in [-1, 1] (this vae's "
                             f"sample_size), got {tuple(image.shape)}; pass pictures to have them resized")
        if not pixels.is_floating_point() or not bool(torch.isfinite(pixels).all()):
            raise ValueError("image: expected a finite floating-point tensor in [-1, 1]")
        if float(pixels.min()) < -1 - 1e-3 or float(pixels.max()) > 1 + 1e-3:
            raise ValueError(f"image: expected values in [-1, 1], got [{float(pixels.min()):.3g}, "
                             f"{float(pixels.max()):.3g}] (map [0, 1] images with x * 2 - 1)")
        return pixels.clamp(-1, 1), [(size, size)] * len(pixels)
    items = [image] if isinstance(image, (Image.Image, str, os.PathLike)) else list(image)
    if not items:
        raise ValueError("image: expected at least one image, got none")
    bad = [type(item).__name__ for item in items if not isinstance(item, (Image.Image, str, os.PathLike))]
    if bad:
        raise ValueError(f"image: expected PIL images, image files or a tensor, got {bad[0]}")
    pictures = [item.convert("RGB") if isinstance(item, Image.Image) else open_image(item, f"image[{i}]")
                for i, item in enumerate(items)]
    return images_to_tensor(pictures, vae), [picture.size for picture in pictures]


def prepare_mask(mask_image: MaskInput, sizes: list[tuple[int, int]], vae: torch.nn.Module) -> torch.Tensor:
    """``(N, 1, H_z, W_z)`` bool, True where key codes are generated: the pixel mask (white or >= 0.5: generate)
    resized and cropped like its image, then a key-code position of ``vae`` is generated when any pixel of its cell
    is.

    ``mask_image``: a picture or image file (any mode; its grey value counts), a ``(H, W)`` / ``(N, H, W)`` /
    ``(N, 1, H, W)`` array or tensor in ``[0, 1]``, or a list of pictures or files; one mask, or one per image,
    each of its image's size (``sizes``: each image's ``(width, height)``)."""
    if isinstance(mask_image, (np.ndarray, torch.Tensor)):
        array = mask_image.detach().cpu().float().numpy() if isinstance(mask_image, torch.Tensor) else mask_image
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 4 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(f"mask_image: expected shape (H, W), (N, H, W) or (N, 1, H, W), got "
                             f"{tuple(mask_image.shape)}")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("mask_image: expected finite values in [0, 1] (1: generate, 0: keep)")
        masks = [Image.fromarray((a * 255).round().astype(np.uint8), mode="L") for a in array]
    else:
        masks = [mask_image] if isinstance(mask_image, (Image.Image, str, os.PathLike)) else list(mask_image)
        bad = [type(m).__name__ for m in masks if not isinstance(m, (Image.Image, str, os.PathLike))]
        if bad or not masks:
            raise ValueError(f"mask_image: expected a PIL image, an image file, an array or a tensor, got "
                             f"{bad[0] if bad else 'none'}")
        masks = [(m if isinstance(m, Image.Image) else open_image(m, f"mask_image[{i}]")).convert("L")
                 for i, m in enumerate(masks)]
    if len(masks) not in (1, len(sizes)):
        raise ValueError(f"mask_image: expected one mask or one per image ({len(sizes)}), got {len(masks)}")
    for i, mask in enumerate(masks):
        expected = sizes[i if len(masks) > 1 else 0]
        if len(masks) == 1 and len(set(sizes)) > 1:
            raise ValueError("mask_image: one mask for images of different sizes; pass one mask per image")
        if mask.size != expected:
            raise ValueError(f"mask_image: expected the size of its image, {expected[0]}x{expected[1]} (width x "
                             f"height), got {mask.size[0]}x{mask.size[1]}")
    size = sample_size_of(vae)
    processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=False, do_binarize=True,
                                  do_convert_grayscale=True, resample="nearest")
    pixels = processor.preprocess(masks, height=size, width=size, resize_mode="crop") > 0.5  # (N, 1, S, S)
    _, height, width = latent_shape_of(vae)
    cells = pixels.reshape(len(masks), 1, height, size // height, width, size // width)
    return cells.any(dim=5).any(dim=3)


def prepare_edit(pipeline, image: ImageInput, mask_image: MaskInput | None,
                 batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(key_codes, mask)`` of the images to edit, repeated to ``batch_size`` (one image for all, or one per
    sample): the key codes ``(B, C_z, H_z, W_z)`` by ``pipeline``'s VAE and, with ``mask_image``, the generated
    positions ``(B, 1, H_z, W_z)`` (see `prepare_mask`)."""
    pixels, sizes = prepare_image(image, pipeline.vae)
    if len(pixels) not in (1, batch_size):
        raise ValueError(f"image: expected one image or one per generated image ({batch_size}), got {len(pixels)}")
    codes = encode_images(pipeline.vae, pixels.to(pipeline._execution_device))
    codes = codes.expand(batch_size, *codes.shape[1:]) if len(codes) == 1 else codes
    mask = None
    if mask_image is not None:
        mask = prepare_mask(mask_image, sizes, pipeline.vae).to(codes.device)
        mask = mask.expand(batch_size, *mask.shape[1:]) if len(mask) == 1 else mask
    return codes, mask
