"""Stage-1 losses (paper eq. 5, supp. A.3): ``20 * L2 + 5 * LPIPS-VGG + GAN``, and the GAN variants.

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

GanLoss = Literal["r1", "wgan-gp"]


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
