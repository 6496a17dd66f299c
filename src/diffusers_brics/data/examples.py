"""Example images shipped with the package: eight held-out emoji as PNG files, to try a model on at once.

    from diffusers_brics.data import example_images, save_example_images

    example_images()                      # [.../data/emoji/examples/32/grinning.png, ...]: 32x32 RGB PNGs
    example_images(64)                    # the same emoji at 64x64
    save_example_images("example_images") # copies of them in a folder of yours: the paths written

or from the command line, ``brics examples --output_dir example_images [--resolution 64]``; then, say,
``brics reconstruct example_images/koala.png --model M``. The Space (``space/app.py``) offers them as examples.

The images are rows of the embedded emoji dataset's ``test`` split (``EXAMPLE_NAMES`` are their ``short_name``), so
no model trained on its ``train`` split has seen them: Google's Noto emoji artwork, licensed under the Apache License
2.0, composited over a light grey background and resized (``data/emoji/README.md`` and ``LICENSE`` beside them say
how, and by whom). ``scripts/build_example_images.py`` writes them from the dataset's parquet files, pixel for pixel.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .emoji import EMOJI_DATA_DIR, _check_resolution

EXAMPLES_DIR = EMOJI_DATA_DIR / "examples"  # one folder per resolution: examples/32/NAME.png, examples/64/NAME.png
# short names of held-out emoji (the test split), in the order `example_images` lists them
EXAMPLE_NAMES = (
    "grinning",
    "astonished",
    "face_with_monocle",
    "koala",
    "watermelon",
    "jack_o_lantern",
    "sunrise_over_mountains",
    "astronaut",
)


def example_images(resolution: int = 32) -> list[Path]:
    """Paths of the example PNGs at ``resolution`` (32 or 64): one per name of ``EXAMPLE_NAMES``, in that order,
    each ``NAME.png``, an RGB image of ``resolution`` x ``resolution`` pixels. They are files of the installed
    package: read them, or copy them with `save_example_images`, rather than writing to them."""
    resolution = _check_resolution(resolution)
    return [EXAMPLES_DIR / str(resolution) / f"{name}.png" for name in EXAMPLE_NAMES]


def save_example_images(folder: str | os.PathLike, resolution: int = 32, overwrite: bool = False) -> list[Path]:
    """Copy the example PNGs at ``resolution`` (`example_images`) into ``folder`` (created if missing) and return
    the paths written, ``folder/NAME.png`` in the order of ``EXAMPLE_NAMES``.

    A file already there is replaced only with ``overwrite=True``; without it a FileExistsError names it, before
    anything is written. ``folder`` being a file is a NotADirectoryError."""
    sources = example_images(resolution)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"folder: {str(folder)!r} is a file; expected a folder (created if missing)")
    outputs = [folder / source.name for source in sources]
    for output in outputs:
        if output.is_dir():
            raise IsADirectoryError(f"folder: {str(output)!r} is a folder; choose another folder")
    existing = [output for output in outputs if output.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"folder: {str(existing[0])!r} exists{more}: pass overwrite=True to replace it, or choose another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for source, output in zip(sources, outputs):
        shutil.copyfile(source, output)
    return outputs
