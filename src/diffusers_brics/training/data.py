"""Image data for training: a Hub or local `datasets` dataset, an image folder, or the embedded emoji set.

Transforms are written with PIL and numpy (resize the shorter side, centre or random crop, scale to
``[-1, 1]``) so that training does not depend on torchvision, whose wheels are tied to exact torch builds.
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
        raise ValueError(f"image {path or '(stored as bytes)'} cannot be read ({error}); remove or repair it") from error
    return opened


def image_transform(resolution: int, center_crop: bool = True):
    """A function image (PIL, or undecoded, see `undecoded`) -> ``(3, resolution, resolution)`` float tensor in
    ``[-1, 1]``.

    Random crops draw from torch's generator, which DataLoader workers seed one by one. (Flips are applied per
    batch by the training scripts, from per-step seeds.)
    """

    def transform(image) -> torch.Tensor:
        image = read_image(image).convert("RGB")
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
