"""Per-image reconstruction metrics for images in ``[-1, 1]``: PSNR and SSIM (torchmetrics' implementations).

Both raise ValueError for inputs that break the rules of :func:`diffusers_brics.metrics.inputs.check_image`.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .inputs import check_image_pair


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair, ``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B,)`` (data range of ``[0, 1]``)."""
    check_image_pair(x, y)
    x01, y01 = ((x.float() + 1) / 2).clamp(0, 1), ((y.float() + 1) / 2).clamp(0, 1)
    return peak_signal_noise_ratio(x01, y01, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5) of each image pair, ``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B,)``."""
    check_image_pair(x, y)
    x01, y01 = ((x.float() + 1) / 2).clamp(0, 1), ((y.float() + 1) / 2).clamp(0, 1)
    return structural_similarity_index_measure(x01, y01, data_range=1.0, reduction="none")
