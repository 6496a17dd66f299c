"""CVQ-VAE's online clustered codebook (`ClusteredVectorQuantizer`) and ``--model_type cvqvae`` (`ClusteredVQModel`):
the usage average and the revival of dead entries on hand-made codebooks and features, the anchors, the stock
`VQModel` a trained model is saved as, and stage 1 in this process with a resume, whose saved folder stage 2
trains on."""

import math

import pytest
import torch
from builders import DIFFUSION_FAST, run_in_process
from diffusers import VQModel
from safetensors.torch import load_file

from diffusers_brics.metrics.codebook_usage import CodebookUsage
from diffusers_brics.models import adapters
from diffusers_brics.models.clustered_codebook import ClusteredVectorQuantizer, revival_rate, updated_usage
from diffusers_brics.models.clustered_vq_model import ClusteredVQModel
from diffusers_brics.training import autoencoder, diffusion
from diffusers_brics.training.autoencoder_args import parse_args

# features (M=4, D=2) as a (1, 2, 2, 2) latent, and the codebook they are looked up in: entries 0 and 1 are used,
# 2 and 3 are far from every feature (dead).
FEATURES = torch.tensor([[1.1, 0.0], [0.9, 0.0], [0.0, 1.2], [0.0, 0.8]])
CODEBOOK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, -10.0]])


def as_latent(features: torch.Tensor) -> torch.Tensor:
    """``(M, D)`` features, ``M = 4``, as the ``(1, D, 2, 2)`` input of a quantizer (row-major positions)."""
    return features.reshape(1, 2, 2, -1).permute(0, 3, 1, 2)


def quantizer(codebook=CODEBOOK, **settings) -> ClusteredVectorQuantizer:
    q = ClusteredVectorQuantizer(codebook.shape[0], codebook.shape[1], **settings)
    q.embedding.weight.data.copy_(codebook)
    return q


def test_dead_entries_move_towards_their_closest_features_by_alpha_and_live_ones_stay():
    q = quantizer(decay=0.9, distance="euclidean", anchor="closest")
    q.usage.copy_(torch.tensor([0.5, 0.5, 0.0, 0.0]))  # entries 0 and 1 in use so far, 2 and 3 never
    z_q, loss, (_, _, indices) = q.train()(as_latent(FEATURES))
    assert indices.tolist() == [0, 0, 1, 1]  # the lookup uses the codebook before the update
    torch.testing.assert_close(z_q, as_latent(CODEBOOK[[0, 0, 1, 1]]))
    assert torch.equal(q.usage, torch.tensor([0.5, 0.5, 0.0, 0.0]))  # this batch selects them as often
    alpha_dead = math.exp(-1e-3)  # N_k = 0: exp(-0 K 10 / (1 - decay) - 1e-3)
    # the closest features: (0, 1.2) to (10, 10) (squared distances 177.44 against 179.21 for (1.1, 0)), and
    # (1.1, 0) to (10, -10)
    anchors = torch.tensor([[0.0, 1.2], [1.1, 0.0]])
    expected = CODEBOOK[2:] * (1 - alpha_dead) + anchors * alpha_dead
    torch.testing.assert_close(q.embedding.weight.data[2:], expected, rtol=0, atol=1e-6)
    # alpha = exp(-0.5 * 4 * 10 / 0.1 - 1e-3) = exp(-200): the live entries keep their values
    torch.testing.assert_close(q.embedding.weight.data[:2], CODEBOOK[:2], rtol=0, atol=1e-30)
    # the next batch selects the revived entries
    _, _, (_, _, again) = q.eval()(as_latent(torch.tensor([[0.0, 1.2], [1.1, 0.0], [1.0, 0.0], [0.0, 1.0]])))
    assert again.tolist()[:2] == [2, 3]


def test_usage_is_the_running_share_of_selections():
    q = quantizer(decay=0.9, distance="euclidean", anchor="closest")
    q.train()(as_latent(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [0.1, 1.0]])))  # entries 0, 0, 0, 1
    torch.testing.assert_close(q.usage, torch.tensor([0.075, 0.025, 0.0, 0.0]))  # 0.1 * (3/4, 1/4, 0, 0)
    q.embedding.weight.data.copy_(CODEBOOK)  # the same codebook again, whatever the revival did
    q(as_latent(torch.full((4, 2), 9.0)))  # all four select entry 2
    torch.testing.assert_close(q.usage, torch.tensor([0.0675, 0.0225, 0.1, 0.0]))
    torch.testing.assert_close(
        revival_rate(torch.tensor([0.25, 0.0]), 0.9),
        torch.tensor([math.exp(-0.25 * 2 * 10 / 0.1 - 1e-3), math.exp(-1e-3)]),
    )
    torch.testing.assert_close(
        updated_usage(torch.zeros(3), torch.tensor([2, 2, 0, 2]), 0.5), torch.tensor([0.125, 0.0, 0.375])
    )
    # eval mode: a lookup, nothing else
    usage, weight = q.usage.clone(), q.embedding.weight.detach().clone()
    q.eval()(as_latent(torch.zeros(4, 2)))
    assert torch.equal(q.usage, usage) and torch.equal(q.embedding.weight, weight)


def test_probability_anchors_follow_the_softmax_of_the_similarities():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q = quantizer(torch.tensor([[1.0, 0.0]]), distance="cosine", anchor="probability")
    expected = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)  # cosine similarities to the one entry
    draws = torch.stack([q.anchors(features)[0] for _ in range(3000)])
    frequencies = torch.stack([(draws == f).all(1).float().mean() for f in features])
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.03)


def test_random_anchors_come_from_a_pool_of_recent_features():
    q = quantizer(anchor="random")
    first, second = torch.randn(2, 2), torch.randn(2, 2)
    q.anchors(first)
    pool = q.anchors(second)  # two small batches fill the pool of four in turn
    assert torch.equal(pool, torch.cat([first, second])) and int(q.pool_filled) == 4
    big = torch.randn(6, 2)  # a batch of at least K features refills it from its own
    pool = q.anchors(big)
    assert all(any(torch.equal(row, f) for f in big) for row in pool)
    third = torch.randn(2, 2)  # a full pool takes a small batch in random places
    pool = q.anchors(third)
    assert all(any(torch.equal(row, f) for row in pool) for f in third)


def test_the_contrastive_term_is_off_by_default_and_adds_to_the_loss_when_on():
    off = quantizer(distance="cosine", anchor="closest").train()
    on = quantizer(distance="cosine", anchor="closest", contrastive_weight=1.0).train()
    loss_off, loss_on = off(as_latent(FEATURES))[1], on(as_latent(FEATURES))[1]
    assert loss_on > loss_off
    loss_on.backward()
    assert on.embedding.weight.grad is not None and on.embedding.weight.grad[2:].abs().sum() > 0


def test_bad_settings_are_refused():
    for settings, message in (
        (dict(decay=1.0), "decay must be in"),
        (dict(distance="l1"), "distance must be one of"),
        (dict(anchor="first"), "anchor must be one of"),
        (dict(contrastive_weight=-1.0), "contrastive_weight"),
    ):
        with pytest.raises(ValueError, match=message):
            ClusteredVectorQuantizer(4, 2, **settings)
    with pytest.raises(SystemExit):
        parse_args(["--model_type", "cvqvae", "--preset", "tiny", "--cvq_decay", "1"])


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_stock_vqmodel_loads_the_saved_model_and_decodes_the_same(tmp_path, distance):
    model = adapters.build_autoencoder("cvqvae", "tiny", settings=dict(cvq_distance=distance))
    assert isinstance(model, ClusteredVQModel) and adapters.model_type_of(model) == "cvqvae"
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    model.train()
    for _ in range(2):  # training forwards move the codebook (dead entries revived, rows of any length)
        model(images)
    assert model.quantize.usage.sum() > 0
    model.eval()
    adapters.saved_form(model).save_pretrained(tmp_path / "stock")
    stock = VQModel.from_pretrained(tmp_path / "stock")
    assert type(stock) is VQModel and type(stock.quantize).__name__ == "VectorQuantizer"
    assert set(load_file(tmp_path / "stock" / "diffusion_pytorch_model.safetensors")) == set(stock.state_dict())
    with torch.no_grad():
        latents = model.encode(images).latents
        assert torch.equal(stock.encode(images).latents, latents)
        assert torch.equal(stock.decode(latents).sample, model.decode(latents).sample)
    assert adapters.model_type_of(adapters.load_autoencoder(str(tmp_path / "stock"))) == "vqmodel"
    # the training form keeps the codebook's state; a cvqvae starts again from the stock folder's config
    model.save_pretrained(tmp_path / "training")
    again = ClusteredVQModel.from_pretrained(tmp_path / "training")
    assert torch.equal(again.quantize.usage, model.quantize.usage)
    assert torch.equal(again.quantize.pool, model.quantize.pool)
    rebuilt = adapters.build_autoencoder("cvqvae", config=VQModel.load_config(tmp_path / "stock"))
    assert isinstance(rebuilt, ClusteredVQModel) and rebuilt.config.cvq_distance == distance


def test_codebook_usage_counts_without_updating_a_training_codebook():
    model = adapters.build_autoencoder("cvqvae", "tiny").train()
    weight, usage = model.quantize.embedding.weight.detach().clone(), model.quantize.usage.clone()
    counter = CodebookUsage(model)
    with torch.no_grad():
        counter.update(model.encode(torch.rand(2, 3, 32, 32) * 2 - 1).latents)
    assert counter.counts.sum() == 2 * 8 * 8 and 0 < counter.hit_fraction() <= 1
    assert torch.equal(model.quantize.embedding.weight, weight) and torch.equal(model.quantize.usage, usage)
    assert model.quantize.training


STAGE_1 = [
    "--model_type", "cvqvae", "--preset", "tiny", "--cvq_anchor", "closest", "--train_batch_size", "4",
    "--lr_scheduler", "constant", "--perceptual_weight", "0", "--gan_weight", "0", "--eval_batch_size", "8",
    "--max_eval_images", "8", "--num_validation_images", "2", "--validation_steps", "100", "--checkpointing_steps",
    "2", "--report_to", "none",
]  # fmt: skip


def test_stage_1_trains_resumes_and_saves_a_stock_vqmodel_that_stage_2_trains_on(tmp_path, random_image_folder):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def stage_1(output_dir, steps, *extra) -> int:
        argv = [*STAGE_1, "--output_dir", output_dir, "--max_train_steps", steps, *extra]
        return run_in_process(autoencoder.main, argv, "train_brics_ae")

    assert stage_1(straight, 4) == 0
    assert stage_1(resumed, 2) == 0
    checkpoint = load_file(resumed / "checkpoint-2" / "autoencoder" / "diffusion_pytorch_model.safetensors")
    assert checkpoint["quantize.usage"].sum() > 0  # the checkpoint holds the codebook's state
    assert stage_1(resumed, 4, "--resume_from_checkpoint", "latest") == 0
    for folder in ("checkpoint-4/autoencoder", "checkpoint-4/autoencoder_ema", "autoencoder"):
        a, b = (load_file(run_dir / folder / "diffusion_pytorch_model.safetensors") for run_dir in (straight, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder  # usage and pool included
    final = load_file(straight / "autoencoder" / "diffusion_pytorch_model.safetensors")
    assert "quantize.usage" not in final
    stock = VQModel.from_pretrained(straight / "autoencoder")
    assert all(torch.equal(v, final[k]) for k, v in stock.state_dict().items())
    metrics = (straight / "metrics.json").read_text()
    assert '"codebook_usage"' in metrics and "from diffusers import VQModel" in (straight / "README.md").read_text()
    out = tmp_path / "ldm"
    argv = [*DIFFUSION_FAST, "--train_batch_size", "4", "--autoencoder", straight, "--train_data_dir",
            random_image_folder(8), "--output_dir", out, "--max_train_steps", "1"]  # fmt: skip
    assert run_in_process(diffusion.main, argv, "train_brics_diffusion") == 0
    assert (out / "unet").is_dir() and (out / "vae" / "config.json").is_file()
