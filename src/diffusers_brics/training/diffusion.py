"""Stage 2: train a UNet2DModel to generate BRICS key codes (latent diffusion on key codes).

The latents of diffusers' `AutoencoderKL` and `VQModel` (pre-quantisation) work as well, for comparisons on the same
budget: they are scaled by a ``scaling_factor`` fitted to the training set (``1 / std``, as Stable Diffusion's
was; saved in the pipeline's VAE config), or by ``--scaling_factor``. So do the images themselves
(``--autoencoder none``): pixel-space diffusion on ``--resolution`` images in ``[-1, 1]`` (no scaling), saved as a
stock diffusers `DDPMPipeline`, so that latent and pixel diffusion are compared with one training infrastructure
(the same loop, schedule, EMA, checkpoints and cache: the centre-cropped images are cached as the "codes").

The dataset is encoded once by the trained autoencoder (relaxed-precision noise off) and the key codes are cached as
a `datasets` dataset on disk (``OUTPUT_DIR/key_codes``, reused by later runs; ``--encode_on_the_fly`` encodes every
batch instead). Codes are mapped to diffusion space by the autoencoder's ``(z - shift_factor) * scaling_factor``,
by default ``(z - 0.5) * 2`` onto ``[-1, 1]``. Epsilon prediction with the Chen 2023 cosine-variant schedule
(default, paper config b) or the cosine schedule with min-SNR-gamma weighting (config a). ``--class_column`` trains a
class-conditional UNet (class names are saved with the pipeline: ``pipe(class_labels=["name"])``);
``--caption_column`` a text-conditional `UNet2DConditionModel` on the hidden states of a `transformers` text encoder
(``--text_encoder_name_or_path``, frozen, or trained with ``--train_text_encoder``; without one, a small
`CLIPTextModel` built from a config with a tokenizer trained on the captions), saved as a
`BRICSTextToImagePipeline`. ``--conditioning_dropout_prob`` trains either for classifier-free guidance
(`training.conditioning`). The full `BRICSPipeline` is saved to ``OUTPUT_DIR`` at the end. `main` is the command line
(``examples/train_brics_diffusion.py``); `DiffusionStage` the training task the `Trainer` runs; `LatentSpace` what
its UNet models.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.utils import make_image_grid
from huggingface_hub import ModelCardData
from tqdm.auto import tqdm

from ..console import SHORT_USAGE, HelpFormatter
from ..models import peers
from ..models.autoencoder_brics import BRICSAutoencoder
from ..models.text_encoder import text_embedding_dim
from ..pipelines.loading import key_code_bound
from ..pipelines.pipeline_brics import BRICSPipeline
from ..pipelines.pipeline_brics_text2img import BRICSTextToImagePipeline
from ..schedules import cosine_variant_betas, min_snr_weights
from .conditioning import PromptTable, TextConditionedUNet, drop_conditions
from .config import (
    DataConfig,
    LoopConfig,
    add_loop_arguments,
    apply_recipe,
    check_loop_arguments,
    defer_to_recipe,
    flat_settings,
    from_namespace,
    non_negative_float,
    positive_float,
    positive_int,
    unit_interval,
)
from .data import (
    ImageDataset,
    SkippedImages,
    UnreadableImage,
    captions_of,
    class_labels_of,
    collate_images,
    image_column_of,
    image_transform,
    load_image_datasets,
    undecoded,
)
from .distributed import weights_digest
from .hub import (
    dataset_of,
    default_repo_id,
    hub_id,
    local_name,
    pipeline_patterns,
    public_settings,
    write_model_card,
)
from .loop import StageParts, Trainer, TrainingStage
from .reporting import log_image

logger = get_logger(__name__)

# UNet presets: the paper's LDM-like UNet (supp. A.5) and small ones for CPU runs.
UNET_PRESETS = {
    "paper": dict(block_out_channels=(256, 512, 768, 1024), layers_per_block=2, attention_resolutions=(32, 16, 8)),
    "small": dict(block_out_channels=(64, 128, 192), layers_per_block=2, attention_resolutions=(4,)),
    "tiny": dict(block_out_channels=(16, 32), layers_per_block=1, attention_resolutions=(4,)),
}
CACHE_RECORD = "brics_key_code_cache.json"
# --autoencoder values that mean "no autoencoder": diffusion on the images themselves.
PIXEL_SPACE = ("none", "pixels")


def is_pixel_space(autoencoder: str) -> bool:
    """Whether an ``--autoencoder`` value asks for pixel-space diffusion (``none`` or ``pixels``)."""
    return autoencoder.strip().lower() in PIXEL_SPACE


#: Stage-2 training recipes, chosen by ``--training_recipe`` (default ``auto``: ``release`` for the ``paper`` UNet,
#: ``short`` for the smaller ones); a flag given on the command line overrides its recipe's value.
#: ``release``: the authors' release as far as these flags go (imagen-pytorch's trainer: Adam betas (0.9, 0.99) at
#: 8e-5, no warm-up, a constant rate, no gradient clipping, an EMA of 0.9999 with power 2/3), epsilon prediction.
#: ``short``: ours for runs of a few thousand steps, chosen by measured KID per second
#: (``benchmarks/time_to_quality.py``, README "Recipes"): a ten times higher rate with a short warm-up and a cosine
#: decay over the run, the UNet predicting the clean key codes with min-SNR-5 weighting (it reached a given KID in
#: fewer steps than epsilon or v prediction), batches of 32 (better per image than 64 and twice as fast per step),
#: diffusers' EMA warm-up.
TRAINING_RECIPES: dict[str, dict] = {
    "release": dict(learning_rate=8e-5, adam_beta2=0.99, lr_warmup_steps=0, lr_scheduler="constant",
                    max_grad_norm=None, ema_max_decay=0.9999, ema_power=2 / 3),
    "short": dict(train_batch_size=32, learning_rate=8e-4, lr_warmup_steps=100, lr_scheduler="cosine",
                  prediction_type="sample", snr_gamma=5.0),
}


@dataclass
class DiffusionTrainingConfig:
    """Everything a stage-2 run needs; `parse_args` builds it from the command line."""

    loop: LoopConfig
    data: DataConfig
    autoencoder: str
    autoencoder_subfolder: str | None = None
    scaling_factor: float | None = None
    resolution: int | None = None
    center_crop: bool = False
    random_flip: bool = False
    encode_on_the_fly: bool = False
    encode_batch_size: int = 64
    class_column: str | None = None
    caption_column: str | None = None
    text_encoder_name_or_path: str | None = None
    text_encoder_preset: str = "small"
    train_text_encoder: bool = False
    conditioning_dropout_prob: float | None = None
    validation_guidance_scale: float | None = None
    unet_preset: str = "small"
    training_recipe: str = "auto"
    schedule: str = "cosine-variant"
    prediction_type: str = "epsilon"
    snr_gamma: float = 0.0
    num_train_timesteps: int = 1000
    learning_rate: float = 8e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    num_validation_images: int = 8
    num_inference_steps: int = 100


def build_parser() -> argparse.ArgumentParser:
    """The stage-2 command line; every flag is a field of `DiffusionTrainingConfig`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, usage=SHORT_USAGE)
    p.add_argument("--autoencoder", required=True,
                   help="a trained BRICSAutoencoder (or AutoencoderKL / VQModel): local folder or Hub id; a stage-1 "
                   "output folder is read from its autoencoder/ subfolder. 'none' (or 'pixels'): no autoencoder, "
                   "diffusion on the images themselves, saved as a diffusers DDPMPipeline")
    p.add_argument("--autoencoder_subfolder", default=None, help="e.g. 'vae' for a pipeline repo")
    p.add_argument("--scaling_factor", type=positive_float, default=None,
                   help="latents -> diffusion space scale (default: a BRICS autoencoder's own, onto [-1, 1]; for "
                   "AutoencoderKL / VQModel latents 1 / std of the training set's latents); not with --autoencoder "
                   "none")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="with --autoencoder none: the image size (default 32); an autoencoder's images are its own "
                   "sample_size")
    groups = add_loop_arguments(p, output_dir="brics-diffusion", train_batch_size=64, learning_rate_scheduler="cosine",
                                lr_warmup_steps=500, max_grad_norm=1.0, validation_steps=1000, ema_max_decay=0.9999,
                                ema_schedule="warmup")
    data, train, val = groups["data"], groups["training"], groups["validation"]
    data.add_argument("--center_crop", action="store_true", help="with --encode_on_the_fly (cached codes always are)")
    data.add_argument("--random_flip", action="store_true", help="also cache the key codes of flipped images")
    data.add_argument("--encode_on_the_fly", action="store_true", help="encode every batch instead of caching")
    data.add_argument("--encode_batch_size", type=positive_int, default=64, help="images per encoding batch")
    data.add_argument("--class_column", default=None,
                      help="train a class-conditional UNet on this column (an imagefolder's 'label'; 'category' of the "
                      "embedded emoji)")
    cond = p.add_argument_group("conditioning")
    cond.add_argument("--caption_column", default=None,
                      help="train a text-to-image UNet on this column's captions (one string per image; the embedded "
                      "emoji's 'caption' is 'short name, [skin tone,] category'), saved as a BRICSTextToImagePipeline")
    cond.add_argument("--text_encoder_name_or_path", default=None,
                      help="the transformers text encoder and tokenizer (folder or Hub id; a pipeline's text_encoder/ "
                      "and tokenizer/ or a model repo: CLIP, T5, ...). Default: a CLIPTextModel of "
                      "--text_encoder_preset built from a config, with a BPE tokenizer trained on the captions")
    cond.add_argument("--text_encoder_preset", default="small", choices=["tiny", "small"],
                      help="the size of the text encoder built when no --text_encoder_name_or_path is given")
    cond.add_argument("--train_text_encoder", action="store_true",
                      help="train the text encoder with the UNet (default: frozen, its hidden states computed once)")
    cond.add_argument("--conditioning_dropout_prob", type=unit_interval, default=None,
                      help="probability of replacing an example's condition by the null one (the empty caption; a "
                      "learned null class) for classifier-free guidance (default: 0.1 with --caption_column, else 0)")
    cond.add_argument("--validation_guidance_scale", type=non_negative_float, default=None,
                      help="guidance of the validation samples (default: 3 when trained with conditioning dropout, "
                      "else 1)")
    model = p.add_argument_group("model")
    model.add_argument("--unet_preset", default="small", choices=sorted(UNET_PRESETS), help="the UNet's size")
    model.add_argument("--training_recipe", choices=["auto", *TRAINING_RECIPES], default="auto",
                       help="the defaults of the flags marked 'per --training_recipe': release (the authors'), short "
                       "(ours for runs of a few thousand steps), auto (release for --unet_preset paper, else short)")
    model.add_argument("--schedule", choices=["cosine-variant", "cosine"], default="cosine-variant",
                       help="noise schedule: Chen 2023's cosine variant (paper config b) or cosine (config a)")
    model.add_argument("--prediction_type", choices=["epsilon", "v_prediction", "sample"], default="epsilon",
                       help="what the UNet predicts: the noise (the paper), v (Salimans and Ho 2022) or the clean "
                       "key codes; saved in the scheduler's config, which every diffusers sampler reads")
    model.add_argument("--snr_gamma", type=non_negative_float, default=None,
                       help="min-SNR loss weighting, 0 for none (default: 5 with --schedule cosine, paper config a; "
                       "none with cosine-variant, config b)")
    model.add_argument("--num_train_timesteps", type=positive_int, default=1000, help="diffusion steps")
    train.add_argument("--learning_rate", type=positive_float, default=8e-5,
                       help="the release's command: 8e-5 (the paper's table: 8e-4)")
    train.add_argument("--adam_beta1", type=unit_interval, default=0.9, help="AdamW beta1")
    train.add_argument("--adam_beta2", type=unit_interval, default=0.999, help="AdamW beta2")
    train.add_argument("--adam_weight_decay", type=non_negative_float, default=0.0, help="AdamW weight decay")
    train.add_argument("--adam_epsilon", type=positive_float, default=1e-8, help="AdamW eps")
    val.add_argument("--num_validation_images", type=positive_int, default=8, help="samples in the grid")
    val.add_argument("--num_inference_steps", type=positive_int, default=100, help="sampling steps for the grid")
    defer_to_recipe(p, TRAINING_RECIPES)
    return p


def parse_args(argv: list[str] | None = None) -> DiffusionTrainingConfig:
    """`DiffusionTrainingConfig` from command-line arguments (``argv``, default ``sys.argv``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.training_recipe == "auto":
        args.training_recipe = "release" if args.unet_preset == "paper" else "short"
    apply_recipe(args, TRAINING_RECIPES[args.training_recipe])
    check_loop_arguments(parser, args)
    if args.snr_gamma is None:
        args.snr_gamma = 5.0 if args.schedule == "cosine" else 0.0
    if is_pixel_space(args.autoencoder):
        why = f"--autoencoder {args.autoencoder} trains on the images themselves"
        if args.scaling_factor is not None:
            parser.error(f"--scaling_factor scales an autoencoder's latents; {why}, in [-1, 1] (scaling_factor 1)")
        for flag in ("class_column", "caption_column"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag}: diffusers' DDPMPipeline, which --autoencoder {args.autoencoder} saves, "
                             "takes no condition; train unconditionally, or on an autoencoder's latents")
        if args.autoencoder_subfolder is not None:
            parser.error(f"--autoencoder_subfolder names where an autoencoder is; {why}")
        args.resolution = args.resolution or 32
    if args.class_column is not None and args.caption_column is not None:
        parser.error("--class_column and --caption_column: condition on one of them")
    if args.caption_column is None:
        for flag in ("text_encoder_name_or_path", "train_text_encoder"):
            if getattr(args, flag):
                parser.error(f"--{flag} applies to text-to-image training: pass --caption_column")
    if args.conditioning_dropout_prob is None:
        args.conditioning_dropout_prob = 0.1 if args.caption_column else 0.0
    if args.conditioning_dropout_prob and args.class_column is None and args.caption_column is None:
        parser.error("--conditioning_dropout_prob drops a condition: pass --class_column or --caption_column")
    if args.validation_guidance_scale is not None and not args.conditioning_dropout_prob:
        parser.error("--validation_guidance_scale needs a model trained for guidance: pass "
                     "--conditioning_dropout_prob > 0")
    if args.conditioning_dropout_prob == 1:
        parser.error("--conditioning_dropout_prob 1 would never show the UNet a condition; use a value below 1")
    if args.num_inference_steps > args.num_train_timesteps:
        parser.error(f"--num_inference_steps {args.num_inference_steps} exceeds --num_train_timesteps "
                     f"{args.num_train_timesteps}")
    return from_namespace(DiffusionTrainingConfig, args)


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
        return (3, self.resolution, self.resolution) if self.pixels else tuple(peers.latent_shape(self.vae))

    @property
    def noun(self) -> str:
        """What the logs call the cached latents."""
        return "images" if self.pixels else "key codes"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of images ``(B, 3, R, R)`` in ``[-1, 1]`` (deterministic; the images themselves in pixel space)."""
        return images if self.pixels else peers.encode_latents(self.vae, images)

    def to_diffusion_space(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if self.pixels else peers.to_diffusion_space(self.vae, latents)

    def cache_record(self) -> dict:
        """What cached latents depend on besides the data: the autoencoder's weights, or the image size."""
        if self.pixels:
            return {"autoencoder": "none (pixel space)", "resolution": self.resolution}
        return {"autoencoder_sha256": weights_digest(self.vae)}


def build_unet(config: DiffusionTrainingConfig, latents: LatentSpace | torch.nn.Module,
               num_classes: int | None = None, cross_attention_dim: int | None = None
               ) -> UNet2DModel | UNet2DConditionModel:
    """An LDM-like UNet on a `LatentSpace` (or an autoencoder's latents): key codes, a peer's latents or images.
    Attention at the configured resolutions where the input is that large; with ``num_classes``, a class embedding
    added to the timestep embedding; with ``cross_attention_dim``, a `UNet2DConditionModel` whose attention blocks
    (and middle block) cross-attend to text-encoder hidden states of that width."""
    preset = UNET_PRESETS[config.unet_preset]
    space = latents if isinstance(latents, LatentSpace) else LatentSpace(latents)
    latent_channels, size, _ = space.shape
    channels = preset["block_out_channels"]
    attention_block = "CrossAttn" if cross_attention_dim else "Attn"
    down, up = [], []
    for level in range(len(channels)):
        attention = (size // 2**level) in preset["attention_resolutions"]
        down.append(f"{attention_block}DownBlock2D" if attention else "DownBlock2D")
        up.insert(0, f"{attention_block}UpBlock2D" if attention else "UpBlock2D")
    if size % 2 ** (len(channels) - 1):
        raise ValueError(f"latents of size {size} cannot be halved {len(channels) - 1} times by --unet_preset "
                         f"{config.unet_preset}")
    if cross_attention_dim:
        return UNet2DConditionModel(
            sample_size=size, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=channels, layers_per_block=preset["layers_per_block"], down_block_types=tuple(down),
            up_block_types=tuple(up), norm_num_groups=min(32, channels[0]),
            # UNet2DConditionModel reads attention_head_dim as the number of heads (Stable Diffusion's 8)
            attention_head_dim=8, cross_attention_dim=cross_attention_dim,
        )
    return UNet2DModel(
        sample_size=size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=channels, layers_per_block=preset["layers_per_block"], down_block_types=tuple(down),
        up_block_types=tuple(up), norm_num_groups=min(32, channels[0]), attention_head_dim=max(8, channels[0] // 8),
        num_class_embeds=num_classes,
    )


def build_scheduler(config: DiffusionTrainingConfig, clip_range: float | None = None) -> DDPMScheduler:
    """The training noise schedule, saved with the pipeline. With ``clip_range`` (BRICS key codes: their bound in
    diffusion space, see `key_code_bound`) the sampler clamps its estimate of the clean sample to it at every step,
    as the BRICS release samples; training never reads it."""
    clip = dict(clip_sample=True, clip_sample_range=clip_range) if clip_range is not None else dict(clip_sample=False)
    common = dict(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type, **clip)
    if config.schedule == "cosine-variant":
        return DDPMScheduler(trained_betas=cosine_variant_betas(config.num_train_timesteps).tolist(), **common)
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", **common)


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


def load_autoencoder(name_or_path: str, subfolder: str | None):
    """The trained stage-1 autoencoder (BRICS, AutoencoderKL or VQModel) from a local folder (a stage-1 output
    folder too) or a Hub repo, or a FileNotFoundError naming the flag."""
    try:
        return peers.load_autoencoder(name_or_path, subfolder=subfolder)
    except OSError as error:  # diffusers reports a missing folder as a failed Hub download
        where = f"--autoencoder {name_or_path!r}"
        where += f" with --autoencoder_subfolder {subfolder!r}" if subfolder else ""
        raise FileNotFoundError(
            f"{where}: no autoencoder found, neither as a local folder holding config.json and the weights "
            f"(or a stage-1 output folder) nor as a Hub repo ({error})"
        ) from error


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


class DiffusionStage(TrainingStage):
    """Stage 2 for the `Trainer`: a UNet on the latents of a `LatentSpace` (key codes, a peer's latents or images;
    cached, or encoded per batch)."""

    def __init__(self, config: DiffusionTrainingConfig):
        self.config = config
        self.skipped = SkippedImages()

    def setup(self, trainer: Trainer) -> StageParts:
        c, accelerator = self.config, trainer.accelerator
        self.space = space = LatentSpace.load(c, accelerator.device)
        resolution = space.resolution
        with accelerator.main_process_first():
            train_set, _ = load_image_datasets(c.data.dataset_name, c.data.dataset_config_name, c.data.train_data_dir,
                                               resolution, c.data.cache_dir, hold_out=False)
        column = image_column_of(train_set, c.data.image_column)
        train_set = undecoded(train_set, column)
        conditions, self.class_names, self.prompts = {}, None, None
        if c.class_column:
            conditions["class_labels"], self.class_names = class_labels_of(train_set, c.class_column)
        if c.caption_column:
            conditions["caption_ids"], captions = captions_of(train_set, c.caption_column)
            self.text_encoder, self.tokenizer = self._text_encoder(captions, accelerator.device)
            with accelerator.main_process_first():
                self.prompts = PromptTable(captions, self.tokenizer,
                                           None if c.train_text_encoder else self.text_encoder,
                                           cache=os.path.join(c.loop.output_dir, "prompt_embeds.safetensors"))
            # validation prompts: distinct captions spread over the training set's
            self.validation_prompts = [captions[i * len(captions) // c.num_validation_images]
                                       for i in range(c.num_validation_images)]
        # Cached codes come from centre crops; random crops only when encoding on the fly.
        transform = image_transform(resolution, center_crop=c.center_crop or not c.encode_on_the_fly)
        examples = len(train_set) * (2 if c.random_flip and not c.encode_on_the_fly else 1)
        batch = c.loop.train_batch_size
        if examples < batch * accelerator.num_processes:
            raise ValueError(f"{examples} training examples, fewer than one batch of --train_batch_size "
                             f"{batch} per process on {accelerator.num_processes} process(es)")
        if c.encode_on_the_fly:
            for name, values in conditions.items():
                train_set = train_set.add_column(name, values)
            dataset = ImageDataset(train_set, column, transform, tuple(conditions), strict=c.data.strict_data)
            collate = collate_images
        else:
            dataset = self._cached_codes(accelerator, train_set, column, transform, conditions)

            def collate(rows):
                out = {"codes": torch.stack([row["key_codes"] for row in rows])}
                for name in conditions:
                    out[name] = torch.stack([row[name] for row in rows])
                return out

        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                             collate_fn=collate)
        self._set_scaling_factor(dataset)
        # the null class of conditioning dropout: one class id after the real ones
        self.null_class_id = len(self.class_names) if self.class_names and c.conditioning_dropout_prob else None
        classes = None if self.class_names is None else len(self.class_names) + (self.null_class_id is not None)
        width = text_embedding_dim(self.text_encoder) if self.prompts is not None else None
        unet = build_unet(c, space, classes, width)
        if c.train_text_encoder:
            unet = TextConditionedUNet.wrap(unet, self.text_encoder)
        self.noise_scheduler = build_scheduler(c, key_code_bound(space.vae))
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(accelerator.device)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                      weight_decay=c.adam_weight_decay, eps=c.adam_epsilon)
        return StageParts("unet", unet, optimizer, loader, description=f"{len(train_set)} training images")

    def _text_encoder(self, captions: list[str], device) -> tuple[torch.nn.Module, object]:
        """``(text_encoder, tokenizer)``: ``--text_encoder_name_or_path``, or a `CLIPTextModel` of
        ``--text_encoder_preset`` (initialised from ``--seed``) with a tokenizer trained on ``captions``; frozen
        in eval mode unless ``--train_text_encoder``."""
        from ..models.text_encoder import build_text_encoder, load_text_encoder, train_caption_tokenizer

        c = self.config
        if c.text_encoder_name_or_path:
            text_encoder, tokenizer = load_text_encoder(c.text_encoder_name_or_path)
        else:
            tokenizer = train_caption_tokenizer(captions)
            with torch.random.fork_rng():
                torch.manual_seed(c.loop.seed)
                text_encoder = build_text_encoder(tokenizer, c.text_encoder_preset)
            logger.info(f"text encoder: a {c.text_encoder_preset} CLIPTextModel "
                        f"({sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M parameters) with a "
                        f"{len(tokenizer)}-token BPE tokenizer trained on the {len(captions)} distinct captions",
                        main_process_only=True)
            if not c.train_text_encoder:
                logger.warning("the text encoder built from a config is random and frozen: it tells prompts apart but "
                               "knows no language; --train_text_encoder trains it with the UNet")
        text_encoder = text_encoder.to(device).requires_grad_(False).eval()
        return text_encoder, tokenizer

    def _set_scaling_factor(self, dataset, sample: int = 1024) -> None:
        """``--scaling_factor``, or for a peer's latents ``1 / std`` of (up to ``sample``) training latents, into the
        VAE's config (saved with the pipeline); a BRICS autoencoder keeps its own unless the flag is given, and
        images (pixel space) are modelled as they are."""
        vae, factor = self.space.vae, self.config.scaling_factor
        if vae is None or (factor is None and isinstance(vae, BRICSAutoencoder)):
            return
        if factor is None:
            rows = range(min(sample, len(dataset)))
            if isinstance(dataset, ImageDataset):
                latents = torch.cat([peers.encode_latents(vae, torch.stack([dataset[i][0] for i in chunk]))
                                     for chunk in (rows[i : i + 64] for i in range(0, len(rows), 64))])
            else:
                latents = dataset[: len(rows)]["key_codes"]
            factor = peers.fitted_scaling_factor(latents)
            logger.info(f"scaling_factor {factor:.5f} fitted to {len(rows)} training latents (1 / std)", main_process_only=True)
        vae.register_to_config(scaling_factor=float(factor))

    def _cached_codes(self, accelerator, train_set, column: str, transform, conditions: dict[str, list[int]]):
        """The latents of the training set from ``OUTPUT_DIR/key_codes``, encoded (main process) if missing."""
        import datasets

        c, space = self.config, self.space
        cache = os.path.join(c.loop.output_dir, "key_codes")
        with accelerator.main_process_first():
            record = key_code_cache_record(c, space, column, len(train_set))
            if os.path.isdir(cache):
                check_key_code_cache(cache, record)
                codes = datasets.load_from_disk(cache).with_format("torch")
                logger.info(f"reusing {len(codes)} cached {space.noun} from {cache}")
            elif accelerator.is_main_process:
                codes = encode_dataset(space, train_set, column, transform, c.encode_batch_size, c.random_flip,
                                       accelerator.device, conditions, strict=c.data.strict_data)
                codes.save_to_disk(cache + ".partial")
                with open(os.path.join(cache + ".partial", CACHE_RECORD), "w") as f:
                    json.dump(record, f, indent=2)
                os.replace(cache + ".partial", cache)
            else:
                codes = datasets.load_from_disk(cache).with_format("torch")
        return codes

    def training_step(self, trainer: Trainer, batch: dict, generator: torch.Generator, step: int) -> dict:
        c, device = self.config, trainer.device
        if "codes" in batch:
            codes = batch["codes"]
        else:
            self.skipped.add(batch["skipped"])
            images = batch["images"].to(device)
            if c.random_flip:
                flip = (torch.rand(images.shape[0], generator=generator) < 0.5).view(-1, 1, 1, 1).to(device)
                images = torch.where(flip, images.flip(-1), images)
            codes = self.space.encode(images)
        # latents -> diffusion space (BRICS key codes: [0, 1] -> by default [-1, 1]; images: as they are)
        x0 = self.space.to_diffusion_space(codes.float()).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],),
                                  generator=generator).to(device)
        noisy = self.noise_scheduler.add_noise(x0, noise, timesteps)
        condition = {}
        if "class_labels" in batch:
            condition["class_labels"] = batch["class_labels"].to(device)
            drop = drop_conditions(len(x0), c.conditioning_dropout_prob, generator)
            if drop is not None:
                condition["class_labels"] = condition["class_labels"].masked_fill(drop.to(device), self.null_class_id)
        if "caption_ids" in batch:
            drop = drop_conditions(len(x0), c.conditioning_dropout_prob, generator)
            condition.update(self.prompts.condition(batch["caption_ids"], drop, device))
        prediction = trainer.model(noisy, timesteps, **condition).sample
        target = {"epsilon": noise, "sample": x0}.get(c.prediction_type)
        if target is None:
            target = self.noise_scheduler.get_velocity(x0, noise, timesteps)
        loss = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3))
        if c.snr_gamma:
            loss = loss * min_snr_weights(self.alphas_cumprod, timesteps, c.snr_gamma, c.prediction_type)
        loss = loss.mean()
        trainer.apply_gradients(loss, trainer.optimizer, trainer.model.parameters(), lr_scheduler=trainer.lr_scheduler)
        return {"loss": loss.item()}

    def end_of_epoch(self, trainer: Trainer, epoch: int) -> None:
        self.skipped.report(trainer.accelerator, epoch, logger)

    def pipeline(self, model: torch.nn.Module) -> BRICSPipeline | BRICSTextToImagePipeline | DDPMPipeline:
        """The pipeline of the trained ``model`` (the EMA weights) with the autoencoder and the class names (and
        null class), if any; a `BRICSTextToImagePipeline` with the text encoder and tokenizer for captions; in
        pixel space diffusers' own `DDPMPipeline`."""
        if self.space.pixels:
            return DDPMPipeline(unet=model, scheduler=self.noise_scheduler)
        if self.prompts is not None:
            unet, text_encoder = ((model.unet, model.text_encoder) if isinstance(model, TextConditionedUNet)
                                  else (model, self.text_encoder))
            return BRICSTextToImagePipeline(vae=self.space.vae, text_encoder=text_encoder, tokenizer=self.tokenizer,
                                            unet=unet, scheduler=self.noise_scheduler)
        names = self.class_names
        return BRICSPipeline(unet=model, scheduler=self.noise_scheduler, vae=self.space.vae,
                             id2label=dict(enumerate(names)) if names else None, null_class_id=self.null_class_id)

    @property
    def guidance_scale(self) -> float:
        """The validation samples' guidance: ``--validation_guidance_scale``, else 3 with conditioning dropout."""
        c = self.config
        if not c.conditioning_dropout_prob:
            return 1.0
        return 3.0 if c.validation_guidance_scale is None else c.validation_guidance_scale

    def validate(self, trainer: Trainer, model: UNet2DModel, step: int) -> dict[str, float]:
        """Samples from fixed seeds (cycling through the classes of a conditional UNet; one caption each for a text
        UNet), logged and saved as ``samples.png``."""
        pipeline = self.pipeline(model)
        pipeline.set_progress_bar_config(disable=True)
        count = self.config.num_validation_images
        generators = [torch.Generator().manual_seed(seed) for seed in range(count)]
        steps = self.config.num_inference_steps
        if self.prompts is not None:
            images = pipeline(self.validation_prompts, generator=generators, num_inference_steps=steps,
                              guidance_scale=self.guidance_scale).images
        else:
            # class labels only for a conditional UNet (a DDPMPipeline takes none)
            classes = {"class_labels": [i % len(self.class_names) for i in range(count)]} if self.class_names else {}
            if self.null_class_id is not None:
                classes["guidance_scale"] = self.guidance_scale
            images = pipeline(batch_size=count, generator=generators, num_inference_steps=steps, **classes).images
        grid = make_image_grid(images, rows=1, cols=len(images))
        grid.save(os.path.join(self.config.loop.output_dir, "samples.png"))
        log_image(trainer.accelerator, "samples", grid, step)
        return {}

    def finish(self, trainer: Trainer, model: UNet2DModel, step: int, summary: dict[str, float]) -> None:
        """Save the pipeline (EMA UNet, scheduler, autoencoder), a sample grid, ``metrics.json`` (the step and the
        training time and throughput) and a model card."""
        c = self.config
        if self.space.vae is not None:  # loaded from --autoencoder: its config would keep that (local) path
            self.space.vae.register_to_config(_name_or_path=local_name(c.autoencoder))
        self.pipeline(model).save_pretrained(c.loop.output_dir)
        self.validate(trainer, model, step)
        with open(os.path.join(c.loop.output_dir, "metrics.json"), "w") as f:
            json.dump({"step": step, **summary}, f, indent=2)
        self._write_card(step, summary["train_seconds"])

    def hub_files(self) -> list[str]:
        return ["README.md", "metrics.json", "samples.png", *pipeline_patterns(self.config.loop.output_dir)]

    def _write_card(self, step: int, seconds: float) -> None:
        """``README.md``: both ways to load the pipeline (this package's class, stock diffusers), the classes of a
        conditional UNet and the run's settings, without local paths."""
        c, space, names = self.config, self.space, self.class_names
        repo, resolution = default_repo_id(c.loop.output_dir, c.loop.hub_model_id), space.resolution
        dataset = dataset_of(c.data)[1]
        guidance = f", guidance_scale={self.guidance_scale:g}" if c.conditioning_dropout_prob else ""
        if self.prompts is not None:
            call = (f"images = pipe({self.validation_prompts[0]!r}, num_images_per_prompt=4, "
                    f"num_inference_steps={c.num_inference_steps}{guidance}).images")
        else:
            call = (f"images = pipe(batch_size=4, num_inference_steps={c.num_inference_steps}"
                    + (f", class_labels={names[:1]!r}{guidance}" if names else "") + ").images")
        if space.pixels:
            title, tags = "Pixel-space diffusion pipeline", ["diffusers", "ddpm", "pixel-space"]
            summary = (f"A stock diffusers `DDPMPipeline`: a UNet trained directly on the {resolution}x{resolution} "
                       f"images of {dataset} in [-1, 1] (pixel-space diffusion, no autoencoder), with the noise "
                       "schedule, loop and EMA of the latent diffusion training of diffusers-brics.")
            usage = [{"text": "diffusers alone loads it:", "code": "from diffusers import DiffusionPipeline\n\n"
                      f'pipe = DiffusionPipeline.from_pretrained("{repo}")\n{call}'}]
        else:
            channels, size, _ = space.shape
            vae = type(space.vae).__name__
            pipeline_class = "BRICSTextToImagePipeline" if self.prompts is not None else "BRICSPipeline"
            kind = "text-to-image" if self.prompts is not None else "latent diffusion"
            title, tags = f"{'BRICS' if vae == 'BRICSAutoencoder' else vae} {kind} pipeline", [
                "diffusers", "brics", "latent-diffusion"]
            codes = "key codes" if vae == "BRICSAutoencoder" else "latents"
            summary = (f"A `{pipeline_class}`: a UNet trained on the {codes} ({size}x{size}x{channels}) of {dataset}, "
                       f"decoded by a {vae} to {resolution}x{resolution} images.")
            if self.prompts is not None:
                encoder = type(self.text_encoder).__name__
                summary += (f" It is conditioned on the `{c.caption_column}` captions through a {encoder} "
                            + ("trained with the UNet" if c.train_text_encoder else "(frozen)")
                            + (f" ({hub_id(c.text_encoder_name_or_path)})" if hub_id(c.text_encoder_name_or_path)
                               else "" if c.text_encoder_name_or_path else ", built from a config with a tokenizer "
                               "trained on the captions")
                            + f", with {c.conditioning_dropout_prob:g} conditioning dropout for classifier-free "
                            "guidance.")
            usage = [
                {"text": "With diffusers-brics (`pip install diffusers-brics`):",
                 "code": f"from diffusers_brics import {pipeline_class}\n\n"
                         f'pipe = {pipeline_class}.from_pretrained("{repo}")\n{call}'},
                {"text": "With stock diffusers, which runs the repository's module files: they only import the classes "
                         "of the installed diffusers-brics package.",
                 "code": "from diffusers import DiffusionPipeline\n\n"
                         f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)\n{call}'},
            ]
        if names:
            summary += f"\n\nClasses (`--class_column {c.class_column}`): " + ", ".join(names)
        data = ModelCardData(
            library_name="diffusers", license="apache-2.0",
            pipeline_tag="text-to-image" if self.prompts is not None else "unconditional-image-generation",
            tags=tags + (["class-conditional"] if names else []) + (["text-to-image"] if self.prompts else []),
            datasets=[c.data.dataset_name] if hub_id(c.data.dataset_name) else None,
            base_model=None if space.pixels else hub_id(c.autoencoder),
        )
        write_model_card(
            c.loop.output_dir, data, title=title, summary=summary, image="samples.png", usage=usage,
            training=(f"{step} steps of `examples/train_brics_diffusion.py` ({seconds:.0f} s), "
                      + ("EMA weights" if c.loop.ema.use_ema else "the trained weights (no EMA)")
                      + "; the run's settings (local paths reduced to their names):"),
            settings=public_settings(c),
        )


def main(argv: list[str] | None = None) -> None:
    """Train a UNet on BRICS key codes (or a peer's latents, or images) from command-line arguments."""
    config = parse_args(argv)
    Trainer(config.loop, "train_brics_diffusion", flat_settings(config)).fit(DiffusionStage(config))


if __name__ == "__main__":  # also `accelerate launch -m diffusers_brics.training.diffusion ...`
    import sys

    from ..console import run_command

    sys.exit(run_command(main, prog="python -m diffusers_brics.training.diffusion"))
