"""The `brics` command line: every command on a tiny model, its help, and its errors as one line."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import brics, tiny_pipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from diffusers_brics import BRICSAutoencoder, BRICSPipeline, cli, evaluate, quickstart, summary
from diffusers_brics.console import run_command
from diffusers_brics.training import autoencoder_args, diffusion_args


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny pipeline folder, an autoencoder folder, a stage-1 output folder and two test images."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    vae = BRICSAutoencoder.from_preset("tiny").eval()
    tiny_pipeline(vae).save_pretrained(root / "pipeline")
    vae.save_pretrained(root / "vae")
    vae.save_pretrained(root / "stage1" / "autoencoder")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 48)), ("b.png", (32, 32))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name)
    return {"root": root, "pipeline": root / "pipeline", "vae": root / "vae", "stage1": root / "stage1",
            "a": root / "a.png", "b": root / "b.png"}


def test_reconstruct_encode_decode_agree(models, tmp_path, capsys):
    assert cli.main(["reconstruct", str(models["a"]), str(models["b"]), "--model", str(models["stage1"]),
                     "--output_dir", str(tmp_path / "rec")]) == 0
    assert "PSNR" in capsys.readouterr().out
    for stem in ("a", "b"):
        assert Image.open(tmp_path / "rec" / f"{stem}.png").size == (32, 32)
        assert Image.open(tmp_path / "rec" / f"{stem}_key_codes.png").size == (2 * 32, 32)  # 2 channels of 8x8, 4x

    codes_file = tmp_path / "codes.safetensors"
    assert cli.main(["encode", str(models["a"]), str(models["b"]), "--model", str(models["vae"]),
                     "--output", str(codes_file)]) == 0
    codes = load_file(codes_file)["key_codes"]
    assert codes.shape == (2, 2, 8, 8) and 0 <= codes.min() and codes.max() <= 1
    assert cli.main(["decode", str(codes_file), "--model", str(models["pipeline"]),
                     "--output_dir", str(tmp_path / "dec")]) == 0
    for stem in ("a", "b"):  # the file names travel in the metadata; decode(encode(x)) is the reconstruction
        decoded = np.asarray(Image.open(tmp_path / "dec" / f"{stem}.png"), dtype=np.int16)
        reconstructed = np.asarray(Image.open(tmp_path / "rec" / f"{stem}.png"), dtype=np.int16)
        assert np.abs(decoded - reconstructed).max() <= 1


def test_sample_is_seeded_per_image_and_swaps_schedulers(models, tmp_path):
    def run(folder, *extra):
        assert cli.main(["sample", "--model", str(models["pipeline"]), "--num_inference_steps", "3", "--output_dir",
                         str(tmp_path / folder), *extra]) == 0
        return [np.asarray(Image.open(p)) for p in sorted((tmp_path / folder).glob("sample_*.png"))]

    three = run("three", "--num_images", "3", "--seed", "5")
    one = run("one", "--num_images", "1", "--seed", "7")
    assert len(three) == 3 and three[0].shape == (32, 32, 3)
    np.testing.assert_array_equal(one[0], three[2])  # image i is drawn from seed + i
    assert Image.open(tmp_path / "three" / "grid.png").size == (3 * 32, 32)
    dpm = run("dpm", "--num_images", "1", "--seed", "7", "--scheduler", "dpm")
    assert not np.array_equal(dpm[0], one[0])


def test_interpolate_row_ends_are_the_reconstructions(models, tmp_path):
    assert cli.main(["interpolate", str(models["a"]), str(models["b"]), "--model", str(models["vae"]),
                     "--steps", "5", "--output", str(tmp_path / "row.png")]) == 0
    row = np.asarray(Image.open(tmp_path / "row.png"), dtype=np.int16)
    assert row.shape == (32, 5 * 32, 3)
    assert cli.main(["reconstruct", str(models["a"]), str(models["b"]), "--model", str(models["vae"]),
                     "--output_dir", str(tmp_path / "rec")]) == 0
    for index, stem in ((0, "a"), (4, "b")):
        reconstruction = np.asarray(Image.open(tmp_path / "rec" / f"{stem}.png"), dtype=np.int16)
        assert np.abs(row[:, 32 * index: 32 * (index + 1)] - reconstruction).max() <= 1
    assert np.abs(row[:, 64:96] - row[:, :32]).mean() > 0  # the middle is neither end


def test_info_and_delegated_commands(capsys):
    assert cli.main(["info", "tiny"]) == 0
    assert "BRICSAutoencoder tiny" in capsys.readouterr().out


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser (each subcommand of the native ones and of evaluate)."""
    found = {"quickstart": quickstart.build_parser(), "train-ae": autoencoder_args.build_parser(),
             "train-diffusion": diffusion_args.build_parser(), "info": summary.build_parser()}
    for prefix, parser in (("", cli.build_parser()), ("evaluate ", evaluate.build_parser())):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name not in cli.DELEGATED:
                        found[prefix + name] = sub
    return found


def test_every_flag_of_every_command_is_described():
    commands = parsers()
    assert {"reconstruct", "encode", "decode", "sample", "interpolate", "evaluate generation",
            "train-ae", "train-diffusion", "quickstart", "info"} <= set(commands)
    undescribed = [f"{name} {action.option_strings or action.dest}" for name, parser in commands.items()
                   for action in parser._actions if not action.help and action.dest != "help"]
    assert not undescribed


@pytest.mark.parametrize("command", ["sample", "train-ae", "evaluate generation", "quickstart"])
def test_help_shows_defaults(command, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["brics"])
    with pytest.raises(SystemExit) as done:
        cli.main([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "(default: " in out and out.startswith(f"usage: brics {command}")


def test_errors_are_one_line_without_traceback(models, tmp_path, capsys):
    bad = tmp_path / "codes.safetensors"
    save_file({"key_codes": torch.rand(1, 3, 8, 8)}, str(bad))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    cases = {
        ("reconstruct", tmp_path / "missing.png", "--model", models["vae"]): "images[0]: no such file",
        ("reconstruct", corrupt, "--model", models["vae"]): "not a readable image",
        ("sample", "--model", models["vae"], "--output_dir", tmp_path / "out"): "autoencoder without a diffusion model",
        ("sample", "--model", tmp_path, "--output_dir", tmp_path / "out"): "is not a BRICS model",
        ("sample", "--model", models["pipeline"], "--class_label", "cat", "--output_dir", tmp_path / "out"):
            "class_labels",
        ("decode", bad, "--model", models["vae"], "--output_dir", tmp_path / "out"): "expected shape (B, 2, 8, 8)",
        ("encode", models["a"], "--model", tmp_path / "nowhere", "--output", tmp_path / "z.safetensors"):
            "no such folder",
    }
    for args, message in cases.items():
        assert run_command(cli.main, list(map(str, args)), prog="brics") == 1, args
        lines = [line for line in capsys.readouterr().err.strip().splitlines()
                 if "Loading pipeline components" not in line]
        assert len(lines) == 2 and lines[0].startswith("brics: error: ") and message in lines[0], (args, lines)
        assert "--debug" in lines[1]


def test_a_child_process_prints_one_line_or_with_debug_the_traceback(models, tmp_path):
    done = brics("reconstruct", tmp_path / "missing.png", "--model", models["vae"])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0].startswith("brics: error: images[0]: no such file")
    debug = brics("reconstruct", tmp_path / "missing.png", "--model", models["vae"], "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
    usage = brics("interpolate", models["a"], models["b"], "--model", models["vae"], "--steps", "1")
    assert usage.returncode == 2 and "expected an integer >= 2" in usage.stderr


def test_training_errors_after_parsing_are_one_line(tmp_path):
    done = brics("train-ae", "--preset", "tiny", "--output_dir", tmp_path / "run", "--train_data_dir",
                 tmp_path / "no-images", "--report_to", "none")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "no-images" in done.stderr.strip().splitlines()[-2]


def test_quickstart_reuses_finished_phases(models, tmp_path, monkeypatch, capsys):
    """With both trainings' outputs in place, the quickstart trains nothing and evaluates once; each phase, and the
    whole, ends with the line ``saved to PATH``."""
    output = tmp_path / "quick"
    runs = output / "runs"
    (runs / "autoencoder").mkdir(parents=True)
    BRICSAutoencoder.from_pretrained(models["vae"]).save_pretrained(runs / "autoencoder" / "autoencoder")
    Image.new("RGB", (64, 32)).save(runs / "autoencoder" / "reconstructions.png")
    (runs / "autoencoder" / "metrics.json").write_text(json.dumps(
        {"step": 3, "train_seconds": 1.0, "psnr": 10.0, "ssim": 0.1, "lpips": 0.5, "grid_usage_mean": 0.2}))
    BRICSPipeline.from_pretrained(models["pipeline"]).save_pretrained(runs / "diffusion")
    (runs / "diffusion" / "metrics.json").write_text(json.dumps({"step": 2, "train_seconds": 1.0}))
    calls = []
    monkeypatch.setattr(quickstart.subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(quickstart, "prepare_weights", lambda kinds: None)
    monkeypatch.setattr(quickstart, "InceptionFeatures", lambda: FakeInception())
    argv = ["--output_dir", str(output), "--num_samples", "4", "--num_inference_steps", "2", "--autoencoder_steps", "3",
            "--diffusion_steps", "2"]
    assert quickstart.main(argv) == 0
    assert not calls
    printed = capsys.readouterr().out.splitlines()
    assert f"[quickstart] train-ae: reusing the run saved to {runs / 'autoencoder'}" in printed
    assert f"[quickstart] train-diffusion: reusing the run saved to {runs / 'diffusion'}" in printed
    assert printed[-1] == f"[quickstart] saved to {output}"
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["psnr"] == 10.0 and metrics["autoencoder_steps"] == 3 and metrics["fake_images"] == 4
    assert {"kid_mean", "fid", "sampling_seconds_per_image"} <= set(metrics)
    assert "real_vs_real_kid_mean" not in metrics  # the floor only with --real_baseline
    assert Image.open(output / "interpolation.png").size == (8 * 32, 4 * 32)
    assert Image.open(output / "samples.png").size == (4 * 32, 32)
    assert BRICSPipeline.from_pretrained(output / "pipeline").unet is not None
    before = (output / "metrics.json").stat().st_mtime_ns
    assert quickstart.main(argv) == 0 and (output / "metrics.json").stat().st_mtime_ns == before
    # asking for the real-vs-real floor evaluates again, with it; then that evaluation is reused
    assert quickstart.main([*argv, "--real_baseline"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["baseline_images"] == 4 and "real_vs_real_kid_mean" in metrics and "real_vs_real_fid" in metrics
    before = (output / "metrics.json").stat().st_mtime_ns
    assert quickstart.main([*argv, "--real_baseline"]) == 0 and (output / "metrics.json").stat().st_mtime_ns == before


def test_quickstart_trains_a_fixed_number_of_steps_and_extends_a_shorter_run(models, tmp_path, monkeypatch):
    """The trainings get a step count (a time limit only when asked); a finished run with fewer steps than asked for is
    resumed to the new count, and a new autoencoder starts the UNet over and redoes the evaluation."""
    output = tmp_path / "quick"
    runs = output / "runs"
    calls = []

    def fake_training(argv, **kwargs):
        calls.append(argv)
        run_dir = Path(argv[argv.index("--output_dir") + 1])
        steps = int(argv[argv.index("--max_train_steps") + 1])
        run_dir.mkdir(parents=True, exist_ok=True)
        if argv[3] == "train-ae":
            BRICSAutoencoder.from_pretrained(models["vae"]).save_pretrained(run_dir / "autoencoder")
            Image.new("RGB", (64, 32)).save(run_dir / "reconstructions.png")
            metrics = {"psnr": 10.0 + steps, "ssim": 0.1, "lpips": 0.5}
        else:
            BRICSPipeline.from_pretrained(models["pipeline"]).save_pretrained(run_dir)
            metrics = {}
        (run_dir / "metrics.json").write_text(json.dumps({"step": steps, "train_seconds": 1.0, **metrics}))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(quickstart.subprocess, "run", fake_training)
    monkeypatch.setattr(quickstart, "prepare_weights", lambda kinds: None)
    monkeypatch.setattr(quickstart, "InceptionFeatures", lambda: FakeInception())
    base = ["--output_dir", str(output), "--num_samples", "4", "--num_inference_steps", "2"]

    def flag(argv, name):
        return argv[argv.index(name) + 1] if name in argv else None

    assert quickstart.main([*base, "--autoencoder_steps", "3", "--diffusion_steps", "2"]) == 0
    assert [(c[3], flag(c, "--max_train_steps"), flag(c, "--max_train_seconds")) for c in calls] == [
        ("train-ae", "3", None), ("train-diffusion", "2", None)]
    assert not any("--resume_from_checkpoint" in c for c in calls)
    assert json.loads((output / "metrics.json").read_text())["psnr"] == 13.0
    assert quickstart.main(argv := [*base, "--autoencoder_steps", "3", "--diffusion_steps", "2"]) == 0
    assert len(calls) == 2  # both phases and the evaluation reused

    (runs / "diffusion" / "marker").write_text("from the earlier UNet")
    assert quickstart.main([*base, "--autoencoder_steps", "5", "--diffusion_steps", "2",
                            "--autoencoder_seconds", "60"]) == 0
    extended = calls[2]
    assert extended[3] == "train-ae" and flag(extended, "--max_train_steps") == "5"
    assert flag(extended, "--max_train_seconds") == "60" and flag(extended, "--resume_from_checkpoint") == "latest"
    # the UNet is trained again from scratch on the new key codes, and the figures are the new models'
    assert calls[3][3] == "train-diffusion" and "--resume_from_checkpoint" not in calls[3]
    assert not (runs / "diffusion" / "marker").exists()
    assert json.loads((output / "metrics.json").read_text())["psnr"] == 15.0


class FakeInception(torch.nn.Module):
    """A stand-in feature network (2,048 features of pooled pixels), so the test needs no Inception weights."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.float(), 8).flatten(1)  # (B, 192)
        return pooled.repeat(1, 11)[:, :2048] + torch.randn(len(images), 2048) * 1e-3


def test_a_closed_output_pipe_ends_the_command_quietly():
    done = subprocess.run(f"{sys.executable} -m diffusers_brics info --all | head -n 1", shell=True,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.startswith("BRICSAutoencoder") and done.stderr == "", done.stderr
