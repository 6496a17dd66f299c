"""Small real colour image dataset shipped with the package: Google Noto emoji artwork.

The images are the 64x64 Noto emoji PNGs of the ``emoji-datasource-google`` npm package (16.0.0), every base
emoji and its skin-tone variants (one per tone), composited over a light grey background and resized to 32x32
and 64x64. They live as parquet files in ``diffusers_brics/data/emoji/`` (see the README there for attribution,
counts and how they were built) and load without the network:

    from diffusers_brics.data import load_emoji_dataset, emoji_data_files

    train = load_emoji_dataset(32, "train")        # datasets.Dataset; train[0]["image"] is a 32x32 RGB PIL image
    train[0]["caption"]                            # "smiley, smileys and emotion" (see emoji_caption)
    dataset = datasets.load_dataset("parquet", data_files=emoji_data_files(64))   # DatasetDict: train, test

The split is by base emoji (see :func:`emoji_split`), so a skin-tone variant is always on its base's side.
Captions for text-to-image training are computed from the stored metadata when loading (see
:func:`emoji_caption`); ``emoji_data_files`` gives the stored columns only.
Loading needs the ``datasets`` package (``pip install "diffusers-brics[train]"``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

EMOJI_DATA_DIR = Path(__file__).resolve().parent / "emoji"
RESOLUTIONS = (32, 64)
SPLITS = ("train", "test")
BACKGROUND = (240, 240, 240)  # RGB the transparent artwork is composited over
TEST_PERCENT = 10  # share of base emoji whose hash bucket (0-99) sends them to "test"
SOURCE_PACKAGE = "emoji-datasource-google@16.0.0"
STORED_COLUMNS = ("image", "short_name", "unified", "base_unified", "category")  # the parquet files' columns
COLUMNS = (*STORED_COLUMNS, "caption")  # those of load_emoji_dataset: the stored ones and the computed caption
# Fitzpatrick modifiers (code point in ``unified``) -> the skin tone named in a caption
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    return int(resolution)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def emoji_split(base_unified: str) -> str:
    """The split of a base emoji: ``"test"`` when the SHA-1 of its code points (e.g. ``"1F385"``) falls in
    the first ``TEST_PERCENT`` of 100 buckets, ``"train"`` otherwise. Skin-tone variants use their base's code."""
    bucket = int(hashlib.sha1(base_unified.upper().encode("ascii")).hexdigest(), 16) % 100
    return "test" if bucket < TEST_PERCENT else "train"


def emoji_caption(short_name: str, unified: str, category: str) -> str:
    """A text caption of an emoji: its short name in words, its skin tone(s) and its category, e.g.
    ``"grinning, smileys and emotion"`` or ``"wave, medium skin tone, people and body"``.

    ``_`` and ``-`` within the short name become spaces, and the ``::skin-tone-N`` suffix of a variant's short
    name gives way to the tone named from the Fitzpatrick modifiers in ``unified`` (``SKIN_TONES``); a modifier
    itself (category Component) is captioned by its tone alone. The category is lowercased, with "&" as "and".
    """
    codes = unified.upper().split("-")
    tones = list(dict.fromkeys(SKIN_TONES[code] for code in codes if code in SKIN_TONES))
    name = re.sub(r"(?<=\w)[_-]+(?=\w)", " ", short_name.split("::")[0])  # keeps the sign of "-1"
    words = [] if codes[0] in SKIN_TONES else [name]
    return ", ".join([*words, *tones, category.replace("&", "and").lower()])


def emoji_data_files(resolution: int = 32) -> dict[str, str]:
    """Paths of the parquet files at ``resolution`` by split, ready for
    ``datasets.load_dataset("parquet", data_files=emoji_data_files(resolution))`` (``STORED_COLUMNS``, without
    the caption)."""
    resolution = _check_resolution(resolution)
    return {split: str(EMOJI_DATA_DIR / f"{split}-{resolution}.parquet") for split in SPLITS}


def load_emoji_dataset(resolution: int = 32, split: str = "train") -> datasets.Dataset:
    """One split of the emoji dataset at ``resolution`` (32 or 64) as an in-memory ``datasets.Dataset``.

    Columns: ``image`` (RGB PIL image, ``resolution`` x ``resolution``), ``short_name``, ``unified`` (the emoji's
    code points, e.g. ``"1F385-1F3FB"``), ``base_unified`` (the code points of its base emoji; equal to
    ``unified`` for a base emoji), ``category`` and ``caption`` (computed by :func:`emoji_caption`). Nothing is
    downloaded or written to a cache.
    """
    resolution = _check_resolution(resolution)
    split = _check_split(split)
    try:
        import datasets
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'load_emoji_dataset needs the "datasets" package: pip install "diffusers-brics[train]"'
        ) from error

    path = Path(emoji_data_files(resolution)[split])
    table = pq.read_table(path)
    metadata = (table.column(name).to_pylist() for name in ("short_name", "unified", "category"))
    captions = [emoji_caption(*row) for row in zip(*metadata)]
    table = table.append_column("caption", pa.array(captions, type=pa.string()))
    # the file and the captions: a change of either gives a new fingerprint, hence no stale cached map()
    fingerprint = hashlib.sha1("\n".join([f"{path.name}:{path.stat().st_size}", *captions]).encode()).hexdigest()
    return datasets.Dataset(table, split=datasets.NamedSplit(split), fingerprint=fingerprint)
