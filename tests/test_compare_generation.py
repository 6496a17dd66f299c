"""compare_generation.py (equal-budget generation) in its tiny mode end to end (FID included: eight FID computations,
a few seconds each on one thread: four runs, three latent floors, the baseline), runs cached per model and seed and
reported with their spread, floors measured by a later report, its KID-only mode, and its checks of the inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import as_cloned
from PIL import Image

from diffusers_brics.models import adapters

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A folder of stage-1 output folders by model name: untrained tiny brics/, autoencoderkl/ and cvqvae/ (a CVQ-VAE
    saved as compare_autoencoders.py saves it, a stock VQModel)."""
    folder = tmp_path_factory.mktemp("compare_autoencoders_run")
    torch.manual_seed(0)
    for kind in ("brics", "autoencoderkl", "cvqvae"):
        adapters.saved_form(adapters.build_autoencoder(kind, "tiny")).save_pretrained(folder / kind / "autoencoder")
    return folder


def training_flags(command: str) -> list[str]:
    """A training command without the flags that name the data space, the output folder and the seed."""
    words, drop = command.split(), {"--autoencoder", "--output_dir", "--resolution", "--seed"}
    return [w for i, w in enumerate(words) if w not in drop and (i == 0 or words[i - 1] not in drop)]


def run_compare_generation(output, *args) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compare_generation.py"), "--tiny", "--output", str(output), *map(str, args)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def training_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("$ ")]


def test_compare_generation_tiny_end_to_end(tmp_path, stage1, inception_weights_dir, lpips_weights_dir):
    out = tmp_path / "compare_generation"
    run_compare_generation(out, "--autoencoders", stage1)
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python benchmarks/compare_generation.py --tiny --output")
    setup = results["setup"]
    assert (setup["unet_preset"], setup["steps"], setup["scheduler"], setup["num_samples"]) == ("tiny", 2, "ddim", 4)
    assert list(results["models"]) == ["brics", "autoencoderkl", "cvqvae", "pixels"]
    models = results["models"]
    brics_shape = list(adapters.build_autoencoder("brics", "tiny").latent_shape)
    assert [entry["latent_shape"] for entry in models.values()] == [brics_shape, [2, 8, 8], [2, 8, 8], [3, 32, 32]]
    assert [entry["pipeline"] for entry in models.values()] == ["BRICSPipeline"] * 3 + ["DDPMPipeline"]
    for key, entry in models.items():
        assert entry["seeds"] == [0] and entry["summary"]["kid_mean"]["n"] == 1
        row = entry["runs"]["0"]
        assert row["steps"] == 2 and row["unet_parameters"] > 0 and row["seconds_per_image"] > 0
        assert row["fid"] > 0 and row["kid_std"] >= 0 and row["fake_images"] == 4 and row["real_images"] == 8
        # the same training flags for all four, but what to train on
        assert training_flags(row["command"]) == training_flags(models["brics"]["runs"]["0"]["command"])
        assert row["stage1"] == (None if key == "pixels" else os.path.relpath((stage1 / key).resolve(), ROOT))
        if key == "pixels":
            assert "decoded_training" not in row and "kid_above_floor" not in entry
        else:  # the floor: the baseline's training images through the run's autoencoder
            floor = row["decoded_training"]
            assert (floor["real_images"], floor["fake_images"]) == (8, 4) and floor["fid"] > 0
            assert entry["kid_above_floor"]["mean"] == pytest.approx(row["kid_mean"] - floor["kid_mean"])
    assert "--autoencoder none" in models["pixels"]["runs"]["0"]["command"]
    assert models["autoencoderkl"]["scaling_factor"]["mean"] != 1 and models["cvqvae"]["scaling_factor"]["mean"] != 1
    baseline = results["baseline"]["runs"]["0"]
    assert (baseline["fake_images"], baseline["real_images"]) == (4, 8) and baseline["fid"] > 0
    assert torch.tensor(results["neighbours"]["lpips_distances"]).shape == (2, 2)
    report = (out / "report.md").read_text()
    assert report.splitlines()[3] == results["command"]
    assert "BRICS generation KID no worse than the KL-latent model's: " in report
    assert "| pixels (DDPMPipeline) | 1 (0) | 32x32x3 |" in report and "| real-vs-real FID / KID |" in report
    assert "| CVQ-VAE latents | 1 (0) | 8x8x2 |" in report
    floors = models["brics"]["decoded_training_kid"]["mean"] - models["autoencoderkl"]["decoded_training_kid"]["mean"]
    assert results["floors"] in report and f"the autoencoders' floors differ by {1e3 * floors:+.2f}" in report
    pixel_row = next(line for line in report.splitlines() if line.startswith("| pixels"))
    assert pixel_row.split(" | ")[8:10] == ["-", "-"]  # no floor, nothing above it
    for name in ("samples_brics", "samples_autoencoderkl", "samples_cvqvae", "samples_pixels", "kid", "neighbours_brics"):
        assert (out / f"{name}.png").stat().st_size > 0
    assert Image.open(out / "neighbours_brics.png").size == (3 * 32, 2 * 32)
    pixels = out / "runs" / "pixels-seed0"
    assert json.loads((pixels / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert not list(pixels.glob("checkpoint-*"))  # removed once the run has its result


def test_runs_per_model_and_seed_are_cached_and_reported_with_their_spread(tmp_path, stage1, inception_weights_dir,
                                                                          lpips_weights_dir):
    out = tmp_path / "compare_generation"
    run_compare_generation(out, "--autoencoders", stage1, "--no_fid", "--models", "brics", "cvqvae", "--seeds", "0")
    cached = out / "runs" / "cvqvae-seed0" / "result.json"
    written = cached.stat().st_mtime_ns
    (out / "runs" / "brics-seed0" / "result.json").unlink()  # trained, but its evaluation did not end

    stdout = run_compare_generation(out, "--autoencoders", stage1, "--no_fid", "--models", "cvqvae,brics", "cvqvae", "--seeds", "0,1")
    assert "cvqvae seed 0: cached" in stdout and "brics seed 0: trained, evaluating" in stdout
    assert len(training_lines(stdout)) == 2 and all("--seed 1 " in line for line in training_lines(stdout))
    assert cached.stat().st_mtime_ns == written

    evaluated = out / "runs" / "cvqvae-seed1" / "result.json"
    result = json.loads(evaluated.read_text())
    floor = result["row"].pop("decoded_training")  # as a run evaluated before floors were measured
    evaluated.write_text(json.dumps(result))
    stdout = run_compare_generation(out, "--report")
    assert not training_lines(stdout)
    # --report measured the missing floor with the runs' own settings (4 samples, 8 held-out images), not its defaults
    assert json.loads(evaluated.read_text())["row"]["decoded_training"] == floor
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["brics", "cvqvae"] and "goal" not in results
    assert results["baseline"]["seeds"] == [0, 1] and results["baseline"]["kid_mean"]["n"] == 2
    for entry in results["models"].values():
        kid = entry["summary"]["kid_mean"]
        values = [entry["runs"][seed]["kid_mean"] for seed in ("0", "1")]
        assert entry["seeds"] == [0, 1] and kid["n"] == 2 and kid["mean"] == pytest.approx(sum(values) / 2)
        assert (kid["min"], kid["max"]) == (min(values), max(values)) and kid["std"] > 0
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| CVQ-VAE latents |"))
    assert "| 2 (0, 1) |" in row and "mean ± standard deviation over the seeds" in report

    # a clone has only the runs' records: the report is assembled again from them, its sample grids kept
    samples = (out / "samples_brics.png").read_bytes()
    as_cloned(out)
    assert not (out / "runs" / "brics-seed0" / "benchmark_samples.png").exists()
    stdout = run_compare_generation(out, "--report")
    assert "samples_brics.png kept: it shows the same run" in stdout and not training_lines(stdout)
    assert json.loads((out / "results.json").read_text())["models"] == results["models"]
    assert (out / "samples_brics.png").read_bytes() == samples


def test_stage1_folders_are_checked(tmp_path, stage1):
    import compare_generation

    with pytest.raises(FileNotFoundError, match="--brics .*holds no trained autoencoder.*compare_autoencoders.py"):
        compare_generation.stage1_model(tmp_path / "missing", "brics", "--brics")
    with pytest.raises(ValueError, match="--kl .* holds a BRICSAutoencoder, not a AutoencoderKL"):
        compare_generation.stage1_model(stage1 / "brics", "autoencoderkl", "--kl")
    assert type(compare_generation.stage1_model(stage1 / "autoencoderkl", "autoencoderkl", "--kl")).__name__ == \
        "AutoencoderKL"


def test_the_goal_compares_kid_means_and_names_the_spread():
    from compare_generation_report import goal, preset_notes

    holds, detail = goal({"brics": {"kid_mean": 0.010, "kid_std": 0.001}, "autoencoderkl": {"kid_mean": 0.012,
                                                                                            "kid_std": 0.001}})
    assert holds and "-2.00, is beyond" in detail
    holds, detail = goal({"brics": {"kid_mean": 0.0125, "kid_std": 0.001}, "autoencoderkl": {"kid_mean": 0.012,
                                                                                             "kid_std": 0.001}})
    assert not holds and "+0.50, is within the subsets'" in detail
    over_seeds = {"brics": {"kid_mean": 0.0125, "kid_std": 0.001, "seeds": 3},
                  "autoencoderkl": {"kid_mean": 0.012, "kid_std": 0.001, "seeds": 3}}
    assert "is within the seeds' combined standard deviation" in goal(over_seeds)[1]
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


def test_budgets_are_put_side_by_side_with_the_share_above_the_floor_per_doubling(tmp_path):
    import seeded_runs

    stage1 = seeded_runs.run_folder(tmp_path / "autoencoders", "brics", 0)
    seeded_runs.save_result(stage1, {"setup": {"steps": 3}, "row": {}})

    def record(output, kind, seed, steps, kid, floor=None):
        row = {"kid_mean": kid / 1e3, "fid": 100.0 + kid, "train_seconds": 60.0 * steps,
               "stage1": None if floor is None else str(stage1)}  # fmt: skip
        if floor is not None:
            row["decoded_training"] = {"kid_mean": floor / 1e3}
        seeded_runs.save_result(seeded_runs.run_folder(tmp_path / output, kind, seed), {"setup": {"steps": steps}, "row": row})

    record("short", "brics", 0, 2, kid=90.0, floor=10.0)
    record("short", "brics", 1, 2, kid=70.0, floor=10.0)
    record("short", "pixels", 0, 2, kid=50.0)
    record("short", "real", 0, 2, kid=2.0)
    record("long", "brics", 0, 8, kid=30.0, floor=10.0)  # one seed: the factor is seed 0's alone
    record("long", "real", 0, 8, kid=2.0)  # the same baseline run, counted once
    script = BENCHMARKS / "compare_generation_budgets.py"
    report_dir = tmp_path / "report"
    command = [sys.executable, str(script), "--outputs", str(tmp_path / "short"), str(tmp_path / "long"),
               "--output", str(report_dir)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((report_dir / "results.json").read_text())
    entries = results["entries"]
    assert [(e["model"], e["steps"], e["autoencoder_steps"], e["seeds"]) for e in entries] == [
        ("brics", 2, 3, [0, 1]), ("brics", 8, 3, [0]), ("pixels", 2, None, [0])]  # fmt: skip
    short, long, pixels = entries
    assert short["kid"]["mean"] == pytest.approx(80.0) and short["above_floor"]["mean"] == pytest.approx(70.0)
    assert short["train_minutes"]["mean"] == pytest.approx(2.0) and "kid_per_doubling" not in short
    # seed 0: 80 above the floor at 2 steps, 20 at 8 (two doublings): halved per doubling
    change = long["above_floor_per_doubling"]
    assert change["factor"] == pytest.approx(0.5) and change["seeds"] == [0] and not change["every_seed"]
    assert long["kid_per_doubling"]["factor"] == pytest.approx((30 / 90) ** 0.5)
    assert "floor" not in pixels and "above_floor" not in pixels
    assert results["baseline"]["mean"] == pytest.approx(2.0) and results["baseline"]["n"] == 1
    report = (report_dir / "report.md").read_text()
    assert "| BRICS key codes | 8 | 3 | 1 (0) | 30.0 | 10.0 | 20.0 | 0.58x (seed 0) | 0.50x (seed 0) |" in report
    assert "| pixels (DDPMPipeline) | 2 | - | 1 (0) | 50.0 | - | - | - | - |" in report
    assert (report_dir / "budgets.png").stat().st_size > 0
    # the records alone make the report: a clone rebuilds it unchanged
    as_cloned(tmp_path / "short")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert done.returncode == 0 and json.loads((report_dir / "results.json").read_text()) == results
    bad = subprocess.run([sys.executable, str(script), "--outputs", str(tmp_path / "none")], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert bad.returncode == 2 and "has no runs/ folder" in bad.stderr
