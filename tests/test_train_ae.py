"""The stage-1 script end to end: a few steps on the embedded data, resume, two processes, the Hub upload."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_brics import BRICSAutoencoder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_brics_ae.py"
# The VGG loss at the images' own 32x32 (the default, 224x224, costs seconds per step on a CPU; its module is
# tested at 224 in test_training_parts.py).
# The release's recipe (the tiny preset's 32x32 images would otherwise get the small-image recipe, which has no GAN).
FAST = ["--preset", "tiny", "--training_recipe", "release", "--train_batch_size", "4", "--eval_batch_size", "32", "--max_eval_images", "32",
        "--num_validation_images", "4", "--report_to", "none", "--r1_interval", "2", "--perceptual_resolution", "0"]


LAUNCHERS = {
    "python": [sys.executable],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
    # accelerate's multi-process launcher; where no GPU is found the script runs gloo CPU processes
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


def run(args, launcher="python", timeout=300, env=None):
    command = LAUNCHERS[launcher] + [str(SCRIPT)]
    result = subprocess.run(command + FAST + args, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def weights(folder, model="autoencoder"):
    return load_file(os.path.join(folder, model, "diffusion_pytorch_model.safetensors"))


def test_few_steps_produce_a_loadable_model_card_and_metrics(tmp_path, lpips_weights_dir):
    out = tmp_path / "run"
    run(["--output_dir", str(out), "--max_train_steps", "4", "--validation_steps", "2", "--checkpointing_steps", "2",
         "--random_flip"])
    model = BRICSAutoencoder.from_pretrained(out / "autoencoder")
    assert model.config.sample_size == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 4 and 0 < metrics["psnr"] < 60 and 0 <= metrics["lpips"] <= 1
    assert (metrics["torch"], metrics["threads"], metrics["processes"]) == (torch.__version__, 1, 1)  # OMP_NUM_THREADS
    assert 0 < metrics["grid_usage_mean"] <= 1
    assert 0 < metrics["grid_trained_mean"] <= 1
    card = (out / "README.md").read_text()
    assert "BRICS autoencoder" in card and "| psnr |" in card
    assert (out / "reconstructions.png").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # the release's recipe: lazy-R1 adjustment of D's Adam (interval 2 here: c = 2/3) and StyleGAN2's EMA
    disc_state = next(torch.load(path, weights_only=False) for path in (out / "checkpoint-4").glob("custom_checkpoint_*.pkl")
                      if "param_groups" in torch.load(path, weights_only=False))
    group = disc_state["param_groups"][0]
    assert group["lr"] == pytest.approx(2e-3 * 2 / 3) and group["betas"] == pytest.approx((0.0, 0.99 ** (2 / 3)))
    ema_state = json.loads((out / "checkpoint-4" / "autoencoder_ema" / "ema_state.json").read_text())
    assert ema_state["halflife_images"] == pytest.approx(10_000 * 4 / 32) and ema_state["rampup"] == 0.05


def test_small_images_get_the_small_recipe_and_flags_win(tmp_path, lpips_weights_dir):
    from diffusers_brics.training.autoencoder_args import TRAINING_RECIPES, parse_args

    def settings(*flags):
        c = parse_args(["--output_dir", str(tmp_path / "x"), *flags])
        return dict(recipe=c.training_recipe, train_batch_size=c.loop.train_batch_size, adam_beta1=c.adam_beta1,
                    grid_learning_rate=c.grid_learning_rate, perceptual_weight=c.loss.perceptual_weight,
                    gan_weight=c.loss.gan_weight, lr_scheduler=c.loop.lr_scheduler)

    small = settings()  # small-32
    assert small == {"recipe": "small", **TRAINING_RECIPES["small"]}
    assert settings("--model_type", "autoencoderkl", "--preset", "small-32") == small
    assert settings("--preset", "small-64")["recipe"] == "small"
    assert settings("--preset", "paper-64x64x4") == dict(recipe="release", train_batch_size=16, adam_beta1=0.0,
                                                           grid_learning_rate=None, perceptual_weight=5.0,
                                                           gan_weight=1.0, lr_scheduler="constant")
    assert settings("--training_recipe", "release")["gan_weight"] == 1.0
    assert settings("--gan_weight", "0.5")["gan_weight"] == 0.5 and settings("--gan_weight", "0.5")["recipe"] == "small"
    config_dir = tmp_path / "config"
    BRICSAutoencoder.from_preset("paper-32x32x4").save_config(config_dir)
    assert settings("--model_config_name_or_path", str(config_dir))["recipe"] == "release"
    assert settings("--model_config_name_or_path", str(config_dir), "--resolution", "32")["recipe"] == "small"

    # a run: no discriminator (so no second optimizer in the checkpoint), Adam with momentum, the grids at 1e-2
    out = tmp_path / "small"
    command = [sys.executable, str(SCRIPT), "--preset", "tiny", "--output_dir", str(out), "--max_train_steps", "2",
               "--checkpointing_steps", "2", "--validation_steps", "2", "--max_eval_images", "8", "--report_to",
               "none"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    states = [torch.load(path, weights_only=False) for path in (out / "checkpoint-2").glob("*.bin")
              if "optimizer" in path.name]
    assert len(states) == 1
    groups = states[0]["param_groups"]
    assert [g["betas"] for g in groups] == [(0.9, 0.99)] * 2 and [g["initial_lr"] for g in groups] == [2e-3, 1e-2]
    assert [g["lr"] for g in groups] == [0.0, 0.0]  # the cosine decay has reached its end
    assert not list((out / "checkpoint-2").glob("custom_checkpoint_*"))  # no discriminator or its optimizer
    card = (out / "README.md").read_text()
    assert "| `training_recipe` | `small` |" in card and "| `gan_weight` | `0.0` |" in card


def test_time_budget_stops_with_a_checkpoint_and_the_final_save(tmp_path, lpips_weights_dir):
    out = tmp_path / "budget"
    log = run(["--output_dir", str(out), "--max_train_steps", "100000", "--max_train_seconds", "2",
               "--checkpointing_steps", "100000", "--validation_steps", "100000"])
    steps = int(log.split("--max_train_seconds reached after ")[1].split()[0])
    assert 1 <= steps < 100000 and (out / f"checkpoint-{steps}").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == steps and metrics["time_limit_reached"] is True
    assert (out / "autoencoder").is_dir()


@pytest.mark.slow
def test_resume_continues_at_the_right_step_with_the_same_weights(tmp_path, lpips_weights_dir):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(["--output_dir", str(straight), "--max_train_steps", "6", "--checkpointing_steps", "3", "--validation_steps", "100"])
    run(["--output_dir", str(resumed), "--max_train_steps", "3", "--checkpointing_steps", "3", "--validation_steps", "100"])
    log = run(["--output_dir", str(resumed), "--max_train_steps", "6", "--checkpointing_steps", "3",
               "--validation_steps", "100", "--resume_from_checkpoint", "latest"])
    assert "at step 3" in log
    # the resumed run's training time counts both invocations
    first = json.loads((resumed / "checkpoint-3" / "trainer_state.json").read_text())["train_seconds"]
    assert 0 < first < json.loads((resumed / "metrics.json").read_text())["train_seconds"]
    # checkpoints hold the model and its EMA in diffusers' format, the same in both runs at step 3
    for folder in ("autoencoder", "autoencoder_ema"):
        a, b = weights(straight / "checkpoint-3", folder), weights(resumed / "checkpoint-3", folder)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((straight / "checkpoint-3").glob("model*.safetensors"))  # not stored twice
    ema = BRICSAutoencoder.from_pretrained(straight / "checkpoint-6", subfolder="autoencoder_ema")
    final = weights(straight)
    assert all(torch.equal(final[k], v) for k, v in ema.state_dict().items())  # the output is the last EMA
    ema_state = json.loads((straight / "checkpoint-6" / "autoencoder_ema" / "ema_state.json").read_text())
    assert ema_state["optimization_step"] == 6
    # the end of training is the same after the resume
    final_a, final_b = weights(straight), weights(resumed)
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_torch_compile_resumes_an_eager_checkpoint_and_saves_plain_weights(tmp_path, lpips_weights_dir, capsys):
    """--torch_compile with the eager backend (dynamo's full-graph trace without code generation: seconds on a CPU)
    resumes an uncompiled run; only the autoencoder's forward is compiled, as one graph traced once (the
    discriminator and the VGG loss stay eager); checkpoints and the model hold the plain module's keys."""
    from diffusers_brics.training.autoencoder_args import parse_args

    for args, message in [
        (["--torch_compile_backend", "bogus"], "is not a torch.compile backend"),
        (["--torch_compile_backend", "eager", "--torch_compile_mode", "max-autotune"], "applies to the inductor"),
        (["--gradient_checkpointing"], "--no-torch_compile_fullgraph"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(["--torch_compile", *args])
        assert message in capsys.readouterr().err

    out = tmp_path / "compiled"
    common = ["--output_dir", str(out), "--checkpointing_steps", "2", "--validation_steps", "100", "--max_eval_images",
              "4", "--eval_batch_size", "4", "--num_validation_images", "2"]
    run([*common, "--max_train_steps", "2"])
    log = run([*common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--torch_compile",
               "--torch_compile_backend", "eager"], env={"TORCH_LOGS": "dynamo"})
    assert "at step 2" in log and "--torch_compile: BRICSAutoencoder, backend eager, fullgraph True" in log
    traced = [line for line in log.splitlines() if "torchdynamo start tracing" in line]
    assert len(traced) == 1 and "autoencoder_brics.py" in traced[0], traced
    before, after = weights(out / "checkpoint-2"), weights(out / "checkpoint-4")
    assert set(before) == set(after) and not any("_orig_mod" in key for key in after)
    assert not all(torch.equal(before[k], after[k]) for k in before)  # the compiled steps trained
    assert set(weights(out / "checkpoint-4", "autoencoder_ema")) == set(after)
    model = BRICSAutoencoder.from_pretrained(out / "autoencoder")
    assert set(model.state_dict()) == set(after)
    assert "| `torch_compile` | `True` |" in (out / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_end_with_identical_weights(tmp_path, lpips_weights_dir, launcher):
    log = run(["--output_dir", str(tmp_path / "ddp"), "--max_train_steps", "3", "--checkpointing_steps", "3",
               "--validation_steps", "100"], launcher)
    assert "batch 4 x 2 processes" in log and "weights identical on 2 process(es)" in log
    assert (tmp_path / "ddp" / "autoencoder").is_dir()


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_brics_ae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_to_hub_uploads_the_folder_with_its_card(tmp_path, monkeypatch, lpips_weights_dir, script):
    import types

    import diffusers_brics.training.hub as hub

    uploads = []

    def create(repo_id, **kw):
        uploads.append(("create", repo_id, kw))
        return types.SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(hub, "create_repo", create)
    monkeypatch.setattr(hub, "upload_folder", lambda **kw: uploads.append(("upload", kw)))
    out = tmp_path / "hub"
    script.main(FAST + ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2",
                        "--validation_steps", "100", "--gan_weight", "0", "--push_to_hub", "--hub_model_id",
                        "org/brics-tiny", "--hub_private_repo", "--hub_token", "secret"])
    assert uploads[0] == ("create", "org/brics-tiny", {"exist_ok": True, "token": "secret", "private": True})
    upload = uploads[1][1]
    assert upload["repo_id"] == "org/brics-tiny" and upload["folder_path"] == str(out)
    assert upload["allow_patterns"] == ["README.md", "metrics.json", "reconstructions.png", "autoencoder/*"]
    card = (out / "README.md").read_text()
    assert 'from_pretrained("org/brics-tiny", subfolder="autoencoder")' in card
    assert "secret" not in card
    assert (out / "autoencoder" / "config.json").exists() and (out / "reconstructions.png").exists()


@pytest.mark.parametrize("flag, value", [
    ("--checkpoints_total_limit", "0"), ("--checkpoints_total_limit", "-1"), ("--max_train_steps", "0"),
    ("--num_epochs", "0"), ("--validation_steps", "0"), ("--checkpointing_steps", "-1"), ("--r1_interval", "0"),
    ("--max_train_seconds", "0"), ("--learning_rate", "-1"), ("--max_eval_images", "0"), ("--train_batch_size", "0"),
    ("--num_validation_images", "0"), ("--gradient_accumulation_steps", "0"), ("--lr_scheduler", "bogus"),
    ("--adam_beta2", "1.5"), ("--kl_weight", "nan"),
])
def test_flag_values_that_cannot_work_are_refused(script, capsys, flag, value):
    with pytest.raises(SystemExit):
        script.parse_args([flag, value])
    assert f"argument {flag}: " in capsys.readouterr().err


def test_bad_arguments_are_refused(tmp_path, script, capsys):
    from accelerate.state import AcceleratorState

    def refused(error, *args):
        AcceleratorState._reset_state(reset_partial_state=True)  # each run configures accelerate afresh
        with pytest.raises(error) as caught:
            script.main(["--output_dir", str(tmp_path / "o"), "--report_to", "none", *args])
        return str(caught.value) + capsys.readouterr().err

    assert "train_data_dir" in refused(FileNotFoundError, "--train_data_dir", str(tmp_path / "missing"))
    assert "--model_config_name_or_path" in refused(FileNotFoundError, "--model_config_name_or_path",
                                                    str(tmp_path / "missing"))
    assert "--mixed_precision fp16 needs a GPU" in refused(ValueError, "--mixed_precision", "fp16")
    (tmp_path / "o" / "checkpoint-5").mkdir(parents=True)  # a checkpoint folder with nothing in it
    error = refused(ValueError, "--preset", "tiny", "--resume_from_checkpoint", "latest")
    assert "--resume_from_checkpoint: " in error and "checkpoint-5 cannot be loaded" in error


def test_trains_on_an_image_folder_with_a_held_out_fraction(tmp_path, lpips_weights_dir, random_image_folder):
    folder = random_image_folder(12, 40, 48)  # not square and not at the model's resolution: resized, then cropped
    out = tmp_path / "folder-run"
    log = run(["--train_data_dir", str(folder), "--output_dir", str(out), "--max_train_steps", "2",
               "--validation_steps", "100", "--checkpointing_steps", "100", "--validation_fraction", "0.25",
               "--perceptual_weight", "0", "--random_flip"])
    assert "9 training images, 3 held out" in log
    assert json.loads((out / "metrics.json").read_text())["step"] == 2
    assert log.rstrip().splitlines()[-1].endswith(f"saved to {out / 'autoencoder'}")  # the run's last line


def adam_steps(optimizer_state: dict) -> set[int]:
    return {int(state["step"]) for state in optimizer_state["state"].values()}


@pytest.mark.slow
def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    # Without relaxed-precision noise, decoder noise and GAN (their draws and the discriminator's minibatch-std
    # groups depend on the batch split), 2 micro-batches of 4 must make the same 2 steps as batches of 8.
    config = tmp_path / "config"
    BRICSAutoencoder.from_preset("tiny", relaxed_precision=False, decoder_noise=False).save_config(config)
    common = ["--model_config_name_or_path", str(config), "--max_train_steps", "2", "--checkpointing_steps", "2",
              "--validation_steps", "100", "--gan_weight", "0", "--perceptual_weight", "0", "--no-use_ema"]
    runs = {"8": ["--train_batch_size", "8"], "4x2": ["--train_batch_size", "4", "--gradient_accumulation_steps", "2"],
            "4": ["--train_batch_size", "4"]}
    for name, flags in runs.items():
        run(common + flags + ["--output_dir", str(tmp_path / name)])
    big, accumulated, small = (weights(tmp_path / name) for name in runs)

    def share_differing(a, b):  # Adam with eps 1e-15 turns rounding-level gradient differences into whole steps
        return sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a) / sum(v.numel() for v in a.values())

    assert share_differing(big, accumulated) < 0.03
    assert share_differing(big, small) > 0.5  # a different run really does differ
    assert adam_steps(torch.load(tmp_path / "4x2" / "checkpoint-2" / "optimizer.bin")) == {2}


def test_variants_wgan_gp_kl_bf16_with_accumulation(tmp_path, lpips_weights_dir):
    out = tmp_path / "variants"
    run(["--output_dir", str(out), "--max_train_steps", "3", "--checkpointing_steps", "3", "--validation_steps", "100",
         "--gan_loss", "wgan-gp", "--kl_weight", "1e-6", "--mixed_precision", "bf16", "--gradient_accumulation_steps", "2",
         "--perceptual_loss", "lpips", "--kl_reduction", "sum", "--ema_schedule", "warmup", "--no-eval_with_noise"])
    model = BRICSAutoencoder.from_pretrained(out / "autoencoder")
    assert model.config.kl_key_codes and not model.config.relaxed_precision  # config c replaces d
    assert model.encode(torch.zeros(1, 3, 32, 32)).key_code_posterior is not None
    checkpoint = out / "checkpoint-3"
    # the discriminator accumulates too: one optimiser step per autoencoder step, not one per micro-batch
    assert adam_steps(torch.load(checkpoint / "optimizer.bin")) == {3}
    disc_state = next(torch.load(path, weights_only=False) for path in checkpoint.glob("custom_checkpoint_*.pkl")
                      if "param_groups" in torch.load(path, weights_only=False))
    assert adam_steps(disc_state) == {3}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["nonfinite_steps"] == 0  # bf16 autocast on the CPU stays finite


@pytest.mark.slow
def test_two_processes_count_epochs_and_resume_where_they_stopped(tmp_path, lpips_weights_dir, random_image_folder):
    # 16 training images in batches of 4 on each of 2 processes: an epoch is 2 steps. Resuming at step 3 must skip
    # the one batch of epoch 1 that each process has already seen, so the run ends with the uninterrupted weights.
    folder = random_image_folder(20)
    common = ["--train_data_dir", str(folder), "--validation_fraction", "0.2", "--checkpointing_steps", "3",
              "--validation_steps", "100", "--perceptual_weight", "0", "--gan_weight", "0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    log = run(common + ["--output_dir", str(straight), "--num_epochs", "3"], "torchrun")
    assert "16 training images, 4 held out; 6 steps" in log
    assert json.loads((straight / "metrics.json").read_text())["step"] == 6
    run(common + ["--output_dir", str(resumed), "--max_train_steps", "3"], "torchrun")
    log = run(common + ["--output_dir", str(resumed), "--num_epochs", "3", "--resume_from_checkpoint", "latest"],
              "torchrun")
    assert "at step 3" in log
    final_a, final_b = weights(straight), weights(resumed)
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("model_type", ["autoencoderkl", "vqmodel"])
def test_diffusers_autoencoders_train_resume_and_report_their_own_terms(tmp_path, lpips_weights_dir, model_type):
    from diffusers import AutoencoderKL, VQModel

    cls = {"autoencoderkl": AutoencoderKL, "vqmodel": VQModel}[model_type]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--model_type", model_type, "--checkpointing_steps", "2", "--validation_steps", "100"]
    log = run(common + ["--output_dir", str(straight), "--max_train_steps", "4"])
    assert ("kl=" if model_type == "autoencoderkl" else "vq=") in log  # the model's own term is trained and logged
    run(common + ["--output_dir", str(resumed), "--max_train_steps", "2"])
    log = run(common + ["--output_dir", str(resumed), "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])
    assert "at step 2" in log
    final_a, final_b = weights(straight), weights(resumed)
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6, msg=key)
    model = cls.from_pretrained(straight / "autoencoder")  # stock diffusers loads it
    assert all(torch.equal(v, final_a[k]) for k, v in model.state_dict().items())
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["step"] == 4 and 0 < metrics["psnr"] < 60 and "grid_usage_mean" not in metrics
    if model_type == "vqmodel":
        assert 0 < metrics["codebook_usage"] <= 1 and metrics["codebook_perplexity"] >= 1
    card = (straight / "README.md").read_text()
    assert f"from diffusers import {cls.__name__}" in card


def test_model_type_flags_that_cannot_work_are_refused(script, capsys):
    for argv, expected in (
        (["--model_type", "vqmodel", "--preset", "paper-64x64x4"], "not a vqmodel preset"),
        (["--model_type", "vqmodel", "--kl_weight", "1e-6"], "not to --model_type vqmodel"),
    ):
        with pytest.raises(SystemExit):
            script.parse_args(argv)
        assert expected in capsys.readouterr().err


def test_a_config_of_another_model_type_is_named(tmp_path):
    from diffusers import AutoencoderKL

    from diffusers_brics.models import adapters
    from diffusers_brics.training.autoencoder import build_model
    from diffusers_brics.training.autoencoder_args import parse_args

    adapters.build_autoencoder("autoencoderkl", "tiny").save_config(tmp_path)
    assert isinstance(build_model(parse_args(["--model_type", "autoencoderkl", "--model_config_name_or_path", str(tmp_path)])), AutoencoderKL)
    with pytest.raises(ValueError, match="--model_config_name_or_path .*AutoencoderKL config.*--model_type autoencoderkl"):
        build_model(parse_args(["--model_config_name_or_path", str(tmp_path)]))
