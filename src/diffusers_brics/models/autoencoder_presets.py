"""Named configurations of `BRICSAutoencoder`: `PRESETS` (``BRICSAutoencoder.from_preset``), and `LEGACY_CONFIG`,
what a saved config of diffusers-brics 0.1.0 meant for the fields it lacks."""

from __future__ import annotations

from typing import Any

# Presets. "paper-*" are the paper's 256x256 configurations (Table 3) with the architecture of the authors'
# release; the encoder of the smaller codes downsamples further with the release's channel rule (min(32 * 2**(i+1),
# 512)), and their grid resolutions follow Table 3's parameter counts (r_min 4, r_max 64), see docs/autoencoder.md "Presets".
_PAPER = dict(
    sample_size=256,
    encoder_block_out_channels=(64, 128, 256),
    feature_size=64,
    feature_channels=512,
    grid_num_levels=16,
    grid_features_per_level=4,
    grid_log2_hashmap_size=18,
    decoder_block_out_channels=(512, 256, 128),
    style_dim=512,
    mapping_layers=3,
)
_SMALL = dict(
    num_groups=4, encoder_layout="diffusers", encoder_block_out_channels=(32, 64, 64), encoder_norm_num_groups=32,
    feature_channels=128, grid_num_levels=8, grid_features_per_level=4, grid_min_resolution=4, grid_max_resolution=32,
    grid_indexing="hash", grid_query_order="key-row-col", retrieval_mlp="plain", relaxed_precision_placement="per_position",
    decoder_style="feature_block", decoder_block_out_channels=(128, 64), decoder_first_block_layers=1,
    decoder_noise=False, decoder_conv_clamp=None, style_dim=128, mapping_layers=2,
)
PRESETS: dict[str, dict[str, Any]] = {
    "paper-64x64x4": dict(
        _PAPER, latent_size=64, num_groups=4, grid_min_resolution=16, grid_max_resolution=64
    ),
    "paper-32x32x4": dict(
        _PAPER, latent_size=32, num_groups=4, encoder_block_out_channels=(64, 128, 256, 512),
        grid_min_resolution=4, grid_max_resolution=64,
    ),
    "paper-32x32x8": dict(
        _PAPER, latent_size=32, num_groups=8, encoder_block_out_channels=(64, 128, 256, 512),
        grid_min_resolution=4, grid_max_resolution=64,
    ),
    "paper-16x16x8": dict(
        _PAPER, latent_size=16, num_groups=8, encoder_block_out_channels=(64, 128, 256, 512, 512),
        grid_min_resolution=4, grid_max_resolution=64,
    ),
    "paper-16x16x16": dict(
        _PAPER, latent_size=16, num_groups=16, encoder_block_out_channels=(64, 128, 256, 512, 512),
        grid_min_resolution=4, grid_max_resolution=64,
    ),
    # Small configurations that train in minutes on a CPU: ours, not the release's. Their layout is the one that reached
    # a given held-out PSNR fastest on 32x32 images (benchmarks/time_to_quality.py, docs/training.md "Recipes"): diffusers'
    # encoder, a plain MLP after the look-up, the decoder's style from the pooled feature block, no decoder noise or
    # clamp, hashed fine levels. The release's layout at the same widths is benchmarks/configs/small-32-release-layout.
    "small-32": dict(_SMALL, sample_size=32, latent_size=8, feature_size=16, grid_log2_hashmap_size=15),
    "small-64": dict(_SMALL, sample_size=64, latent_size=16, feature_size=32, grid_log2_hashmap_size=16),
    # For tests: a few ten thousand parameters.
    "tiny": dict(
        sample_size=32, latent_size=8, num_groups=2, encoder_block_out_channels=(8, 16, 16),
        encoder_layers_per_block=1, encoder_norm_num_groups=4, feature_size=16, feature_channels=16,
        grid_num_levels=4, grid_features_per_level=2, grid_log2_hashmap_size=8, grid_min_resolution=2,
        grid_max_resolution=8, mlp_hidden_layers=1, decoder_block_out_channels=(16, 8),
        decoder_first_block_layers=1, decoder_layers_per_block=1, style_dim=16, mapping_layers=2,
    ),
}

# What a saved config without the fields of the release's architecture (written by diffusers-brics 0.1.0) meant:
# loading it fills these values, so that it builds and decodes exactly as it did.
LEGACY_CONFIG = dict(
    encoder_layout="diffusers",
    encoder_attention_resolutions=None,
    grid_indexing="hash",
    grid_query_order="key-row-col",
    retrieval_mlp="plain",
    relaxed_precision_placement="per_position",
    decoder_style="feature_block",
    decoder_noise=False,
    decoder_conv_clamp=None,
)
