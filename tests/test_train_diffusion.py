"""The stage-2 script in child processes: on the embedded emoji with a tiny autoencoder and UNet, in pixel space and
on diffusers' autoencoders, resumed, compiled, on two processes. The slow tests that have a test of the same name in
test_train_diffusion_in_process.py (which runs stage 2 in this process, on ten images) keep what only a process of its
own shows: the whole embedded set encoded, its cache reused by the next process, a refusal as the exit status."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import DIFFUSION_FAST, DIFFUSION_SCRIPT, run_diffusion

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.data import load_emoji_dataset

EMBEDDED_TRAIN_IMAGES = 3133  # the embedded emoji's training split


@pytest.mark.slow  # the pipeline's scheduler and scale: test_train_diffusion_in_process.py, of the same name
def test_trains_and_saves_a_loadable_pipeline_with_cached_key_codes(tmp_path, autoencoder):
    """Every training image of the embedded set and its mirror image encoded once; a second process resumes on
    that cache."""
    import datasets

    out = tmp_path / "ldm"
    run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(out), "--max_train_steps", "3",
                   "--checkpointing_steps", "3", "--random_flip"])
    assert len(datasets.load_from_disk(str(out / "key_codes"))) == 2 * EMBEDDED_TRAIN_IMAGES  # flipped twins too
    pipe = BRICSPipeline.from_pretrained(out)
    generator = torch.Generator().manual_seed(0)
    images = pipe(batch_size=2, generator=generator, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()

    log = run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(out), "--max_train_steps", "5",
                         "--checkpointing_steps", "5", "--resume_from_checkpoint", "latest", "--schedule", "cosine",
                         "--snr_gamma", "5", "--random_flip"])
    assert f"reusing {2 * EMBEDDED_TRAIN_IMAGES} cached key codes" in log and "at step 3" in log


def test_resume_continues_with_the_same_weights_and_checkpoints_load_with_from_pretrained(tmp_path, autoencoder):
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--autoencoder", str(autoencoder), "--checkpointing_steps", "2", "--encode_on_the_fly",
              "--max_train_steps", "4"]
    run_diffusion([*common, "--output_dir", str(straight)])
    # a run interrupted after its step-2 checkpoint (same flags, so the same learning-rate schedule)
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    log = run_diffusion([*common, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    assert "at step 2" in log
    for folder in ("checkpoint-4/unet", "checkpoint-4/unet_ema", "unet"):
        a = load_file(straight / folder / "diffusion_pytorch_model.safetensors")
        b = load_file(resumed / folder / "diffusion_pytorch_model.safetensors")
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{folder}: {key}")
    from diffusers import UNet2DModel

    ema = UNet2DModel.from_pretrained(straight / "checkpoint-4", subfolder="unet_ema")
    final = BRICSPipeline.from_pretrained(straight).unet  # the pipeline carries the last EMA weights
    assert all(torch.equal(v, final.state_dict()[k]) for k, v in ema.state_dict().items())


def test_torch_compile_resumes_an_eager_checkpoint_and_saves_a_loadable_pipeline(tmp_path, autoencoder):
    """--torch_compile (eager backend: dynamo's full-graph trace, seconds on a CPU) resumes an uncompiled run: the
    UNet's forward is traced once as one graph (the frozen autoencoder encoding on the fly is not compiled); the
    checkpoints and the pipeline hold the plain UNet's keys."""
    from safetensors.torch import load_file

    out = tmp_path / "compiled"
    common = ["--autoencoder", str(autoencoder), "--output_dir", str(out), "--checkpointing_steps", "2",
              "--encode_on_the_fly"]
    run_diffusion([*common, "--max_train_steps", "2"])
    log = run_diffusion([*common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--torch_compile",
               "--torch_compile_backend", "eager"], env={"TORCH_LOGS": "dynamo"})
    assert "at step 2" in log and "--torch_compile: UNet2DModel, backend eager, fullgraph True" in log
    traced = [line for line in log.splitlines() if "torchdynamo start tracing" in line]
    assert len(traced) == 1 and "unet_2d.py" in traced[0], traced
    before, after = (load_file(out / f"checkpoint-{step}" / "unet" / "diffusion_pytorch_model.safetensors")
                     for step in (2, 4))
    assert set(before) == set(after) and not any("_orig_mod" in key for key in after)
    assert not all(torch.equal(before[k], after[k]) for k in before)  # the compiled steps trained
    pipe = BRICSPipeline.from_pretrained(out)
    assert set(pipe.unet.state_dict()) == set(after)
    images = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                  output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert "| `torch_compile` | `True` |" in (out / "README.md").read_text()


def test_encoding_on_the_fly_under_a_time_budget(tmp_path, autoencoder):
    out = tmp_path / "fly"
    log = run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(out), "--max_train_steps", "100000",
               "--max_train_seconds", "1", "--checkpointing_steps", "100000", "--encode_on_the_fly", "--no-use_ema",
               "--class_column", "category"])
    assert not (out / "key_codes").exists() and (out / "model_index.json").exists()
    assert BRICSPipeline.from_pretrained(out).unet.config.num_class_embeds == len(EMOJI_CATEGORIES)
    steps = int(log.split("--max_train_seconds reached after ")[1].split()[0])
    assert 1 <= steps < 100000 and (out / f"checkpoint-{steps}").is_dir()


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path, autoencoder):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(DIFFUSION_SCRIPT), *DIFFUSION_FAST,
         "--autoencoder", str(autoencoder), "--output_dir", str(out), "--max_train_steps", "2",
         "--checkpointing_steps", "2", "--gradient_accumulation_steps", "2"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert "weights identical on 2 process(es)" in result.stdout + result.stderr
    assert (out / "model_index.json").exists()
    # 2 optimiser steps, each over 2 micro-batches per process
    optimizer = torch.load(out / "checkpoint-2" / "optimizer.bin")
    assert {int(state["step"]) for state in optimizer["state"].values()} == {2}


def test_a_missing_autoencoder_names_the_flag(tmp_path, autoencoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = importlib.util.spec_from_file_location("train_brics_diffusion", DIFFUSION_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert isinstance(script.load_autoencoder(str(autoencoder), None), BRICSAutoencoder)
    with pytest.raises(FileNotFoundError, match="--autoencoder .*nowhere.*local folder"):
        script.load_autoencoder(str(tmp_path / "nowhere"), None)
    # a stage-1 output folder holds the model one level down, where it is found
    stage1 = tmp_path / "stage1"
    shutil.copytree(autoencoder, stage1 / "autoencoder")
    assert isinstance(script.load_autoencoder(str(stage1), None), BRICSAutoencoder)
    assert isinstance(script.load_autoencoder(str(stage1), "autoencoder"), BRICSAutoencoder)
    with pytest.raises(FileNotFoundError, match="--autoencoder .*with --autoencoder_subfolder 'vae'"):
        script.load_autoencoder(str(stage1), "vae")


EMOJI_CATEGORIES = ["Activities", "Animals & Nature", "Component", "Flags", "Food & Drink", "Objects", "People & Body",
                    "Smileys & Emotion", "Symbols", "Travel & Places"]


@pytest.mark.slow  # sampling, the card, the refusal: test_train_diffusion_in_process.py::test_class_conditional_...
def test_class_conditional_training_on_the_emoji_categories(tmp_path, autoencoder):
    """The embedded emoji's ten categories as classes, in sorted order, and each cached image's label its own."""
    import datasets

    out = tmp_path / "cond"
    run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(out), "--max_train_steps", "2",
                   "--checkpointing_steps", "2", "--class_column", "category", "--num_validation_images", "3"])
    pipe = BRICSPipeline.from_pretrained(out)
    assert pipe.unet.config.num_class_embeds == len(EMOJI_CATEGORIES)
    assert pipe.labels == {name: i for i, name in enumerate(EMOJI_CATEGORIES)}
    cached = datasets.load_from_disk(str(out / "key_codes"))
    emoji = load_emoji_dataset(32, "train")
    assert list(cached["class_labels"]) == [EMOJI_CATEGORIES.index(c) for c in emoji["category"]]


@pytest.mark.slow  # the other refusals: test_train_diffusion_in_process.py, of the same name
def test_every_image_is_encoded_and_a_cache_from_other_inputs_is_refused(tmp_path, autoencoder, random_image_folder):
    """A folder's ten images all encoded (none held out); a process started on that cache with another autoencoder
    fails, with one error line and no traceback."""
    import datasets

    folder = random_image_folder(10)
    out = tmp_path / "run"
    base = ["--train_data_dir", str(folder), "--train_batch_size", "4", "--output_dir", str(out),
            "--max_train_steps", "1", "--checkpointing_steps", "1"]
    run_diffusion(["--autoencoder", str(autoencoder), *base])
    assert len(datasets.load_from_disk(str(out / "key_codes"))) == 10  # no images held out: stage 2 does not evaluate

    other = tmp_path / "other_vae"
    torch.manual_seed(1)
    BRICSAutoencoder.from_preset("tiny").save_pretrained(other)
    log = run_diffusion(["--autoencoder", str(other), *base], expect_success=False)
    assert "train_brics_diffusion.py: error: " in log and "were encoded with other autoencoder_sha256" in log
    assert "Traceback" not in log


def test_min_snr_weighting_follows_the_paper_configurations():
    spec = importlib.util.spec_from_file_location("train_brics_diffusion", DIFFUSION_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    release = ("--training_recipe", "release")
    gamma = {flags: script.parse_args(["--autoencoder", "x", *release, *flags]).snr_gamma
             for flags in [(), ("--schedule", "cosine"), ("--schedule", "cosine", "--snr_gamma", "0"),
                           ("--snr_gamma", "2")]}
    assert list(gamma.values()) == [0.0, 5.0, 0.0, 2.0]  # config b: none; config a: min-SNR-5
    # the short-run recipe weighs with min-SNR-5 on either schedule unless told otherwise
    assert script.parse_args(["--autoencoder", "x"]).snr_gamma == 5.0
    assert script.parse_args(["--autoencoder", "x", "--snr_gamma", "0"]).snr_gamma == 0.0


def test_training_recipes_set_the_defaults_and_flags_win():
    from diffusers_brics.training.diffusion_args import TRAINING_RECIPES, parse_args

    def settings(*flags):
        c = parse_args(["--autoencoder", "x", *flags])
        return dict(recipe=c.training_recipe, learning_rate=c.learning_rate, lr_warmup_steps=c.loop.lr_warmup_steps,
                    lr_scheduler=c.loop.lr_scheduler, prediction_type=c.prediction_type, snr_gamma=c.snr_gamma,
                    max_grad_norm=c.loop.max_grad_norm, adam_beta2=c.adam_beta2, ema_power=c.loop.ema.ema_power,
                    ema_max_decay=c.loop.ema.ema_max_decay, train_batch_size=c.loop.train_batch_size,
                    scaling_factor=c.scaling_factor, optimizer=c.optimizer, ema_schedule=c.loop.ema.ema_schedule)

    short, release = settings(), settings("--unet_preset", "paper")
    assert short["recipe"] == "short" and release["recipe"] == "release"
    for recipe, values in (("short", short), ("release", release)):
        for name, value in TRAINING_RECIPES[recipe].items():
            assert values[name] == value, (recipe, name)
    # the release's optimiser: Adam (0.9, 0.99) at 8e-5, constant, no warm-up, no clipping, ema-pytorch's EMA
    assert release == dict(recipe="release", learning_rate=8e-5, lr_warmup_steps=0, lr_scheduler="constant",
                           prediction_type="epsilon", snr_gamma=0.0, max_grad_norm=None, adam_beta2=0.99,
                           ema_power=2 / 3, ema_max_decay=0.9999, train_batch_size=64, scaling_factor=None,
                           optimizer="adam", ema_schedule="ema-pytorch")
    assert (short["optimizer"], short["ema_schedule"]) == ("adamw", "warmup")
    assert settings("--unet_preset", "paper", "--learning_rate", "1e-4", "--max_grad_norm", "2")[
        "learning_rate"] == 1e-4
    assert settings("--training_recipe", "release")["recipe"] == "release"
    assert settings("--unet_preset", "paper", "--training_recipe", "short")["learning_rate"] == short["learning_rate"]


@pytest.mark.slow  # sampling, a given scale: test_train_diffusion_in_process.py, of the same name
@pytest.mark.parametrize("model_type", ["autoencoderkl", "vqmodel"])
def test_diffusion_on_the_latents_of_diffusers_autoencoders_with_a_fitted_scale(tmp_path, model_type):
    """The scale fitted on the first 1,024 of the embedded set's latents."""
    import datasets

    from diffusers_brics.models import adapters

    vae_dir, out = tmp_path / "stage1", tmp_path / "ldm"
    torch.manual_seed(0)
    adapters.build_autoencoder(model_type, "tiny").save_pretrained(vae_dir / "autoencoder")  # a stage-1 output folder
    log = run_diffusion(["--autoencoder", str(vae_dir), "--output_dir", str(out), "--max_train_steps", "2",
                         "--checkpointing_steps", "2"])
    codes = datasets.load_from_disk(str(out / "key_codes")).with_format("torch")["key_codes"]
    assert len(codes) == EMBEDDED_TRAIN_IMAGES
    fitted = 1 / float(codes[:1024].std())
    assert f"scaling_factor {fitted:.5f} fitted" in log
    pipe = BRICSPipeline.from_pretrained(out)
    assert type(pipe.vae).__name__ == adapters.AUTOENCODER_CLASSES[model_type].__name__
    assert pipe.vae.config.scaling_factor == pytest.approx(fitted)


@pytest.mark.slow  # the DDPMPipeline saved, loaded and sampled, the size refused: test_train_diffusion_in_process.py
def test_pixel_space_diffusion_saves_a_stock_ddpm_pipeline_and_resumes(tmp_path):
    """The embedded set's images cached as they are (centre-cropped, in [-1, 1]) with their mirror images; a second
    process resumes on that cache."""
    import datasets

    from diffusers_brics.training.data import image_transform

    out = tmp_path / "pixels"
    run_diffusion(["--autoencoder", "none", "--output_dir", str(out), "--max_train_steps", "2",
                   "--checkpointing_steps", "2", "--random_flip"])
    cached = datasets.load_from_disk(str(out / "key_codes")).with_format("torch")
    emoji = load_emoji_dataset(32, "train")
    assert len(cached) == 2 * len(emoji) and cached[0]["key_codes"].shape == (3, 32, 32)
    first = image_transform(32, center_crop=True)(emoji[0]["image"])
    torch.testing.assert_close(cached[0]["key_codes"], first)
    torch.testing.assert_close(cached[len(emoji)]["key_codes"], first.flip(-1))

    log = run_diffusion(["--autoencoder", "pixels", "--output_dir", str(out), "--max_train_steps", "3",
                         "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest", "--random_flip"])
    assert f"reusing {2 * len(emoji)} cached images" in log and "at step 2" in log
    assert json.loads((out / "metrics.json").read_text())["step"] == 3


def test_pixel_space_flags_that_do_not_apply_are_refused(capsys, autoencoder):
    from diffusers_brics.training.diffusion_args import parse_args
    from diffusers_brics.training.latent_space import LatentSpace

    assert parse_args(["--autoencoder", "none"]).resolution == 32
    assert parse_args(["--autoencoder", "pixels", "--resolution", "16"]).resolution == 16
    assert parse_args(["--autoencoder", str(autoencoder)]).resolution is None
    for flags, message in [
        (["--class_column", "category"], "--class_column: diffusers' DDPMPipeline, which --autoencoder none saves"),
        (["--scaling_factor", "0.5"], "--scaling_factor scales an autoencoder's latents; --autoencoder none"),
        (["--autoencoder_subfolder", "vae"], "--autoencoder_subfolder names where an autoencoder is"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(["--autoencoder", "none", *flags])
        assert message in capsys.readouterr().err
    # an autoencoder decides the image size itself
    config = parse_args(["--autoencoder", str(autoencoder), "--resolution", "64"])
    with pytest.raises(ValueError, match="--resolution 64: the autoencoder .* works on 32x32 images"):
        LatentSpace.load(config, "cpu")
    assert LatentSpace.load(parse_args(["--autoencoder", "none", "--resolution", "16"]), "cpu").shape == (3, 16, 16)
