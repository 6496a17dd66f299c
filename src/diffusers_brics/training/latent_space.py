"""What the stage-2 UNet models: `LatentSpace`, the latents of a frozen autoencoder or the images themselves, and
the key-code cache, the latents of the whole training set encoded once (`encode_dataset`) and kept as a `datasets`
dataset in ``OUTPUT_DIR/key_codes`` with a record of what they were encoded from (`cached_codes`)."""

from __future__ import annotations

import json
import os

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from ..models import adapters
from .config import DiffusionTrainingConfig, is_pixel_space
from .data import UnreadableImage
from .distributed import weights_digest

logger = get_logger(__name__)

CACHE_RECORD = "brics_key_code_cache.json"


class LatentSpace:
    """What the UNet models: the latents of a frozen autoencoder ``vae``, or, with none, the images themselves.

    Pixel space (``vae`` None, ``--autoencoder none``): the latents are the ``resolution`` x ``resolution`` images in
    ``[-1, 1]`` and diffusion space is the same (no shift, scaling_factor 1), as diffusers' `DDPMPipeline` has it.
    """

    def __init__(self, vae: torch.nn.Module | None = None, resolution: int = 32):
        self.vae = vae
        size = vae.config.sample_size if vae is not None else resolution
        self.resolution = size if isinstance(size, int) else size[0]

    @classmethod
    def load(cls, config: DiffusionTrainingConfig, device) -> LatentSpace:
        """The space ``--autoencoder`` names: a trained autoencoder (frozen, in eval mode, on ``device``) or pixels."""
        if is_pixel_space(config.autoencoder):
            return cls(None, config.resolution or 32)
        vae = load_autoencoder(config.autoencoder, config.autoencoder_subfolder).to(device)
        space = cls(vae.requires_grad_(False).eval())
        if config.resolution not in (None, space.resolution):
            raise ValueError(f"--resolution {config.resolution}: the autoencoder {config.autoencoder!r} works on "
                             f"{space.resolution}x{space.resolution} images (leave --resolution out)")
        return space

    @property
    def pixels(self) -> bool:
        return self.vae is None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image's latents: the UNet's input and output."""
        return (3, self.resolution, self.resolution) if self.pixels else tuple(adapters.latent_shape(self.vae))

    @property
    def noun(self) -> str:
        """What the logs call the cached latents."""
        return "images" if self.pixels else "key codes"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of images ``(B, 3, R, R)`` in ``[-1, 1]`` (deterministic; the images themselves in pixel space)."""
        return images if self.pixels else adapters.encode_latents(self.vae, images)

    def to_diffusion_space(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if self.pixels else adapters.to_diffusion_space(self.vae, latents)

    def cache_record(self) -> dict:
        """What cached latents depend on besides the data: the autoencoder's weights, or the image size."""
        if self.pixels:
            return {"autoencoder": "none (pixel space)", "resolution": self.resolution}
        return {"autoencoder_sha256": weights_digest(self.vae)}


def load_autoencoder(name_or_path: str, subfolder: str | None):
    """The trained stage-1 autoencoder (BRICS, AutoencoderKL or VQModel) from a local folder (a stage-1 output
    folder too) or a Hub repo, or a FileNotFoundError naming the flag."""
    try:
        return adapters.load_autoencoder(name_or_path, subfolder=subfolder)
    except OSError as error:  # diffusers reports a missing folder as a failed Hub download
        where = f"--autoencoder {name_or_path!r}"
        where += f" with --autoencoder_subfolder {subfolder!r}" if subfolder else ""
        raise FileNotFoundError(
            f"{where}: no autoencoder found, neither as a local folder holding config.json and the weights "
            f"(or a stage-1 output folder) nor as a Hub repo ({error})"
        ) from error


@torch.no_grad()
def encode_dataset(space: LatentSpace, dataset, column: str, transform, batch_size: int, flip: bool, device,
                   conditions: dict[str, list[int]] | None = None, strict: bool = False):
    """Latents (key codes; the images themselves in pixel space) of every readable image, then (with ``flip``) of
    every mirror image, as a ``datasets.Dataset`` of arrays (column ``key_codes``), with each image's value of every
    column of ``conditions`` (``class_labels``, ``caption_ids``: one per row of ``dataset``). Unreadable images are
    left out and counted (a warning), or raise with ``strict``."""
    import datasets

    codes, mirrored, kept, skipped = [], [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"encoding {space.noun}"):
        images = []
        for index, image in enumerate(dataset[start : start + batch_size][column], start):
            try:
                images.append(transform(image))
                kept.append(index)
            except UnreadableImage as error:
                if strict:
                    raise
                skipped.append(error.path or f"row {index}")
        if not images:
            continue
        images = torch.stack(images).to(device)
        codes.append(space.encode(images).float().cpu())
        if flip:
            mirrored.append(space.encode(images.flip(-1)).float().cpu())
    if skipped:
        logger.warning(f"{len(skipped)} unreadable image(s) left out of the {space.noun} (e.g. "
                       f"{', '.join(skipped[:5])}); --strict_data stops at the first one instead")
    if not kept:
        raise ValueError(f"none of the {len(dataset)} images of column {column!r} can be read")
    columns = {"key_codes": torch.cat(codes + mirrored).numpy()}
    for name, values in (conditions or {}).items():
        columns[name] = [values[i] for i in kept] * (2 if flip else 1)
    return datasets.Dataset.from_dict(columns).with_format("torch")


def key_code_cache_record(config: DiffusionTrainingConfig, space: LatentSpace, column: str, images: int) -> dict:
    """What cached key codes depend on; it is stored with them, and a cache made from anything else is refused."""
    source = config.data.dataset_name or config.data.train_data_dir
    return {
        "data": os.path.abspath(source) if source and os.path.exists(source) else source or "embedded emoji",
        "dataset_config_name": config.data.dataset_config_name,
        "image_column": column,
        "images": images,
        "random_flip": config.random_flip,
        "class_column": config.class_column,
        **({"caption_column": config.caption_column} if config.caption_column else {}),
        **space.cache_record(),
    }


def check_key_code_cache(cache: str, record: dict) -> None:
    """Raise a ValueError if the key codes cached in ``cache`` were not made as ``record`` says this run would."""
    path = os.path.join(cache, CACHE_RECORD)
    stored = None
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
    if stored == record:
        return
    if stored is None:
        what = f"have no record of what they were encoded from ({CACHE_RECORD})"
    else:
        what = "were encoded with other " + ", ".join(
            f"{key} ({stored.get(key)!r}; this run: {value!r})"
            for key, value in record.items() if stored.get(key) != value
        )
    raise ValueError(f"the key codes cached in {cache} {what}: delete that folder to re-encode, or use another "
                     "--output_dir")


def cached_codes(accelerator, config: DiffusionTrainingConfig, space: LatentSpace, train_set, column: str, transform,
                 conditions: dict[str, list[int]]):
    """The latents of the training set from ``OUTPUT_DIR/key_codes``, encoded (main process) if missing."""
    import datasets

    cache = os.path.join(config.loop.output_dir, "key_codes")
    with accelerator.main_process_first():
        record = key_code_cache_record(config, space, column, len(train_set))
        if os.path.isdir(cache):
            check_key_code_cache(cache, record)
            codes = datasets.load_from_disk(cache).with_format("torch")
            logger.info(f"reusing {len(codes)} cached {space.noun} from {cache}")
        elif accelerator.is_main_process:
            codes = encode_dataset(space, train_set, column, transform, config.encode_batch_size, config.random_flip,
                                   accelerator.device, conditions, strict=config.data.strict_data)
            codes.save_to_disk(cache + ".partial")
            with open(os.path.join(cache + ".partial", CACHE_RECORD), "w") as f:
                json.dump(record, f, indent=2)
            os.replace(cache + ".partial", cache)
        else:
            codes = datasets.load_from_disk(cache).with_format("torch")
    return codes
