"""What `BRICSAutoencoder` accepts: `check_config` refuses a configuration that cannot work (naming the argument),
`check_images` and `check_latents` the inputs of ``encode`` and ``decode`` that it cannot take."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..utils import is_integer


_CHOICES = {
    "encoder_layout": ("taming", "diffusers"),
    "grid_backend": ("auto", "torch", "triton", "tcnn"),
    "grid_indexing": ("tiled", "hash"),
    "grid_query_order": ("col-row-key", "key-row-col"),
    "retrieval_mlp": ("modulated", "plain"),
    "relaxed_precision_placement": ("per_key_code", "per_position"),
    "decoder_style": ("grid_groups", "feature_block"),
}


def check_config(config: Any) -> None:
    """Raise a ValueError naming the argument for a configuration that cannot work."""
    for name, allowed in _CHOICES.items():
        if config[name] not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {config[name]!r}")
    for name in ("in_channels", "out_channels", "sample_size", "latent_size", "num_groups", "key_channels",
                 "encoder_layers_per_block", "encoder_norm_num_groups", "feature_size", "feature_channels",
                 "grid_num_levels", "grid_features_per_level", "style_dim", "mlp_hidden_channels"):
        value = config[name]
        if not (value is None and name == "mlp_hidden_channels") and not (is_integer(value) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in ("mlp_hidden_layers", "decoder_first_block_layers", "decoder_layers_per_block", "mapping_layers"):
        if not (is_integer(config[name]) and config[name] >= 0):
            raise ValueError(f"{name} must be a non-negative integer, got {config[name]!r}")
    for name in ("encoder_block_out_channels", "decoder_block_out_channels"):
        channels = config[name]
        if not isinstance(channels, (list, tuple)) or not channels or not all(is_integer(c) and c >= 1 for c in channels):
            raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {channels!r}")
    if not isinstance(config["scaling_factor"], (int, float)) or not 0 < config["scaling_factor"] < math.inf:
        raise ValueError(f"scaling_factor must be a finite number > 0, got {config['scaling_factor']!r}")
    if not isinstance(config["shift_factor"], (int, float)) or not math.isfinite(config["shift_factor"]):
        raise ValueError(f"shift_factor must be a finite number, got {config['shift_factor']!r}")
    clamp = config["decoder_conv_clamp"]
    if clamp is not None and (not isinstance(clamp, (int, float)) or not 0 < clamp < math.inf):
        raise ValueError(f"decoder_conv_clamp must be a finite number > 0 or None (release: 256), got {clamp!r}")
    attention = config["encoder_attention_resolutions"]
    if attention is not None and (not isinstance(attention, (list, tuple))
                                  or not all(is_integer(r) and r >= 1 for r in attention)):
        raise ValueError(f"encoder_attention_resolutions must be a sequence of resolutions or None (the code "
                         f"resolution), got {attention!r}")
    init_scale = config["grid_init_scale"]
    if not isinstance(init_scale, (int, float)) or not 0 <= init_scale < math.inf:
        raise ValueError(f"grid_init_scale must be a finite number >= 0 (paper: 1e-4), got {init_scale!r}")
    sample_size, latent_size, num_groups, key_channels = (
        config["sample_size"], config["latent_size"], config["num_groups"], config["key_channels"]
    )
    encoder_channels, norm_groups = config["encoder_block_out_channels"], config["encoder_norm_num_groups"]
    feature_size, feature_channels = config["feature_size"], config["feature_channels"]
    decoder_channels = config["decoder_block_out_channels"]
    if not 1 <= key_channels <= 3:
        raise ValueError(f"key_channels (C_key) must be 1, 2 or 3 (grids take C_key + 2 <= 5 inputs), got {key_channels}")
    downsample = 2 ** (len(encoder_channels) - 1)
    if latent_size * downsample != sample_size:
        raise ValueError(
            f"sample_size ({sample_size}) must equal latent_size ({latent_size}) * 2 ** (len(encoder_block_out_"
            f"channels) - 1) = {latent_size * downsample}; add or remove encoder blocks"
        )
    bad = [ch for ch in encoder_channels if ch % norm_groups]
    if bad:
        raise ValueError(
            f"encoder_block_out_channels {tuple(encoder_channels)} must all be multiples of encoder_norm_num_groups "
            f"({norm_groups})"
        )
    if config["encoder_layout"] == "taming" and (encoder_channels[0] // 2) % norm_groups:
        raise ValueError(
            f"the taming encoder's stem has half the first level's channels ({encoder_channels[0]} // 2), which must "
            f"be a multiple of encoder_norm_num_groups ({norm_groups})"
        )
    if config["decoder_style"] == "grid_groups":
        if config["style_dim"] % num_groups:
            raise ValueError(f"style_dim ({config['style_dim']}) must be a multiple of num_groups ({num_groups}) with "
                             "decoder_style='grid_groups': each group gives an equal part of the style")
        if config["mapping_layers"] < 1:
            raise ValueError("mapping_layers must be >= 1 with decoder_style='grid_groups' (release: 3)")
    if feature_size % latent_size:
        raise ValueError(f"feature_size (H_d={feature_size}) must be a multiple of latent_size (H_z={latent_size})")
    if feature_channels % num_groups:
        raise ValueError(f"feature_channels (C_d={feature_channels}) must be a multiple of num_groups ({num_groups})")
    upsample = 2 ** (len(decoder_channels) - 1)
    if feature_size * upsample != sample_size:
        raise ValueError(
            f"sample_size ({sample_size}) must equal feature_size ({feature_size}) * 2 ** (len(decoder_block_out_"
            f"channels) - 1) = {feature_size * upsample}"
        )
    if math.log2(sample_size) % 1:
        raise ValueError(f"sample_size must be a power of two, got {sample_size}")


def check_images(sample: torch.Tensor, config: Any, name: str = "sample") -> None:
    """Raise a ValueError naming ``name`` unless ``sample`` is a batch of images that the autoencoder of
    ``config`` encodes: ``(B, in_channels, sample_size, sample_size)``, floating point, in ``[-1, 1]``."""
    expected = f"(batch, {config.in_channels}, {config.sample_size}, {config.sample_size})"
    if not isinstance(sample, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(sample).__name__}")
    if sample.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions {expected}, got shape {tuple(sample.shape)}")
    if sample.shape[1] != config.in_channels:
        raise ValueError(
            f"{name} must have {config.in_channels} channels {expected}, got {sample.shape[1]} (shape "
            f"{tuple(sample.shape)})"
        )
    if tuple(sample.shape[2:]) != (config.sample_size, config.sample_size):
        raise ValueError(
            f"{name} must be {config.sample_size}x{config.sample_size} as configured (sample_size), got "
            f"{sample.shape[2]}x{sample.shape[3]}"
        )
    if not sample.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor in [-1, 1], got dtype {sample.dtype}")
    if sample.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got an empty batch of shape {tuple(sample.shape)}")
    # The value checks read the data, which torch.compile cannot trace without splitting its graph: a compiled
    # call skips them (docs/autoencoder.md "torch.compile"); the static shape and dtype checks above still run as guards.
    if not torch.compiler.is_compiling() and not bool(((sample >= -1.001) & (sample <= 1.001)).all()):
        raise ValueError(
            f"{name} must hold values in [-1, 1] with no NaN, got min {sample.min().item():.3g} and max "
            f"{sample.max().item():.3g} (images in [0, 1] map to [-1, 1] by x * 2 - 1)"
        )


def check_latents(z: torch.Tensor, config: Any, name: str = "z") -> None:
    """Raise a ValueError naming ``name`` unless ``z`` is a batch of key codes that the autoencoder of
    ``config`` decodes: ``(B, latent_channels, latent_size, latent_size)``, floating point, in ``[0, 1]``."""
    expected = f"(batch, {config.latent_channels}, {config.latent_size}, {config.latent_size})"
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(z).__name__}")
    if z.ndim != 4 or z.shape[1] != config.latent_channels or tuple(z.shape[2:]) != (config.latent_size,) * 2:
        raise ValueError(f"{name} (key codes) must have shape {expected}, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"{name} (key codes) must be a floating point tensor, got dtype {z.dtype}")
    if z.shape[0] == 0:
        raise ValueError(f"{name} (key codes) must hold at least one code, got an empty batch of shape {tuple(z.shape)}")
    if not torch.compiler.is_compiling() and not bool(((z >= 0) & (z <= 1)).all()):  # see check_images
        raise ValueError(
            f"{name} (key codes) must lie in [0, 1] with no NaN, got min {z.min().item():.3g} and max "
            f"{z.max().item():.3g}; diffusion samples x map back by x / {config.scaling_factor:g} + "
            f"{config.shift_factor:g} (x / scaling_factor + shift_factor), then clamp"
        )
