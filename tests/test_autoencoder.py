import json

import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.pipelines.ltx.pipeline_ltx_latent_upsample import retrieve_latents  # needs no transformers

from diffusers_brics import PRESETS, BRICSAutoencoder, BRICSEncoderOutput
from diffusers_brics.summary import decode_macs, main as summary_main, parameter_counts


@pytest.fixture
def model():
    return BRICSAutoencoder.from_preset("tiny", grid_backend="torch").eval()


def images(batch=2, size=32):
    return torch.rand(batch, 3, size, size) * 2 - 1


def test_encode_decode_shapes_and_ranges(model):
    x = images()
    out = model.encode(x)
    assert isinstance(out, BRICSEncoderOutput)
    assert out.latents.shape == (2, 2, 8, 8) == (2, *model.latent_shape)
    assert float(out.latents.detach().min()) >= 0 and float(out.latents.detach().max()) <= 1
    dec = model.decode(out.latents)
    assert isinstance(dec, DecoderOutput) and dec.sample.shape == x.shape
    assert torch.equal(model(x).sample, dec.sample)


def test_return_dict_false_gives_tuples(model):
    x = images()
    (z,) = model.encode(x, return_dict=False)
    (sample,) = model.decode(z, return_dict=False)
    (forward,) = model(x, return_dict=False)
    assert torch.equal(sample, forward)


def test_retrieve_latents_returns_key_codes(model):
    x = images()
    assert torch.equal(retrieve_latents(model.encode(x)), model.encode(x).latents)


def test_eval_mode_is_deterministic_and_training_adds_relaxed_precision_noise(model):
    z = model.encode(images()).latents
    assert torch.equal(model.decode(z).sample, model.decode(z).sample)
    model.train()
    a = model.decode(z, generator=torch.Generator().manual_seed(1)).sample
    b = model.decode(z, generator=torch.Generator().manual_seed(1)).sample
    c = model.decode(z, generator=torch.Generator().manual_seed(2)).sample
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradients_reach_encoder_grids_and_decoder(model):
    model.train()
    for grid in model.retrieval.grids:
        torch.nn.init.normal_(grid.embeddings)
    model(images()).sample.square().mean().backward()
    assert model.encoder.encoder.conv_in.weight.grad.abs().sum() > 0
    assert all(grid.embeddings.grad.abs().sum() > 0 for grid in model.retrieval.grids)
    assert model.decoder.blocks[0].convs[0].weight.grad.abs().sum() > 0


def test_save_load_round_trip_is_bit_exact(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "BRICSAutoencoder" and config["latent_size"] == 8
    loaded = BRICSAutoencoder.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = images()
    assert torch.equal(model(x).sample, loaded(x).sample)


def test_slicing_gives_the_same_result(model):
    x = images(3)
    z = model.encode(x).latents
    expected = model.decode(z).sample
    model.enable_slicing()
    torch.testing.assert_close(model.encode(x).latents, z)
    torch.testing.assert_close(model.decode(z).sample, expected)
    model.disable_slicing()


def test_gradient_checkpointing_gives_the_same_gradients():
    reference = BRICSAutoencoder.from_preset("tiny", relaxed_precision=False)
    checkpointed = BRICSAutoencoder.from_preset("tiny", relaxed_precision=False)
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.is_gradient_checkpointing
    x = images()
    for m in (reference, checkpointed):
        m.train()
        m(x).sample.square().mean().backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_kl_variant_samples_and_regularises():
    model = BRICSAutoencoder.from_preset("tiny", kl_key_codes=True)
    x = images()
    model.eval()
    out = model.encode(x)
    assert out.key_code_posterior is not None
    assert torch.equal(out.latents, torch.sigmoid(out.key_code_posterior.mean))
    assert out.key_code_posterior.kl().shape == (2,)
    model.train()
    sampled = model.encode(x, generator=torch.Generator().manual_seed(0)).latents
    sampled = sampled.detach()
    assert not torch.equal(sampled, out.latents) and float(sampled.min()) >= 0 and float(sampled.max()) <= 1
    z, posterior = model.encode(x, return_dict=False)
    assert posterior is not None


def test_all_presets_build():
    for name in PRESETS:
        model = BRICSAutoencoder.from_preset(name, grid_backend="torch")
        c = model.config
        assert c.latent_size * 2 ** (len(c.encoder_block_out_channels) - 1) == c.sample_size
    with pytest.raises(ValueError, match="unknown preset"):
        BRICSAutoencoder.from_preset("paper-8x8x4")


def test_paper_configuration_matches_table_3():
    model = BRICSAutoencoder.from_preset("paper-64x64x4", grid_backend="torch")
    counts = parameter_counts(model)
    assert counts["grids"] == 18_630_272
    assert abs(counts["decoder_path"] / 9.9e6 - 1) < 0.15
    macs = decode_macs(model)
    assert abs(macs["total"] / 63.41e9 - 1) < 0.15
    # paper supp. B: retrieval costs 0.27 GFLOPs (multiplications), 95% of it in the MLPs
    assert abs(macs["retrieval"] / 0.27e9 - 1) < 0.05


def test_summary_cli_prints_table_3_comparison(capsys):
    assert summary_main(["tiny"]) == 0
    assert "feature grids" in capsys.readouterr().out


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(2, 4, 32, 32), "3 channels"),
        (torch.rand(3, 32, 32), "4 dimensions"),
        (torch.rand(2, 3, 64, 64), "32x32"),
        (torch.randint(0, 255, (2, 3, 32, 32)), "floating point"),
        (torch.rand(2, 3, 32, 32) * 255, r"\[-1, 1\]"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
        ([[0.0]], "torch.Tensor"),
        (torch.zeros(0, 3, 32, 32), "empty batch"),
    ],
)
def test_bad_images_raise_value_error(model, x, message):
    with pytest.raises(ValueError, match=message):
        model.encode(x)
    with pytest.raises(ValueError, match=message):
        model(x)


@pytest.mark.parametrize(
    "z, message",
    [
        (torch.rand(2, 3, 8, 8), r"shape \(batch, 2, 8, 8\)"),
        (torch.rand(2, 2, 4, 4), r"shape \(batch, 2, 8, 8\)"),
        (torch.rand(2, 8, 8), r"shape \(batch, 2, 8, 8\)"),
        (torch.rand(2, 2, 8, 8) * 2 - 1, r"\[0, 1\]"),
        (torch.full((1, 2, 8, 8), float("nan")), "NaN"),
        (torch.ones(1, 2, 8, 8, dtype=torch.int64), "floating point"),
        (torch.zeros(0, 2, 8, 8), "empty batch"),
    ],
)
def test_bad_key_codes_raise_value_error(model, z, message):
    with pytest.raises(ValueError, match=message):
        model.decode(z)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(latent_size=4), "latent_size"),
        (dict(feature_size=12), "feature_size"),
        (dict(feature_channels=15), "num_groups"),
        (dict(key_channels=4), "key_channels"),
        (dict(encoder_norm_num_groups=3), "encoder_norm_num_groups"),
        (dict(decoder_block_out_channels=(16, 8, 8)), "feature_size"),
        (dict(grid_backend="gpu"), "backend"),
        (dict(style_dim=0), "style_dim"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=0), "out_channels"),
        (dict(key_channels=1.5), "key_channels"),
        (dict(num_groups=True), "num_groups"),
        (dict(mlp_hidden_layers=-1), "mlp_hidden_layers"),
        (dict(mlp_hidden_channels=0), "mlp_hidden_channels"),
        (dict(mapping_layers=-1), "mapping_layers"),
        (dict(encoder_layers_per_block=0), "encoder_layers_per_block"),
        (dict(decoder_block_out_channels=()), "decoder_block_out_channels"),
        (dict(grid_init_scale=-1e-4), "grid_init_scale"),
        (dict(grid_init_scale=float("nan")), "grid_init_scale"),
    ],
)
def test_configurations_that_cannot_work_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        BRICSAutoencoder.from_preset("tiny", **overrides)


def test_tiling_is_refused_rather_than_silently_ignored(model):
    with pytest.raises(NotImplementedError, match="Tiling"):
        model.enable_tiling()


@pytest.mark.parametrize("model_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("input_dtype", [torch.float64, torch.float32])
def test_inputs_of_another_float_dtype_are_accepted(model, model_dtype, input_dtype):
    model = model.to(model_dtype)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).to(input_dtype)
    z = model.encode(x).latents
    assert z.dtype == model_dtype
    sample = model.decode(torch.rand(2, 2, 8, 8, dtype=input_dtype)).sample
    assert sample.dtype == model_dtype and bool(sample.isfinite().all())


def test_half_precision_key_codes_read_the_grids_like_float32(model):
    # Codes of a bf16 model (or under autocast) are widened before the look-up: the feature block of bf16
    # codes equals the float32 block of the same (bf16-representable) codes.
    z = torch.rand(2, 2, 8, 8).to(torch.bfloat16)
    assert torch.equal(model.retrieval(z), model.retrieval(z.float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_sample = model.decode(z).sample
    torch.testing.assert_close(autocast_sample.float(), model.decode(z.float()).sample, rtol=0, atol=0.1)


def test_config_answers_what_autoencoderkl_code_reads(model, tmp_path, caplog):
    # Pipelines compute vae_scale_factor from block_out_channels, shape latents by latent_channels and map
    # latents with (z - shift_factor) * scaling_factor (SD3/Flux convention): key codes land on [-1, 1].
    config = model.config
    assert 2 ** (len(config.block_out_channels) - 1) == config.sample_size // config.latent_size
    assert config.latent_channels == model.latent_channels == 2
    assert config.force_upcast is False
    z = model.encode(torch.rand(2, 3, 32, 32) * 2 - 1).latents.detach()
    latents = (z - config.shift_factor) * config.scaling_factor
    assert float(latents.min()) >= -1 and float(latents.max()) <= 1
    codes = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close((codes - config.shift_factor) * config.scaling_factor, torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(
        model.decode(latents / config.scaling_factor + config.shift_factor).sample, model.decode(z).sample
    )
    # the derived entries are saved for other code to read, and recomputed (not passed to __init__) on load
    model.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        loaded = BRICSAutoencoder.from_pretrained(tmp_path)
    assert "not expected" not in caplog.text
    assert list(loaded.config.block_out_channels) == list(config.block_out_channels)
    assert loaded.config.scaling_factor == 2.0 and loaded.config.shift_factor == 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(scaling_factor=0.0), "scaling_factor"), (dict(shift_factor=float("inf")), "shift_factor")],
)
def test_bad_diffusion_space_map_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        BRICSAutoencoder.from_preset("tiny", **overrides)
