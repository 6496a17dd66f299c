"""The stage-1 script end to end: a few steps on the embedded data, resume, two processes, the Hub upload."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusers_brics import BRICSAutoencoder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_brics_ae.py"
FAST = ["--preset", "tiny", "--train_batch_size", "4", "--eval_batch_size", "32", "--max_eval_images", "32",
        "--num_validation_images", "4", "--report_to", "none", "--r1_interval", "2"]


def run(args, nproc=1, timeout=300):
    command = [sys.executable, str(SCRIPT)] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), str(SCRIPT)]
    result = subprocess.run(command + FAST + args, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def weights(folder):
    return load_file(os.path.join(folder, "autoencoder", "diffusion_pytorch_model.safetensors"))


def test_few_steps_produce_a_loadable_model_card_and_metrics(tmp_path, lpips_weights_dir):
    out = tmp_path / "run"
    run(["--output_dir", str(out), "--max_train_steps", "4", "--validation_steps", "2", "--checkpointing_steps", "2",
         "--random_flip"])
    model = BRICSAutoencoder.from_pretrained(out / "autoencoder")
    assert model.config.sample_size == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 4 and 0 < metrics["psnr"] < 60 and 0 <= metrics["lpips"] <= 1
    assert 0 < metrics["grid_usage_mean"] <= 1
    assert 0 < metrics["grid_trained_mean"] <= 1
    card = (out / "README.md").read_text()
    assert "BRICS autoencoder" in card and "| psnr |" in card
    assert (out / "reconstructions.png").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_time_budget_stops_with_a_checkpoint_and_the_final_save(tmp_path, lpips_weights_dir):
    out = tmp_path / "budget"
    log = run(["--output_dir", str(out), "--max_train_steps", "100000", "--max_train_seconds", "2",
               "--checkpointing_steps", "100000", "--validation_steps", "100000"])
    steps = int(log.split("--max_train_seconds reached after ")[1].split()[0])
    assert 1 <= steps < 100000 and (out / f"checkpoint-{steps}").is_dir()
    assert json.loads((out / "metrics.json").read_text())["step"] == steps
    assert (out / "autoencoder").is_dir()


def test_resume_continues_at_the_right_step_with_the_same_weights(tmp_path, lpips_weights_dir):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(["--output_dir", str(straight), "--max_train_steps", "6", "--checkpointing_steps", "3", "--validation_steps", "100"])
    run(["--output_dir", str(resumed), "--max_train_steps", "3", "--checkpointing_steps", "3", "--validation_steps", "100"])
    log = run(["--output_dir", str(resumed), "--max_train_steps", "6", "--checkpointing_steps", "3",
               "--validation_steps", "100", "--resume_from_checkpoint", "latest"])
    assert "at step 3" in log
    # the checkpoint at step 3 holds the same weights in both runs, and so does the end of training
    a = load_file(straight / "checkpoint-3" / "model.safetensors")
    b = load_file(resumed / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    final_a, final_b = weights(straight), weights(resumed)
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_two_processes_end_with_identical_weights(tmp_path, lpips_weights_dir):
    log = run(["--output_dir", str(tmp_path / "ddp"), "--max_train_steps", "3", "--checkpointing_steps", "3",
               "--validation_steps", "100"], nproc=2)
    assert "weights identical on 2 process(es)" in log
    assert (tmp_path / "ddp" / "autoencoder").is_dir()


def test_push_to_hub_uploads_the_folder_with_its_card(tmp_path, monkeypatch, lpips_weights_dir):
    spec = importlib.util.spec_from_file_location("train_brics_ae", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    import diffusers_brics.training.hub as hub

    uploads = []
    monkeypatch.setattr(hub, "create_repo", lambda repo_id, **kw: uploads.append(("create", repo_id, kw)))
    monkeypatch.setattr(hub, "upload_folder", lambda **kw: uploads.append(("upload", kw)))
    out = tmp_path / "hub"
    script.main(FAST + ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2",
                        "--validation_steps", "100", "--gan_weight", "0", "--push_to_hub", "--hub_model_id",
                        "org/brics-tiny", "--hub_private_repo", "--hub_token", "secret"])
    assert uploads[0] == ("create", "org/brics-tiny", {"exist_ok": True, "token": "secret", "private": True})
    upload = uploads[1][1]
    assert upload["repo_id"] == "org/brics-tiny" and upload["folder_path"] == str(out)
    assert "checkpoint-*" in upload["ignore_patterns"]
    card = (out / "README.md").read_text()
    assert 'from_pretrained("org/brics-tiny", subfolder="autoencoder")' in card
    assert "secret" not in card
    assert (out / "autoencoder" / "config.json").exists() and (out / "reconstructions.png").exists()


def test_bad_arguments_are_refused(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--push_to_hub"], capture_output=True, text=True)
    assert result.returncode != 0 and "--hub_model_id" in result.stderr
    result = subprocess.run([sys.executable, str(SCRIPT), "--train_data_dir", str(tmp_path / "missing"),
                             "--output_dir", str(tmp_path / "o"), "--report_to", "none"], capture_output=True, text=True)
    assert result.returncode != 0 and "train_data_dir" in result.stderr


def test_trains_on_an_image_folder_with_a_held_out_fraction(tmp_path, lpips_weights_dir):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(12):  # not square and not at the model's resolution: resized, then randomly cropped
        pixels = (torch.rand(40, 48, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "folder-run"
    log = run(["--train_data_dir", str(folder), "--output_dir", str(out), "--max_train_steps", "2",
               "--validation_steps", "100", "--checkpointing_steps", "100", "--validation_fraction", "0.25",
               "--perceptual_weight", "0", "--random_flip"])
    assert "9 training images, 3 held out" in log
    assert json.loads((out / "metrics.json").read_text())["step"] == 2
