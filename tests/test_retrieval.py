import pytest
import torch

from diffusers_brics.models import KeyCodeRetrieval
from diffusers_brics.models.retrieval import pixel_coordinates


def tiny_retrieval(**kwargs):
    options = dict(
        num_groups=2, key_channels=1, feature_size=8, feature_channels=8, num_levels=3, features_per_level=2,
        log2_hashmap_size=8, min_resolution=2, max_resolution=8, backend="torch",
    )
    options.update(kwargs)
    return KeyCodeRetrieval(**options)


def test_interleaved_tiling_repeats_each_code_in_a_patch():
    retrieval = tiny_retrieval()
    z = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    tiled = retrieval.tile(z)
    assert tiled.shape == (1, 2, 8, 8)
    assert torch.equal(tiled[0, 1, 2:4, 6:8], torch.full((2, 2), float(z[0, 1, 1, 3])))


def test_pixel_coordinates_are_cell_centres():
    coords = pixel_coordinates(2, 4)
    assert torch.allclose(coords[0], torch.tensor([0.25, 0.125]))
    assert torch.allclose(coords[-1], torch.tensor([0.75, 0.875]))


def test_queries_join_key_slices_with_coordinates():
    retrieval = tiny_retrieval().eval()
    z = torch.rand(3, 2, 4, 4)
    q = retrieval.queries(z)
    assert q.shape == (2, 3 * 8 * 8, 3)
    tiled = retrieval.tile(z)
    # group 1, image 2, pixel (5, 6)
    row = (2 * 8 + 5) * 8 + 6
    assert torch.allclose(q[1, row], torch.tensor([float(tiled[2, 1, 5, 6]), 5.5 / 8, 6.5 / 8]))


def test_relaxed_precision_noise_only_in_training_and_switchable():
    retrieval = tiny_retrieval()
    z = torch.full((4, 2, 4, 4), 0.5)
    retrieval.eval()
    assert torch.equal(retrieval.queries(z)[..., 0], torch.full((2, 4 * 64), 0.5))
    retrieval.train()
    noisy = retrieval.queries(z, generator=torch.Generator().manual_seed(0))[..., 0]
    assert abs(float((noisy - 0.5).std()) - 1 / (4 * 8)) < 0.1 / (4 * 8)
    retrieval.relaxed_precision = False
    assert torch.equal(retrieval.queries(z)[..., 0], torch.full((2, 4 * 64), 0.5))


def test_noisy_codes_are_clipped_to_unit_interval():
    retrieval = tiny_retrieval(max_resolution=2.5, min_resolution=2).train()
    q = retrieval.queries(torch.ones(2, 2, 4, 4))
    assert float(q.max()) <= 1.0 and float(q.min()) >= 0.0


def test_feature_block_shape_and_gradient_to_key_codes():
    retrieval = tiny_retrieval()
    for grid in retrieval.grids:
        torch.nn.init.normal_(grid.embeddings)
    z = torch.rand(2, 2, 4, 4, requires_grad=True)
    f = retrieval(z)
    assert f.shape == (2, 8, 8, 8)
    f.square().sum().backward()
    assert bool((z.grad.abs() > 0).all()), "every key code must receive a gradient through the interpolation weights"


def test_groups_read_their_own_channels():
    retrieval = tiny_retrieval().eval()
    z = torch.rand(1, 2, 4, 4)
    f = retrieval(z)
    z2 = z.clone()
    z2[:, 1] = torch.rand(1, 4, 4)  # change the second slice only
    f2 = retrieval(z2)
    assert torch.equal(f[:, :4], f2[:, :4])
    assert not torch.equal(f[:, 4:], f2[:, 4:])


def test_feature_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match="multiple of num_groups"):
        tiny_retrieval(feature_channels=9)
