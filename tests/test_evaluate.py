"""The evaluation entry point end to end on tiny models: reconstruction of the three autoencoders, generation
FID / KID with the real-vs-real baseline (a BRICS and a pixel-space pipeline), nearest neighbours, bad input."""

import json

import numpy as np
import pytest
import torch
from builders import plain_unet
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.evaluate import InceptionDistances, evaluate_reconstruction, main, nearest_neighbours
from diffusers_brics.models import adapters


@pytest.fixture(scope="module")
def brics_pipeline(tmp_path_factory):
    torch.manual_seed(0)
    vae = BRICSAutoencoder.from_preset("tiny")
    folder = tmp_path_factory.mktemp("pipe")
    BRICSPipeline(unet=plain_unet(vae.latent_shape[0], vae.latent_shape[1]), scheduler=DDPMScheduler(), vae=vae
                  ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", ["brics", "autoencoderkl", "vqmodel"])
def test_reconstruction_of_each_autoencoder(tmp_path, lpips_weights_dir, model_type):
    torch.manual_seed(0)
    adapters.build_autoencoder(model_type, "tiny").save_pretrained(tmp_path / "stage1" / "autoencoder")
    main(["reconstruction", "--model", str(tmp_path / "stage1"), "--max_images", "12", "--batch_size", "5",
          "--no_fid", "--output", str(tmp_path / "eval")])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["images"] == 12 and results["split"] == "held-out"
    assert 0 < results["psnr"] < 60 and 0 <= results["ssim"] <= 1 and 0 <= results["lpips"] <= 1
    assert ("grid_usage_mean" in results) == (model_type == "brics")
    assert ("codebook_usage" in results) == (model_type == "vqmodel")
    assert Image.open(tmp_path / "eval" / "reconstructions.png").size == (8 * 32, 2 * 32)


@pytest.mark.parametrize("model_type", ["brics", "autoencoderkl", "vqmodel"])
def test_stage_1_validation_and_the_evaluate_command_give_the_same_numbers(tmp_path, lpips_weights_dir, model_type):
    """One step of stage 1 on the embedded emoji, whose final validation runs on the saved (EMA) model, then
    `evaluate reconstruction` of that saved model on the same held-out images: the same metrics, to the last bit, and
    the same reconstruction grid. 12 images in batches of 5: the last batch is cut to the cap."""
    from accelerate.state import AcceleratorState

    from diffusers_brics.training.autoencoder import main as train

    AcceleratorState._reset_state(reset_partial_state=True)
    train(["--model_type", model_type, "--preset", "tiny", "--output_dir", str(tmp_path / "stage1"),
           "--max_train_steps", "1", "--train_batch_size", "4", "--perceptual_weight", "0", "--gan_weight", "0",
           "--no-eval_with_noise", "--eval_batch_size", "5", "--max_eval_images", "12", "--num_validation_images", "8",
           "--validation_steps", "100", "--checkpointing_steps", "100", "--report_to", "none"])
    main(["reconstruction", "--model", str(tmp_path / "stage1"), "--max_images", "12", "--batch_size", "5",
          "--no_fid", "--output", str(tmp_path / "eval")])

    validation = json.loads((tmp_path / "stage1" / "metrics.json").read_text())
    evaluation = json.loads((tmp_path / "eval" / "results.json").read_text())
    training_only = {"step", "train_seconds", "train_images_per_second", "nonfinite_steps", "time_limit_reached",
                     "torch", "threads", "processes"}
    evaluation_only = {"command", "model", "model_class", "split", "images", "seconds"}
    assert set(validation) - training_only == set(evaluation) - evaluation_only
    assert {k: v for k, v in validation.items() if k not in training_only} == {
        k: v for k, v in evaluation.items() if k not in evaluation_only}
    assert evaluation["images"] == 12
    usage = {"brics": "grid_usage_mean", "autoencoderkl": None, "vqmodel": "codebook_usage"}[model_type]
    assert usage is None or 0 < validation[usage] <= 1
    grids = [np.asarray(Image.open(tmp_path / folder / "reconstructions.png")) for folder in ("stage1", "eval")]
    assert grids[0].shape == (2 * 32, 8 * 32, 3) and np.array_equal(*grids)


def test_reconstruction_fid_and_kid_of_a_perfect_and_a_poor_autoencoder(inception_weights_dir, lpips_weights_dir):
    class Identity(torch.nn.Module):
        """Not an autoencoder: evaluate_reconstruction refuses it."""

    images = [torch.rand(6, 3, 32, 32) * 2 - 1 for _ in range(2)]
    with pytest.raises(ValueError, match="BRICSAutoencoder, AutoencoderKL or VQModel"):
        evaluate_reconstruction(Identity(), images)
    torch.manual_seed(0)
    metrics, _ = evaluate_reconstruction(BRICSAutoencoder.from_preset("tiny"), images)
    assert metrics["images"] == 12 and metrics["fid"] > 1 and np.isfinite(metrics["kid_mean"])


def test_inception_distances_need_two_images_per_set(inception_weights_dir):
    distances = InceptionDistances()
    distances.update(torch.rand(1, 3, 32, 32), real=True)
    distances.update(torch.rand(3, 3, 32, 32), real=False)
    with pytest.raises(ValueError, match="at least 2 images per set, got 1 real and 3 fake"):
        distances.compute()


def test_generation_fid_kid_with_the_real_baseline(tmp_path, brics_pipeline, inception_weights_dir):
    out = tmp_path / "gen"
    main(["generation", "--pipeline", str(brics_pipeline), "--num_samples", "5", "--num_inference_steps", "2",
          "--batch_size", "3", "--max_reference_images", "6", "--scheduler", "ddim", "--output", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["fake_images"] == 5 and results["real_images"] == 6 and results["baseline_images"] == 5
    assert results["fid"] > 0 and results["seconds_per_image"] > 0
    assert np.isfinite(results["real_fid"]) and results["real_fid"] < results["fid"]  # real images beat noise
    assert (out / "samples.png").exists()


def test_generation_of_a_pixel_space_ddpm_pipeline(tmp_path, inception_weights_dir):
    torch.manual_seed(0)
    DDPMPipeline(unet=plain_unet(3, 32), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    main(["generation", "--pipeline", str(tmp_path / "ddpm"), "--num_samples", "3", "--num_inference_steps", "2",
          "--max_reference_images", "4", "--no_baseline", "--output", str(tmp_path / "gen")])
    results = json.loads((tmp_path / "gen" / "results.json").read_text())
    assert results["fake_images"] == 3 and "real_fid" not in results


def test_nearest_neighbours_find_the_training_image_itself(tmp_path, lpips_weights_dir, random_image_folder):
    training = [torch.rand(5, 3, 32, 32) * 2 - 1 for _ in range(2)]
    samples = torch.stack([training[1][3], training[0][0]])
    distances, grid = nearest_neighbours(samples, training, k=3)
    assert distances.shape == (2, 3) and float(distances[:, 0].abs().max()) < 1e-5
    assert bool((distances[:, 1:] > 0).all()) and bool((distances.diff(dim=1) >= 0).all())
    assert grid.size == (4 * 32, 2 * 32)
    with pytest.raises(ValueError, match="fewer than k=20"):
        nearest_neighbours(samples, training, k=20)


def test_neighbours_command(tmp_path, brics_pipeline, lpips_weights_dir, random_image_folder):
    folder = random_image_folder(10)
    main(["neighbours", "--pipeline", str(brics_pipeline), "--num_samples", "2", "--k", "2",
          "--num_inference_steps", "2", "--train_data_dir", str(folder), "--validation_fraction", "0.2",
          "--output", str(tmp_path / "nn")])
    results = json.loads((tmp_path / "nn" / "results.json").read_text())
    assert np.array(results["lpips_distances"]).shape == (2, 2)
    assert Image.open(tmp_path / "nn" / "neighbours.png").size == (3 * 32, 2 * 32)


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--model .*missing'. no such folder"):
        main(["reconstruction", "--model", str(tmp_path / "missing"), "--no_fid", "--output", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="no autoencoder config.json"):
        main(["reconstruction", "--model", str(tmp_path), "--no_fid", "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--num_samples must be a positive integer"):
        main(["generation", "--pipeline", "x", "--num_samples", "0", "--output", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="--pipeline .*missing'. no such folder"):
        main(["generation", "--pipeline", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
