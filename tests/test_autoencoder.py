import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.pipelines.ltx.pipeline_ltx_latent_upsample import retrieve_latents  # needs no transformers

from diffusers_brics import PRESETS, BRICSAutoencoder, BRICSEncoderOutput
from diffusers_brics.models.autoencoder_presets import LEGACY_CONFIG
from diffusers_brics.summary import decode_macs, main as summary_main, parameter_counts

LEGACY_TINY = Path(__file__).parent / "data" / "legacy_tiny"


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


@pytest.mark.parametrize("saved_backend", ["triton", "auto", "torch"])
def test_config_saved_with_any_grid_backend_loads_where_triton_is_missing(model, tmp_path, monkeypatch,
                                                                          saved_backend):
    """grid_backend is a runtime choice: a model saved with "triton" (on a GPU machine) loads on one without
    Triton, with a warning, and gives the outputs of the torch path; from_pretrained(grid_backend=) overrides it."""
    for grid in model.retrieval.grids:
        grid.embeddings.data.normal_(0, 0.5)  # so that the look-up matters
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "grid_backend": saved_backend}))
    monkeypatch.setitem(sys.modules, "triton", None)  # Triton missing on this machine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = BRICSAutoencoder.from_pretrained(tmp_path).eval()
    ours = [str(w.message) for w in caught if "grid backend" in str(w.message)]
    if saved_backend == "triton":
        assert ours and all("'triton' cannot run on this machine: the triton package is not installed" in message
                            and "Using 'auto' instead" in message for message in ours)
    else:
        assert not ours
    assert loaded.config.grid_backend == saved_backend  # the choice is kept for machines that have Triton
    assert [grid.backend for grid in loaded.retrieval.grids] == ["torch"] * model.config.num_groups
    z, x = torch.rand(2, *model.latent_shape), images()
    with torch.no_grad():
        assert torch.equal(loaded.decode(z).sample, model.decode(z).sample)
        assert torch.equal(loaded(x).sample, model(x).sample)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="grid backend")
        chosen = BRICSAutoencoder.from_pretrained(tmp_path, grid_backend="torch")
    assert chosen.config.grid_backend == "torch"
    assert all(grid.requested_backend == grid.backend == "torch" for grid in chosen.retrieval.grids)


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
        m.train()  # the decoder's noise inputs draw from the generator, the same in both runs
        m(x, generator=torch.Generator().manual_seed(0)).sample.square().mean().backward()
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


@pytest.mark.parametrize("name, image, code, parameters", [("small-32", 32, (4, 8, 8), 1_926_570),
                                                            ("small-64", 64, (4, 16, 16), 2_031_146)])
def test_small_presets_have_the_measured_layout(name, image, code, parameters):
    from pathlib import Path

    model = BRICSAutoencoder.from_preset(name, grid_backend="torch")
    assert sum(p.numel() for p in model.parameters()) == parameters
    x = torch.rand(2, 3, image, image) * 2 - 1
    z = model.encode(x).latents
    assert tuple(z.shape) == (2, *code) and tuple(model.decode(z).sample.shape) == (2, 3, image, image)
    c = model.config
    assert (c.encoder_layout, c.retrieval_mlp, c.decoder_style, c.grid_indexing, c.decoder_noise) == (
        "diffusers", "plain", "feature_block", "hash", False)
    if name == "small-32":
        # the layout benchmarked as the first layout (a config saved by 0.1.0), and the release's at these widths
        root = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
        first = BRICSAutoencoder.from_config(BRICSAutoencoder.load_config(root / "small-32-v0.1"))

        def fields(config):
            return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

        assert fields(first.config) == {**fields(c), "grid_backend": "auto"}  # (this test builds with "torch")
        release = BRICSAutoencoder.from_config(BRICSAutoencoder.load_config(root / "small-32-release-layout"))
        assert release.config.retrieval_mlp == "modulated" and release.config.encoder_layout == "taming"
        assert sum(p.numel() for p in release.parameters()) == 2_446_959


def test_paper_configuration_matches_table_3_and_the_release():
    model = BRICSAutoencoder.from_preset("paper-64x64x4", grid_backend="torch")
    counts = parameter_counts(model)
    assert counts["grids"] == 18_630_272  # Table 3's 18.6M
    # the release's decoder path, built from its sources: per-group MLPs and style networks + synthesis network
    assert counts["retrieval_mlps"] + counts["mapping"] == 282_112
    assert counts["synthesis"] == 9_445_521
    assert counts["decoder_path"] == 9_727_633  # Table 3: 9.9M
    assert counts["encoder"] == 3_472_196  # the release's encoder without its unused mid block
    macs = decode_macs(model)
    # the release decodes 256x256 at 68.2 GMACs (67.90 synthesis + 0.27 retrieval), 7.5% above Table 3's 63.41
    assert abs(macs["decoder"] / 67.90e9 - 1) < 0.001
    assert abs(macs["retrieval"] / 0.27e9 - 1) < 0.01  # paper supp. B: 0.27 GFLOPs, 95% of it in the MLPs
    assert abs(macs["total"] / 68.16e9 - 1) < 0.001


def test_summary_cli_prints_table_3_comparison(capsys):
    assert summary_main(["tiny"]) == 0
    assert "feature grids" in capsys.readouterr().out
    assert summary_main(["--config", str(LEGACY_TINY)]) == 0
    assert "2 hash levels" in capsys.readouterr().out


def test_config_saved_before_the_release_architecture_loads_and_decodes_as_it_did():
    # tests/data/legacy_tiny was saved by diffusers-brics 0.1.0 (the first architecture): see its README.md.
    model = BRICSAutoencoder.from_pretrained(LEGACY_TINY).eval()
    assert {k: model.config[k] for k in LEGACY_CONFIG} == LEGACY_CONFIG
    expected = np.load(LEGACY_TINY / "expected.npz")
    with torch.no_grad():
        latents = model.encode(torch.from_numpy(expected["images"])).latents
        decoded = model.decode(torch.from_numpy(expected["codes"])).sample
    # The encoder's convolutions sum in an order that depends on the number of threads (one per pytest-xdist
    # worker), and the grid look-up sums its corners in another order than 0.1.0 did (one embedding_bag): float32
    # rounding only.
    torch.testing.assert_close(latents, torch.from_numpy(expected["latents"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(decoded, torch.from_numpy(expected["decoded"]), rtol=0, atol=1e-6)


def test_legacy_model_saved_again_keeps_its_architecture(tmp_path):
    model = BRICSAutoencoder.from_pretrained(LEGACY_TINY).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["retrieval_mlp"] == "plain"
    again = BRICSAutoencoder.from_pretrained(tmp_path).eval()
    z = torch.rand(2, *model.latent_shape)
    assert torch.equal(model.decode(z).sample, again.decode(z).sample)


def test_a_config_builds_the_same_model_as_keywords(model):
    # diffusers builds models as Model(**dict(model.config)) (its own model tests do)
    rebuilt = BRICSAutoencoder(**dict(model.config)).eval()
    rebuilt.load_state_dict(model.state_dict())
    z = torch.rand(2, *model.latent_shape)
    assert torch.equal(rebuilt.decode(z).sample, model.decode(z).sample)
    assert dict(rebuilt.config) == dict(model.config)
    # the derived entries follow the fields they come from, through from_config overrides too
    assert BRICSAutoencoder.from_config(model.config, num_groups=4).config.latent_channels == 4
    with pytest.raises(ValueError, match="latent_channels=3 contradicts"):
        BRICSAutoencoder(**{**dict(model.config), "latent_channels": 3})


@pytest.mark.parametrize(
    "option, value",
    [
        ("encoder_layout", "diffusers"),
        ("grid_indexing", "hash"),
        ("grid_query_order", "key-row-col"),
        ("retrieval_mlp", "plain"),
        ("relaxed_precision_placement", "per_position"),
        ("decoder_style", "feature_block"),
        ("decoder_noise", False),
        ("decoder_conv_clamp", None),
    ],
)
def test_each_alternative_to_the_release_builds_trains_and_round_trips(option, value, tmp_path):
    model = BRICSAutoencoder.from_preset("tiny", **{option: value})
    assert model.config[option] == value != BRICSAutoencoder.from_preset("tiny").config[option]
    x = images()
    model.train()
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.sample.shape == x.shape
    out.sample.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "noise_strength" not in n), option
    model.eval().save_pretrained(tmp_path)
    loaded = BRICSAutoencoder.from_pretrained(tmp_path).eval()
    assert loaded.config[option] == value
    assert torch.equal(loaded(x).sample, model(x).sample)


def test_release_and_first_layouts_have_their_parameter_counts():
    configs = Path(__file__).parents[1] / "benchmarks" / "configs"
    # the release's layout at the small widths (the small-32 preset before 0.2)
    release = parameter_counts(BRICSAutoencoder.from_config(BRICSAutoencoder.load_config(configs / "small-32-release-layout")))
    saved = configs / "small-32-v0.1"  # small-32 of version 0.1.0, the layout of today's small-32
    first = parameter_counts(BRICSAutoencoder.from_config(BRICSAutoencoder.load_config(saved)))
    # small-32: group MLPs 4 x (2 x 32 x 33 + 33 x 32) plain; modulated adds per layer a style affine (64 -> 32)
    assert first["retrieval_mlps"] == 4 * (32 * 32 + 32 + 32 * 32 + 32 + 32 * 32 + 32)
    assert release["retrieval_mlps"] == first["retrieval_mlps"] + 4 * (3 * (64 * 32 + 32) + 32 * 32 + 32 + 64 * 32 + 64)
    assert release["mapping"] == 4 * (3 * (32 * 32 + 32))  # per group 32 -> 32 -> 32 -> 128 / 4
    assert first["mapping"] == 2 * (128 * 128 + 128)  # 2 layers of 128 on pooled f


def test_decoder_noise_is_fixed_at_inference_and_drawn_in_training(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "noise_strength" in name:
                p.fill_(0.5)
    z = torch.rand(2, *model.latent_shape)
    const = model.decode(z).sample
    assert torch.equal(model.decode(z).sample, const)
    assert not torch.equal(model.decode(z, noise_mode="none").sample, const)
    random = model.decode(z, noise_mode="random", generator=torch.Generator().manual_seed(0)).sample
    assert not torch.equal(random, const)
    model.train()
    trained = model.decode(z, relaxed_precision=False, generator=torch.Generator().manual_seed(0)).sample
    assert torch.equal(trained, random)  # training mode: random noise inputs by default
    model.eval()
    noisy = model.decode(z, relaxed_precision=True, generator=torch.Generator().manual_seed(0)).sample
    assert not torch.equal(noisy, const)  # the release's reconstruction metrics: relaxed precision at eval


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
        (dict(encoder_layout="vqgan"), "encoder_layout"),
        (dict(grid_indexing="modulo"), "grid_indexing"),
        (dict(grid_query_order="xyk"), "grid_query_order"),
        (dict(retrieval_mlp="mlp"), "retrieval_mlp"),
        (dict(relaxed_precision_placement="tiled"), "relaxed_precision_placement"),
        (dict(decoder_style="mapping"), "decoder_style"),
        (dict(decoder_conv_clamp=0), "decoder_conv_clamp"),
        (dict(encoder_attention_resolutions=8), "encoder_attention_resolutions"),
        (dict(encoder_block_out_channels=(4, 16, 16)), "stem"),
        (dict(style_dim=15), "style_dim"),
        (dict(mapping_layers=0), "mapping_layers"),
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
    for a, b in zip(model.retrieval(z), model.retrieval(z.float())):
        assert torch.equal(a, b)
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


@pytest.mark.parametrize("method", ["encode", "decode", "forward"])
def test_compiles_whole_without_graph_breaks(model, method):
    # The input checks' value tests are data-dependent; while torch.compile traces, only the static ones run.
    x = images()
    call = {"encode": lambda m, a: m.encode(a).latents, "decode": lambda m, a: m.decode(a).sample,
            "forward": lambda m, a: m(a).sample}[method]
    arg = model.encode(x).latents if method == "decode" else x
    # fullgraph=True raises at the first graph break; the eager backend keeps the test to dynamo's tracing
    compiled = torch.compile(lambda a: call(model, a), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(arg), call(model, arg), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_training_step_compiles_without_graph_breaks(model):
    model.train()
    x = images()

    def loss_of(m):
        out = m(x)
        return (out.sample - x).abs().mean() + out.latents.mean()

    # aot_eager: the forward and the backward graphs are traced (the grid look-up's autograd function included)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss_of(compiled).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["retrieval.grids.0.embeddings"].abs().sum() > 0  # through the grid look-up's own backward
    torch._dynamo.reset()
