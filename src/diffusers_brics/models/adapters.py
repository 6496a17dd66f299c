"""Adapters of the autoencoders, BRICS and its peers, diffusers' `AutoencoderKL` and `VQModel` (and `ClusteredVQModel`,
a `VQModel` with CVQ-VAE's online clustered codebook), to the one
interface the trainings, the pipelines and the evaluation use for any of them: the classes and their presets
(`build_autoencoder`, `load_autoencoder`, `model_type_of`), latents in and out (`latent_shape`, `encode_latents`,
`decode_latents`) and the scaling into diffusion space (`to_diffusion_space`, `from_diffusion_space`,
`fitted_scaling_factor`), and the form a trained one is saved in (`saved_form`).

*Latents* are what an autoencoder's ``encode`` gives: BRICS key codes in ``[0, 1]``, the mode of the KL posterior,
or the VQ encoder's output before quantisation. *Diffusion space* is where a latent diffusion model works: latents
mapped by ``(z - shift_factor) * scaling_factor`` (BRICS: onto ``[-1, 1]``; KL and VQ: a fitted scale, as diffusers
does for Stable Diffusion's VAE).

Presets give each model type a configuration; ``small-32`` are the three of the same code size for the 32x32 emoji
benchmarks (an 8x8x4 code: 4 floats per position for BRICS and KL, one of 1,024 entries of a 4-d codebook per
position for VQ), with encoders of the same widths.
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, VQModel

from .autoencoder_brics import BRICSAutoencoder
from .model_types import MODEL_TYPES, check_model_type, preset_config
from .clustered_vq_model import ClusteredVQModel

#: Model type -> class; a subclass before its base (`model_type_of` takes the first match).
AUTOENCODER_CLASSES = {"brics": BRICSAutoencoder, "autoencoderkl": AutoencoderKL, "cvqvae": ClusteredVQModel,
                       "vqmodel": VQModel}
assert set(AUTOENCODER_CLASSES) == set(MODEL_TYPES)



def model_type_of(vae: torch.nn.Module) -> str:
    """``"brics"``, ``"autoencoderkl"``, ``"cvqvae"`` or ``"vqmodel"`` for an autoencoder instance."""
    for name, cls in AUTOENCODER_CLASSES.items():
        if isinstance(vae, cls):
            return name
    raise ValueError(f"vae must be a BRICSAutoencoder, AutoencoderKL or VQModel, got {type(vae).__name__}")


def build_autoencoder(model_type: str, preset: str | None = None, config: dict | None = None,
                      settings: dict | None = None) -> torch.nn.Module:
    """An untrained autoencoder of ``model_type`` from a ``config`` dict (as ``load_config`` gives) or a preset;
    ``settings``: constructor arguments over those (``cvqvae``: the ``cvq_*`` codebook settings). A ``cvqvae`` is
    also built from a `VQModel` config."""
    cls = AUTOENCODER_CLASSES[check_model_type(model_type)]
    settings = settings or {}
    if config is not None:
        written = config.get("_class_name")
        if cls is ClusteredVQModel and written in (None, "VQModel", cls.__name__):
            return ClusteredVQModel.from_vqmodel_config(config, **settings)
        if written and written != cls.__name__:
            raise ValueError(f"the config is a {written} config, not one of --model_type {model_type} "
                             f"({cls.__name__}); pass --model_type {class_to_type(written)}")
        return cls.from_config(config, **settings)
    return cls(**preset_config(model_type, preset), **settings)


def saved_form(vae: torch.nn.Module) -> torch.nn.Module:
    """The model a trained autoencoder is saved as: a `ClusteredVQModel` as the stock `VQModel` that decodes the
    same (`ClusteredVQModel.to_vqmodel`), any other as it is."""
    return vae.to_vqmodel() if isinstance(vae, ClusteredVQModel) else vae


def class_to_type(class_name: str) -> str:
    """The model type of a class name written in a config (``"AutoencoderKL"`` -> ``"autoencoderkl"``)."""
    for name, cls in AUTOENCODER_CLASSES.items():
        if cls.__name__ == class_name:
            return name
    raise ValueError(f"{class_name!r} is not an autoencoder this package trains or evaluates "
                     f"({', '.join(c.__name__ for c in AUTOENCODER_CLASSES.values())})")


def load_autoencoder(name_or_path: str, subfolder: str | None = None, **kwargs) -> torch.nn.Module:
    """Any of the three autoencoders from a local folder or Hub repo, its class read from its ``config.json``.

    A stage-1 output folder keeps the model in ``autoencoder/``: that subfolder is tried when the folder itself
    holds no config."""
    if subfolder is None and os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        if os.path.isfile(os.path.join(name_or_path, "autoencoder", "config.json")):
            subfolder = "autoencoder"
    try:
        config = BRICSAutoencoder.load_config(name_or_path, subfolder=subfolder, **kwargs)
    except OSError as error:  # diffusers reports a missing local folder as a failed Hub download
        where = f"{name_or_path!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise FileNotFoundError(f"{where}: no autoencoder config.json, neither in a local folder nor in a Hub repo "
                                f"({error})") from error
    cls = AUTOENCODER_CLASSES[class_to_type(config.get("_class_name", "BRICSAutoencoder"))]
    return cls.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)


def latent_shape(vae: torch.nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` of one image's latents."""
    if isinstance(vae, BRICSAutoencoder):
        return tuple(vae.latent_shape)
    config = vae.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    channels = (config.vq_embed_dim or config.latent_channels) if isinstance(vae, VQModel) else config.latent_channels
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    return channels, size // factor, size // factor


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Deterministic latents ``(B, C, H, W)`` of images ``(B, 3, H, W)`` in ``[-1, 1]``: the key codes, the KL
    posterior's mode, or the VQ encoder's output (quantised by ``decode``)."""
    images = images.to(vae.device, vae.dtype)
    if isinstance(vae, BRICSAutoencoder):
        return vae.encode(images, sample_posterior=False).latents
    if isinstance(vae, AutoencoderKL):
        return vae.encode(images).latent_dist.mode()
    return vae.encode(images).latents


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images ``(B, 3, H, W)``, about ``[-1, 1]``, from latents: BRICS without relaxed-precision noise and with its
    decoder's fixed noise inputs, whatever the train/eval mode."""
    latents = latents.to(vae.device, vae.dtype)
    if isinstance(vae, BRICSAutoencoder):
        return vae.decode(latents.clamp(0, 1), relaxed_precision=False, noise_mode="const").sample
    return vae.decode(latents).sample


def to_diffusion_space(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """``(z - shift_factor) * scaling_factor``, a missing shift counting as 0."""
    config = vae.config
    return (latents - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor


def from_diffusion_space(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_diffusion_space`; BRICS key codes are clamped to their range ``[0, 1]``."""
    config = vae.config
    latents = x / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    return latents.clamp(0, 1) if isinstance(vae, BRICSAutoencoder) else latents


def fitted_scaling_factor(latents: torch.Tensor) -> float:
    """``1 / std`` of latents ``(N, C, H, W)``: the scale that gives the diffusion model data of unit variance, as
    Stable Diffusion's ``0.18215`` was fitted."""
    std = float(latents.float().std())
    if not std > 0:
        raise ValueError("the latents have no spread (std 0): cannot fit a scaling_factor")
    return 1.0 / std
