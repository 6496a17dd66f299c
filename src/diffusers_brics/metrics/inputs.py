"""Input rules shared by the image metrics (PSNR, SSIM, LPIPS): floating-point ``(B, C, H, W)`` images in [-1, 1]."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

#: Values may exceed ``[-1, 1]`` by this much (rounding in decoders' outputs and in dtype conversions).
RANGE_TOLERANCE = 1e-3


def check_image(t: torch.Tensor, name: str) -> None:
    """Raise ValueError, naming ``name``, unless ``t`` is a non-empty finite floating-point ``(B, C, H, W)`` tensor
    with values in ``[-1, 1]`` (up to :data:`RANGE_TOLERANCE`).

    A tensor that requires grad is a prediction inside a training loss (LPIPS as a perceptual loss on a decoder's
    unclamped output): its values may leave ``[-1, 1]``, and only the other rules apply.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W) in [-1, 1], got {type(t).__name__}")
    if t.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor with values in [-1, 1], got {t.dtype}; convert 8-bit images "
            f"with {name}.float() / 127.5 - 1"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one image of at least 1x1 pixels")
    # One reduction and one device sync for all value rules: NaN propagates into both extremes, inf shows in one.
    low, high = torch.stack(torch.aminmax(t.detach())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} holds NaN or infinite values")
    if t.requires_grad:
        return
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must hold values in [-1, 1], got min {low:.4g} and max {high:.4g}; images in [0, 1] map to "
            f"[-1, 1] by {name} * 2 - 1, images in [0, 255] by {name} / 127.5 - 1"
        )


def check_image_pair(
    x: torch.Tensor, y: torch.Tensor, extra: Optional[Callable[[torch.Tensor, str], None]] = None
) -> None:
    """:func:`check_image` on ``x`` and ``y`` (then ``extra(t, name)``, a metric's own rules), and equal shapes."""
    for name, t in (("x", x), ("y", y)):
        check_image(t, name)
        if extra is not None:
            extra(t, name)
    if x.shape != y.shape:
        raise ValueError(f"y must have the same shape as x: x is {tuple(x.shape)}, y is {tuple(y.shape)}")
