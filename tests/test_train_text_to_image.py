"""Stage 2 conditioned on captions (a frozen or a trained text encoder) and on classes with conditioning dropout:
the real script, a few steps, then the saved pipeline."""

import json
import shutil

import numpy as np
import pytest
import torch
from builders import generate_from_prompts, run_diffusion
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from diffusers_brics import BRICSPipeline, BRICSTextToImagePipeline
from diffusers_brics.models.text_encoder import build_text_encoder, train_caption_tokenizer
from diffusers_brics.training.conditioning import PromptTable, drop_conditions
from diffusers_brics.training.diffusion_args import parse_args

SAMPLE_PROMPTS = ["grinning, smileys and emotion", "red apple, food and drink"]


@pytest.mark.slow  # in this process: test_train_diffusion_in_process.py, of the same name
def test_text_training_with_a_built_frozen_encoder_saves_a_text_to_image_pipeline(tmp_path, autoencoder):
    out = tmp_path / "t2i"
    run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(out), "--max_train_steps", "2",
                   "--checkpointing_steps", "2", "--caption_column", "caption", "--text_encoder_preset", "tiny"])
    assert (out / "key_codes").is_dir() and (out / "prompt_embeds.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-to-image" in card and "BRICSTextToImagePipeline" in card
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["tokenizer"][0] == "transformers"
    pipe = BRICSTextToImagePipeline.from_pretrained(out)
    images = generate_from_prompts(pipe, SAMPLE_PROMPTS)
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    # stock diffusers loads it too, and samples the same
    stock = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    np.testing.assert_allclose(generate_from_prompts(stock, SAMPLE_PROMPTS), images, atol=1e-6)
    # the frozen encoder's hidden states were cached: the pipeline's own encoding of a caption matches them
    table = load_file(out / "prompt_embeds.safetensors")["embeds"]
    assert table.shape[1:] == (pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)


def test_text_training_with_a_given_encoder_trained_with_the_unet_resumes_exactly(tmp_path, autoencoder):
    encoder_dir, out, resumed = tmp_path / "encoder", tmp_path / "t2i", tmp_path / "resumed"
    tokenizer = train_caption_tokenizer(["a few words", "more words here"], vocab_size=300)
    torch.manual_seed(0)
    encoder = build_text_encoder(tokenizer, "tiny")
    encoder.save_pretrained(encoder_dir / "text_encoder")
    tokenizer.save_pretrained(encoder_dir / "tokenizer")
    common = ["--autoencoder", str(autoencoder), "--max_train_steps", "4", "--checkpointing_steps", "2",
              "--caption_column", "caption", "--text_encoder_name_or_path", str(encoder_dir), "--train_text_encoder",
              "--encode_on_the_fly", "--conditioning_dropout_prob", "0.5", "--learning_rate", "1e-3"]
    run_diffusion([*common, "--output_dir", str(out)])
    assert not (out / "prompt_embeds.safetensors").exists()
    pipe = BRICSTextToImagePipeline.from_pretrained(out)
    trained = pipe.text_encoder.state_dict()
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, trained[k])]
    assert changed, "the text encoder was not trained"
    assert pipe.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert np.isfinite(generate_from_prompts(pipe, SAMPLE_PROMPTS, guidance_scale=2.0)).all()
    # the checkpoints hold the UNet and the encoder as one module, loadable by diffusers; a run resumed from the
    # step-2 checkpoint ends with the weights of the uninterrupted one
    from diffusers_brics.training.conditioning import TextConditionedUNet

    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    log = run_diffusion([*common, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    assert "at step 2" in log
    for folder in ("unet", "unet_ema"):
        straight = TextConditionedUNet.from_pretrained(out / "checkpoint-4", subfolder=folder).state_dict()
        again = TextConditionedUNet.from_pretrained(resumed / "checkpoint-4", subfolder=folder).state_dict()
        for key, value in straight.items():
            torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6, msg=f"{folder}: {key}")
    final = TextConditionedUNet.from_pretrained(out / "checkpoint-4", subfolder="unet_ema")
    assert all(torch.equal(v, trained[k]) for k, v in final.text_encoder.state_dict().items())


@pytest.mark.slow  # in this process: test_train_diffusion_in_process.py, of the same name
def test_class_conditioning_dropout_learns_a_null_class_for_guidance(tmp_path, autoencoder):
    out = tmp_path / "classes"
    run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(out), "--max_train_steps", "2",
                   "--checkpointing_steps", "2", "--class_column", "category", "--conditioning_dropout_prob", "0.2"])
    pipe = BRICSPipeline.from_pretrained(out)
    classes = len(pipe.labels)
    assert pipe.config.null_class_id == classes and pipe.unet.config.num_class_embeds == classes + 1
    assert "guidance_scale=3" in (out / "README.md").read_text()
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels="Flags", guidance_scale=3.0, num_inference_steps=3,
                  output_type="np").images
    assert np.isfinite(images).all()


@pytest.mark.parametrize("flags, message", [
    (["--text_encoder_name_or_path", "x"], "--text_encoder_name_or_path applies to text-to-image training"),
    (["--train_text_encoder"], "--train_text_encoder applies to text-to-image training"),
    (["--caption_column", "caption", "--class_column", "category"], "condition on one of them"),
    (["--conditioning_dropout_prob", "0.1"], "pass --class_column or --caption_column"),
    (["--caption_column", "caption", "--conditioning_dropout_prob", "1"], "would never show the UNet a condition"),
    (["--class_column", "category", "--validation_guidance_scale", "2"], "needs a model trained for guidance"),
])
def test_conditioning_flags_that_cannot_work_are_refused(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--autoencoder", str(tmp_path), "--output_dir", str(tmp_path / "out"), *flags])
    assert message in capsys.readouterr().err


@pytest.mark.slow  # in this process: test_train_diffusion_in_process.py, of the same name
def test_a_caption_column_that_is_missing_or_not_text_is_refused(tmp_path, autoencoder):
    log = run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(tmp_path / "out"),
                         "--caption_column", "nope"], expect_success=False)
    assert "caption_column 'nope' is not in the dataset" in log
    missing = run_diffusion(["--autoencoder", str(autoencoder), "--output_dir", str(tmp_path / "out2"),
                             "--caption_column", "caption", "--text_encoder_name_or_path",
                             str(tmp_path / "no-encoder")], expect_success=False)
    assert "text_encoder_name_or_path" in missing


def test_prompt_table_drops_to_the_empty_caption_and_caches_frozen_embeddings(tmp_path):
    captions = ["one cat", "two dogs", "three birds"]
    tokenizer = train_caption_tokenizer(captions, vocab_size=200)
    torch.manual_seed(0)
    encoder = build_text_encoder(tokenizer, "tiny").eval()
    cache = str(tmp_path / "embeds.safetensors")
    table = PromptTable(captions, tokenizer, encoder, cache=cache)
    assert table.embeds.shape == (4, tokenizer.model_max_length, 32) and table.null_index == 3
    drop = torch.tensor([False, True, False])
    out = table.condition(torch.tensor([0, 1, 2]), drop, "cpu")["encoder_hidden_states"]
    assert torch.equal(out[0], table.embeds[0]) and torch.equal(out[1], table.embeds[3])
    assert torch.equal(out[2], table.embeds[2])
    # the cache is read back for the same encoder and recomputed for another
    assert torch.equal(PromptTable(captions, tokenizer, encoder, cache=cache).embeds, table.embeds)
    torch.manual_seed(1)
    other = build_text_encoder(tokenizer, "tiny").eval()
    assert not torch.equal(PromptTable(captions, tokenizer, other, cache=cache).embeds, table.embeds)
    # a trained encoder: token ids instead of hidden states
    ids = PromptTable(captions, tokenizer).condition(torch.tensor([2, 0]), torch.tensor([True, False]), "cpu")
    assert set(ids) == {"input_ids"} and torch.equal(ids["input_ids"][0], table.input_ids[3])


def test_dropout_draws_nothing_at_probability_zero():
    generator = torch.Generator().manual_seed(0)
    assert drop_conditions(8, 0.0, generator) is None
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
    drops = drop_conditions(10_000, 0.1, generator)
    assert 0.08 < float(drops.float().mean()) < 0.12
