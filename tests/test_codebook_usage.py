"""VQ codebook usage beside grid usage, on hand-made examples."""

import math

import pytest
import torch
from diffusers import VQModel

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.metrics import CodebookUsage, GridUsage, usage_summary


def tiny_vq(entries=6, dim=3) -> VQModel:
    model = VQModel(block_out_channels=(8,), norm_num_groups=4, latent_channels=dim, num_vq_embeddings=entries,
                    vq_embed_dim=dim, sample_size=8, layers_per_block=1)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(torch.eye(entries, dim) * 10)  # entry i: 10 on axis i (i < dim)
    return model.eval()


def test_codebook_usage_counts_the_selected_entries():
    usage = CodebookUsage(tiny_vq())
    # 2 images of 2x2 latents: positions pick entries 0, 0, 1, 2 | 0, 1, 1, 3 (entry 3 is the zero vector)
    axis = torch.tensor([[0, 0, 1, 2], [0, 1, 1, -1]])
    latents = torch.zeros(2, 3, 2, 2)
    for b in range(2):
        for position, a in enumerate(axis[b]):
            if a >= 0:
                latents[b, a, position // 2, position % 2] = 9.0
    usage.update(latents)
    assert usage.counts.tolist() == [3, 3, 1, 1, 0, 0]
    assert usage.hit_fraction() == pytest.approx(4 / 6)
    summary = usage.summary()
    assert summary["used"] == pytest.approx(4 / 6) and summary["mean"] == pytest.approx(8 / 6)
    p = torch.tensor([3, 3, 1, 1]) / 8
    assert summary["perplexity"] == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 3, H, W\)"):
        usage.update(torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match="finite"):
        usage.update(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="VQModel"):
        CodebookUsage(BRICSAutoencoder.from_preset("tiny"))


def test_usage_summary_of_even_and_collapsed_reads():
    even = usage_summary(torch.full((8,), 5))
    assert even["used"] == 1.0 and even["perplexity"] == pytest.approx(8) and even["std"] == 0
    collapsed = usage_summary(torch.tensor([40, 0, 0, 0]))
    assert collapsed["used"] == 0.25 and collapsed["perplexity"] == pytest.approx(1) and collapsed["median"] == 0
    assert usage_summary(torch.zeros(3))["perplexity"] == 0.0
    with pytest.raises(ValueError, match="counts"):
        usage_summary(torch.zeros(2, 2))


def test_grid_levels_report_like_a_codebook():
    model = BRICSAutoencoder.from_preset("tiny").eval()
    usage = GridUsage(model)
    usage.update(torch.rand(4, 2, 8, 8))
    summary = usage.level_summary(0, 0)
    assert summary["used"] == pytest.approx(float(usage.hit_fraction()[0, 0]))
    assert set(summary) == set(usage_summary(torch.ones(2)))
