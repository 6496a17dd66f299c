"""The example PNGs shipped with the package (`diffusers_brics.data.examples`) and `brics examples`: held-out emoji,
the very pixels of the dataset's rows, copied into a folder without replacing a file unless asked to."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffusers_brics import cli
from diffusers_brics.console import run_command
from diffusers_brics.data import example_images, save_example_images
from diffusers_brics.data.emoji import RESOLUTIONS, emoji_data_files, emoji_split
from diffusers_brics.data.examples import EXAMPLE_NAMES


def dataset_rows(resolution: int, split: str) -> dict[str, dict]:
    """The rows of the stored ``split`` at ``resolution`` by short name."""
    table = pq.read_table(emoji_data_files(resolution)[split], columns=["image", "short_name", "base_unified"])
    return {row["short_name"]: row for row in table.to_pylist()}


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_the_examples_are_held_out_rows_of_the_dataset_pixel_for_pixel(resolution):
    paths = example_images(resolution)
    assert [path.name for path in paths] == [f"{name}.png" for name in EXAMPLE_NAMES]
    assert 6 <= len(paths) == len(set(paths))
    rows = dataset_rows(resolution, "test")
    train_names = set(dataset_rows(resolution, "train"))
    for name, path in zip(EXAMPLE_NAMES, paths):
        assert path.stat().st_size < 8_000, path
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (resolution, resolution)
            pixels = np.asarray(image)
        assert name in rows and name not in train_names and emoji_split(rows[name]["base_unified"]) == "test"
        stored = np.asarray(Image.open(io.BytesIO(rows[name]["image"]["bytes"])).convert("RGB"))
        assert np.array_equal(pixels, stored), name


def test_save_example_images_copies_them_and_replaces_files_only_with_overwrite(tmp_path):
    folder = tmp_path / "new" / "folder"
    written = save_example_images(folder, 64)
    assert written == [folder / f"{name}.png" for name in EXAMPLE_NAMES]
    assert all(path.read_bytes() == source.read_bytes() for path, source in zip(written, example_images(64)))

    with pytest.raises(FileExistsError, match="grinning.png' exists \\(and 7 more\\): pass overwrite=True"):
        save_example_images(folder, 32)
    assert save_example_images(folder, 32, overwrite=True) == written
    assert all(Image.open(path).size == (32, 32) for path in written)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "koala.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="koala.png' exists: pass overwrite=True"):
        save_example_images(mine)
    assert [path.name for path in mine.iterdir()] == ["koala.png"]  # refused before anything was written
    assert (mine / "koala.png").read_bytes() == b"mine"

    with pytest.raises(ValueError, match="resolution must be one of"):
        save_example_images(tmp_path / "other", 48)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="folder: .* is a file"):
        save_example_images(tmp_path / "file")


def test_brics_examples_prints_the_paths_it_writes_and_replaces_only_with_overwrite(tmp_path, capsys):
    folder = tmp_path / "images"
    assert cli.main(["examples", "--output-dir", str(folder)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(folder / f"{name}.png") for name in EXAMPLE_NAMES]
    assert all(Image.open(path).size == (32, 32) for path in printed)

    assert run_command(cli.main, ["examples", "--output_dir", str(folder), "--resolution", "64"], prog="brics") == 1
    error = capsys.readouterr().err
    assert "grinning.png' exists (and 7 more of the outputs): pass --overwrite" in error and "--output_dir" in error
    assert Image.open(printed[0]).size == (32, 32)
    assert cli.main(["examples", "--output_dir", str(folder), "--resolution", "64", "--overwrite"]) == 0
    assert capsys.readouterr().out.split() == printed
    assert all(Image.open(path).size == (64, 64) for path in printed)

    with pytest.raises(SystemExit):  # a resolution the dataset does not have: argparse's usage error
        cli.main(["examples", "--output_dir", str(folder), "--resolution", "48"])
    assert "invalid choice" in capsys.readouterr().err
