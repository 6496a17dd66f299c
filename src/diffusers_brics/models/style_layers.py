"""StyleGAN-style fully connected layers shared by the retrieval and the decoder.

* `EqualLinear`: a linear layer with StyleGAN's equalised learning rate (``lr_multiplier`` scales the step of
  its weights, 0.01 in mapping networks).
* `MappingNetwork`: 2nd-moment normalisation, then leaky-ReLU `EqualLinear` layers: a vector -> a style code.
* `ModulatedLinear` / `ModulatedMLP`: the per-group MLP ``F_mlp`` of the authors' release, linear layers whose
  inputs are scaled per image by a style and whose outputs are demodulated, as StyleGAN2's modulated
  convolutions are (1x1 convolutions, in effect).

Written here because diffusers has no StyleGAN layers and NVlabs' versions need their custom CUDA ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` along ``dim`` (StyleGAN's input normalisation of mapping networks)."""
    return x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """Fully connected layer with StyleGAN's equalised learning rate (weights scaled at run time).

    ``activation=True`` adds a leaky ReLU (slope 0.2) with gain sqrt(2), NVlabs' ``"lrelu"``.
    """

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
        return F.leaky_relu(x, 0.2) * LRELU_GAIN if self.activation else x


class MappingNetwork(nn.Module):
    """A style code from a vector: ``(B, in_features) -> (B, out_features)``.

    The input is normalised to unit 2nd moment, then ``num_layers`` leaky-ReLU `EqualLinear` layers of width
    ``hidden_features`` (default ``out_features``) map it, with learning-rate multiplier 0.01 as in StyleGAN.
    With ``num_layers=0`` the normalised input is the style (``in_features`` must equal ``out_features``).
    """

    def __init__(
        self, in_features: int, out_features: int, num_layers: int = 8, hidden_features: int | None = None,
        lr_multiplier: float = 0.01,
    ):
        super().__init__()
        if num_layers == 0 and in_features != out_features:
            raise ValueError(f"a mapping network without layers needs in_features == out_features, got {in_features} "
                             f"and {out_features}")
        hidden = hidden_features or out_features
        widths = [in_features] + [hidden] * (num_layers - 1) + [out_features] if num_layers else [in_features]
        self.layers = nn.Sequential(
            *(EqualLinear(a, b, lr_multiplier=lr_multiplier, activation=True) for a, b in zip(widths, widths[1:]))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 (as the release does): small features would underflow in half precision.
        dtype = self.layers[0].weight.dtype if len(self.layers) else x.dtype
        return self.layers(normalize_2nd_moment(x.float()).to(dtype))


class ModulatedLinear(nn.Module):
    r"""Linear layer modulated by a per-image style, as in the authors' release (``hash_encoding/layers.py``).

    For inputs ``x`` of shape ``(B, N, C_in)`` and a style ``(B, style_dim)``: ``s = affine(style)``, the weight
    is pre-normalised to ``w / (sqrt(C_in) max_i |w_oi|)`` and ``s`` to ``s / max_i |s_i|``, then

    ``y = (x * s) @ w.T + b``, demodulated by ``d_o = 1 / sqrt(sum_i (w_oi s_i)^2 + 1e-8)``,

    followed by a leaky ReLU (slope 0.01, no gain) when ``activation`` and a clamp to ``[-255, 255]``. Evaluated as
    one batched matrix product with per-image weights ``w * s * d`` (bias ``b * d``).
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int, activation: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.affine = EqualLinear(style_dim, in_features, bias_init=1.0)
        self.activation = activation

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # The per-image weights are small: computed in float32, whatever the model's dtype.
        s = self.affine(style).float()  # (B, C_in)
        s = s / s.abs().amax(dim=1, keepdim=True)
        weight = self.weight.float()
        weight = weight / (math.sqrt(weight.shape[1]) * weight.abs().amax(dim=1, keepdim=True))
        w = weight.unsqueeze(0) * s.unsqueeze(1)  # (B, C_out, C_in)
        d = torch.rsqrt(w.square().sum(dim=2) + 1e-8)  # (B, C_out)
        w = (w * d.unsqueeze(2)).to(x.dtype)
        y = torch.baddbmm((self.bias.float() * d).unsqueeze(1).to(x.dtype), x, w.transpose(1, 2))  # (B, N, C_out)
        if self.activation:
            y = F.leaky_relu(y, 0.01)
        return y.clamp(-255.0, 255.0)


class ModulatedMLP(nn.Module):
    """``num_layers`` `ModulatedLinear` layers (leaky ReLU between, none after): ``(B, N, C_in) -> (B, N, C_out)``.

    The release's ``StackedModulatedMLP`` with ``in_activ=LeakyReLU, out_activ=Identity``.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, style_dim: int, num_layers: int):
        super().__init__()
        widths = [in_features] + [hidden_features] * (num_layers - 1) + [out_features]
        self.layers = nn.ModuleList(
            ModulatedLinear(a, b, style_dim, activation=i < num_layers - 1)
            for i, (a, b) in enumerate(zip(widths, widths[1:]))
        )

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, style)
        return x
