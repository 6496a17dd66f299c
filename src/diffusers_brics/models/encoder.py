"""Key-code encoder (paper section 3.1, supp. A.1 and A.4).

A VQGAN encoder (diffusers' `Encoder` is that architecture: residual down blocks, a mid block with
self-attention at the code resolution) followed by a sigmoid, so key codes lie in ``[0, 1]``. The KL variant
(ablation config c) predicts a mean and log-variance and squashes a sample: ``z = sigmoid(mu + sigma * eps)``.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution, Encoder
from torch import nn


class KeyCodeEncoder(nn.Module):
    """Image ``(B, 3, H, W)`` in ``[-1, 1]`` -> key codes ``(B, C_z, H / 2**(n-1), W / 2**(n-1))`` in ``[0, 1]``.

    ``n = len(block_out_channels)``. With ``kl=True`` the encoder also returns the Gaussian posterior over the
    pre-sigmoid codes, whose ``kl()`` is the regulariser of the paper's ablation.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        mid_block_attention: bool = True,
        kl: bool = False,
    ):
        super().__init__()
        self.kl = kl
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            double_z=kl,
            mid_block_add_attention=mid_block_attention,
        )

    def forward(
        self, sample: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution | None]:
        h = self.encoder(sample)
        if not self.kl:
            return torch.sigmoid(h), None
        posterior = DiagonalGaussianDistribution(h)
        logits = posterior.sample(generator) if sample_posterior else posterior.mode()
        return torch.sigmoid(logits), posterior
