"""What a pipeline runs when called with no step count: a trained one samples with DDIM on its training schedule
(clipped to the key codes' range) for the steps its training recorded in ``model_index.json``; one saved without a
record (older versions, DDPM) uses its scheduler's default; ``brics sample`` does the same."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from builders import DIFFUSION_FAST, tiny_pipeline, tiny_text_pipeline
from diffusers import DDIMScheduler, DDPMScheduler

from diffusers_brics import BRICSPipeline, cli
from diffusers_brics.console import run_command
from diffusers_brics.pipelines import BRICSTextToImagePipeline, default_scheduler, sampling
from diffusers_brics.pipelines.loading import key_code_bound, swap_scheduler
from diffusers_brics.training import diffusion


@pytest.fixture
def unet_calls(monkeypatch) -> list[int]:
    """A list that receives one entry per denoising step of any pipeline (its UNet prediction)."""
    calls = []
    predict = sampling.predict_noise

    def counted(*args, **kwargs):
        calls.append(1)
        return predict(*args, **kwargs)

    monkeypatch.setattr(sampling, "predict_noise", counted)
    return calls


def test_a_trained_pipeline_samples_with_ddim_and_its_recorded_steps(
    tmp_path, autoencoder, random_image_folder, unet_calls
):
    images, out = random_image_folder(10), tmp_path / "ldm"
    AcceleratorState._reset_state(reset_partial_state=True)
    argv = [*DIFFUSION_FAST, "--train_batch_size", "4", "--autoencoder", str(autoencoder), "--train_data_dir",
            str(images), "--output_dir", str(out), "--max_train_steps", "1", "--num_inference_steps", "6"]  # fmt: skip
    assert run_command(diffusion.main, argv, prog="train_brics_diffusion.py") == 0
    assert json.loads((out / "model_index.json").read_text())["default_num_inference_steps"] == 6

    unet_calls.clear()  # (validation sampled too)
    pipe = BRICSPipeline.from_pretrained(out)
    scheduler = pipe.scheduler
    assert type(scheduler) is DDIMScheduler and pipe.config.default_num_inference_steps == 6
    # the training schedule, clipped to the key codes' range in diffusion space
    assert scheduler.config.clip_sample and scheduler.config.clip_sample_range == pytest.approx(
        key_code_bound(pipe.vae)
    )
    assert scheduler.config.prediction_type == "sample"  # the short recipe's
    torch.testing.assert_close(scheduler.alphas_cumprod, default_scheduler().alphas_cumprod)
    pipe.set_progress_bar_config(disable=True)
    (image,) = pipe().images
    assert len(unet_calls) == 6 and image.size == (32, 32)
    pipe(num_inference_steps=2)
    assert len(unet_calls) == 8  # a step count given is used as it is

    # `brics sample` without --num_inference_steps runs the pipeline's own
    unet_calls.clear()
    argv = ["sample", "--model", str(out), "--num_images", "1", "--output_dir", str(tmp_path / "samples")]
    assert cli.main(argv) == 0
    assert len(unet_calls) == 6 and (tmp_path / "samples" / "sample_000.png").is_file()
    assert cli.main([*argv, "--num_inference_steps", "3", "--overwrite"]) == 0
    assert len(unet_calls) == 9


def test_a_pipeline_saved_without_recorded_steps_loads_and_uses_its_schedulers_default(tmp_path, unet_calls):
    """As older versions saved it: a DDPM scheduler and no ``default_num_inference_steps`` in model_index.json."""
    pipe = tiny_pipeline()
    pipe.scheduler = default_scheduler(num_train_timesteps=60)
    pipe.save_pretrained(tmp_path / "old")
    index_path = tmp_path / "old" / "model_index.json"
    index = json.loads(index_path.read_text())
    del index["default_num_inference_steps"]
    index_path.write_text(json.dumps(index))

    old = BRICSPipeline.from_pretrained(tmp_path / "old")
    assert type(old.scheduler) is DDPMScheduler and old.config.default_num_inference_steps is None
    old.set_progress_bar_config(disable=True)
    samples = old(batch_size=2, output_type="np").images
    assert samples.shape == (2, 32, 32, 3) and len(unet_calls) == 60  # DDPM: the whole training schedule
    swap_scheduler(old, "ddim")
    old(output_type="np")
    assert len(unet_calls) == 60 + 50  # DDIM (and DPM-Solver, ...): 50
    swap_scheduler(old, "ddim", default_scheduler(num_train_timesteps=20).config)
    old(output_type="np")
    assert len(unet_calls) == 60 + 50 + 20  # never more than the training schedule has


def test_the_text_to_image_pipeline_records_its_steps_too(tmp_path, unet_calls):
    torch.manual_seed(0)
    from diffusers_brics import BRICSAutoencoder

    built = tiny_text_pipeline(BRICSAutoencoder.from_preset("tiny").eval())
    assert built.config.default_num_inference_steps is None
    assert sampling.inference_steps(built, None) == 1000  # a DDPM scheduler without a record: its whole schedule
    components = {**built.components, "scheduler": DDIMScheduler.from_config(built.scheduler.config)}
    BRICSTextToImagePipeline(**components, default_num_inference_steps=3).save_pretrained(tmp_path / "t2i")
    pipe = BRICSTextToImagePipeline.from_pretrained(tmp_path / "t2i")
    assert pipe.config.default_num_inference_steps == 3 and type(pipe.scheduler) is DDIMScheduler
    pipe.set_progress_bar_config(disable=True)
    (image,) = pipe("a red circle").images
    assert len(unet_calls) == 3 and image.size == (32, 32)


@pytest.mark.parametrize("value", [0, -1, 2.5, "50", True])
def test_a_recorded_step_count_that_cannot_work_is_refused(value):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="default_num_inference_steps must be a positive integer"):
        BRICSPipeline(unet=pipe.unet, scheduler=pipe.scheduler, vae=pipe.vae, default_num_inference_steps=value)
