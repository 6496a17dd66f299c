"""`BRICSAutoencoder`: encoder -> key codes -> feature retrieval -> StyleGAN2-style decoder (paper Figure 3).

Drop-in for diffusers' `AutoencoderKL` / `VQModel` in latent diffusion: ``encode(images).latents`` are the
key codes in ``[0, 1]`` (what diffusers' ``retrieve_latents`` returns), ``decode(latents).sample`` the
images in ``[-1, 1]``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..utils import is_integer
from .decoder import BRICSDecoder
from .encoder import KeyCodeEncoder
from .retrieval import KeyCodeRetrieval


@dataclass
class BRICSEncoderOutput(BaseOutput):
    """Output of `BRICSAutoencoder.encode`.

    Args:
        latents (`torch.Tensor` of shape `(batch_size, C_z, H_z, W_z)`): the key codes, in ``[0, 1]``.
        key_code_posterior (`DiagonalGaussianDistribution`, *optional*): for the KL variant only, the Gaussian
            over the pre-sigmoid codes (``.kl()`` is the regulariser). Deliberately not named ``latent_dist``:
            diffusers' ``retrieve_latents`` would then return unsquashed samples instead of the key codes.
    """

    latents: torch.Tensor
    key_code_posterior: DiagonalGaussianDistribution | None = None


@dataclass
class BRICSAutoencoderOutput(DecoderOutput):
    """Output of `BRICSAutoencoder.forward`: the reconstruction ``sample`` and, for losses, the key codes.

    Args:
        sample (`torch.Tensor` of shape `(batch_size, 3, H, W)`): the reconstructed images.
        latents (`torch.Tensor` of shape `(batch_size, C_z, H_z, W_z)`): the key codes.
        key_code_posterior (`DiagonalGaussianDistribution`, *optional*): the KL variant's posterior.
    """

    latents: torch.Tensor | None = None
    key_code_posterior: DiagonalGaussianDistribution | None = None


# Presets. "paper-*" are the paper's 256x256 configurations (Table 3) with the architecture of the authors'
# release; the encoder of the smaller codes downsamples further with the release's channel rule (min(32 * 2**(i+1),
# 512)), and their grid resolutions follow Table 3's parameter counts (r_min 4, r_max 64), see README "Presets".
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
    # a given held-out PSNR fastest on 32x32 images (benchmarks/time_to_quality.py, README "Recipes"): diffusers'
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


class BRICSAutoencoder(ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""The BRICS bi-level autoencoder: images -> continuous key codes -> feature grids -> images.

    Vocabulary (paper Table 1): key codes ``z`` of shape ``(C_z, H_z, W_z)`` with ``C_z = N_h * C_key``; ``N_h``
    groups of multi-resolution feature grids with ``N_r`` levels of ``C_v`` features and at most ``T`` entries
    per level; feature block ``f`` of shape ``(C_d, H_d, W_d)`` fed to the decoder.

    The defaults build the architecture of the authors' release (README "Faithful to the release"); each
    field below says which value is the release's and which the alternative the paper's text allows.

    Parameters:
        in_channels, out_channels (`int`): image channels (3).
        sample_size (`int`): image resolution ``H = W``.
        latent_size (`int`): key-code resolution ``H_z = W_z``; ``sample_size / latent_size`` must be
            ``2 ** (len(encoder_block_out_channels) - 1)``.
        num_groups (`int`): ``N_h``. key_channels (`int`): ``C_key`` (1; 2 to 3 allowed).
        encoder_layout (`str`): ``"taming"`` (release: VQGAN layout, leaky ReLU, attention at
            ``encoder_attention_resolutions``, default the code resolution, no mid block) or ``"diffusers"``
            (diffusers' `Encoder`, with ``encoder_mid_block_attention``). See `KeyCodeEncoder`.
        encoder_block_out_channels, encoder_layers_per_block, encoder_norm_num_groups: the encoder's channels per
            resolution (release: 64, 128, 256), residual blocks per resolution (2) and group-norm groups (32).
        kl_key_codes (`bool`): the KL-regularised variant ``z = sigmoid(mu + sigma * eps)`` (paper config c).
        feature_size (`int`): ``H_d = W_d``, a multiple of ``latent_size``.
        feature_channels (`int`): ``C_d``, a multiple of ``num_groups``.
        grid_num_levels (`int`): ``N_r``. grid_features_per_level (`int`): ``C_v``.
        grid_log2_hashmap_size (`int`): ``log2 T``. grid_min_resolution, grid_max_resolution: ``r_min, r_max``.
        grid_init_scale (`float`): uniform initialisation range of the tables.
        grid_backend (`str`): ``"auto"`` (``"triton"`` on a CUDA machine with Triton, else ``"tcnn"`` where it
            can run, else ``"torch"``), ``"torch"``, ``"triton"`` or ``"tcnn"``; see `MultiResolutionFeatureGrid`.
            A runtime choice that does not change the model: the grids resolve it once, when built, and a named
            backend missing on this machine gives a warning and ``"auto"``, so a model saved with ``"triton"``
            loads anywhere (``from_pretrained(..., grid_backend=...)`` chooses another).
        grid_convention (`str`): ``"torch-ngp"`` (the paper's counts) or ``"tcnn"``.
        grid_indexing (`str`): levels with more nodes than ``T``: ``"tiled"`` (paper eq. 6, release) or
            ``"hash"`` (instant-NGP).
        grid_query_order (`str`): ``"col-row-key"`` (release) or ``"key-row-col"`` (paper eq. 1).
        retrieval_mlp (`str`): ``F_mlp``: ``"modulated"`` (release) or ``"plain"`` (Linear/ReLU).
        mlp_hidden_layers, mlp_hidden_channels: its hidden layers (2) and their width (``N_r * C_v``).
        relaxed_precision (`bool`): noise ``N(0, (1 / 4 r_max)^2)`` on the key codes in training mode.
        relaxed_precision_placement (`str`): ``"per_key_code"`` (release: before tiling) or ``"per_position"``
            (paper eq. 1: after tiling).
        decoder_style (`str`): where the decoder's style comes from: ``"grid_groups"`` (release: each group maps
            its pooled grid features to ``style_dim / N_h`` channels with ``mapping_layers`` layers) or
            ``"feature_block"`` (a mapping network of ``mapping_layers`` on average-pooled ``f``).
        decoder_block_out_channels, decoder_first_block_layers, decoder_layers_per_block, style_dim,
        mapping_layers: the StyleGAN2-style decoder, see `BRICSDecoder` (release: convolutions 2 at ``H_d``,
            3 per later resolution; ``mapping_layers`` 3).
        decoder_noise (`bool`): per-pixel noise inputs with learned strength (release); random in training,
            the fixed ``noise_const`` buffers at inference (see ``noise_mode`` of `decode`).
        decoder_conv_clamp (`float`, *optional*): clamp of every decoder layer (release: 256; None: off).
        scaling_factor, shift_factor (`float`): the map to diffusion space, ``(z - shift_factor) * scaling_factor``,
            and back, ``x / scaling_factor + shift_factor`` (the convention of diffusers' SD3/Flux VAEs). The
            defaults send key codes in ``[0, 1]`` to ``[-1, 1]``.
        force_upcast (`bool`): for diffusers pipelines that upcast fp16 VAEs; not needed, the grid look-up
            already runs in float32.
        latent_channels, block_out_channels: derived (``C_z`` and the encoder's channels), recorded in the config
            for code written for `AutoencoderKL`; accepted so that ``BRICSAutoencoder(**dict(vae.config))`` works,
            and refused when they contradict the fields they derive from.

    A config saved before the release's architecture (without ``retrieval_mlp``) loads with the values of
    `LEGACY_CONFIG` for the fields it lacks, and decodes as it did.
    """

    _derived_config = ("latent_channels", "block_out_channels")

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        sample_size: int = 256,
        latent_size: int = 64,
        num_groups: int = 4,
        key_channels: int = 1,
        encoder_layout: str = "taming",
        encoder_block_out_channels: tuple[int, ...] = (64, 128, 256),
        encoder_layers_per_block: int = 2,
        encoder_norm_num_groups: int = 32,
        encoder_attention_resolutions: tuple[int, ...] | None = None,
        encoder_mid_block_attention: bool = True,
        kl_key_codes: bool = False,
        feature_size: int = 64,
        feature_channels: int = 512,
        grid_num_levels: int = 16,
        grid_features_per_level: int = 4,
        grid_log2_hashmap_size: int = 18,
        grid_min_resolution: float = 16,
        grid_max_resolution: float = 64,
        grid_init_scale: float = 1e-4,
        grid_backend: str = "auto",
        grid_convention: str = "torch-ngp",
        grid_indexing: str = "tiled",
        grid_query_order: str = "col-row-key",
        retrieval_mlp: str = "modulated",
        mlp_hidden_layers: int = 2,
        mlp_hidden_channels: int | None = None,
        relaxed_precision: bool = True,
        relaxed_precision_placement: str = "per_key_code",
        decoder_style: str = "grid_groups",
        decoder_block_out_channels: tuple[int, ...] = (512, 256, 128),
        decoder_first_block_layers: int = 2,
        decoder_layers_per_block: int = 2,
        decoder_noise: bool = True,
        decoder_conv_clamp: float | None = 256.0,
        style_dim: int = 512,
        mapping_layers: int = 3,
        scaling_factor: float = 2.0,
        shift_factor: float = 0.5,
        force_upcast: bool = False,
        latent_channels: int | None = None,
        block_out_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        _check_config(self.config)
        # What diffusers' pipelines and training scripts read off a VAE config, derived from the fields above.
        derived = dict(latent_channels=num_groups * key_channels, block_out_channels=tuple(encoder_block_out_channels))
        for name, value in derived.items():
            given = self.config[name]
            if given is not None and (tuple(given) if isinstance(given, (list, tuple)) else given) != value:
                raise ValueError(f"{name}={given!r} contradicts the config it derives from ({value!r}); leave it out")
        self.register_to_config(**derived)
        self.encoder = KeyCodeEncoder(
            in_channels=in_channels,
            latent_channels=num_groups * key_channels,
            block_out_channels=tuple(encoder_block_out_channels),
            layers_per_block=encoder_layers_per_block,
            norm_num_groups=encoder_norm_num_groups,
            layout=encoder_layout,
            attention_resolutions=encoder_attention_resolutions,
            mid_block_attention=encoder_mid_block_attention,
            sample_size=sample_size,
            kl=kl_key_codes,
        )
        grid_style = decoder_style == "grid_groups"
        self.retrieval = KeyCodeRetrieval(
            num_groups=num_groups,
            key_channels=key_channels,
            feature_size=feature_size,
            feature_channels=feature_channels,
            num_levels=grid_num_levels,
            features_per_level=grid_features_per_level,
            log2_hashmap_size=grid_log2_hashmap_size,
            min_resolution=grid_min_resolution,
            max_resolution=grid_max_resolution,
            init_scale=grid_init_scale,
            backend=grid_backend,
            convention=grid_convention,
            indexing=grid_indexing,
            mlp_type=retrieval_mlp,
            mlp_hidden_layers=mlp_hidden_layers,
            mlp_hidden_channels=mlp_hidden_channels,
            style_dim=style_dim if grid_style else None,
            style_layers=mapping_layers,
            relaxed_precision=relaxed_precision,
            noise_placement=relaxed_precision_placement,
            query_order=grid_query_order,
        )
        self.decoder = BRICSDecoder(
            in_channels=feature_channels,
            out_channels=out_channels,
            block_out_channels=tuple(decoder_block_out_channels),
            first_block_layers=decoder_first_block_layers,
            layers_per_block=decoder_layers_per_block,
            style_dim=style_dim,
            mapping_layers=None if grid_style else mapping_layers,
            feature_size=feature_size if decoder_noise else None,
            conv_clamp=decoder_conv_clamp,
        )
        self.use_slicing = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        # A saved config of diffusers-brics 0.1.0 lacks the release's fields: give them the values it meant.
        if "_class_name" in config_dict and "retrieval_mlp" not in config_dict:
            config_dict = {**LEGACY_CONFIG, **config_dict}
        # The derived entries are recomputed by __init__ (so that keyword overrides cannot contradict them).
        config_dict = {k: v for k, v in config_dict.items() if k not in cls._derived_config}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any) -> "BRICSAutoencoder":
        """diffusers' ``from_pretrained``, with errors that name the file for a local folder that lacks its weights
        or whose weights do not fit its ``config.json`` (a damaged config, or files of two models mixed)."""
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if os.path.isfile(os.path.join(folder, "config.json")) and not any(
            name.startswith("diffusion_pytorch_model") for name in os.listdir(folder)
        ):
            raise FileNotFoundError(f"{folder} holds a config.json but no weights (diffusion_pytorch_model.safetensors)")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as error:
            if "expected shape" not in str(error):
                raise
            raise ValueError(f"the weights in {folder} do not fit {os.path.join(folder, 'config.json')}: {error}. The "
                             "config is damaged, or belongs to another model") from error

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "BRICSAutoencoder":
        """An untrained model in a named configuration (see `PRESETS`); keyword arguments override it."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def latent_channels(self) -> int:
        """``C_z = N_h * C_key``."""
        return self.config.latent_channels

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Shape of one key code, ``(C_z, H_z, W_z)``."""
        return (self.latent_channels, self.config.latent_size, self.config.latent_size)

    # ------------------------------------------------------------------ checks
    def _check_images(self, sample: torch.Tensor, name: str = "sample") -> None:
        c = self.config
        expected = f"(batch, {c.in_channels}, {c.sample_size}, {c.sample_size})"
        if not isinstance(sample, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(sample).__name__}")
        if sample.ndim != 4:
            raise ValueError(f"{name} must have 4 dimensions {expected}, got shape {tuple(sample.shape)}")
        if sample.shape[1] != c.in_channels:
            raise ValueError(
                f"{name} must have {c.in_channels} channels {expected}, got {sample.shape[1]} (shape "
                f"{tuple(sample.shape)})"
            )
        if tuple(sample.shape[2:]) != (c.sample_size, c.sample_size):
            raise ValueError(
                f"{name} must be {c.sample_size}x{c.sample_size} as configured (sample_size), got "
                f"{sample.shape[2]}x{sample.shape[3]}"
            )
        if not sample.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor in [-1, 1], got dtype {sample.dtype}")
        if sample.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one image, got an empty batch of shape {tuple(sample.shape)}")
        # The value checks read the data, which torch.compile cannot trace without splitting its graph: a compiled
        # call skips them (README "torch.compile"); the static shape and dtype checks above still run as guards.
        if not torch.compiler.is_compiling() and not bool(((sample >= -1.001) & (sample <= 1.001)).all()):
            raise ValueError(
                f"{name} must hold values in [-1, 1] with no NaN, got min {sample.min().item():.3g} and max "
                f"{sample.max().item():.3g} (images in [0, 1] map to [-1, 1] by x * 2 - 1)"
            )

    def _check_latents(self, z: torch.Tensor, name: str = "z") -> None:
        c = self.config
        expected = f"(batch, {self.latent_channels}, {c.latent_size}, {c.latent_size})"
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(z).__name__}")
        if z.ndim != 4 or z.shape[1] != self.latent_channels or tuple(z.shape[2:]) != (c.latent_size,) * 2:
            raise ValueError(f"{name} (key codes) must have shape {expected}, got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"{name} (key codes) must be a floating point tensor, got dtype {z.dtype}")
        if z.shape[0] == 0:
            raise ValueError(f"{name} (key codes) must hold at least one code, got an empty batch of shape {tuple(z.shape)}")
        if not torch.compiler.is_compiling() and not bool(((z >= 0) & (z <= 1)).all()):  # see _check_images
            raise ValueError(
                f"{name} (key codes) must lie in [0, 1] with no NaN, got min {z.min().item():.3g} and max "
                f"{z.max().item():.3g}; diffusion samples x map back by x / {c.scaling_factor:g} + {c.shift_factor:g} "
                f"(x / scaling_factor + shift_factor), then clamp"
            )

    # ------------------------------------------------------------------ encode / decode
    @apply_forward_hook
    def encode(
        self,
        x: torch.Tensor,
        return_dict: bool = True,
        sample_posterior: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> BRICSEncoderOutput | tuple:
        """Images ``(B, 3, H, W)`` in ``[-1, 1]`` -> key codes ``(B, C_z, H_z, W_z)`` in ``[0, 1]``.

        For the KL variant, ``sample_posterior`` (default: ``self.training``) draws ``z = sigmoid(mu + sigma * eps)``;
        otherwise ``z = sigmoid(mu)``. ``x`` of another floating dtype than the model's is cast to it.
        """
        self._check_images(x, "x")
        x = x.to(self.encoder.encoder.conv_in.weight.dtype)
        if sample_posterior is None:
            sample_posterior = self.training
        if self.use_slicing and x.shape[0] > 1:
            parts = [self.encoder(s, sample_posterior, generator) for s in x.split(1)]
            z = torch.cat([p[0] for p in parts])
            posterior = (
                DiagonalGaussianDistribution(torch.cat([p[1].parameters for p in parts])) if parts[0][1] else None
            )
        else:
            z, posterior = self.encoder(x, sample_posterior, generator)
        if not return_dict:
            return (z,) if posterior is None else (z, posterior)
        return BRICSEncoderOutput(latents=z, key_code_posterior=posterior)

    def _decode(
        self, z: torch.Tensor, generator: torch.Generator | None, relaxed_precision: bool | None, noise_mode: str
    ) -> torch.Tensor:
        f, style = self.retrieval(z, generator, relaxed_precision)
        return self.decoder(f, style, noise_mode, generator)

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        relaxed_precision: bool | None = None,
        noise_mode: str | None = None,
    ) -> DecoderOutput | tuple:
        """Key codes ``(B, C_z, H_z, W_z)`` in ``[0, 1]`` -> images ``(B, 3, H, W)`` (about ``[-1, 1]``).

        ``z`` may have any floating dtype: the grid look-up runs in at least float32, the decoder in the model's
        dtype. ``relaxed_precision`` adds the relaxed-precision noise to the codes (default: in training mode, if
        the model was built with it); ``noise_mode`` drives the decoder's noise inputs, where it has any:
        ``"random"``, ``"const"`` (the fixed ``noise_const`` buffers: a key code always gives the same image) or
        ``"none"``; default ``"random"`` in training mode, ``"const"`` otherwise. Random draws come from
        ``generator``.
        """
        self._check_latents(z)
        if noise_mode is None:
            noise_mode = "random" if self.training else "const"
        if self.use_slicing and z.shape[0] > 1:
            sample = torch.cat([self._decode(s, generator, relaxed_precision, noise_mode) for s in z.split(1)])
        else:
            sample = self._decode(z, generator, relaxed_precision, noise_mode)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool | None = None,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        relaxed_precision: bool | None = None,
        noise_mode: str | None = None,
    ) -> BRICSAutoencoderOutput | tuple:
        """Reconstruction ``decode(encode(sample).latents)``; the output also carries the key codes. The random
        draws (KL sample, relaxed precision, decoder noise) are switched as in `encode` and `decode`."""
        encoded = self.encode(sample, sample_posterior=sample_posterior, generator=generator)
        reconstruction = self.decode(
            encoded.latents, generator=generator, relaxed_precision=relaxed_precision, noise_mode=noise_mode
        ).sample
        if not return_dict:
            return (reconstruction,)
        return BRICSAutoencoderOutput(
            sample=reconstruction, latents=encoded.latents, key_code_posterior=encoded.key_code_posterior
        )


_CHOICES = {
    "encoder_layout": ("taming", "diffusers"),
    "grid_backend": ("auto", "torch", "triton", "tcnn"),
    "grid_indexing": ("tiled", "hash"),
    "grid_query_order": ("col-row-key", "key-row-col"),
    "retrieval_mlp": ("modulated", "plain"),
    "relaxed_precision_placement": ("per_key_code", "per_position"),
    "decoder_style": ("grid_groups", "feature_block"),
}


def _check_config(config: Any) -> None:
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
