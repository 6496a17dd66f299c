"""Noise schedules and loss weights for diffusion on key codes (paper supp. A.6, Figure 14).

* `cosine_variant_betas`: Chen 2023 ("On the importance of noise scheduling for diffusion models",
  Algorithm 1) cosine schedule with ``start``, ``end`` and temperature ``tau``; the paper's default is
  ``start=0.2, end=1, tau=1.5``. diffusers has no such schedule, so the betas are built here and passed to a
  scheduler as ``trained_betas``.
* `min_snr_weights`: min-SNR-gamma loss weights (Hang et al. 2023) for epsilon, v or sample prediction.
"""

from __future__ import annotations

import math

import torch


def cosine_variant_alpha_bar(t: torch.Tensor, start: float = 0.2, end: float = 1.0, tau: float = 1.5) -> torch.Tensor:
    """``alpha_bar(t) = clip((v(1) - v(t)) / (v(1) - v(0)), 1e-9, 1)``, ``v(t) = cos((t (end - start) + start) pi / 2)^(2 tau)``."""

    def v(x):
        return torch.cos((x * (end - start) + start) * math.pi / 2) ** (2 * tau)

    t = torch.as_tensor(t, dtype=torch.float64)
    v0, v1 = v(torch.tensor(0.0, dtype=torch.float64)), v(torch.tensor(1.0, dtype=torch.float64))
    return ((v1 - v(t)) / (v1 - v0)).clamp(1e-9, 1.0)


def cosine_variant_betas(
    num_train_timesteps: int = 1000, start: float = 0.2, end: float = 1.0, tau: float = 1.5, max_beta: float = 0.999
) -> torch.Tensor:
    """Betas whose cumulative product is ``alpha_bar((i + 1) / T)`` (up to ``max_beta`` clipping at the end).

    ``beta_i = 1 - alpha_bar((i + 1) / T) / alpha_bar(i / T)``, as diffusers' ``betas_for_alpha_bar``; the last
    beta, where ``alpha_bar`` reaches its floor, is clipped to ``max_beta``.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if not 0 <= start < end <= 1 or tau <= 0:
        raise ValueError(f"need 0 <= start < end <= 1 and tau > 0, got start={start}, end={end}, tau={tau}")
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    alpha_bar = cosine_variant_alpha_bar(steps, start, end, tau)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta).float()


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float = 5.0,
                    prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample min-SNR-gamma weights, ``SNR = alpha_bar / (1 - alpha_bar)``: the weight ``min(SNR, gamma)`` of
    the clean-sample error expressed for what the model predicts: ``/ SNR`` for epsilon, ``/ (SNR + 1)`` for v,
    unchanged for the sample itself."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    divisor = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}
    if prediction_type not in divisor:
        raise ValueError(f"prediction_type must be one of {', '.join(divisor)}, got {prediction_type!r}")
    return torch.clamp(snr, max=gamma) / divisor[prediction_type]
