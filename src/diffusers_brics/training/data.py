"""Image data for training: a Hub or local `datasets` dataset, an image folder, or the embedded emoji set.

Transforms are written with PIL and numpy (resize the shorter side, centre or random crop, scale to
``[-1, 1]``) so that training does not depend on torchvision, whose wheels are tied to exact torch builds.

Every image becomes 8-bit RGB (`to_rgb`): grayscale and palette images are expanded, 16-bit and float images are
scaled to 8 bits, and transparent ones are composited on white. An image smaller than the resolution is enlarged
(bicubic) until its shorter side fits, like a larger one is reduced. An image that cannot be read is skipped by
`ImageDataset` (and counted; the stages report the count at the end of each epoch), or stops training with
``strict=True`` (``--strict_data``).
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image


def undecoded(dataset, column: str):
    """``dataset`` with its image ``column`` left undecoded (``{"bytes", "path"}``), so that `image_transform`
    opens each image itself and can name a file it cannot read."""
    import datasets

    return dataset.cast_column(column, datasets.Image(decode=False))


class UnreadableImage(ValueError):
    """An image file that cannot be opened or decoded (``path`` names it, when it has one)."""

    def __init__(self, path: str | None, reason: Exception):
        self.path = path
        super().__init__(f"image {path or '(stored as bytes)'} cannot be read ({reason}); remove or repair it")


def read_image(image) -> Image.Image:
    """A decoded PIL image from a PIL image or an undecoded ``{"bytes", "path"}`` value; a ValueError naming the
    file when it cannot be read (corrupt or truncated)."""
    if isinstance(image, Image.Image):
        return image
    path = image.get("path")
    try:
        opened = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else path)
        opened.load()  # decode now: a truncated file fails here, not somewhere later without its name
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(path, error) from error
    return opened


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit and float pixels scaled to 8 bits, transparency composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max(initial=0) > 255 else 255.0  # 16-bit data, or 8-bit values in a wide mode
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def image_transform(resolution: int, center_crop: bool = True):
    """A function image (PIL, or undecoded, see `undecoded`) -> ``(3, resolution, resolution)`` float tensor in
    ``[-1, 1]``.

    Random crops draw from torch's generator, which DataLoader workers seed one by one. (Flips are applied per
    batch by the training scripts, from per-step seeds.)
    """

    def transform(image) -> torch.Tensor:
        image = to_rgb(read_image(image))
        w, h = image.size
        scale = resolution / min(w, h)
        if (w, h) != (resolution, resolution):
            size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
            image = image.resize(size, Image.BICUBIC)
        w, h = image.size
        if center_crop or (w, h) == (resolution, resolution):
            left, top = (w - resolution) // 2, (h - resolution) // 2
        else:
            left = int(torch.randint(0, w - resolution + 1, ()))
            top = int(torch.randint(0, h - resolution + 1, ()))
        image = image.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    return transform


class ImageDataset(torch.utils.data.Dataset):
    """The transformed images of a dataset column, skipping those that cannot be read.

    Item ``i`` is ``(image, extra, skipped)``: the ``(3, R, R)`` tensor of row ``i`` (or, when row ``i`` cannot be
    read, of the next readable row), the row's values of the ``extra`` columns, and the paths of the rows passed
    over. ``strict=True`` raises `UnreadableImage` instead. `collate_images` batches items.
    """

    def __init__(self, dataset, column: str, transform, extra_columns: tuple[str, ...] = (), strict: bool = False):
        self.dataset, self.column, self.transform = dataset, column, transform
        self.extra_columns, self.strict = tuple(extra_columns), strict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        skipped: list[str] = []
        for offset in range(len(self.dataset)):
            row = self.dataset[(index + offset) % len(self.dataset)]
            try:
                image = self.transform(row[self.column])
            except UnreadableImage as error:
                if self.strict:
                    raise
                skipped.append(error.path or f"row {(index + offset) % len(self.dataset)}")
                continue
            return image, {name: row[name] for name in self.extra_columns}, skipped
        raise ValueError(f"none of the {len(self.dataset)} images of column {self.column!r} can be read")


def collate_images(items) -> dict:
    """Batch `ImageDataset` items: ``{"images": (B, 3, R, R), <extra columns>: tensors, "skipped": [paths]}``."""
    batch = {"images": torch.stack([image for image, _, _ in items]),
             "skipped": [path for _, _, skipped in items for path in skipped]}
    for name in items[0][1]:
        batch[name] = torch.tensor([extra[name] for _, extra, _ in items])
    return batch


class SkippedImages:
    """Counts the unreadable images a stage passed over, for a warning at the end of each epoch."""

    def __init__(self) -> None:
        self.paths: set[str] = set()

    def add(self, paths) -> None:
        self.paths.update(paths)

    def report(self, accelerator, epoch: int, logger) -> None:
        """Log how many images were skipped in the epoch (summed over the processes, with examples), then reset."""
        count = torch.tensor([float(len(self.paths))], device=accelerator.device)
        if accelerator.num_processes > 1:
            count = accelerator.reduce(count, reduction="sum")
        if count.item() > 0:
            examples = ", ".join(sorted(self.paths)[:5])
            logger.warning(f"epoch {epoch}: {int(count.item())} unreadable image(s) skipped (e.g. {examples}); "
                           "--strict_data stops at the first one instead")
        self.paths.clear()


def load_image_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    resolution: int = 32,
    cache_dir: str | None = None,
    validation_fraction: float = 0.05,
    seed: int = 0,
    hold_out: bool = True,
):
    """``(train, validation)`` `datasets.Dataset` pair.

    Sources, by priority: ``dataset_name`` (a Hub dataset id, a folder saved by ``save_to_disk``, or any folder
    ``datasets.load_dataset`` reads), ``train_data_dir`` (an image folder), or else the embedded emoji set at
    the stored resolution nearest above ``resolution`` (32 or 64), which has a held-out split by base emoji. Without a
    ``validation``/``test`` split, ``validation_fraction`` of the training images is held out with ``seed``; with
    ``hold_out=False`` (training that does not evaluate), every training image is kept and the second item is None.
    """
    import datasets

    if dataset_name:
        saved = ("dataset_dict.json", "state.json")  # what `save_to_disk` writes for a DatasetDict / a Dataset
        if any(os.path.exists(os.path.join(dataset_name, name)) for name in saved):
            data = datasets.load_from_disk(dataset_name)
        elif dataset_name.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(dataset_name)):
            raise FileNotFoundError(f"dataset_name {dataset_name!r} is not a folder (a Hub dataset id reads 'user/name')")
        else:
            data = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    elif train_data_dir:
        if not os.path.isdir(train_data_dir):
            raise FileNotFoundError(f"train_data_dir {train_data_dir!r} is not a directory")
        try:
            data = datasets.load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir)
        except (FileNotFoundError, ValueError) as error:  # datasets: "no data files" / "corresponds to no data"
            raise ValueError(f"train_data_dir {train_data_dir!r} holds no images that datasets' imagefolder reads "
                             f"({error})") from error
    else:
        from ..data import load_emoji_dataset

        stored = 32 if resolution <= 32 else 64  # the transform resizes to `resolution`
        return load_emoji_dataset(stored, "train"), load_emoji_dataset(stored, "test")

    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict(train=data)
    if "train" not in data:
        raise ValueError(f"the dataset has no 'train' split (splits: {', '.join(data)})")
    if not hold_out:
        return data["train"], None
    for name in ("validation", "test"):
        if name in data:
            return data["train"], data[name]
    if not 0 < validation_fraction < 1 or len(data["train"]) < 2:
        raise ValueError(
            f"validation_fraction must be in (0, 1) and the dataset needs 2+ images to hold some out, got "
            f"{validation_fraction} and {len(data['train'])} images"
        )
    split = data["train"].train_test_split(test_size=validation_fraction, seed=seed)
    return split["train"], split["test"]


def fit_batch_size(examples: int, batch_size: int, processes: int = 1,
                   accumulation_steps: int = 1) -> tuple[int, str | None]:
    """``(per-process batch size, warning or None)`` for ``examples`` training examples: ``batch_size``
    (``--train_batch_size``) where one optimisation step of it (``batch_size * processes * accumulation_steps``
    examples: every process gets its own batches) fits the data, else the largest batch that does, with a warning
    naming the flag and the batch used. A ValueError naming what to change where not even batches of one fit (no
    examples, or fewer than ``processes * accumulation_steps``)."""
    if examples < 1:
        raise ValueError("the training set is empty: point --train_data_dir or --dataset_name at images")
    per_batch = processes * accumulation_steps
    if examples >= batch_size * per_batch:
        return batch_size, None
    fitted = examples // per_batch
    step = f"{processes} process(es) x --gradient_accumulation_steps {accumulation_steps}"
    if fitted < 1:
        raise ValueError(f"{examples} training examples cannot fill one step of {step} even with batches of one: "
                         "lower --gradient_accumulation_steps, run on fewer processes, or add images")
    return fitted, (f"{examples} training examples are fewer than one step of --train_batch_size {batch_size} x "
                    f"{step}: training with --train_batch_size {fitted} instead")


def image_column_of(dataset, image_column: str | None) -> str:
    """The image column: ``image_column`` if given (checked), else the first column of type Image."""
    import datasets

    if image_column:
        if image_column not in dataset.column_names:
            raise ValueError(
                f"image_column {image_column!r} is not in the dataset; columns: {', '.join(dataset.column_names)}"
            )
        if not isinstance(dataset.features[image_column], datasets.Image):
            raise ValueError(f"image_column {image_column!r} holds {dataset.features[image_column]}, not images")
        return image_column
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(f"no image column found; pass --image_column (columns: {', '.join(dataset.column_names)})")


def captions_of(dataset, caption_column: str) -> tuple[list[int], list[str]]:
    """``(caption id per example, distinct captions)`` of a column of one caption (string) per image; the ids index
    the distinct captions, kept in order of first appearance."""
    if caption_column not in dataset.column_names:
        raise ValueError(f"caption_column {caption_column!r} is not in the dataset; columns: "
                         f"{', '.join(dataset.column_names)}")
    values = list(dataset[caption_column])
    bad = next((value for value in values if not isinstance(value, str)), None)
    if bad is not None or any(value is None for value in values):
        raise ValueError(f"caption_column {caption_column!r} must hold one caption (a string) per image, found "
                         f"{bad!r}")
    ids: dict[str, int] = {}
    return [ids.setdefault(value, len(ids)) for value in values], list(ids)


def class_labels_of(dataset, class_column: str) -> tuple[list[int], list[str]]:
    """``(label per example, class names)`` of a dataset column: a ``ClassLabel`` (an imagefolder's ``label``)
    keeps its own names and ids; any other column's values become classes in sorted order."""
    import datasets

    if class_column not in dataset.column_names:
        raise ValueError(f"class_column {class_column!r} is not in the dataset; columns: {', '.join(dataset.column_names)}")
    feature = dataset.features[class_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(dataset[class_column]), list(feature.names)
    discrete = isinstance(feature, datasets.Value) and (
        feature.dtype in ("bool", "string", "large_string") or feature.dtype.startswith(("int", "uint"))
    )
    if not discrete:
        raise ValueError(f"class_column {class_column!r} holds {feature}; classes come from a ClassLabel, string, "
                         "integer or bool column")
    values = list(dataset[class_column])
    if any(value is None for value in values):
        raise ValueError(f"class_column {class_column!r} has missing values")
    classes = sorted(set(values))  # one type per column: numbers in numeric order, strings alphabetically
    ids = {value: i for i, value in enumerate(classes)}
    return [ids[value] for value in values], [str(value) for value in classes]
