import functools

import datasets
import numpy as np
import pytest

from diffusers_brics.data import emoji_data_files, load_emoji_dataset
from diffusers_brics.data.emoji import BACKGROUND, COLUMNS, EMOJI_DATA_DIR, RESOLUTIONS, SPLITS, emoji_split

# The counts documented in src/diffusers_brics/data/emoji/README.md (images per resolution, base emoji).
EXPECTED_IMAGES = {"train": 3133, "test": 393}
EXPECTED_BASES = {"train": 1718, "test": 193}


@functools.cache
def load(resolution, split):
    return load_emoji_dataset(resolution, split)


def sample_indices(dataset, count=40):
    return np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_loader_returns_rgb_images_of_the_resolution(resolution, split):
    dataset = load(resolution, split)
    assert isinstance(dataset, datasets.Dataset)
    assert tuple(dataset.column_names) == COLUMNS
    assert str(dataset.split) == split
    assert len(dataset) == EXPECTED_IMAGES[split]
    for index in sample_indices(dataset):
        image = dataset[index]["image"]
        assert image.mode == "RGB"
        assert image.size == (resolution, resolution)


def test_defaults_are_train_at_32():
    dataset = load_emoji_dataset()
    assert str(dataset.split) == "train"
    assert dataset[0]["image"].size == (32, 32)


def test_split_is_by_base_emoji():
    train, test = (load(32, split) for split in SPLITS)
    assert not set(train["base_unified"]) & set(test["base_unified"])
    for split, dataset in zip(SPLITS, (train, test)):
        assert all(emoji_split(base) == split for base in dataset["base_unified"])


def test_skin_tone_variants_are_on_the_side_of_their_base():
    side = {}
    for split in SPLITS:
        dataset = load(32, split)
        for unified, base in zip(dataset["unified"], dataset["base_unified"]):
            side[unified] = (split, base)
    variants = [(split, base) for unified, (split, base) in side.items() if unified != base]
    assert len(variants) > 1000  # five tones for each of a few hundred people emoji
    assert all(side[base][0] == split for split, base in variants if base in side)
    assert all(base in side for _, base in variants)  # every base image is there too
    assert any(split == "test" for split, _ in variants)


def test_split_sizes_are_as_documented():
    counts = {split: len(load(32, split)) for split in SPLITS}
    bases = {split: len(set(load(32, split)["base_unified"])) for split in SPLITS}
    assert counts == EXPECTED_IMAGES
    assert bases == EXPECTED_BASES
    assert 0.05 < bases["test"] / sum(bases.values()) < 0.15
    assert 0.05 < counts["test"] / sum(counts.values()) < 0.15
    for split in SPLITS:  # same rows, same order, at both resolutions
        assert load(32, split)["unified"] == load(64, split)["unified"]
    readme = (EMOJI_DATA_DIR / "README.md").read_text()
    for split in SPLITS:
        assert f"| {split} | {EXPECTED_IMAGES[split]} (" in readme


def test_images_are_real_artwork():
    dataset = load(64, "train")
    picks = [np.asarray(dataset[i]["image"]) for i in sample_indices(dataset, 60)]
    assert all(pixels.std() > 10 for pixels in picks)  # not constant
    assert len({pixels.tobytes() for pixels in picks}) == len(picks)  # not all the same
    assert len({pixels.reshape(-1, 3).mean(0).round().tobytes() for pixels in picks}) > 50  # varied colours
    corners = [tuple(pixels[0, 0]) for pixels in picks]
    assert sum(corner == BACKGROUND for corner in corners) > len(picks) // 2  # composited over the background


def test_resolutions_show_the_same_images():
    small, large = load(32, "test"), load(64, "test")
    for index in sample_indices(small, 10):
        pixels32 = np.asarray(small[index]["image"], dtype=np.float32)
        pixels64 = np.asarray(large[index]["image"], dtype=np.float32)
        pooled = pixels64.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        assert np.abs(pooled - pixels32).mean() < 8


def test_data_files_load_with_datasets_parquet(tmp_path):
    files = emoji_data_files(32)
    assert set(files) == set(SPLITS)
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path))
    assert {split: len(loaded[split]) for split in SPLITS} == EXPECTED_IMAGES
    assert isinstance(loaded["train"].features["image"], datasets.Image)
    assert loaded["test"][0]["image"].size == (32, 32)


def test_data_folder_is_small_and_licensed():
    files = sorted(path.name for path in EMOJI_DATA_DIR.iterdir())
    expected = [f"{split}-{resolution}.parquet" for split in SPLITS for resolution in RESOLUTIONS]
    assert files == sorted(["LICENSE", "README.md", "examples", *expected])  # examples: diffusers_brics.data.examples
    assert sum(path.stat().st_size for path in EMOJI_DATA_DIR.iterdir()) < 15 * 2**20
    assert "Apache License" in (EMOJI_DATA_DIR / "LICENSE").read_text()


@pytest.mark.parametrize("resolution", [16, 48, 128, "32", None, True])
def test_unknown_resolution_raises(resolution):
    with pytest.raises(ValueError, match="resolution"):
        load_emoji_dataset(resolution)
    with pytest.raises(ValueError, match="resolution"):
        emoji_data_files(resolution)


@pytest.mark.parametrize("split", ["validation", "Train", "", None])
def test_unknown_split_raises(split):
    with pytest.raises(ValueError, match="split"):
        load_emoji_dataset(32, split)
