#!/usr/bin/env python
"""Write the example PNGs shipped in ``src/diffusers_brics/data/emoji/examples/`` from the embedded emoji dataset.

    python scripts/build_example_images.py

For each resolution of the dataset (32, 64) and each short name of ``EXAMPLE_NAMES`` (rows of the ``test`` split),
the row's image decoded from ``test-{resolution}.parquet`` (lossless WebP) and saved as
``examples/{resolution}/{short_name}.png``: the same pixels, in a format any program opens. Also writes the
folder's README.md (what the images are, their source and licence). Needs Pillow and pyarrow (``pip install -e
".[train]"``); the same library versions give byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from diffusers_brics.data.emoji import RESOLUTIONS, emoji_data_files  # noqa: E402 (after the sys.path entry)
from diffusers_brics.data.examples import EXAMPLE_NAMES, EXAMPLES_DIR  # noqa: E402

README = """# Example images

Eight emoji of the embedded dataset's `test` split (held out from training), as PNG files, at 32x32 (`32/`) and
64x64 (`64/`):

{names}

`diffusers_brics.data.example_images(resolution)` lists them, `diffusers_brics.data.save_example_images(folder,
resolution)` and `brics examples --output_dir DIR` copy them.

They are the rows of `../test-{{32,64}}.parquet` of those short names, decoded and saved as PNG
(`scripts/build_example_images.py`), pixel for pixel. The artwork is Google's Noto Emoji, licensed under the Apache
License 2.0 (`../LICENSE`), modified: composited over a light grey background and resized. `../README.md` says
where it comes from and how it was built.
"""


def build(out_dir: Path = EXAMPLES_DIR) -> list[Path]:
    """Write every example PNG and the README into ``out_dir``; returns the PNG paths."""
    written = []
    for resolution in RESOLUTIONS:
        table = pq.read_table(emoji_data_files(resolution)["test"], columns=["image", "short_name"]).to_pylist()
        rows = {row["short_name"]: row for row in table}
        missing = [name for name in EXAMPLE_NAMES if name not in rows]
        if missing:
            raise SystemExit(f"not in the test split at {resolution}x{resolution}: {missing}")
        folder = out_dir / str(resolution)
        folder.mkdir(parents=True, exist_ok=True)
        for name in EXAMPLE_NAMES:
            image = Image.open(io.BytesIO(rows[name]["image"]["bytes"])).convert("RGB")
            path = folder / f"{name}.png"
            image.save(path, optimize=True)
            written.append(path)
    names = ", ".join(f"`{name}`" for name in EXAMPLE_NAMES)
    (out_dir / "README.md").write_text(README.format(names=names))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=EXAMPLES_DIR, help="where the PNGs go")
    args = parser.parse_args(argv)
    for path in build(args.out_dir):
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
