"""Model cards: the cards both trainings write (`diffusers_brics.training.model_card`, one template shipped in the
package) for each kind of model, the ready cards of the paper's configurations, their metadata (checked offline, as
the Hub would parse it) and their code, run against a Hub stand-in serving a tiny pipeline under the cards' repo
ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import builders
from hub_client import load_valid_card, python_blocks, run_python_blocks, use_endpoint
from hub_server import serve_repos
from huggingface_hub import ModelCard

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.models import adapters
from diffusers_brics.training import autoencoder_args, diffusion_args
from diffusers_brics.training.latent_space import LatentSpace
from diffusers_brics.training.model_card import write_autoencoder_card, write_pipeline_card

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "model_cards"
READY = {"brics-ffhq.md": "org/brics-ffhq", "brics-church.md": "org/brics-church"}
PAPER_METRICS = {"fid", "clip_fid", "inception_score", "precision", "recall", "f1"}


def compiles(text: str) -> None:
    """Every ```python block of a card is valid Python (the trainings' cards name repos no test serves)."""
    blocks = python_blocks(text)
    assert blocks, "the card shows no code"
    for block in blocks:
        compile(block, "<model card>", "exec")


def local_folder(tmp_path: Path, name: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    return str(folder)


# ---------------------------------------------------------------------------------------------- stage 1's card
@pytest.mark.parametrize("model_type", ["brics", "autoencoderkl", "vqmodel"])
def test_the_autoencoder_card(tmp_path, model_type):
    out = local_folder(tmp_path, "brics-tiny")
    config = autoencoder_args.parse_args([
        "--model_type", model_type, "--preset", "tiny", "--output_dir", out, "--hub_model_id", "org/brics-tiny",
        "--hub_token", "secret", "--train_data_dir", local_folder(tmp_path, "images")])
    model = adapters.build_autoencoder(model_type, "tiny")
    metrics = {"psnr": 20.123456, "ssim": 0.5, "lpips": 0.25, "usage": 0.75}

    card = load_valid_card(Path(write_autoencoder_card(config, model, 4, 12.0, metrics)), pipeline_tag=None)

    name = type(model).__name__
    assert card.data.model_name == "brics-tiny"
    assert ("brics" if model_type == "brics" else model_type) in card.data.tags and "autoencoder" in card.data.tags
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {
        ("psnr", 20.1235), ("ssim", 0.5), ("lpips", 0.25)}
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {
        ("imagefolder", "the image folder 'images'")}
    text = card.text
    assert f"# {'BRICS autoencoder' if model_type == 'brics' else name} (tiny)" in text
    assert "| psnr | 20.1235 |" in text and "| usage | 0.7500 |" in text and "EMA weights" in text
    package = "diffusers_brics" if model_type == "brics" else "diffusers"
    assert f"from {package} import {name}" in text
    assert 'from_pretrained("org/brics-tiny", subfolder="autoencoder")' in text
    assert "--autoencoder org/brics-tiny --autoencoder_subfolder autoencoder" in text
    # the small-image recipe of 32x32 images, its settings, no secret and no local path
    assert "| `training_recipe` | `small` |" in text and "| `gan_weight` | `0.0` |" in text
    assert "| `train_data_dir` | `images` |" in text and "secret" not in text
    assert "4 steps of `examples/train_brics_ae.py` (12 s)" in text
    compiles(text)


# ---------------------------------------------------------------------------------------------- stage 2's cards
def test_the_card_of_a_class_conditional_pipeline(tmp_path):
    out = local_folder(tmp_path, "brics-ldm")
    config = diffusion_args.parse_args([
        "--autoencoder", "org/brics-ae", "--autoencoder_subfolder", "autoencoder", "--output_dir", out,
        "--class_column", "category", "--conditioning_dropout_prob", "0.1", "--num_inference_steps", "50"])
    space = LatentSpace(BRICSAutoencoder.from_preset("tiny"))

    path = write_pipeline_card(config, space, 3, 5.0, class_names=["Activities", "Animals & Nature"],
                               guidance_scale=3.0)

    card = load_valid_card(Path(path), pipeline_tag="unconditional-image-generation")
    assert card.data.base_model == "org/brics-ae"
    assert {"brics", "latent-diffusion", "class-conditional"} <= set(card.data.tags)
    text = card.text
    assert "# BRICS latent diffusion pipeline" in text and "A `BRICSPipeline`: a UNet trained on the key codes" in text
    assert "Classes (`--class_column category`): Activities, Animals & Nature" in text
    call = "images = pipe(batch_size=4, num_inference_steps=50, class_labels=['Activities'], guidance_scale=3).images"
    code = "\n".join(python_blocks(text))
    assert f'pipe = BRICSPipeline.from_pretrained("brics-ldm")\n{call}' in code
    assert f'pipe = DiffusionPipeline.from_pretrained("brics-ldm", trust_remote_code=True)\n{call}' in code
    assert "| `autoencoder` | `org/brics-ae` |" in text and "3 steps of `examples/train_brics_diffusion.py`" in text
    compiles(text)


def test_the_card_of_a_text_to_image_pipeline(tmp_path):
    class CLIPTextModel(torch.nn.Module):
        """Stands for the text encoder: the card names its class."""

    vae = local_folder(tmp_path, "vae")
    config = diffusion_args.parse_args(["--autoencoder", vae, "--output_dir", local_folder(tmp_path, "t2i"),
                                        "--caption_column", "caption"])

    path = write_pipeline_card(config, LatentSpace(BRICSAutoencoder.from_preset("tiny")), 3, 5.0,
                               text_encoder=CLIPTextModel(), prompt="red apple", guidance_scale=3.0)

    card = load_valid_card(Path(path), pipeline_tag="text-to-image")
    assert card.data.base_model is None and "text-to-image" in card.data.tags  # a local autoencoder
    text = card.text
    assert "pipeline_tag: text-to-image" in Path(path).read_text() and "BRICSTextToImagePipeline" in text
    assert ("conditioned on the `caption` captions through a CLIPTextModel (frozen), built from a config with a "
            "tokenizer trained on the captions, with 0.1 conditioning dropout") in text
    assert "images = pipe('red apple', num_images_per_prompt=4, num_inference_steps=100, guidance_scale=3)" in text
    assert "| `autoencoder` | `vae` |" in text
    compiles(text)


def test_the_card_of_a_pixel_space_pipeline(tmp_path):
    config = diffusion_args.parse_args(["--autoencoder", "none", "--output_dir", local_folder(tmp_path, "pixels")])

    path = write_pipeline_card(config, LatentSpace(None, config.resolution), 2, 1.0)

    card = load_valid_card(Path(path), pipeline_tag="unconditional-image-generation")
    assert card.data.base_model is None and "pixel-space" in card.data.tags and "brics" not in card.data.tags
    text = card.text
    assert "# Pixel-space diffusion pipeline" in text and "A stock diffusers `DDPMPipeline`" in text
    assert 'pipe = DiffusionPipeline.from_pretrained("pixels")\n' in text and "trust_remote_code" not in text
    compiles(text)


@pytest.mark.parametrize("name", sorted(READY))
def test_ready_cards_mark_the_papers_numbers_as_the_papers(name):
    card = load_valid_card(CARDS / name, pipeline_tag="unconditional-image-generation")

    assert {"brics", "latent-diffusion"} <= set(card.data.tags) and card.data.base_model is None
    results = card.data.eval_results
    assert PAPER_METRICS <= {r.metric_type for r in results}
    assert all(r.source_name.startswith("BRICS paper, Table") and "not a checkpoint of this repository" in
               r.source_name for r in results)
    assert "No checkpoint of ours exists yet" in card.text and "until checkpoints of ours exist" in card.text
    # both ways to load: this package's class and stock diffusers with trust_remote_code
    code = "\n".join(python_blocks(card.text))
    assert f'BRICSPipeline.from_pretrained("{READY[name]}")' in code
    assert f'DiffusionPipeline.from_pretrained("{READY[name]}", trust_remote_code=True)' in code


def test_the_church_card_has_the_papers_reconstruction_numbers():
    results = ModelCard.load(CARDS / "brics-church.md").data.eval_results
    reconstruction = {r.metric_type: r.metric_value for r in results if r.task_type == "image-to-image"}
    assert reconstruction == {"lpips": 0.0383, "ssim": 0.8438, "psnr": 26.34}  # paper Table 9
    generation = {r.metric_type: r.metric_value for r in results if r.task_type != "image-to-image"}
    assert generation["fid"] == 3.97 and generation["clip_fid"] == 5.10  # paper Table 4, config b + d


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A tiny BRICSPipeline saved to a folder (the layout `save_pretrained` writes, module files included)."""
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    builders.tiny_pipeline().save_pretrained(folder)
    return folder


def test_the_ready_cards_code_runs_against_their_repos(tiny_pipeline, hf_cache, modules_cache, monkeypatch):
    with serve_repos({repo: tiny_pipeline for repo in READY.values()}) as server:
        use_endpoint(monkeypatch, server.url)
        for name in READY:
            for namespace in run_python_blocks((CARDS / name).read_text()):
                assert type(namespace["pipe"]) is BRICSPipeline
                assert len(namespace["images"]) == 4 and namespace["images"][0].size == (32, 32)
    assert not server.unknown, server.unknown
