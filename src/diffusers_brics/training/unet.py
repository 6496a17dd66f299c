"""The stage-2 denoiser and its noise schedule: the UNet presets (``--unet_preset``), `build_unet` on a
`LatentSpace` (unconditional, class-conditional, or cross-attending to text), `build_scheduler` (training) and
`sampling_scheduler` (the sampler saved with the pipeline)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel

from ..schedules import cosine_variant_betas
from .config import DiffusionTrainingConfig
from .latent_space import LatentSpace

# UNet presets: the paper's LDM-like UNet (supp. A.5) and small ones for CPU runs. ``attention_levels`` (0-based)
# places self-attention by level, at any input size; ``attention_resolutions`` by the level's size. ``paper`` is the
# release's (imagen-pytorch's Unet: dim 256, multipliers 1, 2, 3, 4, two residual blocks per level, attention on
# levels 2, 3 and 4 of 4, its ``--atten_layers 2,3,4``), whatever the key codes' size.
UNET_PRESETS = {
    "paper": dict(block_out_channels=(256, 512, 768, 1024), layers_per_block=2, attention_levels=(1, 2, 3)),
    "small": dict(block_out_channels=(64, 128, 192), layers_per_block=2, attention_resolutions=(4,)),
    "tiny": dict(block_out_channels=(16, 32), layers_per_block=1, attention_resolutions=(4,)),
}


def build_unet(config: DiffusionTrainingConfig, latents: LatentSpace | torch.nn.Module,
               num_classes: int | None = None, cross_attention_dim: int | None = None
               ) -> UNet2DModel | UNet2DConditionModel:
    """An LDM-like UNet on a `LatentSpace` (or an autoencoder's latents): key codes, a peer's latents or images.
    Attention on the preset's levels (``attention_levels``), or at its resolutions where the input is that large
    (``attention_resolutions``); with ``num_classes``, a class embedding
    added to the timestep embedding; with ``cross_attention_dim``, a `UNet2DConditionModel` whose attention blocks
    (and middle block) cross-attend to text-encoder hidden states of that width."""
    preset = UNET_PRESETS[config.unet_preset]
    space = latents if isinstance(latents, LatentSpace) else LatentSpace(latents)
    latent_channels, size, _ = space.shape
    channels = preset["block_out_channels"]
    down, up = block_types(config.unet_preset, size, cross_attention=bool(cross_attention_dim))
    if size % 2 ** (len(channels) - 1):
        raise ValueError(f"latents of size {size} cannot be halved {len(channels) - 1} times by --unet_preset "
                         f"{config.unet_preset}")
    if cross_attention_dim:
        return UNet2DConditionModel(
            sample_size=size, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=channels, layers_per_block=preset["layers_per_block"], down_block_types=down,
            up_block_types=up, norm_num_groups=min(32, channels[0]),
            # UNet2DConditionModel reads attention_head_dim as the number of heads (Stable Diffusion's 8)
            attention_head_dim=8, cross_attention_dim=cross_attention_dim,
        )
    return UNet2DModel(
        sample_size=size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=channels, layers_per_block=preset["layers_per_block"], down_block_types=down,
        up_block_types=up, norm_num_groups=min(32, channels[0]), attention_head_dim=max(8, channels[0] // 8),
        num_class_embeds=num_classes,
    )


def block_types(unet_preset: str, size: int, cross_attention: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(down_block_types, up_block_types)`` of ``unet_preset`` on latents of ``size`` x ``size``: attention
    blocks (cross-attending with ``cross_attention``) on the preset's ``attention_levels`` at any size, or where a
    level's size is one of its ``attention_resolutions``; the up blocks mirror the down blocks."""
    preset = UNET_PRESETS[unet_preset]
    attention_block = "CrossAttn" if cross_attention else "Attn"
    down, up = [], []
    for level in range(len(preset["block_out_channels"])):
        if "attention_levels" in preset:
            attention = level in preset["attention_levels"]
        else:
            attention = (size // 2**level) in preset["attention_resolutions"]
        down.append(f"{attention_block}DownBlock2D" if attention else "DownBlock2D")
        up.insert(0, f"{attention_block}UpBlock2D" if attention else "UpBlock2D")
    return tuple(down), tuple(up)


def build_scheduler(config: DiffusionTrainingConfig, clip_range: float | None = None) -> DDPMScheduler:
    """The training noise schedule (a BRICS pipeline is saved with DDIM on it, `sampling_scheduler`; a pixel-space
    `DDPMPipeline` with it). With ``clip_range`` (BRICS key codes: their bound in diffusion space, see
    `key_code_bound`) the sampler clamps its estimate of the clean sample to it at every step, as the BRICS release
    samples; training never reads it."""
    clip = dict(clip_sample=True, clip_sample_range=clip_range) if clip_range is not None else dict(clip_sample=False)
    common = dict(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type, **clip)
    if config.schedule == "cosine-variant":
        return DDPMScheduler(trained_betas=cosine_variant_betas(config.num_train_timesteps).tolist(), **common)
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", **common)


def sampling_scheduler(scheduler: DDPMScheduler) -> DDIMScheduler:
    """The sampler a trained BRICS pipeline is saved with: DDIM on the training ``scheduler``'s noise schedule (its
    betas, ``num_train_timesteps`` and ``prediction_type``), with its ``clip_sample`` and ``clip_sample_range`` (the
    estimate of the clean sample clamped to the key codes' range at every step, which DDIM needs on the paper's
    schedule, see `diffusers_brics.pipelines.loading.swap_scheduler`). Deterministic (``eta`` 0) unless the call
    passes an ``eta``."""
    return DDIMScheduler.from_config(scheduler.config)
