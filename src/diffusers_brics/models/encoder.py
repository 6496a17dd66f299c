"""Key-code encoder (paper section 3.1, supp. A.1 and A.4): image -> key codes in ``[0, 1]`` (a sigmoid).

Two layouts of the VQGAN (taming-transformers) encoder:

* ``"taming"`` (default), the authors' release (``training/encoder.py``): a 3x3 stem to half the first level's
  channels; per resolution ``layers_per_block`` residual blocks (the first changes the width), each followed by
  self-attention where the resolution is in ``attention_resolutions`` (release: the code resolution), and a
  stride-2 down-sampling convolution between resolutions; no mid block (the release builds one but never runs
  it); group norm, leaky ReLU (slope 0.01) and a 1x1 output convolution. Release channels 64/128/256.
* ``"diffusers"``: diffusers' `Encoder` (SiLU, a mid block with attention at the code resolution, a 3x3 output
  convolution), this package's first layout.

The KL variant (ablation config c) predicts a mean and log-variance and squashes a sample:
``z = sigmoid(mu + sigma * eps)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution, Encoder
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

EncoderLayout = Literal["taming", "diffusers"]


class TamingEncoder(nn.Module):
    """The release's encoder body: ``(B, in_channels, H, W) -> (B, out_channels, H / 2**(n-1), W / 2**(n-1))``.

    Built from diffusers' blocks (`ResnetBlock2D`, `Attention`, `Downsample2D`); diffusers offers no leaky ReLU,
    so the residual blocks' activation is replaced by the release's ``F.leaky_relu`` (slope 0.01).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        norm_num_groups: int,
        attention_resolutions: tuple[int, ...],
        resolution: int,
    ):
        super().__init__()
        stem = block_out_channels[0] // 2
        self.conv_in = nn.Conv2d(in_channels, stem, kernel_size=3, padding=1)
        self.levels = nn.ModuleList()
        width = stem
        for index, channels in enumerate(block_out_channels):
            level = nn.Module()
            level.resnets = nn.ModuleList()
            level.attentions = nn.ModuleList()
            for _ in range(layers_per_block):
                resnet = ResnetBlock2D(in_channels=width, out_channels=channels, temb_channels=None,
                                       groups=norm_num_groups, eps=1e-6)
                resnet.nonlinearity = nn.LeakyReLU(0.01)
                level.resnets.append(resnet)
                width = channels
                if resolution in attention_resolutions:
                    level.attentions.append(Attention(
                        channels, heads=1, dim_head=channels, norm_num_groups=norm_num_groups, eps=1e-6,
                        residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True,
                    ))
            if index < len(block_out_channels) - 1:
                level.downsample = Downsample2D(width, use_conv=True, padding=0, name="op")
                resolution //= 2
            self.levels.append(level)
        self.norm_out = nn.GroupNorm(norm_num_groups, width, eps=1e-6)
        self.nonlinearity = nn.LeakyReLU(0.01)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=1)
        self.gradient_checkpointing = False

    def _level(self, level: nn.Module, h: torch.Tensor) -> torch.Tensor:
        for index, resnet in enumerate(level.resnets):
            h = resnet(h, None)
            if len(level.attentions):
                h = level.attentions[index](h)
        return level.downsample(h) if hasattr(level, "downsample") else h

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(sample)
        for level in self.levels:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(self._level, level, h)
            else:
                h = self._level(level, h)
        return self.conv_out(self.nonlinearity(self.norm_out(h)))


class KeyCodeEncoder(nn.Module):
    """Image ``(B, 3, H, W)`` in ``[-1, 1]`` -> key codes ``(B, C_z, H / 2**(n-1), W / 2**(n-1))`` in ``[0, 1]``.

    ``n = len(block_out_channels)``. ``layout`` is ``"taming"`` (the release) or ``"diffusers"``, see the module
    docstring; ``attention_resolutions`` (taming layout) defaults to the code resolution, and
    ``mid_block_attention`` (diffusers layout) switches the mid block's attention. With ``kl=True`` the encoder
    also returns the Gaussian posterior over the pre-sigmoid codes, whose ``kl()`` is the ablation's regulariser.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (64, 128, 256),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        layout: EncoderLayout = "taming",
        attention_resolutions: tuple[int, ...] | None = None,
        mid_block_attention: bool = True,
        sample_size: int = 256,
        kl: bool = False,
    ):
        super().__init__()
        self.kl = kl
        out_channels = 2 * latent_channels if kl else latent_channels
        if layout == "taming":
            code_resolution = sample_size // 2 ** (len(block_out_channels) - 1)
            self.encoder = TamingEncoder(
                in_channels, out_channels, tuple(block_out_channels), layers_per_block, norm_num_groups,
                tuple(attention_resolutions) if attention_resolutions is not None else (code_resolution,),
                sample_size,
            )
        elif layout == "diffusers":
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
        else:
            raise ValueError(f"layout must be 'taming' or 'diffusers', got {layout!r}")

    def forward(
        self, sample: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution | None]:
        h = self.encoder(sample)
        if not self.kl:
            return torch.sigmoid(h), None
        posterior = DiagonalGaussianDistribution(h)
        logits = posterior.sample(generator) if sample_posterior else posterior.mode()
        return torch.sigmoid(logits), posterior
