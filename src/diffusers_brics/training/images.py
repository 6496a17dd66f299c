"""Tensor <-> picture helpers for logging."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` tensor in ``[-1, 1]`` -> RGB PIL image."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))
