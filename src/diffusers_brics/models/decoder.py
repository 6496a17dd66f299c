"""StyleGAN2-style synthesis from the feature block (paper section 3.3), in plain PyTorch.

The decoder starts from the retrieved feature block ``f`` (no learned constant) and is modulated by one style
code computed from average-pooled ``f`` through a mapping MLP. Its layers follow NVlabs' StyleGAN2:
equalised learning rate, modulated and demodulated 3x3 convolutions, up-sampling as a stride-2 transposed
convolution followed by a ``[1, 3, 3, 1]`` FIR blur, leaky ReLU with gain sqrt(2), and skip connections
through per-resolution to-RGB layers. It is deterministic (no noise inputs), so decoding a key code always
gives the same image. Written here because diffusers has no StyleGAN2 layers and NVlabs' custom CUDA ops
do not build without a compiler; everything below is ordinary PyTorch and runs on CPU and GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LRELU_GAIN = math.sqrt(2.0)


def _blur_kernel(channels: int, gain: float = 1.0) -> torch.Tensor:
    """Depthwise ``[1, 3, 3, 1]`` outer-product FIR filter, normalised to sum ``gain``: ``(C, 1, 4, 4)``."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps)
    kernel = kernel / kernel.sum() * gain
    return kernel.expand(channels, 1, 4, 4).contiguous()


class EqualLinear(nn.Module):
    """Fully connected layer with StyleGAN's equalised learning rate (weights scaled at run time)."""

    def __init__(
        self, in_features: int, out_features: int, bias_init: float = 0.0, lr_multiplier: float = 1.0,
        activation: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activation else x


class MappingNetwork(nn.Module):
    """Style code from the feature block: average pool, normalise, MLP. ``(B, C_d, H, W) -> (B, style_dim)``."""

    def __init__(self, in_channels: int, style_dim: int, num_layers: int = 8, lr_multiplier: float = 0.01):
        super().__init__()
        widths = [in_channels] + [style_dim] * num_layers
        self.layers = nn.Sequential(
            *(EqualLinear(a, b, lr_multiplier=lr_multiplier, activation=True) for a, b in zip(widths, widths[1:]))
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = f.mean(dim=(2, 3))
        x = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.layers(x)


class ModulatedConv2d(nn.Module):
    """Modulated convolution: per-sample input scaling by the style, shared weights, demodulated output.

    Written in the non-fused form ``conv(x * s) * d`` (identical to NVlabs' grouped form, but a plain
    convolution over the batch, which is faster on CPU). ``up=True`` doubles the resolution with a stride-2
    transposed convolution and a ``[1, 3, 3, 1]`` blur, as NVlabs' ``conv2d_resample``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, style_dim: int, kernel_size: int = 3, demodulate: bool = True,
        up: bool = False, activation: bool = True,
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
        if up:
            self.register_buffer("blur", _blur_kernel(out_channels, gain=4.0), persistent=False)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        styles = self.affine(style)  # (B, C_in)
        weight = self.weight * self.weight_gain
        x = x * styles.view(*styles.shape, 1, 1).to(x.dtype)
        if self.up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)  # (B, C_out, 2H + 1, 2W + 1)
            x = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=x.shape[1])  # (B, C_out, 2H, 2W)
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # d[b, o] = 1 / sqrt(sum_{i,k} (w[o, i, k] * s[b, i])^2)
            dcoefs = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8)  # (B, C_out)
            x = x * dcoefs.view(*dcoefs.shape, 1, 1).to(x.dtype)
        x = x + self.bias.view(1, -1, 1, 1).to(x.dtype)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activation else x


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation or activation."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, style_dim, kernel_size=1, demodulate=False, activation=False
        )

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.conv(x, style)


class SynthesisBlock(nn.Module):
    """One resolution: an optional up-sampling convolution, ``num_layers`` convolutions, and a to-RGB skip."""

    def __init__(
        self, in_channels: int, out_channels: int, image_channels: int, style_dim: int, num_layers: int, up: bool
    ):
        super().__init__()
        convs = []
        if up:
            convs.append(ModulatedConv2d(in_channels, out_channels, style_dim, up=True))
        width = out_channels if up else in_channels
        for _ in range(num_layers):
            convs.append(ModulatedConv2d(width, out_channels, style_dim))
            width = out_channels
        self.convs = nn.ModuleList(convs)
        self.to_rgb = ToRGB(out_channels, image_channels, style_dim)
        self.up = up
        if up:
            self.register_buffer("blur", _blur_kernel(image_channels, gain=4.0), persistent=False)

    def upsample_image(self, img: torch.Tensor) -> torch.Tensor:
        """FIR up-sampling of the skip image (NVlabs ``upsample2d``): ``(B, C, H, W) -> (B, C, 2H, 2W)``."""
        return F.conv_transpose2d(img, self.blur.to(img.dtype), stride=2, padding=1, groups=img.shape[1])

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, style: torch.Tensor):
        for conv in self.convs:
            x = conv(x, style)
        rgb = self.to_rgb(x, style)
        img = rgb if img is None else self.upsample_image(img) + rgb
        return x, img


class BRICSDecoder(nn.Module):
    r"""StyleGAN2-style decoder: feature block ``(B, C_d, H_d, W_d)`` -> image ``(B, 3, H, W)``.

    Args:
        in_channels (`int`): ``C_d``.
        out_channels (`int`): image channels.
        block_out_channels (`tuple[int]`): channels at ``H_d, 2 H_d, 4 H_d, ...``; the output resolution is
            ``H_d * 2 ** (len(block_out_channels) - 1)``. Paper: ``(512, 256, 128)`` for 64 -> 256.
        first_block_layers (`int`): convolutions at ``H_d`` (1).
        layers_per_block (`int`): convolutions after the up-sampling convolution of each later block (2: NVlabs'
            ``conv1`` plus one extra).
        style_dim (`int`): width of the style code.
        mapping_layers (`int`): layers of the mapping MLP (8, as StyleGAN2).
    """

    def __init__(
        self,
        in_channels: int = 512,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (512, 256, 128),
        first_block_layers: int = 1,
        layers_per_block: int = 2,
        style_dim: int = 512,
        mapping_layers: int = 8,
    ):
        super().__init__()
        self.mapping = MappingNetwork(in_channels, style_dim, mapping_layers)
        blocks = [
            SynthesisBlock(in_channels, block_out_channels[0], out_channels, style_dim, first_block_layers, up=False)
        ]
        for cin, cout in zip(block_out_channels, block_out_channels[1:]):
            blocks.append(SynthesisBlock(cin, cout, out_channels, style_dim, layers_per_block, up=True))
        self.blocks = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        style = self.mapping(f)
        x, img = f, None
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, img = self._gradient_checkpointing_func(block, x, img, style)
            else:
                x, img = block(x, img, style)
        return img
