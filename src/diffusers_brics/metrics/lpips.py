"""LPIPS perceptual distance (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), version 0.1, with AlexNet or VGG16 features.

For images ``x`` and ``y`` in [-1, 1]:

1. both are shifted and scaled per channel (shift ``[-.030, -.088, -.188]``, scale ``[.458, .448, .450]``);
2. an ImageNet-pretrained backbone gives five feature maps (AlexNet: the five ReLU outputs; VGG16: relu1_2,
   relu2_2, relu3_3, relu4_3, relu5_3);
3. each feature map is divided by its channel-wise L2 norm (plus 1e-10) at every pixel;
4. the squared difference of the normalised maps is weighed per channel by a learned, non-negative 1x1 head,
   averaged over the pixels, and the five layer terms are summed.

The weights are looked up, and prepared on first use, by :mod:`diffusers_brics.metrics.lpips_weights`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import check_image_pair
from .lpips_weights import BACKBONE_CONVS, HEAD_CHANNELS, check_net, load_weights, resolve_lpips_weights
from .weight_files import PathLike

__all__ = ["LPIPS", "lpips"]

# Layer layout of each backbone: "C" = conv + ReLU, "P<k>" = max pool (kernel k, stride 2), "T" = feature tap.
_LAYOUT: Dict[str, Tuple[str, ...]] = {
    "alex": ("C", "T", "P3", "C", "T", "P3", "C", "T", "C", "T", "C", "T"),
    "vgg": (
        "C", "C", "T", "P2",
        "C", "C", "T", "P2",
        "C", "C", "C", "T", "P2",
        "C", "C", "C", "T", "P2",
        "C", "C", "C", "T",
    ),
}  # fmt: skip

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def _min_input_size(net: str) -> int:
    """Smallest height/width for which every tapped feature map is at least 1x1."""

    def fits(size: int) -> bool:
        convs = iter(BACKBONE_CONVS[net])
        for op in _LAYOUT[net]:
            if op == "C":
                _, _, k, s, p = next(convs)
                size = (size + 2 * p - k) // s + 1
            elif op.startswith("P"):
                k = int(op[1:])
                size = (size - k) // 2 + 1
            if size < 1:
                return False
        return True

    size = 1
    while not fits(size):
        size += 1
    return size


class LPIPS(nn.Module):
    """LPIPS v0.1 distance as a frozen module: ``LPIPS("alex")(x, y)`` has shape ``(B,)``.

    Args:
        net: ``"alex"`` (the usual metric) or ``"vgg"`` (closer to a classic perceptual loss).
        weights_path: a prepared ``lpips_<net>.safetensors`` file or a directory holding it; by default it is found
            with :func:`diffusers_brics.metrics.lpips_weights.resolve_lpips_weights`.

    The parameters never require gradients and the module stays in eval mode, but gradients flow to the inputs,
    so it can serve as a training loss. Inputs are RGB images scaled to [-1, 1], shape ``(B, 3, H, W)``, with
    ``H, W`` at least :attr:`min_size` (31 for AlexNet, 16 for VGG16); other inputs (integer dtypes, values outside
    [-1, 1], NaN, empty batches, mismatched shapes) raise ValueError. A prediction that requires grad may leave
    [-1, 1] (see :func:`diffusers_brics.metrics.inputs.check_image`).
    """

    def __init__(self, net: str = "alex", weights_path: Optional[PathLike] = None):
        super().__init__()
        self.net = check_net(net)
        self.backbone = nn.ModuleList(
            nn.Conv2d(cin, cout, k, stride=s, padding=p) for cin, cout, k, s, p in BACKBONE_CONVS[net]
        )
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in HEAD_CHANNELS[net])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.min_size = _min_input_size(net)

        self.weights_path: Path = resolve_lpips_weights(net, weights_path)
        self.load_state_dict(load_weights(net, self.weights_path), strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # A metric with fixed weights: keep it in eval mode even inside a model that is put in training mode.
        return super().train(False)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The five tapped backbone feature maps of already scaled inputs."""
        taps: List[torch.Tensor] = []
        convs = iter(self.backbone)
        for op in _LAYOUT[self.net]:
            if op == "C":
                x = F.relu(next(convs)(x))
            elif op == "T":
                taps.append(x)
            else:
                x = F.max_pool2d(x, kernel_size=int(op[1:]), stride=2)
        return taps

    def _check_rgb(self, t: torch.Tensor, name: str) -> None:
        """LPIPS' own input rules on top of the shared ones: three channels and at least ``min_size`` pixels."""
        if t.shape[1] != 3:
            raise ValueError(f"{name} must have shape (B, 3, H, W) (RGB in [-1, 1]), got {tuple(t.shape)}")
        if min(t.shape[2], t.shape[3]) < self.min_size:
            raise ValueError(
                f"{name} is {t.shape[2]}x{t.shape[3]}; LPIPS-{self.net} needs at least "
                f"{self.min_size}x{self.min_size} pixels"
            )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_image_pair(x, y, self._check_rgb)
        dtype = self.shift.dtype
        batch = x.shape[0]
        both = torch.cat([x.to(dtype), y.to(dtype)], dim=0)
        both = (both - self.shift) / self.scale

        total = both.new_zeros(batch)
        for feat, head in zip(self.features(both), self.heads):
            # vector_norm has a zero subgradient where a pixel's features are all zero (plain sqrt would give NaN)
            feat = feat / (torch.linalg.vector_norm(feat, dim=1, keepdim=True) + _EPS)
            diff = (feat[:batch] - feat[batch:]).square()
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total

    def extra_repr(self) -> str:
        return f"net={self.net!r}, version='0.1', weights={str(self.weights_path)!r}"


_CACHE: Dict[Tuple[str, str, Path], LPIPS] = {}
_CACHE_LOCK = threading.Lock()


def lpips(
    x: torch.Tensor, y: torch.Tensor, net: str = "alex", weights_path: Optional[PathLike] = None
) -> torch.Tensor:
    """LPIPS v0.1 distance between ``x`` and ``y`` (``(B, 3, H, W)`` in [-1, 1]); returns shape ``(B,)``.

    One :class:`LPIPS` module per (net, device, weights file) is built on first use and kept for later calls. The
    weights file is looked up at every call (:func:`~.lpips_weights.resolve_lpips_weights`), so a change of
    ``BRICS_LPIPS_WEIGHTS`` or ``BRICS_CACHE_DIR`` takes effect at the next call. Gradients flow to ``x`` and ``y``.
    """
    path = resolve_lpips_weights(net, weights_path)
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    key = (net, str(device), path.resolve())
    with _CACHE_LOCK:
        module = _CACHE.get(key)
        if module is None:
            module = LPIPS(net, weights_path=path).to(device)
            _CACHE[key] = module
    return module(x, y)


def clear_cache() -> None:
    """Forget the modules kept by :func:`lpips` (e.g. after a weights file has been rewritten in place)."""
    with _CACHE_LOCK:
        _CACHE.clear()
