"""Packaging: the floors of pyproject.toml are the versions CI tests, and the core needs no training extra."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def floors(requirements) -> dict[str, str]:
    out = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement.replace(" ", ""))
        if match:
            out[match.group(1).lower().replace("_", "-")] = match.group(2)
    return out


def test_every_floor_is_the_version_the_minimum_run_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = floors(project["dependencies"])
    for extra in ("train", "test"):
        declared.update(floors(project["optional-dependencies"][extra]))
    pinned = {}
    for line in (ROOT / "ci" / "minimum-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower().replace("_", "-")] = version
    declared.pop("torch")  # the Makefile's TORCH build, the only one on this machine (see README, Reliability)
    assert declared == pinned


def test_the_core_imports_and_runs_without_the_training_extra():
    code = "\n".join([
        "import sys",
        "for name in ('accelerate', 'datasets', 'tensorboard'):",
        "    sys.modules[name] = None  # as if the training extra were not installed",
        "import torch",
        "from diffusers_brics import BRICSAutoencoder, BRICSPipeline",
        "from diffusers_brics.metrics import GridUsage, psnr, ssim",
        "model = BRICSAutoencoder.from_preset('tiny').eval()",
        "images = model.decode(torch.rand(1, 2, 8, 8)).sample.clamp(-1, 1)",
        "print(float(psnr(images, images)), float(ssim(images, images)))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_version_is_one_and_has_its_changelog_entry():
    import diffusers_brics

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert diffusers_brics.__version__ == declared
    assert f"## {declared} " in (ROOT / "CHANGELOG.md").read_text()
