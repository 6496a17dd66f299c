"""The outputs of `BRICSAutoencoder`: `BRICSEncoderOutput` of ``encode`` and `BRICSAutoencoderOutput` of ``forward``
(``decode`` returns diffusers' `DecoderOutput`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.utils import BaseOutput


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
