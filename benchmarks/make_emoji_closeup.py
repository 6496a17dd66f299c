"""A close-up variant of the embedded emoji images, to tell data from model in the stage-1 grid-usage figures.

The emoji artwork sits on a flat background with a margin around it, so near the image border most images
look the same, and an encoder has no reason to spread its key codes there: the nodes of a fine dense grid level
that only key codes near 0 or 1 at those positions would read stay unread (see the benchmark's unread-node
map). This variant crops the central ``--crop`` pixels of the 64x64 images and resizes them to ``--resolution``,
so the artwork fills more of the frame. It keeps the split by base emoji and saves a `DatasetDict` (``train``,
``test``) with `save_to_disk`, which ``--dataset_name`` reads:

    python benchmarks/make_emoji_closeup.py /tmp/emoji-closeup
    python benchmarks/train_ae_benchmark.py --minutes 10 --output /tmp/bench-closeup -- --perceptual_weight 0 \\
        --gan_weight 0 --grid_learning_rate 1e-2 --dataset_name /tmp/emoji-closeup
"""

from __future__ import annotations

import argparse

from datasets import DatasetDict
from PIL import Image

from diffusers_brics.data import load_emoji_dataset

STORED = 64  # the embedded images the close-ups are cut from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="folder for save_to_disk")
    parser.add_argument("--crop", type=int, default=48, help=f"side of the central crop of the {STORED}-pixel images")
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args()
    if not 0 < args.crop <= STORED:
        parser.error(f"--crop must be in [1, {STORED}], got {args.crop}")
    if args.resolution < 1:
        parser.error(f"--resolution must be positive, got {args.resolution}")

    margin = (STORED - args.crop) // 2
    box = (margin, margin, margin + args.crop, margin + args.crop)

    def close_up(batch: dict) -> dict:
        batch["image"] = [image.convert("RGB").crop(box).resize((args.resolution,) * 2, Image.BICUBIC)
                          for image in batch["image"]]
        return batch

    splits = {split: load_emoji_dataset(STORED, split).map(close_up, batched=True) for split in ("train", "test")}
    DatasetDict(splits).save_to_disk(args.output)
    print(f"{args.output}: " + ", ".join(f"{name} {len(data)}" for name, data in splits.items())
          + f" images, central {args.crop}x{args.crop} of {STORED}x{STORED} at {args.resolution}x{args.resolution}")


if __name__ == "__main__":
    main()
