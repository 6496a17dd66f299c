"""`BRICSAutoencoder`: encoder -> key codes -> feature retrieval -> StyleGAN2-style decoder (paper Figure 3).

Drop-in for diffusers' `AutoencoderKL` / `VQModel` in latent diffusion: ``encode(images).latents`` are the
key codes in ``[0, 1]`` (what diffusers' ``retrieve_latents`` returns), ``decode(latents).sample`` the
images in ``[-1, 1]``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

from .autoencoder_checks import check_config, check_images, check_latents
from .autoencoder_outputs import BRICSAutoencoderOutput, BRICSEncoderOutput
from .autoencoder_presets import LEGACY_CONFIG, PRESETS
from .decoder import BRICSDecoder
from .encoder import KeyCodeEncoder
from .retrieval import KeyCodeRetrieval


class BRICSAutoencoder(ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""The BRICS bi-level autoencoder: images -> continuous key codes -> feature grids -> images.

    Vocabulary (paper Table 1): key codes ``z`` of shape ``(C_z, H_z, W_z)`` with ``C_z = N_h * C_key``; ``N_h``
    groups of multi-resolution feature grids with ``N_r`` levels of ``C_v`` features and at most ``T`` entries
    per level; feature block ``f`` of shape ``(C_d, H_d, W_d)`` fed to the decoder.

    The defaults build the architecture of the authors' release (docs/autoencoder.md "Faithful to the authors' release"); each
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
        check_config(self.config)
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
        check_images(x, self.config, "x")
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
        check_latents(z, self.config)
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
