"""StyleGAN2-style synthesis from the feature block (paper section 3.3), in plain PyTorch.

The decoder starts from the retrieved feature block ``f`` (no learned constant) and is modulated by one style
code, the same for every layer. By default the style comes with the feature block: each group of feature grids
maps its mean-pooled grid features to a part of it (the authors' release, see `KeyCodeRetrieval`). With
``mapping_layers`` set, the decoder computes it itself from average-pooled ``f`` through a mapping network.

Its layers follow NVlabs' StyleGAN2 (``training/networks_stylegan2.py``): equalised learning rate, modulated and
demodulated 3x3 convolutions, up-sampling as a stride-2 transposed convolution followed by a ``[1, 3, 3, 1]``
FIR blur, leaky ReLU with gain sqrt(2), skip connections through per-resolution to-RGB layers, and optionally
per-pixel noise inputs with a learned strength and outputs clamped to ``[-conv_clamp, conv_clamp]``. Written
here because diffusers has no StyleGAN2 layers and NVlabs' custom CUDA ops do not build without a compiler;
everything below is ordinary PyTorch and runs on CPU and GPU.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .style_layers import LRELU_GAIN, EqualLinear, MappingNetwork

NoiseMode = Literal["random", "const", "none"]


def _blur_kernel(channels: int, gain: float = 1.0) -> torch.Tensor:
    """Depthwise ``[1, 3, 3, 1]`` outer-product FIR filter, normalised to sum ``gain``: ``(C, 1, 4, 4)``."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps)
    kernel = kernel / kernel.sum() * gain
    return kernel.expand(channels, 1, 4, 4).contiguous()


class ModulatedConv2d(nn.Module):
    """Modulated convolution: per-sample input scaling by the style, shared weights, demodulated output.

    Written in the non-fused form ``conv(x * s) * d`` (identical to NVlabs' grouped form, but a plain
    convolution over the batch, which is faster on CPU). ``up=True`` doubles the resolution with a stride-2
    transposed convolution and a ``[1, 3, 3, 1]`` blur, as NVlabs' ``conv2d_resample``. With ``resolution`` set,
    a noise input (NVlabs' ``use_noise``) adds ``noise_strength * n`` after demodulation, ``n`` of shape
    ``(B, 1, resolution, resolution)``: fresh Gaussian noise (``noise_mode="random"``), the fixed ``noise_const``
    buffer (``"const"``) or nothing (``"none"``); the strength starts at 0. ``conv_clamp`` clamps the output.
    """

    def __init__(
        self, in_channels: int, out_channels: int, style_dim: int, kernel_size: int = 3, demodulate: bool = True,
        up: bool = False, activation: bool = True, resolution: int | None = None, conv_clamp: float | None = None,
    ):
        super().__init__()
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.up = up
        self.activation = activation
        self.padding = kernel_size // 2
        self.conv_clamp = conv_clamp
        self.use_noise = resolution is not None
        if up:
            self.register_buffer("blur", _blur_kernel(out_channels, gain=4.0), persistent=False)
        if self.use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def draw_noise(
        self, batch_size: int, noise_mode: NoiseMode, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """The noise input for ``noise_mode``: ``(B, 1, R, R)`` fresh noise, ``(R, R)`` ``noise_const`` or None."""
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "const":
            return self.noise_const
        shape = (batch_size, 1, *self.noise_const.shape)
        return randn_tensor(shape, generator=generator, device=self.noise_const.device, dtype=self.noise_const.dtype)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C_in, H, W)``, ``style`` ``(B, style_dim)`` and a noise input from `draw_noise`."""
        styles = self.affine(style)  # (B, C_in)
        weight = self.weight * self.weight_gain
        x = x * styles.view(*styles.shape, 1, 1).to(x.dtype)
        if self.up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)  # (B, C_out, 2H + 1, 2W + 1)
            x = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=x.shape[1])  # (B, C_out, 2H, 2W)
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        # Without an autograd graph (decoding under no_grad / inference_mode) the convolution's output is updated
        # in place: the elementwise passes below cost a quarter of a 256x256 decode on a CPU otherwise.
        inplace = not torch.is_grad_enabled()
        if self.demodulate:
            # d[b, o] = 1 / sqrt(sum_{i,k} (w[o, i, k] * s[b, i])^2)
            dcoefs = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8)  # (B, C_out)
            dcoefs = dcoefs.view(*dcoefs.shape, 1, 1).to(x.dtype)
            x = x.mul_(dcoefs) if inplace else x * dcoefs
        if noise is not None:
            noise = (noise * self.noise_strength).to(x.dtype)
            x = x.add_(noise) if inplace else x + noise
        bias = self.bias.view(1, -1, 1, 1).to(x.dtype)
        x = x.add_(bias) if inplace else x + bias
        if self.activation:
            x = F.leaky_relu_(x, 0.2).mul_(LRELU_GAIN) if inplace else F.leaky_relu(x, 0.2) * LRELU_GAIN
        if self.conv_clamp is not None:
            x = x.clamp_(-self.conv_clamp, self.conv_clamp) if inplace else x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation, activation or noise."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, style_dim, kernel_size=1, demodulate=False, activation=False,
            conv_clamp=conv_clamp,
        )

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.conv(x, style)


class SynthesisBlock(nn.Module):
    """One resolution: an optional up-sampling convolution, ``num_layers`` convolutions, and a to-RGB skip.

    ``resolution`` (the block's output size) gives every convolution a noise input; ``None`` builds none.
    """

    def __init__(
        self, in_channels: int, out_channels: int, image_channels: int, style_dim: int, num_layers: int, up: bool,
        resolution: int | None = None, conv_clamp: float | None = None,
    ):
        super().__init__()
        layer = dict(style_dim=style_dim, resolution=resolution, conv_clamp=conv_clamp)
        convs = []
        if up:
            convs.append(ModulatedConv2d(in_channels, out_channels, up=True, **layer))
        width = out_channels if up else in_channels
        for _ in range(num_layers):
            convs.append(ModulatedConv2d(width, out_channels, **layer))
            width = out_channels
        self.convs = nn.ModuleList(convs)
        self.to_rgb = ToRGB(out_channels, image_channels, style_dim, conv_clamp)
        self.up = up
        if up:
            self.register_buffer("blur", _blur_kernel(image_channels, gain=4.0), persistent=False)

    def upsample_image(self, img: torch.Tensor) -> torch.Tensor:
        """FIR up-sampling of the skip image (NVlabs ``upsample2d``): ``(B, C, H, W) -> (B, C, 2H, 2W)``."""
        return F.conv_transpose2d(img, self.blur.to(img.dtype), stride=2, padding=1, groups=img.shape[1])

    def forward(
        self, x: torch.Tensor, img: torch.Tensor | None, style: torch.Tensor, noises: list | None = None
    ):
        for conv, noise in zip(self.convs, noises or [None] * len(self.convs)):
            x = conv(x, style, noise)
        rgb = self.to_rgb(x, style)
        img = rgb if img is None else self.upsample_image(img) + rgb
        return x, img


class BRICSDecoder(nn.Module):
    r"""StyleGAN2-style decoder: feature block ``(B, C_d, H_d, W_d)`` and style -> image ``(B, 3, H, W)``.

    Args:
        in_channels (`int`): ``C_d``.
        out_channels (`int`): image channels.
        block_out_channels (`tuple[int]`): channels at ``H_d, 2 H_d, 4 H_d, ...``; the output resolution is
            ``H_d * 2 ** (len(block_out_channels) - 1)``. Paper: ``(512, 256, 128)`` for 64 -> 256.
        first_block_layers (`int`): convolutions at ``H_d`` (release: 2, NVlabs' ``conv1`` + ``conv_ex``).
        layers_per_block (`int`): convolutions after the up-sampling convolution of each later block (2: NVlabs'
            ``conv1`` + ``conv_ex``).
        style_dim (`int`): width of the style code.
        mapping_layers (`int`, *optional*): layers of a mapping network of the decoder's own, computing the style
            from average-pooled ``f`` (8, as StyleGAN2); ``None`` (the release): the caller passes the style.
        feature_size (`int`, *optional*): ``H_d``; given, every convolution gets a noise input (the release).
        conv_clamp (`float`, *optional*): clamp of every layer's output (release: 256, NVlabs' default).
    """

    def __init__(
        self,
        in_channels: int = 512,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (512, 256, 128),
        first_block_layers: int = 2,
        layers_per_block: int = 2,
        style_dim: int = 512,
        mapping_layers: int | None = None,
        feature_size: int | None = None,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.style_dim = style_dim
        self.mapping = None if mapping_layers is None else MappingNetwork(in_channels, style_dim, mapping_layers)
        resolutions = [None] * len(block_out_channels) if feature_size is None else [
            feature_size * 2**i for i in range(len(block_out_channels))
        ]
        blocks = [SynthesisBlock(in_channels, block_out_channels[0], out_channels, style_dim, first_block_layers,
                                 up=False, resolution=resolutions[0], conv_clamp=conv_clamp)]
        for cin, cout, resolution in zip(block_out_channels, block_out_channels[1:], resolutions[1:]):
            blocks.append(SynthesisBlock(cin, cout, out_channels, style_dim, layers_per_block, up=True,
                                         resolution=resolution, conv_clamp=conv_clamp))
        self.blocks = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(
        self, f: torch.Tensor, style: torch.Tensor | None = None, noise_mode: NoiseMode = "const",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``f`` ``(B, C_d, H_d, W_d)`` and ``style`` ``(B, style_dim)`` (only without a mapping network of
        its own) -> image. ``noise_mode`` and ``generator`` drive the noise inputs, where there are any."""
        if self.mapping is not None:
            style = self.mapping(f.mean(dim=(2, 3)))
        elif style is None:
            raise ValueError("this decoder takes its style from the feature grids: pass style (B, style_dim)")
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        x, img = f, None
        for block in self.blocks:
            # Drawn before the block runs, so that gradient checkpointing recomputes it with the same noise.
            noises = [conv.draw_noise(f.shape[0], noise_mode, generator) for conv in block.convs]
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, img = self._gradient_checkpointing_func(block, x, img, style, noises)
            else:
                x, img = block(x, img, style, noises)
        return img
