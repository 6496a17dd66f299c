"""The autoencoder types stage 1 trains and their presets, as plain tables (no torch: the command lines read them
for their help). `adapters` builds the models from them."""

from __future__ import annotations

from .autoencoder_presets import PRESETS

#: The model types of ``--model_type``: BRICS, diffusers' AutoencoderKL and VQModel, and a VQModel with CVQ-VAE's
#: online clustered codebook.
MODEL_TYPES = ("autoencoderkl", "brics", "cvqvae", "vqmodel")

_SMALL_32 = dict(
    in_channels=3, out_channels=3, sample_size=32, latent_channels=4, block_out_channels=(32, 64, 128),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2,
    norm_num_groups=16,
)  # fmt: skip

_TINY = dict(
    _SMALL_32,
    latent_channels=2,
    block_out_channels=(8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=4,
)  # for tests: 8x8x2

#: Per peer model type: preset name -> constructor arguments.
PEER_PRESETS: dict[str, dict[str, dict]] = {
    "autoencoderkl": {
        "tiny": dict(_TINY),
        "small-32": dict(_SMALL_32),
        # Stable Diffusion's VAE layout: 256x256 -> 32x32x4 (f8).
        "sd": dict(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=256,
        ),
    },
    "vqmodel": {
        "tiny": dict(_TINY, num_vq_embeddings=64, vq_embed_dim=2),
        "small-32": dict(_SMALL_32, num_vq_embeddings=1024, vq_embed_dim=4),
        # VQGAN f16 (taming-transformers): 256x256 -> 16x16 indices into 1,024 entries of 256 dimensions.
        "vqgan-f16": dict(
            block_out_channels=(128, 128, 256, 256, 512),
            down_block_types=("DownEncoderBlock2D",) * 5,
            up_block_types=("UpDecoderBlock2D",) * 5,
            latent_channels=256,
            num_vq_embeddings=1024,
            vq_embed_dim=256,
            layers_per_block=2,
            sample_size=256,
        ),
    },
}
PEER_PRESETS["cvqvae"] = PEER_PRESETS["vqmodel"]  # the same networks; the codebook's settings are flags


def presets_of(model_type: str) -> list[str]:
    """The preset names of ``model_type``."""
    check_model_type(model_type)
    return sorted(PRESETS) if model_type == "brics" else sorted(PEER_PRESETS[model_type])


def preset_config(model_type: str, preset: str) -> dict:
    """The constructor arguments of a preset (those it sets; the class's defaults fill the rest)."""
    if preset not in presets_of(model_type):
        raise ValueError(f"preset {preset!r} is not a {model_type} preset; choose one of {presets_of(model_type)}")
    return dict(PRESETS[preset] if model_type == "brics" else PEER_PRESETS[model_type][preset])


def check_model_type(model_type: str) -> str:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {sorted(MODEL_TYPES)}, got {model_type!r}")
    return model_type
