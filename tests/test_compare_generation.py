"""compare_generation.py (equal-budget generation) in its tiny mode end to end (FID included: four FID computations,
a few seconds each on one thread), its KID-only mode, and its checks of the inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusers_brics.models import adapters

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A folder like compare_autoencoders.py's run/: untrained tiny stage-1 output folders brics/ and autoencoderkl/."""
    folder = tmp_path_factory.mktemp("compare_autoencoders_run")
    torch.manual_seed(0)
    for kind in ("brics", "autoencoderkl"):
        adapters.build_autoencoder(kind, "tiny").save_pretrained(folder / kind / "autoencoder")
    return folder


def training_flags(command: str) -> list[str]:
    """A training command without the flags that name the data space and the output folder."""
    words, drop = command.split(), {"--autoencoder", "--output_dir", "--resolution"}
    return [w for i, w in enumerate(words) if w not in drop and (i == 0 or words[i - 1] not in drop)]


def test_compare_generation_tiny_end_to_end(tmp_path, stage1, inception_weights_dir, lpips_weights_dir):
    out = tmp_path / "compare_generation"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compare_generation.py"), "--autoencoders", str(stage1), "--tiny",
         "--output", str(out)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python benchmarks/compare_generation.py --autoencoders")
    setup = results["setup"]
    assert (setup["unet_preset"], setup["steps"], setup["scheduler"], setup["num_samples"]) == ("tiny", 2, "ddim", 4)
    assert list(results["models"]) == ["brics", "autoencoderkl", "pixels"]
    rows = results["models"]
    brics_shape = list(adapters.build_autoencoder("brics", "tiny").latent_shape)
    assert [row["latent_shape"] for row in rows.values()] == [brics_shape, [2, 8, 8], [3, 32, 32]]
    assert [row["pipeline"] for row in rows.values()] == ["BRICSPipeline", "BRICSPipeline", "DDPMPipeline"]
    for row in rows.values():
        assert row["steps"] == 2 and row["unet_parameters"] > 0 and row["seconds_per_image"] > 0
        assert row["fid"] > 0 and row["kid_std"] >= 0 and row["fake_images"] == 4 and row["real_images"] == 8
        # the same training flags for all three, but what to train on
        assert training_flags(row["command"]) == training_flags(rows["brics"]["command"])
    assert "--autoencoder none" in rows["pixels"]["command"] and rows["autoencoderkl"]["scaling_factor"] != 1
    baseline = results["baseline"]
    assert (baseline["fake_images"], baseline["real_images"]) == (4, 8) and baseline["fid"] > 0
    assert torch.tensor(results["neighbours"]["lpips_distances"]).shape == (2, 2)
    report = (out / "report.md").read_text()
    assert report.splitlines()[3] == results["command"]
    assert "BRICS generation KID no worse than the KL-latent model's: " in report
    assert "| pixels (DDPMPipeline) | 32x32x3 |" in report and "| real-vs-real FID / KID |" in report
    for name in ("samples_brics", "samples_autoencoderkl", "samples_pixels", "kid", "neighbours_brics"):
        assert (out / f"{name}.png").stat().st_size > 0
    assert Image.open(out / "neighbours_brics.png").size == (3 * 32, 2 * 32)
    assert json.loads((out / "run" / "pixels" / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"


def test_stage1_folders_are_checked(tmp_path, stage1):
    import compare_generation

    with pytest.raises(FileNotFoundError, match="--brics .*holds no trained autoencoder.*compare_autoencoders.py"):
        compare_generation.stage1_model(tmp_path / "missing", "brics", "--brics")
    with pytest.raises(ValueError, match="--kl .* holds a BRICSAutoencoder, not a AutoencoderKL"):
        compare_generation.stage1_model(stage1 / "brics", "autoencoderkl", "--kl")
    assert type(compare_generation.stage1_model(stage1 / "autoencoderkl", "autoencoderkl", "--kl")).__name__ == \
        "AutoencoderKL"


def test_the_goal_compares_kid_means_and_names_the_spread():
    from compare_generation import goal, preset_notes

    holds, detail = goal({"brics": {"kid_mean": 0.010, "kid_std": 0.001}, "autoencoderkl": {"kid_mean": 0.012,
                                                                                            "kid_std": 0.001}})
    assert holds and "-2.00, is beyond" in detail
    holds, detail = goal({"brics": {"kid_mean": 0.0125, "kid_std": 0.001}, "autoencoderkl": {"kid_mean": 0.012,
                                                                                             "kid_std": 0.001}})
    assert not holds and "+0.50, is within" in detail
    assert goal({"brics": {"kid_mean": 0.01, "kid_std": 0.0}}) is None
    # the small preset: attention at 4x4 reaches 8x8 latents but not 32x32 pixels
    assert "have it at [4], the pixel UNet (feature sizes [32, 16, 8]) at none" in preset_notes("small", 8, 32)
    assert preset_notes("paper", 32, 32) == ""


def test_kid_only_distances_have_no_fid():
    from compare_generation import distances

    generator = torch.Generator().manual_seed(0)
    reference = [torch.randn(6, 2048, generator=generator, dtype=torch.float64) for _ in range(2)]
    features = [torch.randn(5, 2048, generator=generator, dtype=torch.float64) + 1]
    result = distances(reference, features, None, with_fid=False, seed=0)
    assert set(result) == {"kid_mean", "kid_std", "real_images", "fake_images"}
    assert (result["real_images"], result["fake_images"]) == (12, 5) and result["kid_mean"] > 0
    assert distances(reference, features, None, with_fid=False, seed=0) == result  # KID's subsets come from the seed
