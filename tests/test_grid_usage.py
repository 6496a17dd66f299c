import torch

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.metrics import GridUsage, grid_usage


def test_grid_usage_of_images_matches_the_counter_and_reaches_full_usage_with_uniform_codes():
    model = BRICSAutoencoder.from_preset("tiny").eval()
    batches = [torch.rand(4, 3, 32, 32) * 2 - 1 for _ in range(2)]
    hits = grid_usage(model, batches)
    assert hits.shape == (2, 4) and bool(((hits >= 0) & (hits <= 1)).all())
    counter = GridUsage(model)
    with torch.no_grad():
        for images in batches:
            counter.update(model.encode(images).latents)
    torch.testing.assert_close(hits, counter.hit_fraction())
    # uniform key codes touch every reachable node of every dense level
    uniform = GridUsage(model)
    uniform.update(torch.rand(500, 2, 8, 8))
    dense = model.retrieval.grids[0].num_dense_levels
    torch.testing.assert_close(uniform.hit_fraction()[:, :dense], torch.ones(2, dense))
    assert bool((uniform.hit_fraction(reachable_only=False) <= uniform.hit_fraction() + 1e-6).all())
