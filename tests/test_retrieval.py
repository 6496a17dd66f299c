import pytest
import torch

from diffusers_brics.models import KeyCodeRetrieval
from diffusers_brics.models.retrieval import pixel_coordinates
from diffusers_brics.models.style_layers import MappingNetwork, ModulatedLinear, ModulatedMLP, normalize_2nd_moment


def tiny_retrieval(**kwargs):
    options = dict(
        num_groups=2, key_channels=1, feature_size=8, feature_channels=8, num_levels=3, features_per_level=2,
        log2_hashmap_size=8, min_resolution=2, max_resolution=8, backend="torch", style_dim=8,
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


@pytest.mark.parametrize("order", ["col-row-key", "key-row-col"])
def test_queries_join_key_slices_with_coordinates(order):
    retrieval = tiny_retrieval(query_order=order)
    z = torch.rand(3, 2, 4, 4)
    q = retrieval.queries(z, relaxed_precision=False)
    assert q.shape == (2, 3 * 8 * 8, 3)
    tiled = retrieval.tile(z)
    # group 1, image 2, pixel (row 5, column 6)
    row = (2 * 8 + 5) * 8 + 6
    key, y, x = float(tiled[2, 1, 5, 6]), 5.5 / 8, 6.5 / 8
    expected = [x, y, key] if order == "col-row-key" else [key, y, x]  # release (x, y, key); paper eq. 1 (key, .)
    assert torch.allclose(q[1, row], torch.tensor(expected))
    assert retrieval.key_axes == ((2,) if order == "col-row-key" else (0,))
    assert [expected[a] for a in retrieval.pixel_axes] == [y, x]


def test_relaxed_precision_noise_only_in_training_and_switchable():
    retrieval = tiny_retrieval(noise_placement="per_position")
    z = torch.full((4, 2, 4, 4), 0.5)
    retrieval.eval()
    assert torch.equal(retrieval.queries(z)[..., 2], torch.full((2, 4 * 64), 0.5))
    noisy = retrieval.queries(z, relaxed_precision=True)[..., 2]  # explicit: noise in eval mode too
    assert not torch.equal(noisy, torch.full((2, 4 * 64), 0.5))
    retrieval.train()
    noisy = retrieval.queries(z, generator=torch.Generator().manual_seed(0))[..., 2]
    assert abs(float((noisy - 0.5).std()) - 1 / (4 * 8)) < 0.1 / (4 * 8)
    assert torch.equal(retrieval.queries(z, relaxed_precision=False)[..., 2], torch.full((2, 4 * 64), 0.5))
    retrieval.relaxed_precision = False
    assert torch.equal(retrieval.queries(z)[..., 2], torch.full((2, 4 * 64), 0.5))


def test_noise_per_key_code_is_shared_by_the_tiled_patch():
    z = torch.full((2, 2, 4, 4), 0.5)
    per_code = tiny_retrieval(noise_placement="per_key_code").queries(z, torch.Generator().manual_seed(0), True)
    per_position = tiny_retrieval(noise_placement="per_position").queries(z, torch.Generator().manual_seed(0), True)
    keys = per_code[..., 2].view(2, 2, 8, 8)  # (group, image, row, column)
    patches = keys.unfold(2, 2, 2).unfold(3, 2, 2)  # the 2x2 patch each code is tiled to
    assert torch.equal(patches, patches[..., :1, :1].expand_as(patches))  # release: one draw per key code
    assert len(per_code[..., 2].unique()) == 2 * 2 * 16
    assert len(per_position[..., 2].unique()) > 2 * 2 * 16  # paper eq. 1: one draw per tiled position


def test_noisy_codes_are_clipped_to_unit_interval():
    for placement in ("per_key_code", "per_position"):
        retrieval = tiny_retrieval(max_resolution=2.5, min_resolution=2, noise_placement=placement).train()
        q = retrieval.queries(torch.ones(2, 2, 4, 4))
        assert float(q.max()) <= 1.0 and float(q.min()) >= 0.0


@pytest.mark.parametrize("mlp_type", ["modulated", "plain"])
@pytest.mark.parametrize("style_dim", [8, None])
def test_feature_block_style_and_gradient_to_key_codes(mlp_type, style_dim):
    retrieval = tiny_retrieval(mlp_type=mlp_type, style_dim=style_dim)
    for grid in retrieval.grids:
        torch.nn.init.normal_(grid.embeddings)
    z = torch.rand(2, 2, 4, 4, requires_grad=True)
    f, style = retrieval(z, relaxed_precision=False)  # noise would clip codes near 0 and 1 (no gradient there)
    assert f.shape == (2, 8, 8, 8)
    assert (style is None) == (style_dim is None) and (style is None or style.shape == (2, 8))
    f.square().sum().backward()
    assert bool((z.grad.abs() > 0).all()), "every key code must receive a gradient through the interpolation weights"


def test_release_mlp_and_style_parameter_counts():
    # Release, 64x64x4: per group a 3-layer ModulatedMLP 64 -> 64 -> 64 -> 128 (styles of 128 from a 2-layer
    # mapping network 64 -> 64 -> 128) and a 3-layer style network 64 -> 64 -> 64 -> 128: 70,528 parameters.
    retrieval = KeyCodeRetrieval(num_groups=4, num_levels=16, features_per_level=4, log2_hashmap_size=4,
                                 min_resolution=2, max_resolution=4, feature_channels=512, style_dim=512)
    count = sum(p.numel() for n, p in retrieval.named_parameters() if "grids" not in n)
    assert count == 4 * 70_528 == 282_112
    plain = KeyCodeRetrieval(num_groups=4, num_levels=16, features_per_level=4, log2_hashmap_size=4,
                             min_resolution=2, max_resolution=4, feature_channels=512, style_dim=None, mlp_type="plain")
    assert sum(p.numel() for n, p in plain.named_parameters() if "grids" not in n) == 4 * (2 * 64 * 65 + 65 * 128)


def test_groups_read_their_own_channels():
    retrieval = tiny_retrieval(mlp_type="plain", style_dim=None).eval()
    z = torch.rand(1, 2, 4, 4)
    f, _ = retrieval(z)
    z2 = z.clone()
    z2[:, 1] = torch.rand(1, 4, 4)  # change the second slice only
    f2, _ = retrieval(z2)
    assert torch.equal(f[:, :4], f2[:, :4])
    assert not torch.equal(f[:, 4:], f2[:, 4:])


def test_modulated_groups_are_styled_by_their_own_pooled_features():
    retrieval = tiny_retrieval().eval()
    for grid in retrieval.grids:
        torch.nn.init.normal_(grid.embeddings)
    z = torch.rand(1, 2, 4, 4)
    (f, style), z2 = retrieval(z), z.clone()
    z2[:, 1] = torch.rand(1, 4, 4)
    f2, style2 = retrieval(z2)
    assert torch.equal(f[:, :4], f2[:, :4]) and torch.equal(style[:, :4], style2[:, :4])
    assert not torch.equal(f[:, 4:], f2[:, 4:]) and not torch.equal(style[:, 4:], style2[:, 4:])


def test_modulated_linear_matches_the_release_equations():
    torch.manual_seed(0)
    layer = ModulatedLinear(6, 5, style_dim=3)
    torch.nn.init.normal_(layer.bias)
    x, style = torch.randn(2, 7, 6) * 100, torch.randn(2, 3)
    out = layer(x, style)
    for b in range(2):  # hash_encoding/layers.py: pre-normalised weight and style, linear, demodulation, lrelu
        s = layer.affine(style[b : b + 1])[0]
        s = s / s.abs().max()
        w = layer.weight / 6**0.5 / layer.weight.abs().amax(dim=1, keepdim=True)
        d = torch.rsqrt((w * s).square().sum(dim=1) + 1e-8)
        y = torch.nn.functional.leaky_relu(((x[b] * s) @ w.T + layer.bias) * d, 0.01).clamp(-255, 255)
        torch.testing.assert_close(out[b], y, rtol=1e-5, atol=1e-4)
    assert float(out.detach().abs().max()) <= 255  # the release clamps every layer


def test_modulated_mlp_has_no_activation_after_its_last_layer():
    mlp = ModulatedMLP(4, 8, 3, style_dim=2, num_layers=3)
    assert [layer.activation for layer in mlp.layers] == [True, True, False]
    assert mlp(torch.randn(2, 5, 4), torch.randn(2, 2)).shape == (2, 5, 3)


def test_mapping_network_normalises_its_input():
    mapping = MappingNetwork(4, 6, num_layers=2, hidden_features=5)
    x = torch.randn(3, 4)
    torch.testing.assert_close(mapping(x * 10), mapping(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normalize_2nd_moment(x).square().mean(dim=1), torch.ones(3), rtol=1e-5, atol=1e-6)
    assert [layer.weight.shape for layer in mapping.layers] == [(5, 4), (6, 5)]
    with pytest.raises(ValueError, match="in_features == out_features"):
        MappingNetwork(4, 6, num_layers=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(feature_channels=9), "multiple of num_groups"),
        (dict(style_dim=7), "style_dim"),
        (dict(mlp_type="relu"), "mlp_type"),
        (dict(noise_placement="before"), "noise_placement"),
        (dict(query_order="xyz"), "query_order"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_retrieval(**kwargs)
