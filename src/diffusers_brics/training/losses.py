"""Stage-1 losses (paper eq. 5, supp. A.3): ``20 * L2 + 5 * perceptual + GAN``, and their variants.

The perceptual term is Johnson et al.'s perceptual loss in the paper's text and, in the authors' release
(``training/vgg_perceptual_loss.py``), `VGGPerceptualLoss`: the L1 distance between VGG16 features at relu1_2,
relu2_2, relu3_3 and relu4_3 of images resized to 224x224 (the default). LPIPS-VGG (a differently scaled quantity)
is the alternative.

Two adversarial objectives are offered:

* ``"r1"`` (default): the non-saturating logistic loss with a lazy R1 penalty on real images (gamma 4, every
  16 discriminator steps, scaled by the interval), as in the paper's official training code and StyleGAN2;
* ``"wgan-gp"``: the paper's text, Wasserstein loss with a gradient penalty (weight 4) on random interpolates.

The logistic + R1 pair is the default because it is what produced the paper's numbers and it needs no
critic-to-generator step ratio; WGAN-GP is there to reproduce the text.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from ..metrics.lpips_weights import load_weights, resolve_lpips_weights
from ..metrics.weight_files import PathLike

GanLoss = Literal["r1", "wgan-gp"]
KlReduction = Literal["mean", "sum"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG16's convolutions up to relu4_3, in four slices ending at relu1_2, relu2_2, relu3_3 and relu4_3 (torchvision's
# features[:4], [4:9], [9:16], [16:23]); a max pool precedes every slice but the first.
_VGG_SLICES = ((0, 1), (2, 3), (4, 5, 6), (7, 8, 9))


class VGGPerceptualLoss(nn.Module):
    """The release's perceptual loss: ``sum_k mean |phi_k(x) - phi_k(y)|`` over four VGG16 feature maps.

    Images ``(B, 3, H, W)`` in ``[-1, 1]`` are mapped to ``[0, 1]``, normalised with ImageNet's mean and standard
    deviation and resized (bilinear) to ``resolution`` x ``resolution`` (224, as the release; None keeps their
    size). Returns a scalar; gradients flow to ``x``.

    The VGG16 ImageNet weights are the backbone of the LPIPS-VGG weights file (the same torchvision weights,
    prepared into a cache on first use, see `diffusers_brics.metrics.weights`): torchvision does not install
    beside every PyTorch build, and this loss needs no more of VGG16 than those convolutions.
    """

    def __init__(self, weights_path: PathLike | None = None, resolution: int | None = 224):
        super().__init__()
        state = load_weights("vgg", resolve_lpips_weights("vgg", weights_path))
        self.convs = nn.ModuleList()
        for index in range(_VGG_SLICES[-1][-1] + 1):
            weight, bias = state[f"backbone.{index}.weight"], state[f"backbone.{index}.bias"]
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            self.convs.append(conv)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.resolution = resolution
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # fixed weights: never in training mode

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1_2, relu2_2, relu3_3 and relu4_3 of images in ``[-1, 1]``."""
        x = ((x.float() + 1) / 2 - self.mean) / self.std
        if self.resolution is not None:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        taps = []
        for number, indices in enumerate(_VGG_SLICES):
            if number:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            for index in indices:
                x = F.relu(self.convs[index](x))
            taps.append(x)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x and y must be RGB images of one shape (B, 3, H, W), got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        with torch.no_grad():
            targets = self.features(y)
        return sum(F.l1_loss(a, b) for a, b in zip(self.features(x), targets))


def kl_loss(posterior: DiagonalGaussianDistribution, reduction: KlReduction = "mean") -> torch.Tensor:
    """KL divergence of the key-code posterior from ``N(0, 1)``, averaged over the batch.

    ``"mean"`` (the release) averages it over the ``C * H * W`` elements of a code; ``"sum"`` (diffusers'
    ``DiagonalGaussianDistribution.kl()``, Stable Diffusion's VAE training) sums it over them, so the same weight
    is ``C * H * W`` times stronger (16,384x at 64x64x4).
    """
    kl = posterior.kl()  # (B,): 0.5 * sum(mu^2 + var - 1 - log var) over C, H, W
    if reduction == "mean":
        kl = kl / posterior.mean[0].numel()
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return kl.mean()


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: GanLoss) -> torch.Tensor:
    """Generator side of the GAN loss, averaged over the batch."""
    if kind == "r1":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()


def discriminator_adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: GanLoss) -> torch.Tensor:
    """Discriminator side of the GAN loss, averaged over the batch."""
    if kind == "r1":
        return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    return fake_logits.mean() - real_logits.mean()


def r1_penalty(discriminator: torch.nn.Module, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean ||grad_x D(x)||^2`` on real images; returns ``(penalty, real_logits)``."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean(), logits


def gradient_penalty(discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: ``mean (||grad D(x_hat)|| - 1)^2`` at random interpolates of real and fake images (the mixing
    weights drawn from ``generator``, a CPU generator, when given)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real.device, real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()
