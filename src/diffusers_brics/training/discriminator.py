"""StyleGAN2 discriminator (residual architecture), in plain PyTorch.

As NVlabs' StyleGAN2 ``DiscriminatorBlock``/``DiscriminatorEpilogue`` (equalised learning rate, ``[1, 3, 3, 1]``
blur before every stride-2 convolution, residual skips scaled by ``sqrt(0.5)``, minibatch standard deviation),
without the custom CUDA ops, so it runs wherever PyTorch does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..models.decoder import EqualLinear, _blur_kernel

_LRELU_GAIN = math.sqrt(2.0)


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate; ``down=True`` blurs then convolves with stride 2."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True, activation: bool = True,
        down: bool = False, gain: float = 1.0,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.activation, self.down, self.gain = activation, down, gain
        self.kernel_size = kernel_size
        if down:
            self.register_buffer("blur", _blur_kernel(in_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        if self.down:
            pad = (4 - 2 + self.kernel_size - 1) // 2  # keeps H/2 after the stride-2 convolution
            x = F.conv2d(F.pad(x, [pad] * 4), self.blur.to(x.dtype), groups=x.shape[1])
            x = F.conv2d(x, weight.to(x.dtype), self.bias, stride=2)
        else:
            x = F.conv2d(x, weight.to(x.dtype), self.bias, padding=self.kernel_size // 2)
        if self.activation:
            x = F.leaky_relu(x, 0.2) * _LRELU_GAIN
        return x * self.gain if self.gain != 1.0 else x


class _ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True, gain=math.sqrt(0.5))
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


class StyleGAN2Discriminator(ModelMixin, ConfigMixin):
    r"""Images ``(B, C, R, R)`` in ``[-1, 1]`` -> logits ``(B,)``.

    Channels at resolution ``r`` are ``min(channel_base // r, channel_max)`` (NVlabs: 32768 and 512 at 256x256).
    """

    @register_to_config
    def __init__(
        self, resolution: int = 256, in_channels: int = 3, channel_base: int = 32768, channel_max: int = 512,
        mbstd_group_size: int = 4,
    ):
        super().__init__()
        if resolution < 8 or math.log2(resolution) % 1:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")

        def channels(res: int) -> int:
            return min(channel_base // res, channel_max)

        if channels(resolution) < 1 or channel_max < 1:
            raise ValueError(f"channel_base {channel_base} and channel_max {channel_max} leave no channels at resolution "
                             f"{resolution}: channel_base must be >= the resolution and channel_max >= 1")

        self.from_rgb = EqualConv2d(in_channels, channels(resolution), 1)
        blocks, res = [], resolution
        while res > 4:
            blocks.append(_ResidualBlock(channels(res), channels(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.mbstd_group_size = mbstd_group_size
        self.conv = EqualConv2d(channels(4) + 1, channels(4), 3)
        self.fc = EqualLinear(channels(4) * 16, channels(4), activation=True)
        self.out = EqualLinear(channels(4), 1)

    def minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        """Append the standard deviation across groups of samples as one extra feature map."""
        b, c, h, w = x.shape
        group = min(self.mbstd_group_size, b)
        while b % group:  # groups must tile the batch
            group -= 1
        y = x.view(group, -1, c, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (B / G, C, H, W)
        y = y.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).repeat(group, 1, h, w)
        return torch.cat([x, y], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(images))
        x = self.conv(self.minibatch_std(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)
