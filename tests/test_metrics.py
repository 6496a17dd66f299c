"""PSNR / SSIM values and the input rules that PSNR, SSIM and LPIPS share."""

import math
import re

import pytest
import torch

from diffusers_brics.metrics import lpips, psnr, ssim
from diffusers_brics.metrics.inputs import RANGE_TOLERANCE

SHAPE = (2, 3, 32, 32)  # large enough for LPIPS-alex (31x31)


@pytest.fixture
def metrics(lpips_weights_dir):
    """Name -> metric, LPIPS-alex with the prepared weights."""
    return {"psnr": psnr, "ssim": ssim, "lpips": lambda x, y: lpips(x, y, net="alex")}


def _images(shape=SHAPE) -> torch.Tensor:
    return torch.rand(shape) * 2 - 1


def test_psnr_and_ssim_values():
    x = _images()
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    mse01 = (((x + 1) / 2 - (noisy + 1) / 2) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(psnr(x, noisy), -10 * torch.log10(mse01))
    assert psnr(x, noisy).shape == ssim(x, noisy).shape == (2,)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert bool((ssim(x, noisy) < 1).all())
    assert math.isinf(float(psnr(x, x)[0]))


def _error(metric, x, y) -> str:
    with pytest.raises(ValueError) as info:
        metric(x, y)
    return str(info.value)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda t: ((t + 1) * 127.5).round().to(torch.uint8), r"got torch\.uint8; convert .*x\.float\(\) / 127\.5 - 1"),
        (lambda t: (t + 1) * 127.5, r"\[-1, 1\].*x / 127\.5 - 1"),  # [0, 255] floats
        (lambda t: t * 2 - 1, r"\[-1, 1\], got min"),  # the [0, 1] -> [-1, 1] map applied twice
        (lambda t: t * (1 + 10 * RANGE_TOLERANCE), r"\[-1, 1\], got min"),
        (lambda t: t.index_fill(3, torch.tensor([5]), float("nan")), "NaN"),
        (lambda t: t.index_fill(2, torch.tensor([0]), float("-inf")), "infinite"),
        (lambda t: t[:0], "empty"),
        (lambda t: t[0], r"\(B, C, H, W\)"),
        (lambda t: t.numpy(), "torch.Tensor"),
    ],
    ids=["uint8", "0-255", "double-mapped", "over-1", "nan", "inf", "empty-batch", "3d", "numpy"],
)
def test_bad_images_raise_the_same_error_in_every_metric(metrics, bad, message):
    x, y = _images(), _images()
    for arg, args in (("x", (bad(x), y)), ("y", (x, bad(x)))):
        errors = {name: _error(metric, *args) for name, metric in metrics.items()}
        assert len(set(errors.values())) == 1, errors
        assert re.match(rf"{arg}\b.*{message.replace('x', arg)}", errors["psnr"]), errors["psnr"]


def test_mismatched_shapes_raise(metrics):
    for metric in metrics.values():
        with pytest.raises(ValueError, match=r"^y must have the same shape as x"):
            metric(_images(), _images((1, 3, 32, 32)))


def test_clamping_slack_and_low_precision_are_accepted(metrics):
    x, y = _images(), _images()
    x[0, 0, 0, 0], y[1, 2, 3, 4] = 1 + RANGE_TOLERANCE / 2, -1 - RANGE_TOLERANCE / 2
    for metric in metrics.values():
        reference = metric(x, y)
        assert reference.shape == (2,) and bool(torch.isfinite(reference).all())
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            low = metric(x.to(dtype), y.to(dtype)).float()
            torch.testing.assert_close(low, reference.float(), atol=0.05, rtol=0.05)



def test_a_prediction_in_a_training_loss_may_overshoot_the_range(metrics):
    # a decoder's unclamped output leaves [-1, 1] during training; LPIPS as a loss must keep working on it
    x, y = _images() * 1.2, _images()
    with pytest.raises(ValueError, match=r"^x must hold values in \[-1, 1\]"):
        metrics["lpips"](x, y)
    prediction = x.requires_grad_(True)
    for metric in metrics.values():
        metric(prediction, y).sum().backward()
        assert bool(torch.isfinite(prediction.grad).all())
        prediction.grad = None
    with pytest.raises(ValueError, match="NaN"):
        metrics["lpips"](prediction * torch.nan, y)
    with pytest.raises(ValueError, match=r"^y must hold values in \[-1, 1\]"):
        metrics["lpips"](prediction, y * 127.5 + 127.5)  # the target is still checked
