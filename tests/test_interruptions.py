"""Training never loses more than the last checkpoint: each script killed (SIGKILL) or stopped (SIGTERM, SIGINT)
between checkpoints, then resumed, ends at the requested step with every checkpoint and the weights of an
uninterrupted run.

Slow (`make test-slow`): the Trainer's handling of the same events is checked in this process, on a stand-in stage,
by tests/test_trainer.py (a stop signal, a run ended without warning, a second signal, a damaged checkpoint)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN_STEPS, EVERY = 24, 4
AE = [str(ROOT / "examples" / "train_brics_ae.py"), "--preset", "tiny", "--train_batch_size", "4",
      "--eval_batch_size", "32", "--max_eval_images", "32", "--num_validation_images", "2", "--report_to", "none",
      "--r1_interval", "2", "--perceptual_resolution", "0", "--validation_steps", "1000"]
LDM = [str(ROOT / "examples" / "train_brics_diffusion.py"), "--unet_preset", "tiny", "--train_batch_size", "16",
       "--lr_warmup_steps", "1", "--num_inference_steps", "2", "--num_validation_images", "1", "--report_to", "none",
       "--validation_steps", "1000"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def straight_ae(tmp_path_factory):
    """An uninterrupted stage-1 run, for the interrupted ones to equal."""
    out = tmp_path_factory.mktemp("straight_ae") / "run"
    run_to_end(command(AE, out))
    return out


@pytest.fixture(scope="module")
def straight_ldm(tmp_path_factory, autoencoder):
    out = tmp_path_factory.mktemp("straight_ldm") / "run"
    run_to_end(command(LDM, out, "--autoencoder", str(autoencoder)))
    return out


def command(script: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, *script, "--output_dir", str(out), "--max_train_steps", str(TRAIN_STEPS),
            "--checkpointing_steps", str(EVERY), *extra]


def run_to_end(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def interrupt(cmd: list[str], out: Path, signum: int) -> tuple[int, str]:
    """Start ``cmd``, send ``signum`` once the second checkpoint exists, return the exit status and the log."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.monotonic() + 240
    while not (out / f"checkpoint-{2 * EVERY}").is_dir():
        assert process.poll() is None, "training ended before it could be interrupted:\n" + process.stdout.read()
        assert time.monotonic() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.02)
    process.send_signal(signum)
    log, _ = process.communicate(timeout=240)
    return process.returncode, log


def steps_of(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if not p.name.endswith(".partial"))


def final_weights(out: Path, name: str) -> dict:
    return load_file(out / f"checkpoint-{TRAIN_STEPS}" / name / "diffusion_pytorch_model.safetensors")


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.xdist_group("interruptions_ae")  # under pytest-xdist, `straight_ae` is built once
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill", "term", "int"])
def test_autoencoder_training_survives_an_interruption(tmp_path, straight_ae, signum):
    straight, stopped = straight_ae, tmp_path / "stopped"
    status, log = interrupt(command(AE, stopped), stopped, signum)
    saved = steps_of(stopped)
    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
    else:  # a checkpoint at the step the signal ended, then exit with 128 + the signal's number
        assert status == 128 + signum, log[-3000:]
        name = signal.Signals(signum).name
        assert f"{name}: stopped at step {saved[-1]} with checkpoint-{saved[-1]} written" in log
    assert saved[-1] < TRAIN_STEPS and saved[:2] == [EVERY, 2 * EVERY]
    if signum == signal.SIGKILL:  # as if the kill had come during the next save
        (stopped / f"checkpoint-{saved[-1] + EVERY}.partial").mkdir(exist_ok=True)
    log = run_to_end(command(AE, stopped, "--resume_from_checkpoint", "latest"))
    assert f"at step {saved[-1]}" in log
    if signum == signal.SIGKILL:
        assert f"skipping the incomplete checkpoint {stopped / f'checkpoint-{saved[-1] + EVERY}.partial'}" in log
    assert set(saved) <= set(steps_of(stopped)) and steps_of(stopped)[-1] == TRAIN_STEPS  # nothing lost, to the end
    assert_same(final_weights(stopped, "autoencoder"), final_weights(straight, "autoencoder"))
    assert_same(final_weights(stopped, "autoencoder_ema"), final_weights(straight, "autoencoder_ema"))


@pytest.mark.xdist_group("interruptions_ldm")  # `straight_ldm` built once
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_diffusion_training_survives_an_interruption(tmp_path, autoencoder, straight_ldm, signum):
    straight, stopped = straight_ldm, tmp_path / "stopped"
    status, log = interrupt(command(LDM, stopped, "--autoencoder", str(autoencoder)), stopped, signum)
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum), log[-3000:]
    saved = steps_of(stopped)
    log = run_to_end(command(LDM, stopped, "--autoencoder", str(autoencoder), "--resume_from_checkpoint", "latest"))
    assert f"at step {saved[-1]}" in log and steps_of(stopped)[-1] == TRAIN_STEPS
    assert_same(final_weights(stopped, "unet"), final_weights(straight, "unet"))


@pytest.mark.xdist_group("interruptions_ae")
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path, straight_ae):
    out = tmp_path / "run"
    shutil.copytree(straight_ae / f"checkpoint-{EVERY}", out / f"checkpoint-{EVERY}")
    open(out / f"checkpoint-{EVERY}" / "optimizer.bin", "r+b").truncate(100)
    result = subprocess.run(command(AE, out, "--resume_from_checkpoint", "latest"), capture_output=True, text=True,
                            timeout=300, env=ENV)
    assert result.returncode != 0
    assert f"checkpoint-{EVERY}/optimizer.bin is damaged" in result.stderr
