"""Reconstruction metrics of an autoencoder on a split of images: the one loop behind stage 1's validation
(`training.autoencoder`) and ``brics evaluate reconstruction`` (`diffusers_brics.evaluate`, which adds FID and KID
of the reconstructions and the timing).

`evaluation_loader` reads a split's centre-cropped images in order, in batches; `reconstruction_metrics` passes them
through any of the three autoencoders (BRICS, diffusers' `AutoencoderKL`, `VQModel`) and averages PSNR, SSIM and
LPIPS-alex over the images, with grid usage (BRICS) or codebook usage (VQModel) of their latents, and draws a grid
of originals over reconstructions. Both commands therefore give the same numbers on the same model and images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from diffusers import VQModel
from diffusers.utils import make_image_grid
from PIL import Image

from ..metrics import CodebookUsage, GridUsage, lpips, psnr, ssim
from ..models import adapters
from ..models.autoencoder_brics import BRICSAutoencoder
from ..pipelines.key_codes import to_pil
from .data import ImageDataset, collate_images, image_transform


def evaluation_loader(dataset, column: str, resolution: int, batch_size: int, max_images: int | None = None,
                      strict: bool = False) -> torch.utils.data.DataLoader:
    """The first ``max_images`` (default all) images of ``dataset``'s ``column``, centre-cropped to ``resolution``,
    in order, in batches of `collate_images` (``{"images": (B, 3, R, R) in [-1, 1], ...}``); an unreadable image
    is replaced by the next readable one unless ``strict``."""
    images = ImageDataset(dataset, column, image_transform(resolution, True), strict=strict)
    if max_images is not None and max_images < len(images):
        images = torch.utils.data.Subset(images, range(max_images))
    return torch.utils.data.DataLoader(images, batch_size=batch_size, collate_fn=collate_images)


@torch.no_grad()
def reconstruction_metrics(model: torch.nn.Module, batches: Iterable, grid_images: torch.Tensor | int = 8, *,
                           with_noise: bool = False, seed: int = 0,
                           each_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                           ) -> tuple[dict[str, float], Image.Image]:
    """Per-image means of PSNR, SSIM and LPIPS-alex of ``model``'s reconstructions of ``batches`` (image tensors
    ``(B, 3, R, R)`` in ``[-1, 1]``, or `evaluation_loader`'s batches), the usage of what their latents read, and a
    grid of originals over reconstructions.

    Usage: for BRICS, the share of reachable grid entries the images read (``grid_usage_mean``, the smallest share
    of a level of a grid ``grid_usage_min_level``, of all entries ``grid_usage_all_nodes_mean``, per level
    ``grid_usage_level_<l>``) and the share that training moved from their initialisation (``grid_trained_mean``,
    ``grid_trained_level_<l>``); for a VQModel, the share of codebook entries selected (``codebook_usage``), the
    perplexity of the selections and the spread of the selections per entry (`metrics.usage_summary`).

    Args:
        grid_images: the originals of the grid ``(N, 3, R, R)``, or how many of the first images of ``batches``.
            Their reconstructions are decoded after the metrics' (so that ``with_noise`` draws in the same order).
        with_noise: BRICS: reconstructions with the relaxed-precision noise (for a model trained with it) and random
            decoder noise, drawn from ``seed``, as the release measures them; otherwise the deterministic decode a
            pipeline uses (no relaxed-precision noise, the decoder's fixed noise).
        each_batch: called with each batch's images and reconstructions (float32).
    """
    brics = isinstance(model, BRICSAutoencoder)
    usage = GridUsage(model) if brics else CodebookUsage(model) if isinstance(model, VQModel) else None
    generator = torch.Generator().manual_seed(seed)
    if brics and with_noise:
        noise = dict(relaxed_precision=model.config.relaxed_precision, noise_mode="random", generator=generator)

        def reconstruct(latents):
            return model.decode(latents, **noise).sample
    else:

        def reconstruct(latents):
            return adapters.decode_latents(model, latents)

    totals, count, shown = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}, 0, []
    for batch in batches:
        images = (batch["images"] if isinstance(batch, dict) else batch).to(model.device, model.dtype)
        latents = adapters.encode_latents(model, images)
        recon = reconstruct(latents).clamp(-1, 1).float()
        images = images.float()
        totals["psnr"] += float(psnr(recon, images).sum())
        totals["ssim"] += float(ssim(recon, images).sum())
        totals["lpips"] += float(lpips(recon, images, net="alex").sum())
        if usage is not None:
            usage.update(latents)
        if each_batch is not None:
            each_batch(images, recon)
        if isinstance(grid_images, int) and len(shown) < grid_images:
            shown += list(images[: grid_images - len(shown)])
        count += images.shape[0]
    if count == 0:
        raise ValueError("no images to evaluate")
    metrics = {name: value / count for name, value in totals.items()}
    if brics:
        hits = usage.hit_fraction()  # (N_h, N_r): grids x levels
        trained = GridUsage.trained_entries(model).hit_fraction()
        metrics["grid_usage_mean"] = float(hits.mean())
        metrics["grid_usage_min_level"] = float(hits.min())
        metrics["grid_usage_all_nodes_mean"] = float(usage.hit_fraction(reachable_only=False).mean())
        metrics.update({f"grid_usage_level_{level}": float(v) for level, v in enumerate(hits.mean(dim=0))})
        metrics["grid_trained_mean"] = float(trained.mean())
        metrics.update({f"grid_trained_level_{level}": float(v) for level, v in enumerate(trained.mean(dim=0))})
    elif usage is not None:
        summary = usage.summary()
        metrics["codebook_usage"] = summary.pop("used")
        metrics["codebook_perplexity"] = summary.pop("perplexity")
        metrics.update({f"codebook_{name}": value for name, value in summary.items()})
    originals = grid_images if isinstance(grid_images, torch.Tensor) else torch.stack(shown)
    originals = originals.to(model.device, model.dtype)
    recon = reconstruct(adapters.encode_latents(model, originals)).clamp(-1, 1)
    pictures = [to_pil(x) for x in torch.cat([originals.float(), recon.float()])]
    return metrics, make_image_grid(pictures, rows=2, cols=originals.shape[0])
