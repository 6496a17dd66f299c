import math

import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_brics.schedules import cosine_variant_alpha_bar, cosine_variant_betas, min_snr_weights


def alpha_bar(t, start=0.2, end=1.0, tau=1.5):
    def v(x):
        return math.cos((x * (end - start) + start) * math.pi / 2) ** (2 * tau)

    return min(max((v(1) - v(t)) / (v(1) - v(0)), 1e-9), 1.0)


def test_cumulative_product_follows_chen_2023():
    T = 1000
    scheduler = DDPMScheduler(num_train_timesteps=T, trained_betas=cosine_variant_betas(T).tolist())
    expected = torch.tensor([alpha_bar((i + 1) / T) for i in range(T - 1)], dtype=torch.float64)
    torch.testing.assert_close(scheduler.alphas_cumprod[: T - 1].double(), expected, rtol=2e-4, atol=1e-7)
    assert float(scheduler.alphas_cumprod[-1]) < 1e-3  # the last step reaches (nearly) pure noise


@pytest.mark.parametrize("start, end, tau", [(0.2, 1.0, 1.5), (0.0, 1.0, 1.0), (0.5, 1.0, 2.0)])
def test_alpha_bar_formula_and_monotonicity(start, end, tau):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    values = cosine_variant_alpha_bar(t, start, end, tau)
    torch.testing.assert_close(values, torch.tensor([alpha_bar(float(x), start, end, tau) for x in t], dtype=torch.float64))
    assert float(values[0]) == 1.0 and bool((values[1:] <= values[:-1]).all())


def test_min_snr_weights():
    alphas_cumprod = torch.tensor([0.99, 0.8, 0.5, 0.01])
    weights = min_snr_weights(alphas_cumprod, torch.tensor([0, 1, 2, 3]), gamma=5.0)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert float(weights[3]) == 1.0 and float(weights[0]) < 0.06


def test_min_snr_weights_weigh_the_same_clean_sample_error_whatever_is_predicted():
    # x0 - x0_hat = sqrt(1 - a) / sqrt(a) * (eps - eps_hat) = sqrt(1 - a) * (v - v_hat): the squared errors of epsilon,
    # v and x0 relate by SNR and SNR + 1, so each weight is min(SNR, gamma) times the x0 error it stands for
    alphas_cumprod = torch.tensor([0.99, 0.8, 0.5, 0.01])
    snr = alphas_cumprod / (1 - alphas_cumprod)
    t = torch.arange(4)
    clean = torch.minimum(snr, torch.tensor(5.0))
    torch.testing.assert_close(min_snr_weights(alphas_cumprod, t, 5.0, "epsilon") * snr, clean)
    torch.testing.assert_close(min_snr_weights(alphas_cumprod, t, 5.0, "v_prediction") * (snr + 1), clean)
    torch.testing.assert_close(min_snr_weights(alphas_cumprod, t, 5.0, "sample"), clean)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        min_snr_weights(alphas_cumprod, t, 5.0, "noise")


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="num_train_timesteps"):
        cosine_variant_betas(0)
    with pytest.raises(ValueError, match="start"):
        cosine_variant_betas(10, start=1.0, end=0.5)
