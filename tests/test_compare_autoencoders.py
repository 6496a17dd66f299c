"""Benchmark 1 (equal-budget reconstruction) end to end in its tiny mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_compare_autoencoders_tiny(tmp_path, lpips_weights_dir):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_autoencoders.py"), "--tiny", "--no_fid", "--output",
         str(tmp_path)], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["models"]) == ["brics", "autoencoderkl", "vqmodel"]
    for row in results["models"].values():
        assert row["steps"] == 2 and row["images"] == 16 and 0 < row["psnr"] < 60
        assert row["decode_gmacs"] > 0 and row["train_step_seconds"] > 0 and "8x8" in row["code"]
    assert len(results["models"]["brics"]["grid_usage_per_level"]) > 0
    assert 0 < results["models"]["vqmodel"]["codebook_usage"] <= 1
    assert [goal[0] for goal in results["goals"]] == [
        "BRICS reconstruction at least as good as AutoencoderKL's (PSNR and LPIPS)",
        "BRICS decode under half of AutoencoderKL's GMACs", "dense-level grid usage above the VQ codebook's"]
    report = (tmp_path / "report.md").read_text()
    assert "| BRICS |" in report and "| VQModel |" in report
    for image in ("metrics.png", "usage.png", "reconstructions.png"):
        assert (tmp_path / image).stat().st_size > 0
    # the models stay for the generation benchmark
    assert (tmp_path / "run" / "autoencoderkl" / "autoencoder" / "config.json").is_file()
