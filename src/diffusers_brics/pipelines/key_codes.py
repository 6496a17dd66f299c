"""Working with an image's key codes: images in, key codes out and back, interpolation, pictures of key codes.

The command line (``brics reconstruct|encode|decode|interpolate``), the Space demo and the editing pipelines use
these helpers, so all of them prepare images and decode key codes the same way:

* images are resized and centre-cropped to the autoencoder's ``sample_size`` by diffusers' `VaeImageProcessor`
  and mapped to ``[-1, 1]``;
* encoding is deterministic (no posterior sample for the KL variant) and decoding uses neither the
  relaxed-precision noise nor random decoder noise (`diffusers_brics.models.adapters.decode_latents`), so an image
  always gives the same key codes and key codes the same image.

Interpolation is linear in key-code space: key codes are points of ``[0, 1]^{C_z}`` per position, so every
convex combination of two of them is a valid key code, and the decoder's grids are continuous in it.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import make_image_grid
from PIL import Image, UnidentifiedImageError

from ..models.adapters import decode_latents, encode_latents, latent_shape

ImageInput = Image.Image | str | os.PathLike


def open_image(path: str | os.PathLike, name: str = "image") -> Image.Image:
    """The RGB picture in file ``path``; a missing or unreadable file raises a FileNotFoundError / ValueError that
    names ``name``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name}: {str(path)!r} is not a readable image ({error})") from None


def sample_size_of(model: torch.nn.Module | DiffusionPipeline) -> int:
    """The image size (pixels per side) an autoencoder was built for, or a pipeline generates: its VAE's, or for a
    pipeline without one (in pixel space) its UNet's."""
    if isinstance(model, DiffusionPipeline):
        vae = getattr(model, "vae", None)
        model = vae if vae is not None else model.unet
    size = model.config.sample_size
    return int(size if isinstance(size, int) else size[0])


def images_to_tensor(images: ImageInput | Sequence[ImageInput], vae: torch.nn.Module) -> torch.Tensor:
    """``(B, 3, S, S)`` in ``[-1, 1]`` from pictures or image files, resized (shorter side to ``S``) and
    centre-cropped to the autoencoder's ``sample_size`` ``S``."""
    items = [images] if isinstance(images, (Image.Image, str, os.PathLike)) else list(images)
    if not items:
        raise ValueError("images: expected at least one image, got none")
    pictures = [open_image(item, f"images[{i}]") if not isinstance(item, Image.Image) else item.convert("RGB")
                for i, item in enumerate(items)]
    size = sample_size_of(vae)
    processor = VaeImageProcessor(vae_scale_factor=1, do_resize=True, do_normalize=True, do_convert_rgb=True)
    return processor.preprocess(pictures, height=size, width=size, resize_mode="crop").to(vae.dtype)


def encode_images(vae: torch.nn.Module, images: ImageInput | Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
    """Key codes ``(B, C_z, H_z, W_z)`` (in ``[0, 1]`` for BRICS; another autoencoder's latents otherwise) of
    pictures, files, or a ``(B, 3, S, S)`` tensor in ``[-1, 1]``."""
    pixels = images if isinstance(images, torch.Tensor) else images_to_tensor(images, vae)
    return encode_latents(vae, pixels)


def check_key_codes(vae: torch.nn.Module, key_codes: torch.Tensor, name: str = "key_codes") -> torch.Tensor:
    """``key_codes`` as a batch ``(B, C_z, H_z, W_z)`` (a single ``(C_z, H_z, W_z)`` gets a batch axis), checked
    against the autoencoder's latent shape."""
    if not isinstance(key_codes, torch.Tensor) or not key_codes.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got "
                         f"{getattr(key_codes, 'dtype', type(key_codes).__name__)}")
    if key_codes.ndim == 3:
        key_codes = key_codes[None]
    expected = tuple(latent_shape(vae))
    if key_codes.ndim != 4 or tuple(key_codes.shape[1:]) != expected:
        raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, expected))}) for this autoencoder, got "
                         f"{tuple(key_codes.shape)}")
    if not torch.isfinite(key_codes).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return key_codes


def decode_key_codes(vae: torch.nn.Module, key_codes: torch.Tensor) -> list[Image.Image]:
    """Pictures decoded from key codes ``(B, C_z, H_z, W_z)`` (clamped to ``[0, 1]`` for BRICS), without noise."""
    key_codes = check_key_codes(vae, key_codes)
    images = decode_latents(vae, key_codes)
    return to_pil(images)


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, images: ImageInput | Sequence[ImageInput] | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pixels, key_codes, reconstructions)``: the prepared images ``(B, 3, S, S)`` in ``[-1, 1]``, their key
    codes, and the reconstructions decoded from them without noise, clamped to ``[-1, 1]``."""
    pixels = (images if isinstance(images, torch.Tensor) else images_to_tensor(images, vae)).to(vae.device)
    key_codes = encode_latents(vae, pixels)
    return pixels, key_codes, decode_latents(vae, key_codes).clamp(-1, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image] | Image.Image:
    """RGB pictures from a batch ``(B, 3, H, W)`` in ``[-1, 1]``, or one picture from one image ``(3, H, W)``."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()
    if array.ndim == 3:
        return Image.fromarray(np.ascontiguousarray(array))
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def interpolate_key_codes(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` key codes ``(steps, C_z, H_z, W_z)`` on the segment from ``start`` to ``end`` (both ``(C_z, H_z,
    W_z)`` or ``(1, C_z, H_z, W_z)``), ends included: ``(1 - t) * start + t * end`` for ``t`` in
    ``linspace(0, 1, steps)``."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"steps: expected an integer >= 2 (the two ends included), got {steps!r}")
    steps = int(steps)
    start, end = (z[0] if z.ndim == 4 and z.shape[0] == 1 else z for z in (start, end))
    if start.shape != end.shape or start.ndim != 3:
        raise ValueError(f"start and end: expected key codes of one shape (C_z, H_z, W_z), got {tuple(start.shape)} "
                         f"and {tuple(end.shape)}")
    t = torch.linspace(0, 1, steps, dtype=start.dtype, device=start.device).view(-1, 1, 1, 1)
    return (1 - t) * start + t * end


def interpolate_images(vae: torch.nn.Module, first: ImageInput, second: ImageInput, steps: int = 8) -> list[Image.Image]:
    """``steps`` pictures decoded from key codes interpolated between those of two images (ends included)."""
    codes = encode_images(vae, [first, second])
    return decode_key_codes(vae, interpolate_key_codes(codes[0], codes[1], steps))


def key_codes_to_image(key_codes: torch.Tensor, tile_size: int | None = None) -> Image.Image:
    """A picture of one image's key codes ``(C_z, H_z, W_z)`` (or ``(1, C_z, H_z, W_z)``): one grey tile per channel
    (black 0, white 1), side by side, each enlarged without smoothing to ``tile_size`` pixels (default: 4x)."""
    if key_codes.ndim == 4 and key_codes.shape[0] == 1:
        key_codes = key_codes[0]
    if key_codes.ndim != 3:
        raise ValueError(f"key_codes: expected the key codes of one image (C_z, H_z, W_z), got "
                         f"{tuple(key_codes.shape)}")
    channels, height, width = key_codes.shape
    scale = max(1, (tile_size or 4 * height) // height)
    tiles = (key_codes.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    pictures = [Image.fromarray(tile).resize((width * scale, height * scale), Image.NEAREST).convert("RGB")
                for tile in tiles]
    return make_image_grid(pictures, rows=1, cols=channels)
