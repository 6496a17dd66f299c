#!/usr/bin/env python
"""Build the emoji dataset shipped in ``src/diffusers_brics/data/emoji/`` from the npm package
``emoji-datasource-google@16.0.0`` (Google Noto emoji artwork, 64x64 RGBA PNGs).

    python scripts/build_emoji_dataset.py                                 # fetches the package with `npm pack`
    python scripts/build_emoji_dataset.py --npm-dir path/to/package       # an unpacked copy (holds emoji.json)

Every base emoji and each of its skin-tone variants whose Google PNG exists (and is flagged ``has_img_google``)
is alpha-composited over the fixed background ``BACKGROUND``, resized with Lanczos to each of ``RESOLUTIONS``,
stored losslessly (WebP lossless by default: PNG does not fit the package's size budget) and written to
``{split}-{resolution}.parquet`` with the columns image, short_name, unified, base_unified, category. Variants
of multi-person emoji whose people have different skin tones are left out unless ``--mixed-skin-tones``. The split
is by base emoji (``emoji_split``), so skin-tone variants share their base's side. The same inputs give
byte-identical files. Also writes the folder's LICENSE (Apache-2.0, the artwork's licence) and README.md.
Needs Pillow (with WebP support, as in its wheels), ``datasets`` and, without ``--npm-dir``, ``npm``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from diffusers_brics.data.emoji import (  # noqa: E402 (after the sys.path entry above)
    BACKGROUND,
    RESOLUTIONS,
    SOURCE_PACKAGE,
    SPLITS,
    STORED_COLUMNS,
    TEST_PERCENT,
    emoji_split,
)

PACKAGE_NAME, PACKAGE_VERSION = SOURCE_PACKAGE.rsplit("@", 1)
IMAGE_DIR = Path("img") / "google" / "64"
APACHE_LICENSE_FILES = (Path("/usr/share/common-licenses/Apache-2.0"),)
DEFAULT_OUT = REPO / "src" / "diffusers_brics" / "data" / "emoji"


# ---------------------------------------------------------------------------------------------- source package


def fetch_npm_package(workdir: Path) -> Path:
    """``npm pack`` the pinned package into ``workdir`` and unpack it; returns the package folder."""
    spec = f"{PACKAGE_NAME}@{PACKAGE_VERSION}"
    subprocess.run(["npm", "pack", spec, "--silent"], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    (tarball,) = workdir.glob(f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz")
    with tarfile.open(tarball) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(workdir, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            archive.extractall(workdir)
    return workdir / "package"


def resolve_package_dir(npm_dir: Path) -> Path:
    """Accept either the package folder itself or a folder holding ``package/`` (an unpacked ``npm pack``)."""
    for candidate in (npm_dir, npm_dir / "package", npm_dir / "node_modules" / PACKAGE_NAME):
        if (candidate / "emoji.json").is_file():
            return candidate
    raise SystemExit(f"no emoji.json in {npm_dir} (nor in its package/ or node_modules/{PACKAGE_NAME}/)")


def check_version(package_dir: Path) -> None:
    meta = json.loads((package_dir / "package.json").read_text())
    if (meta.get("name"), meta.get("version")) != (PACKAGE_NAME, PACKAGE_VERSION):
        raise SystemExit(
            f"{package_dir} holds {meta.get('name')}@{meta.get('version')}, expected {PACKAGE_NAME}@{PACKAGE_VERSION}"
        )


# ----------------------------------------------------------------------------------------------------- records


def collect_records(package_dir: Path, mixed_skin_tones: bool = False) -> tuple[list[dict], list[str]]:
    """One record per image to build (bases in ``sort_order``, each followed by its variants in code order),
    plus a note for every entry left out. Without ``mixed_skin_tones`` a multi-person emoji keeps only its
    variants whose people share one skin tone, so every base has at most one variant per tone."""
    entries = json.loads((package_dir / "emoji.json").read_text(encoding="utf-8"))
    modifier_names = {e["unified"]: e["short_name"] for e in entries if e.get("category") == "Component"}
    records, skipped = [], []
    mixed_left_out = 0

    def usable(item: dict) -> bool:
        if item.get("has_img_google", True) is False:
            skipped.append(f"{item['unified']}: has_img_google is false")
            return False
        if not (package_dir / IMAGE_DIR / item["image"]).is_file():
            skipped.append(f"{item['unified']}: {IMAGE_DIR / item['image']} missing")
            return False
        return True

    for entry in sorted(entries, key=lambda e: (e.get("sort_order", 0), e["unified"])):
        base = entry["unified"]
        if usable(entry):
            records.append(
                {
                    "file": entry["image"],
                    "short_name": entry["short_name"],
                    "unified": base,
                    "base_unified": base,
                    "category": entry["category"],
                }
            )
        # A variant goes with its base even when the base image itself is missing: the split is by base code.
        for tones, variant in sorted((entry.get("skin_variations") or {}).items()):
            distinct = list(dict.fromkeys(tones.split("-")))
            if len(distinct) > 1 and not mixed_skin_tones:
                mixed_left_out += 1
                continue
            if usable(variant):
                suffix = "".join(f"::{modifier_names.get(tone, tone)}" for tone in distinct)
                records.append(
                    {
                        "file": variant["image"],
                        "short_name": entry["short_name"] + suffix,
                        "unified": variant["unified"],
                        "base_unified": base,
                        "category": entry["category"],
                    }
                )
    if mixed_left_out:
        skipped.append(f"{mixed_left_out} mixed-skin-tone variants of multi-person emoji (`--mixed-skin-tones`)")
    return records, skipped


# ------------------------------------------------------------------------------------------------------ images


def composite(path: Path) -> Image.Image:
    """The artwork alpha-blended over ``BACKGROUND``, as RGB."""
    with Image.open(path) as source:
        rgba = source.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "webp":
        image.save(buffer, format="WEBP", lossless=True, quality=100, method=6, exact=True)
    else:
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def render(task: tuple[str, str]) -> dict[int, bytes]:
    """Encoded images of one PNG at every resolution (runs in a worker process)."""
    path, image_format = task
    image = composite(Path(path))
    out = {}
    for resolution in RESOLUTIONS:
        resized = (
            image
            if image.size == (resolution, resolution)
            else image.resize((resolution, resolution), Image.Resampling.LANCZOS)
        )
        out[resolution] = encode(resized, image_format)
    return out


# ------------------------------------------------------------------------------------------------------ output


def write_parquet(rows: list[dict], images: list[bytes], path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "short_name": datasets.Value("string"),
            "unified": datasets.Value("string"),
            "base_unified": datasets.Value("string"),
            "category": datasets.Value("string"),
        }
    )
    assert tuple(features) == STORED_COLUMNS
    columns = {name: [row[name] for row in rows] for name in STORED_COLUMNS if name != "image"}
    columns["image"] = [{"bytes": data, "path": None} for data in images]
    # The schema carries the ``datasets`` feature metadata, so ``image`` loads as an Image feature. Written with
    # pyarrow directly (plain zstd parquet, 100-row groups) to stay readable by old ``datasets``/pyarrow releases.
    table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
    pq.write_table(table, path, compression="zstd", row_group_size=100)


def apache_license_text(package_dir: Path, out_dir: Path) -> str:
    candidates = [package_dir / "LICENSE", *APACHE_LICENSE_FILES, out_dir / "LICENSE"]
    for candidate in candidates:
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            if "Apache License" in text[:500] and "Version 2.0" in text[:500]:
                return text
    raise SystemExit("no Apache-2.0 licence text found in: " + ", ".join(str(c) for c in candidates))


def library_versions() -> str:
    import PIL
    import pyarrow
    from PIL import features

    return f"Pillow {PIL.__version__} (libwebp {features.version('webp')}), pyarrow {pyarrow.__version__}"


def readme_text(
    counts: dict,
    bases: dict,
    categories: dict,
    skipped: list[str],
    image_format: str,
    metadata_license: str,
    sizes: dict,
    mixed_skin_tones: bool,
) -> str:
    r, g, b = BACKGROUND
    sizes_text = " and ".join(f"{n}x{n}" for n in RESOLUTIONS)
    format_name = {"webp": "WebP", "png": "PNG"}[image_format]
    total = sum(counts.values())
    if mixed_skin_tones:
        variants = "every skin-tone variant"
        selection = ["   and whose `has_img_google` is not false, with every skin-tone combination."]
    else:
        variants = "its skin-tone variants (one per tone)"
        selection = [
            "   and whose `has_img_google` is not false, with one variant per skin tone: the combinations of",
            "   multi-person emoji (couples, handshake, people holding hands) whose people have different skin",
            "   tones are left out, which keeps those 13 emoji from weighing 26 images each and the folder within",
            "   its size budget (`--mixed-skin-tones` keeps them).",
        ]
    if image_format == "webp":
        storage = [
            "4. Stored as lossless WebP (Pillow, `lossless=True, quality=100, method=6`): the pixels are exactly",
            "   those of steps 2-3. Lossless PNG (`--image-format png`) would not fit the size budget.",
        ]
    else:
        storage = ["4. Stored as PNG (Pillow, `optimize=True`)."]
    lines = [
        "# Emoji images (Google Noto emoji)",
        "",
        "A small real colour image dataset for demos and tests that need no network: the Google Noto emoji",
        f"artwork, every base emoji and {variants}, at {sizes_text}. Load it with",
        "`diffusers_brics.data.load_emoji_dataset(resolution, split)`, or with",
        '`datasets.load_dataset("parquet", data_files=diffusers_brics.data.emoji_data_files(resolution))`.',
        "",
        "## Source and licence",
        "",
        "- Artwork: [Noto Emoji](https://github.com/googlefonts/noto-emoji) by Google, as the 64x64 PNGs",
        f"  (`img/google/64/`) of the npm package [`{PACKAGE_NAME}`](https://github.com/iamcal/emoji-data)",
        f"  {PACKAGE_VERSION} by Cal Henderson (iamcal). The Noto emoji images are licensed under the Apache",
        "  License 2.0, whose text is in `LICENSE` beside this file; Noto's flag images are, by Noto Emoji's own",
        "  account, in the public domain or otherwise exempt from copyright. The images here are modified: they",
        "  are composited over a background and resized as described below.",
        "- Metadata (`short_name`, `unified`, `category`) comes from the package's `emoji.json`, published under",
        "  the MIT licence:",
        "",
        *("    " + line if line else "" for line in metadata_license.strip().splitlines()),
        "",
        "## Columns",
        "",
        "| column | content |",
        "| --- | --- |",
        f"| `image` | `datasets.Image`: lossless {format_name} bytes that decode to an RGB PIL image |",
        "| `short_name` | the emoji's short name; a skin-tone variant adds its modifier, e.g. `santa::skin-tone-2` |",
        "| `unified` | the emoji's code points, e.g. `1F385-1F3FB` |",
        "| `base_unified` | the code points of its base emoji (equal to `unified` for a base emoji) |",
        "| `category` | the emoji's category, e.g. `Smileys & Emotion` (a variant has its base's) |",
        "",
        "## How it was built",
        "",
        "1. Every entry of `emoji.json` and every value of its `skin_variations` whose `img/google/64/` PNG exists",
        *selection,
        f'2. Alpha-composited ("over", in 8-bit sRGB) onto the opaque background RGB ({r}, {g}, {b}) and converted',
        "   to RGB.",
        f"3. Resized with Pillow's Lanczos filter to {sizes_text} (the 64x64 images are the composited originals).",
        *storage,
        f"5. Split by base emoji: `test` when `int(sha1(base_unified).hexdigest(), 16) % 100 < {TEST_PERCENT}`,",
        "   `train` otherwise (`diffusers_brics.data.emoji.emoji_split`), so every skin-tone variant is on the",
        "   same side as its base and no base emoji is in both splits.",
        "",
        "## Counts",
        "",
        "The same rows, in the same order, at each resolution.",
        "",
        "| split | images | base emoji | " + " | ".join(f"`{{split}}-{n}.parquet`" for n in RESOLUTIONS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in RESOLUTIONS) + " |",
    ]
    for split in SPLITS:
        lines.append(
            f"| {split} | {counts[split]} ({100 * counts[split] / total:.1f}%) | {bases[split]} | "
            + " | ".join(f"{sizes[(split, n)] / 1e6:.2f} MB" for n in RESOLUTIONS)
            + " |"
        )
    lines.append(
        f"| total | {total} | {sum(bases.values())} | "
        + " | ".join(f"{sum(sizes[(split, n)] for split in SPLITS) / 1e6:.2f} MB" for n in RESOLUTIONS)
        + " |"
    )
    lines += ["", "| category | " + " | ".join(SPLITS) + " |", "| --- | " + " | ".join("---" for _ in SPLITS) + " |"]
    for name, count in sorted(categories.items()):
        lines.append(f"| {name} | " + " | ".join(str(count[split]) for split in SPLITS) + " |")
    lines += [
        "",
        "Left out: " + ("; ".join(skipped) if skipped else "nothing (every listed image exists)") + ".",
        "",
        "## Rebuilding",
        "",
        'From the repository root, with the `train` extra installed (`pip install -e ".[train]"`) and `npm`:',
        "",
        "    python scripts/build_emoji_dataset.py                             # fetches the package with npm pack",
        "    python scripts/build_emoji_dataset.py --npm-dir path/to/package   # or an unpacked copy",
        "",
        f"Built with {library_versions()}; the same package and library versions give byte-identical files.",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- main


def build(package_dir: Path, out_dir: Path, image_format: str, jobs: int, mixed_skin_tones: bool) -> None:
    check_version(package_dir)
    records, skipped = collect_records(package_dir, mixed_skin_tones)
    tasks = [(str(package_dir / IMAGE_DIR / record["file"]), image_format) for record in records]
    print(f"{len(records)} images from {package_dir} ({len(skipped)} left out), {jobs} process(es)", flush=True)
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            rendered = list(pool.map(render, tasks, chunksize=32))
    else:
        rendered = [render(task) for task in tasks]

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.parquet"):
        stale.unlink()
    splits = [emoji_split(record["base_unified"]) for record in records]
    sizes = {}
    for split in SPLITS:
        rows = [i for i, s in enumerate(splits) if s == split]
        for resolution in RESOLUTIONS:
            path = out_dir / f"{split}-{resolution}.parquet"
            write_parquet([records[i] for i in rows], [rendered[i][resolution] for i in rows], path)
            sizes[(split, resolution)] = path.stat().st_size

    counts = Counter(splits)
    bases = Counter(emoji_split(b) for b in {record["base_unified"] for record in records})
    categories: dict[str, Counter] = {}
    for record, split in zip(records, splits):
        categories.setdefault(record["category"], Counter())[split] += 1
    metadata_license = (package_dir / "LICENSE").read_text(encoding="utf-8")
    (out_dir / "LICENSE").write_text(apache_license_text(package_dir, out_dir), encoding="utf-8")
    (out_dir / "README.md").write_text(
        readme_text(counts, bases, categories, skipped, image_format, metadata_license, sizes, mixed_skin_tones),
        encoding="utf-8",
    )
    for note in skipped:
        print("left out:", note)
    for split in SPLITS:
        print(f"{split}: {counts[split]} images ({bases[split]} base emoji) per resolution")
    total = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    print(f"wrote {out_dir} ({total / 1e6:.2f} MB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npm-dir", type=Path, help=f"unpacked {PACKAGE_NAME} package (default: npm pack it)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--image-format",
        choices=("webp", "png"),
        default="webp",
        help="lossless encoding of the images (default: %(default)s)",
    )
    parser.add_argument(
        "--mixed-skin-tones",
        action="store_true",
        help="also keep the variants of multi-person emoji whose people have different skin tones "
        "(260 more images, about 1.1 MB more than the package's budget allows)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = parser.parse_args(argv)

    options = {"image_format": args.image_format, "jobs": args.jobs, "mixed_skin_tones": args.mixed_skin_tones}
    if args.npm_dir is not None:
        build(resolve_package_dir(args.npm_dir), args.out, **options)
        return
    if shutil.which("npm") is None:
        raise SystemExit("npm not found: install it or pass --npm-dir")
    with tempfile.TemporaryDirectory() as workdir:
        build(fetch_npm_package(Path(workdir)), args.out, **options)


if __name__ == "__main__":
    main()
