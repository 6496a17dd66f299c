"""Training data that is not clean: image modes, small images, unreadable files (skipped and counted, or fatal)."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_brics.training.data import (
    ImageDataset,
    SkippedImages,
    UnreadableImage,
    collate_images,
    image_transform,
    to_rgb,
)

ROOT = Path(__file__).resolve().parents[1]


def png_bytes(image: Image.Image, format: str = "PNG") -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.fromarray(np.full((4, 4), 77, np.uint8), mode="L"), (77, 77, 77)),
        (Image.fromarray(np.full((4, 4), 40000, np.uint16)), (156, 156, 156)),  # 16-bit: 40000 / 65535 * 255
        (Image.fromarray(np.full((4, 4), 0.5, np.float32) * 255, mode="F"), (128, 128, 128)),
        (Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (255, 255, 255)),  # transparent: the white background
        (Image.new("RGBA", (4, 4), (0, 0, 0, 128)), (127, 127, 127)),  # half transparent black over white
        (Image.new("LA", (4, 4), (0, 255)), (0, 0, 0)),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
    ],
    ids=["grayscale", "16-bit", "float", "transparent", "half-transparent", "gray-alpha", "cmyk"],
)
def test_every_mode_becomes_8_bit_rgb(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == expected
    # and survives a round trip through a file (TIFF keeps every one of these modes) and the transform
    tensor = image_transform(4)(png_bytes(image, "TIFF"))
    assert tensor.shape == (3, 4, 4) and float(tensor.min()) >= -1 and float(tensor.max()) <= 1


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert to_rgb(palette).getpixel((0, 0)) == (200, 100, 50)
    palette.info["transparency"] = 1
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_images_smaller_than_the_resolution_are_enlarged_then_cropped():
    small = Image.fromarray((np.random.default_rng(0).random((10, 20, 3)) * 255).astype(np.uint8))
    out = image_transform(32)(png_bytes(small))
    assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_unreadable_images_are_skipped_counted_or_fatal(tmp_path):
    good = png_bytes(Image.new("RGB", (8, 8), (255, 0, 0)))
    (tmp_path / "cut.png").write_bytes(good["bytes"][:20])
    rows = [{"image": good}, {"image": {"bytes": None, "path": str(tmp_path / "cut.png")}}, {"image": good}]
    dataset = ImageDataset(rows, "image", image_transform(4))
    image, _, skipped = dataset[1]  # the unreadable row: the next readable one stands in
    assert skipped == [str(tmp_path / "cut.png")] and torch.equal(image, dataset[0][0])
    batch = collate_images([dataset[i] for i in range(3)])
    assert batch["images"].shape == (3, 3, 4, 4) and batch["skipped"] == [str(tmp_path / "cut.png")]
    with pytest.raises(UnreadableImage, match="cut.png cannot be read"):
        ImageDataset(rows, "image", image_transform(4), strict=True)[1]
    with pytest.raises(ValueError, match="none of the 1 images"):
        ImageDataset(rows[1:2], "image", image_transform(4))[0]

    class Accelerator:
        device, num_processes = torch.device("cpu"), 1

    class Log:
        messages = []

        def warning(self, message):
            self.messages.append(message)

    counter, log = SkippedImages(), Log()
    counter.add(batch["skipped"] * 2)
    counter.report(Accelerator(), 0, log)
    assert log.messages == [f"epoch 0: 1 unreadable image(s) skipped (e.g. {tmp_path / 'cut.png'}); --strict_data "
                            "stops at the first one instead"]
    counter.report(Accelerator(), 1, log)
    assert len(log.messages) == 1  # nothing more to report


def test_training_on_a_folder_with_a_corrupt_image(tmp_path, random_image_folder):
    folder = random_image_folder(12)
    (folder / "zz_broken.png").write_bytes(b"not a png at all")
    command = [sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--preset", "tiny", "--train_data_dir",
               str(folder), "--validation_fraction", "0.25", "--train_batch_size", "3", "--max_train_steps", "4",
               "--checkpointing_steps", "4", "--validation_steps", "100", "--perceptual_weight", "0", "--gan_weight",
               "0", "--report_to", "none", "--output_dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unreadable image(s) skipped (e.g." in done.stderr and "zz_broken.png" in done.stderr
    strict = subprocess.run(command + ["--strict_data", "--output_dir", str(tmp_path / "strict")], capture_output=True,
                            text=True, timeout=300, env=env)
    assert strict.returncode != 0 and "zz_broken.png cannot be read" in strict.stderr
