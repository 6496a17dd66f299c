"""`BRICSTextToImagePipeline` with a tiny CLIP text encoder and a tokenizer trained on a few captions."""

import json

import numpy as np
import pytest
import torch
from builders import tiny_text_pipeline
from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput
from hub_client import isolate_hub, isolate_modules, use_endpoint
from hub_server import serve_repos

from diffusers_brics import BRICSAutoencoder, BRICSTextToImagePipeline
from diffusers_brics.models.text_encoder import encode_prompts
from diffusers_brics.pipelines.key_codes import encode_images

# the captions the pipeline's tokenizer is trained on (300 entries)
TOKENIZER_CAPTIONS = ["grinning face, smileys and emotion", "red apple, food and drink", "flag of france, flags",
                      "waving hand, medium skin tone, people and body"]
PROMPTS = TOKENIZER_CAPTIONS[:2]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    pipe = tiny_text_pipeline(BRICSAutoencoder.from_preset("tiny").eval(), TOKENIZER_CAPTIONS, vocab_size=300)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_latents(pipe, seed=0, prompt=PROMPTS, **kwargs):
    """``pipe(prompt)``, 4 steps from ``seed``: latents unless ``output_type`` says otherwise."""
    kwargs = {"num_inference_steps": 4, "output_type": "latent", **kwargs}
    if "generator" not in kwargs:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return pipe(prompt, **kwargs).images


def test_output_types_and_batch_size(pipe):
    pil = pipe(PROMPTS, num_inference_steps=2, num_images_per_prompt=2).images
    assert len(pil) == 4 and pil[0].size == (32, 32)
    assert text_latents(pipe, output_type="np").shape == (2, 32, 32, 3)
    assert text_latents(pipe, prompt=PROMPTS[0], num_images_per_prompt=3).shape == (3, 2, 8, 8)
    assert isinstance(pipe(PROMPTS[0], num_inference_steps=2), ImagePipelineOutput)
    (images,) = pipe(PROMPTS[0], num_inference_steps=2, return_dict=False)
    assert len(images) == 1


def test_seeded_generators_are_deterministic(pipe):
    assert torch.equal(text_latents(pipe, 0), text_latents(pipe, 0))
    assert not torch.equal(text_latents(pipe, 0), text_latents(pipe, 1))
    # a list of generators: image i depends only on its generator (and its prompt)
    both = text_latents(pipe, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    second = text_latents(pipe, prompt=PROMPTS[1:], generator=[torch.Generator().manual_seed(4)])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=0)
    # the prompt matters
    assert not torch.allclose(text_latents(pipe, prompt=[PROMPTS[0]] * 2), text_latents(pipe, prompt=[PROMPTS[1]] * 2), atol=1e-4)


def test_guidance_one_is_the_conditional_model_alone(pipe):
    calls = []

    def count(module, args, kwargs):
        calls.append(args[0].shape[0])

    handle = pipe.unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        unguided = text_latents(pipe, guidance_scale=1.0)
        assert calls == [2] * 4  # one pass of batch 2 per step
        # the negative prompt plays no part without guidance
        assert torch.equal(text_latents(pipe, guidance_scale=1.0, negative_prompt="flags"), unguided)
        calls.clear()
        guided = text_latents(pipe, guidance_scale=4.0)
        assert calls == [4] * 4  # conditional and unconditional in one batch
    finally:
        handle.remove()
    assert not torch.allclose(guided, unguided, atol=1e-4)
    # guidance 0 is the unconditional model: the empty prompt at guidance 1
    torch.testing.assert_close(text_latents(pipe, guidance_scale=0.0), text_latents(pipe, prompt=["", ""], guidance_scale=1.0),
                               atol=1e-5, rtol=0)


def test_prompt_embeds_give_what_prompts_give(pipe):
    embeds = encode_prompts(pipe.text_encoder, pipe.tokenizer, PROMPTS)
    negative = encode_prompts(pipe.text_encoder, pipe.tokenizer, ["", ""])
    assert torch.equal(text_latents(pipe, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative), text_latents(pipe))
    assert torch.equal(text_latents(pipe, prompt=None, prompt_embeds=embeds, guidance_scale=1.0),
                       text_latents(pipe, guidance_scale=1.0))


def test_save_load_round_trip_and_stock_diffusers(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_brics_text2img", "BRICSTextToImagePipeline"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    loaded = BRICSTextToImagePipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(text_latents(loaded), text_latents(pipe), atol=1e-5, rtol=0)
    isolate_modules(monkeypatch, tmp_path / "modules")
    stock = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    stock.set_progress_bar_config(disable=True)
    assert type(stock).__name__ == "BRICSTextToImagePipeline"
    torch.testing.assert_close(text_latents(stock), text_latents(pipe), atol=1e-5, rtol=0)


def test_loads_by_repo_id_from_a_hub_stand_in(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path / "repo")
    cache = isolate_hub(monkeypatch, tmp_path / "hf_home")
    with serve_repos({"org/brics-text-tiny": tmp_path / "repo"}) as server:
        use_endpoint(monkeypatch, server.url)
        loaded = BRICSTextToImagePipeline.from_pretrained("org/brics-text-tiny")
        fetched = {r.path.rsplit("/", 2)[-2] for r in server.requests if r.method == "GET" and "/resolve/" in r.path}
    assert {"text_encoder", "tokenizer", "unet", "vae", "scheduler"} <= fetched
    assert (cache / "models--org--brics-text-tiny").is_dir() and loaded.name_or_path == "org/brics-text-tiny"
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(text_latents(loaded), text_latents(pipe), atol=1e-5, rtol=0)


def test_offload_sequence_and_scheduler_swap(pipe):
    assert pipe.model_cpu_offload_seq == "text_encoder->unet->vae"
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config)
    try:
        assert torch.equal(text_latents(pipe), text_latents(pipe))
    finally:
        pipe.scheduler = original


def test_image_to_image_and_inpainting_with_text(pipe):
    rng = np.random.default_rng(0)
    import PIL.Image

    pictures = [PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    codes = encode_images(pipe.vae, pictures)
    assert torch.equal(text_latents(pipe, image=pictures, strength=0.0), codes)
    assert torch.equal(text_latents(pipe, image=pictures, strength=1.0), text_latents(pipe))
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[16:] = 1
    out = text_latents(pipe, image=pictures, mask_image=mask)
    assert torch.equal(out[:, :, :4], codes[:, :, :4]) and not torch.allclose(out[:, :, 4:], codes[:, :, 4:])
    # one image per prompt, repeated for num_images_per_prompt
    repeated = text_latents(pipe, image=pictures, strength=0.0, num_images_per_prompt=2)
    assert torch.equal(repeated, codes.repeat_interleave(2, 0))


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_embeds=torch.zeros(2, 8, 32)), "pass prompt or prompt_embeds, not both"),
    (dict(prompt=None), "pass prompt (a string or a list of strings) or prompt_embeds"),
    (dict(prompt=[1, 2]), "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=[]), "prompt must be a string or a non-empty list of strings"),
    (dict(negative_prompt=["a", "b", "c"]), "negative_prompt must be one string or one per prompt (2), got 3"),
    (dict(negative_prompt="x", negative_prompt_embeds=torch.zeros(2, 8, 32)), "not both"),
    (dict(prompt=None, prompt_embeds=torch.zeros(2, 8, 16)), "prompt_embeds must be a tensor (P, T, 32)"),
    (dict(prompt=None, prompt_embeds=torch.zeros(2, 8, 32), negative_prompt_embeds=torch.zeros(1, 8, 32)),
     "negative_prompt_embeds must have the shape of prompt_embeds"),
    (dict(generator=[torch.Generator()] * 3), "a list of generators must have batch_size (2) entries"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt must be a positive integer"),
    (dict(latents=torch.zeros(1, 2, 8, 8)), "latents must have shape (2, 2, 8, 8)"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a number >= 0"),
    (dict(strength=0.5), "strength applies to image-to-image"),
    (dict(image=torch.zeros(3, 3, 32, 32)), "expected one image, one per prompt (2) or one per generated image"),
    (dict(image=torch.zeros(1, 3, 32, 32), strength=2.0), "strength must be a number in [0, 1]"),
    (dict(image=torch.zeros(1, 3, 32, 32), mask_image=np.ones((24, 24))), "expected the size of its image, 32x32"),
])
def test_bad_input_raises_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError) as error:
        text_latents(pipe, **kwargs)
    assert message in str(error.value)
