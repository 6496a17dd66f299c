"""Per-image reconstruction metrics for images in ``[-1, 1]``: PSNR and SSIM (torchmetrics' implementations)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.ndim != 4:
        raise ValueError("x and y must be torch.Tensors of shape (B, C, H, W)")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair, ``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B,)`` (data range of ``[0, 1]``)."""
    _check_pair(x, y)
    x01, y01 = ((x.float() + 1) / 2).clamp(0, 1), ((y.float() + 1) / 2).clamp(0, 1)
    return peak_signal_noise_ratio(x01, y01, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5) of each image pair, ``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B,)``."""
    _check_pair(x, y)
    x01, y01 = ((x.float() + 1) / 2).clamp(0, 1), ((y.float() + 1) / 2).clamp(0, 1)
    return structural_similarity_index_measure(x01, y01, data_range=1.0, reduction="none")
