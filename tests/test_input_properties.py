"""Property-based input checks: any input gives correct output or a ValueError that names the argument, never a
deep error from inside torch and never silently wrong output."""

import math

import numpy as np
import pytest
import torch
from builders import plain_unet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.metrics import psnr, ssim
from diffusers_brics.models import MultiResolutionFeatureGrid
from diffusers_brics.pipelines import default_scheduler
from diffusers_brics.training.data import image_transform

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]
SPECIAL = [None, "nan", "inf", "-inf", "big", "negative"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BRICSAutoencoder.from_preset("tiny").eval()


def make_tensor(shape, dtype, special, low=-1.0, high=1.0):
    """A tensor of ``shape`` and ``dtype`` with values in [low, high], and one special value where asked."""
    t = torch.rand(shape, dtype=torch.float64) * (high - low) + low
    if special and t.numel():
        flat = t.view(-1)
        flat[0] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "big": 7.0, "negative": -7.0}[special]
    if dtype == torch.bool:
        return t > 0
    return t.to(dtype) if dtype.is_floating_point else t.nan_to_num(0, 0, 0).round().to(dtype)


def assert_value_error_naming(error: Exception, *names: str) -> None:
    assert isinstance(error, ValueError), f"{type(error).__name__}: {error}"
    assert any(name in str(error) for name in names), str(error)


shapes = st.lists(st.integers(0, 34), min_size=1, max_size=5).map(tuple)


@SETTINGS
@given(shape=shapes, dtype=st.sampled_from(DTYPES), special=st.sampled_from(SPECIAL))
def test_encode_any_tensor(model, shape, dtype, special):
    x = make_tensor(shape, dtype, special)
    try:
        z = model.encode(x).latents
    except Exception as error:  # noqa: BLE001 - the property is about which errors happen
        assert_value_error_naming(error, "x ")
        return
    # accepted: exactly the valid inputs, with codes of the right shape in [0, 1]
    assert shape[1:] == (3, 32, 32) and shape[0] >= 1 and dtype.is_floating_point and special is None
    assert z.shape == (shape[0], *model.latent_shape) and bool(((z >= 0) & (z <= 1)).all())


@SETTINGS
@given(shape=shapes, dtype=st.sampled_from(DTYPES), special=st.sampled_from(SPECIAL))
def test_decode_any_tensor(model, shape, dtype, special):
    z = make_tensor(shape, dtype, special, low=0.0, high=1.0)
    try:
        sample = model.decode(z).sample
    except Exception as error:  # noqa: BLE001
        assert_value_error_naming(error, "z ")
        return
    assert shape[1:] == model.latent_shape and shape[0] >= 1 and dtype.is_floating_point and special is None
    assert sample.shape == (shape[0], 3, 32, 32) and torch.isfinite(sample).all()


@SETTINGS
@given(rows=st.integers(0, 6), dim=st.integers(1, 6), dtype=st.sampled_from(DTYPES),
       special=st.sampled_from(SPECIAL))
def test_grid_any_queries(rows, dim, dtype, special):
    grid = MultiResolutionFeatureGrid(3, 3, 2, 6, 2, 8, backend="torch")
    x = make_tensor((rows, dim), dtype, special, low=0.0, high=1.0)
    try:
        out = grid(x)
    except Exception as error:  # noqa: BLE001
        assert_value_error_naming(error, "x ")
        return
    assert dim == 3 and dtype.is_floating_point and (special is None or rows == 0)  # no special value in no rows
    assert out.shape == (rows, 6) and torch.isfinite(out).all()


@SETTINGS
@given(shape=shapes, other=shapes, dtype=st.sampled_from(DTYPES), special=st.sampled_from(SPECIAL))
def test_metrics_any_pair(shape, other, dtype, special):
    x = make_tensor(shape, dtype, special)
    y = make_tensor(other, dtype, None)
    for metric in (psnr, ssim):
        try:
            value = metric(x, y)
        except Exception as error:  # noqa: BLE001
            assert_value_error_naming(error, "x ", "y ", "x and y", "SSIM")
            continue
        assert shape == other and len(shape) == 4 and 0 not in shape and dtype.is_floating_point
        assert value.shape == (shape[0],) and not torch.isnan(value).any()


@pytest.fixture(scope="module")
def pipe(model):
    torch.manual_seed(0)
    unet = plain_unet(2, block_out_channels=(8, 8), norm_num_groups=8)
    pipe = BRICSPipeline(unet=unet, scheduler=default_scheduler(), vae=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.one_of(st.integers(-1, 3), st.floats(-1, 3), st.none()), steps=st.integers(-1, 3),
       shape=st.one_of(st.none(), shapes), special=st.sampled_from(SPECIAL))
def test_pipeline_any_call(pipe, batch, steps, shape, special):
    latents = None if shape is None else make_tensor(shape, torch.float32, special, low=-3, high=3)
    try:
        out = pipe(batch_size=batch, num_inference_steps=steps, latents=latents, output_type="np").images
    except Exception as error:  # noqa: BLE001
        assert_value_error_naming(error, "batch_size", "num_inference_steps", "latents")
        return
    assert isinstance(batch, int) and batch >= 1 and steps >= 1
    assert out.shape == (batch, 32, 32, 3) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@settings(max_examples=30, deadline=None, derandomize=True)
@given(width=st.integers(1, 70), height=st.integers(1, 70),
       mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "F"]), resolution=st.sampled_from([4, 16, 32]))
def test_training_images_of_any_size_and_mode(width, height, mode, resolution):
    from PIL import Image

    pixels = np.random.default_rng(width * 100 + height).random((height, width))
    image = Image.fromarray((pixels * 255).astype(np.uint8)).convert(mode) if mode != "I;16" else \
        Image.fromarray((pixels * 65535).astype(np.uint16))
    out = image_transform(resolution)(image)
    assert out.shape == (3, resolution, resolution) and torch.isfinite(out).all()
    assert float(out.min()) >= -1 and float(out.max()) <= 1
