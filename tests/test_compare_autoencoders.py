"""Benchmark 1 (equal-budget reconstruction) end to end in its tiny mode: the four models, and runs per model and
seed (an interrupted training resumed, ended runs cached) assembled into one report with the spread over seeds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import as_cloned

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]


def run_compare_autoencoders(output: Path, *args: str, script: str = "benchmarks/compare_autoencoders.py") -> str:
    """Runs ``script`` (the benchmark in its tiny mode, or with ``script=`` another); its stdout and stderr."""
    tiny = ["--tiny", "--no_fid", "--output", str(output)] if script.startswith("benchmarks/") else []
    result = subprocess.run([sys.executable, str(ROOT / script), *tiny, *args], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_compare_autoencoders_tiny(tmp_path, lpips_weights_dir):
    run_compare_autoencoders(tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["models"]) == ["brics", "autoencoderkl", "vqmodel", "cvqvae"]
    for entry in results["models"].values():
        assert entry["seeds"] == [0] and entry["summary"]["psnr"]["n"] == 1 and entry["summary"]["psnr"]["std"] == 0
        row = entry["runs"]["0"]
        assert row["steps"] == 2 and row["images"] == 16 and 0 < row["psnr"] < 60
        assert row["train_threads"] == 1  # OMP_NUM_THREADS: what a bit-for-bit repeat needs
        assert entry["decode_gmacs"] > 0 and entry["train_step_seconds"] > 0 and "8x8" in entry["code"]
    assert len(results["models"]["brics"]["grid_usage_per_level"]) > 0
    for kind in ("vqmodel", "cvqvae"):  # both codebooks: usage and perplexity
        summary = results["models"][kind]["summary"]
        assert 0 < summary["codebook_usage"]["mean"] <= 1 and summary["codebook_perplexity"]["mean"] >= 1
        assert "indices into 64 x 2-d entries" in results["models"][kind]["code"]
    assert "--model_type cvqvae" in results["models"]["cvqvae"]["runs"]["0"]["command"]
    assert [goal[0] for goal in results["goals"]] == [
        "BRICS reconstruction at least as good as AutoencoderKL's (PSNR and LPIPS)",
        "BRICS decode under half of AutoencoderKL's GMACs", "dense-level grid usage above the VQModel codebook's",
        "dense-level grid usage above the CVQ-VAE codebook's"]
    report = (tmp_path / "report.md").read_text()
    assert "| BRICS | 1 (0) |" in report and "| VQModel |" in report and "| CVQ-VAE | 1 (0) |" in report
    assert "perplexity" in report.split("| CVQ-VAE |")[1].splitlines()[0]
    for image in ("metrics.png", "usage.png", "reconstructions.png"):
        assert (tmp_path / image).stat().st_size > 0
    # the models stay for the generation benchmark; their checkpoints go once the run has its result
    run = tmp_path / "runs" / "cvqvae-seed0"
    assert json.loads((run / "autoencoder" / "config.json").read_text())["_class_name"] == "VQModel"
    assert not list(run.glob("checkpoint-*"))


def test_a_training_stopped_by_a_time_limit_is_continued_not_evaluated(tmp_path, lpips_weights_dir):
    """A training that a time limit stops short of its steps (``--max_minutes``, or a limit given after ``--``) keeps
    its checkpoint and gets no result, and its invocation no report; the same command continues it."""
    stdout = run_compare_autoencoders(tmp_path, "--models", "brics", "--", "--perceptual_weight", "0", "--gan_weight",
                                      "0", "--max_train_seconds", "0.001")
    run = tmp_path / "runs" / "brics-seed0"
    assert "brics seed 0: the training stopped at step 1 of 2" in stdout
    assert (run / "checkpoint-1").is_dir() and not (run / "result.json").exists()
    assert not (tmp_path / "report.md").exists()
    stdout = run_compare_autoencoders(tmp_path, "--models", "brics", "--max_minutes", "30")
    assert f"resumed from {run / 'checkpoint-1'} at step 1" in stdout
    training = next(line for line in stdout.splitlines() if line.startswith("$ "))
    assert "--max_train_seconds" in training  # what is left of the invocation's 30 minutes
    row = json.loads((run / "result.json").read_text())["row"]
    assert row["steps"] == 2 and "--max_train_seconds" not in row["command"]  # the run's command, not the budget's
    assert (tmp_path / "report.md").is_file()


def test_runs_are_cached_per_model_and_seed_and_reported_with_their_spread(tmp_path, lpips_weights_dir):
    # an interrupted run: one step of two done, with its checkpoint
    interrupted = tmp_path / "runs" / "cvqvae-seed0"
    run_compare_autoencoders(
        tmp_path, "--model_type", "cvqvae", "--preset", "tiny", "--output_dir", str(interrupted), "--max_train_steps",
        "1", "--train_batch_size", "32", "--checkpointing_steps", "1", "--validation_steps", "1", "--max_eval_images",
        "16", "--report_to", "none", "--seed", "0", "--perceptual_weight", "0", "--gan_weight", "0",
        script="examples/train_brics_ae.py")
    output = run_compare_autoencoders(tmp_path, "--models", "brics", "cvqvae", "--seeds", "0")
    assert f"resumed from {interrupted / 'checkpoint-1'} at step 1" in output
    assert json.loads((interrupted / "metrics.json").read_text())["step"] == 2
    first = json.loads((tmp_path / "results.json").read_text())
    assert list(first["models"]) == ["brics", "cvqvae"] and first["models"]["brics"]["seeds"] == [0]
    cached = tmp_path / "runs" / "brics-seed0" / "result.json"
    written = cached.stat().st_mtime_ns
    # a run whose training ended but whose evaluation did not: evaluated again, not trained again
    (tmp_path / "runs" / "cvqvae-seed0" / "result.json").unlink()

    stdout = run_compare_autoencoders(tmp_path, "--models", "brics,cvqvae", "cvqvae", "--seeds", "0,1")
    assert "brics seed 0: cached" in stdout and "cvqvae seed 0: trained, evaluating" in stdout
    trainings = [line for line in stdout.splitlines() if line.startswith("$ ")]
    assert len(trainings) == 2 and all("--seed 1" in line for line in trainings)  # cvqvae given twice: once
    assert cached.stat().st_mtime_ns == written

    stdout = run_compare_autoencoders(tmp_path, "--report")
    assert not [line for line in stdout.splitlines() if line.startswith("$ ")]
    results = json.loads((tmp_path / "results.json").read_text())
    # the same models timed as for the first report (kinds and lowest seeds): their timings are kept, not re-taken
    timing_keys = ("train_step_seconds", "train_images_per_second", "decode_seconds_per_image")
    timings = {kind: {key: entry[key] for key in timing_keys} for kind, entry in results["models"].items()}
    assert timings == {kind: {key: entry[key] for key in timing_keys} for kind, entry in first["models"].items()}
    assert "timings kept from" in stdout
    remeasured = run_compare_autoencoders(tmp_path, "--report", "--remeasure")
    assert "timings kept from" not in remeasured
    assert json.loads((tmp_path / "results.json").read_text())["models"]["brics"]["train_step_seconds"] != \
        timings["brics"]["train_step_seconds"]
    assert list(results["models"]) == ["brics", "cvqvae"]
    for entry in results["models"].values():
        assert entry["seeds"] == [0, 1]
        psnr = entry["summary"]["psnr"]
        values = [entry["runs"][seed]["psnr"] for seed in ("0", "1")]
        assert psnr["n"] == 2 and psnr["mean"] == pytest.approx(sum(values) / 2)
        assert (psnr["min"], psnr["max"]) == (min(values), max(values)) and psnr["std"] > 0  # the seeds differ
    report = (tmp_path / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| CVQ-VAE |"))
    assert "| 2 (0, 1) |" in row and " ± " in row
    assert "mean ± standard deviation over the seeds" in report

    # a clone has only the runs' records: the report is assembled again from them, with the timings and the picture
    # of the report there, which show the same lowest seeds; a seed added in the clone joins the report
    before = json.loads((tmp_path / "results.json").read_text())
    picture = (tmp_path / "reconstructions.png").read_bytes()
    as_cloned(tmp_path)
    assert sorted(path.name for path in (tmp_path / "runs" / "brics-seed0").iterdir()) == ["result.json"]
    stdout = run_compare_autoencoders(tmp_path, "--report")
    assert "timings kept from" in stdout and "reconstructions.png kept: it shows the same runs" in stdout
    assert json.loads((tmp_path / "results.json").read_text())["models"] == before["models"]
    assert (tmp_path / "reconstructions.png").read_bytes() == picture
    stdout = run_compare_autoencoders(tmp_path, "--models", "brics", "--seeds", "2")
    assert "brics seed 2: PSNR" in stdout and "timings kept from" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["models"]["brics"]["seeds"] == [0, 1, 2] and results["models"]["cvqvae"]["seeds"] == [0, 1]
    assert results["models"]["brics"]["runs"]["0"] == before["models"]["brics"]["runs"]["0"]
    remeasured = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_autoencoders.py"), "--tiny",
                                 "--no_fid", "--output", str(tmp_path), "--report", "--remeasure"],
                                capture_output=True, text=True, timeout=600)  # fmt: skip
    assert remeasured.returncode == 1 and ("brics-seed0, cvqvae-seed0: no autoencoder in the run folder (a clone has "
                                           "only each run's records") in remeasured.stderr  # fmt: skip
