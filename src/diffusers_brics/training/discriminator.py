"""StyleGAN2 discriminator (residual architecture), in plain PyTorch.

As NVlabs' StyleGAN2 ``DiscriminatorBlock``/``DiscriminatorEpilogue`` (equalised learning rate, ``[1, 3, 3, 1]``
blur before every stride-2 convolution, residual skips scaled by ``sqrt(0.5)``, minibatch standard deviation),
without the custom CUDA ops, so it runs wherever PyTorch does.

NVlabs' mixed precision is an option (``num_fp16_res``, ``conv_clamp``; the BRICS release trains with 4 and 256):
the blocks of the ``num_fp16_res`` highest resolutions (at least 8x8) compute in float16 on a CUDA device, and the
outputs of the convolutions with an activation (and of ``from_rgb``) are clamped to ``+-conv_clamp`` (times the
layer's gain) on any device, as the release's ``bias_act``. On another device the float16 blocks run in float32,
with a warning (once per discriminator). The defaults (0, None) are all float32 and unclamped.
"""

from __future__ import annotations

import math
import warnings

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
        down: bool = False, gain: float = 1.0, clamp: float | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.activation, self.down, self.gain = activation, down, gain
        self.kernel_size = kernel_size
        self.clamp = clamp  # the output clamped to +-clamp * gain (NVlabs' conv_clamp)
        if down:
            self.register_buffer("blur", _blur_kernel(in_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.down:
            pad = (4 - 2 + self.kernel_size - 1) // 2  # keeps H/2 after the stride-2 convolution
            x = F.conv2d(F.pad(x, [pad] * 4), self.blur.to(x.dtype), groups=x.shape[1])
            x = F.conv2d(x, weight.to(x.dtype), bias, stride=2)
        else:
            x = F.conv2d(x, weight.to(x.dtype), bias, padding=self.kernel_size // 2)
        if self.activation:
            x = F.leaky_relu(x, 0.2) * _LRELU_GAIN
        x = x * self.gain if self.gain != 1.0 else x
        return x if self.clamp is None else x.clamp(-self.clamp * self.gain, self.clamp * self.gain)


class _ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, clamp: float | None = None):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, clamp=clamp)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True, gain=math.sqrt(0.5), clamp=clamp)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


class StyleGAN2Discriminator(ModelMixin, ConfigMixin):
    r"""Images ``(B, C, R, R)`` in ``[-1, 1]`` -> logits ``(B,)``.

    Channels at resolution ``r`` are ``min(channel_base // r, channel_max)`` (NVlabs: 32768 and 512 at 256x256).
    ``num_fp16_res`` and ``conv_clamp``: NVlabs' mixed precision (see the module docstring; the release: 4 and 256).
    """

    @register_to_config
    def __init__(
        self, resolution: int = 256, in_channels: int = 3, channel_base: int = 32768, channel_max: int = 512,
        mbstd_group_size: int = 4, num_fp16_res: int = 0, conv_clamp: float | None = None,
    ):
        super().__init__()
        if resolution < 8 or math.log2(resolution) % 1:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")

        def channels(res: int) -> int:
            return min(channel_base // res, channel_max)

        if channels(resolution) < 1 or channel_max < 1:
            raise ValueError(f"channel_base {channel_base} and channel_max {channel_max} leave no channels at resolution "
                             f"{resolution}: channel_base must be >= the resolution and channel_max >= 1")

        if num_fp16_res < 0 or (conv_clamp is not None and not conv_clamp > 0):
            raise ValueError(f"need num_fp16_res >= 0 and conv_clamp > 0 or None, got {num_fp16_res} and {conv_clamp}")
        self.from_rgb = EqualConv2d(in_channels, channels(resolution), 1, clamp=conv_clamp)
        blocks, res = [], resolution
        while res > 4:
            blocks.append(_ResidualBlock(channels(res), channels(res // 2), clamp=conv_clamp))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        # NVlabs: blocks from this resolution up compute in float16 (none with num_fp16_res 0)
        fp16_resolution = max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8)
        self.fp16_blocks = [num_fp16_res > 0 and resolution // 2**i >= fp16_resolution for i in range(len(blocks))]
        self._warned = False
        self.mbstd_group_size = mbstd_group_size
        self.conv = EqualConv2d(channels(4) + 1, channels(4), 3, clamp=conv_clamp)
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

    def block_dtypes(self, device: torch.device) -> list[torch.dtype] | None:
        """The dtype each block computes in on ``device``: float16 for the ``num_fp16_res`` highest resolutions on
        CUDA and float32 for the others; None where no block is float16 (the input's dtype throughout). Warns once
        where float16 blocks cannot run."""
        if not any(self.fp16_blocks):
            return None
        if torch.device(device).type != "cuda":
            if not self._warned:
                self._warned = True
                warnings.warn(f"num_fp16_res {self.config.num_fp16_res}: the discriminator's float16 blocks need a "
                              f"CUDA device; on {torch.device(device).type} they run in float32", UserWarning,
                              stacklevel=3)
            return None
        return [torch.float16 if half else torch.float32 for half in self.fp16_blocks]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtypes = self.block_dtypes(images.device)
        if dtypes is None:
            x = self.blocks(self.from_rgb(images))
        else:
            x = self.from_rgb(images.to(dtypes[0]))  # part of the first block, as NVlabs'
            for block, dtype in zip(self.blocks, dtypes):
                x = block(x.to(dtype))
            x = x.float()
        x = self.conv(self.minibatch_std(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)
