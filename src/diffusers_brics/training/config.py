"""Training settings as small typed objects, and the command-line flags they are built from.

Every flag of the training scripts is the name of one dataclass field: `from_namespace` builds a (nested) settings
object from parsed arguments, `flat_settings` lists it back for a model card or a tracker. The settings the
`Trainer` owns (run, schedule, checkpoints, EMA, Hub) are `LoopConfig`; the image source both stages read is
`DataConfig`; each stage adds its own: `AutoencoderTrainingConfig` (with `AutoencoderLossConfig`) and
`DiffusionTrainingConfig`, built by the stages' command lines (`training.autoencoder_args`,
`training.diffusion_args`).

The fields are the one source of the defaults: each stage's parser reads its flags' defaults from its settings class
(`training.flags.read_field_defaults`; the stages' own loop defaults are the fields of `AutoencoderLoopConfig` and
`DiffusionLoopConfig`), and a default that follows from other settings (``None`` in a field) is resolved in that
class's ``__post_init__``, beside the field. Only the training recipes (`training.flags.apply_recipe`) change defaults
after that.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from functools import partial
from typing import Any


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class DataConfig:
    """Where the images come from (see `training.data.load_image_datasets`); the embedded emoji by default."""

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    image_column: str | None = None
    cache_dir: str | None = None
    strict_data: bool = False

    def describe(self) -> str:
        return self.dataset_name or self.train_data_dir or "the embedded emoji images (Google Noto Emoji, Apache-2.0)"


@dataclass
class EMAConfig:
    """EMA of the trained model's weights: ``stylegan`` (half-life schedule), diffusers' ``warmup``, or
    ``ema-pytorch`` (the warm-up on ema-pytorch's cadence, the release's stage 2; see `training.ema`)."""

    use_ema: bool = True
    ema_schedule: str = "warmup"
    ema_max_decay: float = 0.9999
    ema_power: float = 0.75
    ema_halflife_kimg: float | None = None
    ema_rampup: float = 0.05
    ema_update_every: int = 10  # ema-pytorch schedule only (ema-pytorch's default, the release's)
    ema_update_after_step: int = 100  # ema-pytorch schedule only (ema-pytorch's default, the release's)


@dataclass
class LoopConfig:
    """What the `Trainer` owns: the run, its length and schedule, checkpoints, validation cadence, logging, Hub."""

    output_dir: str
    seed: int = 0
    train_batch_size: int = 16
    num_epochs: int = 100
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    max_train_seconds: float | None = None
    mixed_precision: str | None = None
    cpu: bool = False
    torch_compile: bool = False
    torch_compile_mode: str = "default"
    torch_compile_backend: str = "inductor"
    torch_compile_fullgraph: bool = True
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float | None = None
    max_nonfinite_steps: int = 10
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_steps: int = 500
    report_to: str = "tensorboard"
    logging_dir: str = "logs"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
    hub_private_repo: bool = False
    ema: EMAConfig = field(default_factory=EMAConfig)


@dataclass
class AutoencoderLoopConfig(LoopConfig):
    """Stage 1's loop defaults: the release's batch, constant rate and StyleGAN2 EMA."""

    output_dir: str = "brics-autoencoder"
    ema: EMAConfig = field(default_factory=partial(EMAConfig, ema_schedule="stylegan", ema_max_decay=0.999))


@dataclass
class DiffusionLoopConfig(LoopConfig):
    """Stage 2's loop defaults: diffusers' unconditional training script's batch, warm-up, cosine rate, clipping and
    EMA warm-up."""

    output_dir: str = "brics-diffusion"
    train_batch_size: int = 64
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    max_grad_norm: float | None = 1.0
    validation_steps: int = 1000
    ema: EMAConfig = field(default_factory=partial(EMAConfig, ema_schedule="warmup", ema_max_decay=0.9999))


#: ``--autoencoder`` values that ask for diffusion on the images themselves (stage 2's pixel space)
PIXEL_SPACE = ("none", "pixels")


def is_pixel_space(autoencoder: str) -> bool:
    """Whether an ``--autoencoder`` value asks for pixel-space diffusion (``none`` or ``pixels``)."""
    return str(autoencoder).strip().lower() in PIXEL_SPACE


@dataclass
class AutoencoderLossConfig:
    """The terms of the stage-1 loss and the discriminator."""

    l2_weight: float = 20.0
    perceptual_weight: float = 5.0
    perceptual_loss: str = "vgg"
    perceptual_resolution: int = 224
    lpips_weights: str | None = None
    gan_weight: float = 1.0
    gan_loss: str = "r1"
    r1_gamma: float = 4.0
    r1_interval: int = 16
    r1_lazy_adjustment: bool = True
    gp_weight: float = 4.0
    disc_start: int = 0
    disc_channel_base: int | None = None
    disc_channel_max: int | None = None
    # The release's discriminator step, off by default (docs/autoencoder.md, "Faithful to the authors' release"):
    r1_separate_step: bool = False  # the release: R1 as its own optimizer step (17 steps per 16 batches)
    disc_recompute_reconstruction: bool = False  # the release: D sees the autoencoder's output after its update
    disc_num_fp16_res: int = 0  # the release: 4 (its four highest resolutions in fp16; CUDA only)
    disc_conv_clamp: float | None = None  # the release: 256
    kl_weight: float | None = None  # AutoencoderKL: 1e-6 (LDM), else 0 (AutoencoderTrainingConfig.__post_init__)
    kl_reduction: str | None = None  # AutoencoderKL: "sum" (LDM), else "mean" (the BRICS release)
    codebook_weight: float = 1.0


@dataclass
class AutoencoderTrainingConfig:
    """Everything a stage-1 run needs; `training.autoencoder_args.parse_args` builds it from the command line."""

    loop: AutoencoderLoopConfig = field(default_factory=AutoencoderLoopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    model_type: str = "brics"
    training_recipe: str = "auto"
    preset: str = "small-32"
    model_config_name_or_path: str | None = None
    gradient_checkpointing: bool = False
    # --model_type cvqvae: the online clustered codebook (models.clustered_codebook; CVQ-VAE's reference in comments)
    cvq_decay: float = 0.99  # of the usage's running average (the reference: 0.99)
    cvq_distance: str = "cosine"  # or "euclidean" (the reference: cosine)
    cvq_anchor: str = "probability"  # or "closest", "random" (the reference's quantiser: probability; its script: closest)
    cvq_contrastive_weight: float = 0.0  # the contrastive term, 0: off (the reference's script: off)
    resolution: int | None = None
    center_crop: bool = False
    random_flip: bool = False
    validation_fraction: float = 0.05
    dataloader_num_workers: int = 0
    learning_rate: float = 2e-3
    grid_learning_rate: float | None = None
    disc_learning_rate: float | None = None
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    adam_epsilon: float = 1e-15
    disc_adam_epsilon: float = 1e-8
    eval_batch_size: int = 64
    num_validation_images: int = 16
    max_eval_images: int | None = None
    eval_with_noise: bool = True

    def __post_init__(self) -> None:
        # the KL term as LDM trains AutoencoderKL (weight 1e-6, summed); off for BRICS, averaged as its release does
        kl_model = self.model_type == "autoencoderkl"
        if self.loss.kl_weight is None:
            self.loss.kl_weight = 1e-6 if kl_model else 0.0
        if self.loss.kl_reduction is None:
            self.loss.kl_reduction = "sum" if kl_model else "mean"


@dataclass
class DiffusionTrainingConfig:
    """Everything a stage-2 run needs; `training.diffusion_args.parse_args` builds it from the command line."""

    loop: DiffusionLoopConfig = field(default_factory=DiffusionLoopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: str = field(kw_only=True)  # required: a folder or Hub id, or "none" for pixel space
    autoencoder_subfolder: str | None = None
    scaling_factor: float | str | None = None
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
    gradient_checkpointing: bool = False
    training_recipe: str = "auto"
    schedule: str = "cosine-variant"
    prediction_type: str = "epsilon"
    snr_gamma: float | None = None
    num_train_timesteps: int = 1000
    learning_rate: float = 8e-5
    optimizer: str = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    num_validation_images: int = 8
    num_inference_steps: int = 100

    def __post_init__(self) -> None:
        if self.resolution is None and is_pixel_space(self.autoencoder):
            self.resolution = 32  # an autoencoder's images are its own sample_size
        if self.snr_gamma is None:  # min-SNR-5 with the cosine schedule (paper config a), none with config b
            self.snr_gamma = 5.0 if self.schedule == "cosine" else 0.0
        if self.conditioning_dropout_prob is None:  # classifier-free guidance for text, as diffusers' scripts train
            self.conditioning_dropout_prob = 0.1 if self.caption_column else 0.0
        if self.validation_guidance_scale is None:  # guidance only where the UNet learned the unconditional model
            self.validation_guidance_scale = 3.0 if self.conditioning_dropout_prob else 1.0


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """A settings dataclass (nested ones included) from parsed arguments: each field reads the flag of its name."""
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            values[item.name] = from_namespace(kind, namespace)
        else:
            values[item.name] = getattr(namespace, item.name)
    return cls(**values)


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a (nested) settings class, by flag name; a nested settings field contributes the
    fields of its default object. Required fields are left out."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(hints[item.name]):
            out.update(_values(item.default_factory()))
        elif item.default is not dataclasses.MISSING:
            out[item.name] = item.default
    return out


def _values(settings: Any) -> dict[str, Any]:
    """Every field of a (nested) settings object, by flag name."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        out.update(_values(value) if dataclasses.is_dataclass(value) else {item.name: value})
    return out

def flat_settings(settings: Any, secret: tuple[str, ...] = ("hub_token",)) -> dict[str, Any]:
    """The fields of a (nested) settings object as one flat dict, leaving out unset values and secrets."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_settings(value, secret))
        elif value is not None and item.name not in secret:
            out[item.name] = list(value) if isinstance(value, tuple) else value
    return out
