import math

import pytest
import torch

from diffusers_brics.models import MultiResolutionFeatureGrid
from diffusers_brics.models.feature_grid import HASH_PRIMES
from diffusers_brics.models.grid_interpolation import InterpolateTable


def small_grid(input_dim=3, **kwargs):
    options = dict(num_levels=4, features_per_level=2, log2_hashmap_size=8, min_resolution=2, max_resolution=12)
    options.update(kwargs)
    return MultiResolutionFeatureGrid(input_dim, backend="torch", **options)


def reference_lookup(grid, x):
    """Loop-per-corner reference of the official indexing and D-linear interpolation.

    Rows follow the authors' CUDA kernel (``get_grid_index``): the stride grows by the nodes per axis, an axis
    is added while the stride fits in the level's table, and a level whose lattice does not fit is either
    hashed or taken modulo the table size (tiled)."""
    outs = []
    for level, plan in enumerate(grid.levels):
        pos = x * plan["scale"] + 0.5
        cell = pos.floor()
        frac = pos - cell
        cell = cell.long()
        acc = torch.zeros(x.shape[0], grid.features_per_level, dtype=x.dtype)
        for k in range(2**grid.input_dim):
            bits = [(k >> d) & 1 for d in range(grid.input_dim)]
            corner = cell + torch.tensor(bits)
            weight = torch.ones(x.shape[0], dtype=x.dtype)
            for d, bit in enumerate(bits):
                weight = weight * (frac[:, d] if bit else 1 - frac[:, d])
            if not plan["dense"] and grid.indexing == "hash":
                h = torch.zeros(x.shape[0], dtype=torch.long)
                for d in range(grid.input_dim):
                    h ^= corner[:, d] * HASH_PRIMES[d]
                row = (h & 0xFFFFFFFF) % plan["entries"]
            else:
                row, stride = torch.zeros(x.shape[0], dtype=torch.long), 1
                for d in range(grid.input_dim):
                    if stride > plan["entries"]:
                        break
                    row += corner[:, d] * stride
                    stride *= plan["nodes_per_axis"]
                row = row % plan["entries"]
            acc += weight[:, None] * grid.embeddings.detach().to(x.dtype)[int(grid.level_starts[level]) + row]
        outs.append(acc)
    return torch.cat(outs, dim=1)


def test_paper_configuration_parameter_count():
    # 64x64x4 key codes: 4 groups, 3-D queries, 16 levels, C_v 4, T 2^18, r 16..64 -> Table 3's 18.6M.
    grid = MultiResolutionFeatureGrid(3, 16, 4, 18, 16, 64, backend="torch")
    assert grid.embeddings.numel() * 4 == 18_630_272
    assert grid.num_dense_levels == 15
    assert all(n % 8 == 0 for n in grid.num_entries)
    assert grid.num_entries[-1] == 2**18


def test_tcnn_convention_counts_resolution_nodes_per_axis():
    grid = MultiResolutionFeatureGrid(3, 16, 4, 18, 16, 64, backend="torch", convention="tcnn")
    expected = 0
    growth = 4 ** (1 / 15)
    for level in range(16):
        resolution = math.ceil(16 * growth**level - 1) + 1
        expected += (min(2**18, resolution**3) + 7) // 8 * 8
    assert grid.embeddings.numel() == expected * 4


@pytest.mark.parametrize("input_dim", [2, 3, 4, 5])
@pytest.mark.parametrize("convention", ["torch-ngp", "tcnn"])
@pytest.mark.parametrize("indexing", ["tiled", "hash"])
def test_matches_reference_for_dense_and_shared_levels(input_dim, convention, indexing):
    grid = small_grid(input_dim, convention=convention, indexing=indexing, log2_hashmap_size=6 if input_dim == 2 else 8)
    assert 0 < grid.num_dense_levels < grid.num_levels  # both kinds of level are exercised
    torch.nn.init.normal_(grid.embeddings)
    x = torch.rand(300, input_dim)
    x[:5] = torch.tensor([0.0, 1.0]).repeat_interleave(input_dim)[: input_dim].expand(5, -1)  # edges
    out = grid(x)
    assert out.shape == (300, grid.num_levels * grid.features_per_level)
    torch.testing.assert_close(out, reference_lookup(grid, x), rtol=1e-5, atol=1e-5)


def test_tiled_indexing_hand_computed():
    # One level of 5 nodes per axis (scale 3) in 32 entries: rows (x + 5 y + 25 k) mod 32, paper eq. 6.
    grid = MultiResolutionFeatureGrid(3, 1, 1, 5, 4, 4, backend="torch", indexing="tiled")
    assert grid.levels[0]["nodes_per_axis"] == 5 and not grid.levels[0]["dense"] and grid.num_entries == [32]
    with torch.no_grad():
        grid.embeddings.copy_(torch.arange(32.0).view(32, 1))  # each entry holds its row number
    # pos = (0.5, 0.3, 0.9) * 3 + 0.5 = (2.0, 1.4, 3.2): cell (2, 1, 3), weights 0.6/0.4 on y and 0.8/0.2 on k;
    # rows: (2,1,3) -> 82 % 32 = 18, (2,2,3) -> 23, (2,1,4) -> 107 % 32 = 11, (2,2,4) -> 16
    out = grid(torch.tensor([[0.5, 0.3, 0.9]]))
    torch.testing.assert_close(out, torch.tensor([[0.48 * 18 + 0.32 * 23 + 0.12 * 11 + 0.08 * 16]]))
    # With 8 entries the authors' kernel stops adding axes once the stride (25) exceeds the table: rows x + 5 y.
    grid = MultiResolutionFeatureGrid(3, 1, 1, 3, 4, 4, backend="torch", indexing="tiled")
    with torch.no_grad():
        grid.embeddings.copy_(torch.arange(8.0).view(8, 1))
    out = grid(torch.tensor([[0.5, 0.3, 0.9]]))  # rows (2,1) -> 7 and (2,2) -> 12 % 8 = 4, whatever k
    torch.testing.assert_close(out, torch.tensor([[0.6 * 7 + 0.4 * 4]]))


def test_hash_indexing_differs_from_tiling_only_on_shared_levels():
    tiled, hashed = small_grid(3, indexing="tiled"), small_grid(3, indexing="hash")
    hashed.load_state_dict(tiled.state_dict())
    x = torch.rand(200, 3)
    (i_tiled, _), (i_hashed, _) = tiled.corner_indices(x), hashed.corner_indices(x)
    dense = tiled.num_dense_levels
    assert torch.equal(i_tiled[:, :dense], i_hashed[:, :dense])
    assert not torch.equal(i_tiled[:, dense:], i_hashed[:, dense:])


def test_constant_table_gives_constant_everywhere():
    grid = small_grid(3)
    with torch.no_grad():
        grid.embeddings.fill_(0.37)
    x = torch.rand(1000, 3)
    x[0] = 0.0
    x[1] = 1.0
    torch.testing.assert_close(grid(x), torch.full((1000, 8), 0.37))


def test_gradcheck_wrt_queries_and_table():
    grid = small_grid(3).double()
    torch.nn.init.normal_(grid.embeddings)
    # keep queries away from cell borders, where the D-linear interpolation has a kink
    x = torch.rand(20, 3, dtype=torch.float64)
    pos = x.unsqueeze(1) * torch.tensor(grid.scales, dtype=torch.float64).view(1, -1, 1) + 0.5
    frac = pos - pos.floor()
    x = x[((frac > 0.02) & (frac < 0.98)).all(dim=(1, 2))][:8].requires_grad_(True)
    assert x.shape[0] >= 2
    assert torch.autograd.gradcheck(grid, (x,), eps=1e-6, atol=1e-5)

    frac, index = grid.lattice(x.detach())
    table = grid.embeddings.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: InterpolateTable.apply(frac, index, t), (table,), eps=1e-6, atol=1e-5)
    frac = frac.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: InterpolateTable.apply(f, index, table), (frac,), eps=1e-6, atol=1e-5)


def test_gradient_reaches_queries():
    grid = small_grid(3)
    torch.nn.init.normal_(grid.embeddings)
    x = torch.rand(64, 3, requires_grad=True)
    grid(x).square().sum().backward()
    assert x.grad is not None and bool((x.grad.abs().sum(dim=1) > 0).all())


def test_each_query_touches_at_most_2_pow_d_entries_per_level():
    grid = small_grid(3)
    for x in torch.rand(10, 1, 3):
        grid.zero_grad()
        grid(x).sum().backward()
        touched = grid.embeddings.grad.abs().sum(dim=1) > 0
        for level in range(grid.num_levels):
            start = int(grid.level_starts[level])
            count = int(touched[start : start + grid.num_entries[level]].sum())
            assert 1 <= count <= 2**3
        index, weights = grid.corner_indices(x)
        assert index.shape == (8, grid.num_levels, 1)
        torch.testing.assert_close(weights.sum(0), torch.ones(grid.num_levels, 1))


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(4, 2), r"shape \(N, 3\)"),
        (torch.rand(4, 3, 1), r"shape \(N, 3\)"),
        (torch.ones(4, 3, dtype=torch.long), "floating point"),
        (torch.full((4, 3), 1.5), r"\[0, 1\]"),
        (torch.full((4, 3), float("nan")), "NaN"),
    ],
)
def test_bad_queries_raise_value_error(x, message):
    with pytest.raises(ValueError, match=message):
        small_grid(3)(x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_dim=6), "input_dim"),
        (dict(input_dim=1), "input_dim"),
        (dict(min_resolution=8, max_resolution=4), "min_resolution"),
        (dict(log2_hashmap_size=40), "log2_hashmap_size"),
        (dict(convention="nerf"), "convention"),
        (dict(indexing="modulo"), "indexing"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiResolutionFeatureGrid(**kwargs)


def test_auto_backend_is_torch_where_tcnn_cannot_run():
    grid = MultiResolutionFeatureGrid(3, backend="auto")
    assert grid.backend == "torch"
    assert "torch-ngp" in grid.tcnn_unavailable_reason()
    tiled = MultiResolutionFeatureGrid(3, 4, 2, 10, 4, 16, backend="auto", convention="tcnn", indexing="tiled")
    assert tiled.backend == "torch" and "tiles" in tiled.tcnn_unavailable_reason()


def test_unavailable_tcnn_backend_warns_and_uses_auto():
    grid = MultiResolutionFeatureGrid(3, 4, 2, 10, 4, 16, backend="torch", convention="tcnn", indexing="hash")
    reason = grid.tcnn_unavailable_reason()
    if reason is None:
        pytest.skip("tinycudann and CUDA are available; covered by test_tcnn_backend_matches_torch")
    with pytest.warns(UserWarning, match=r"grid backend 'tcnn' cannot run on this machine: .*Using 'auto' instead"):
        fallback = MultiResolutionFeatureGrid(3, 4, 2, 10, 4, 16, backend="tcnn", convention="tcnn", indexing="hash")
    auto = MultiResolutionFeatureGrid(3, 4, 2, 10, 4, 16, backend="auto", convention="tcnn", indexing="hash")
    assert fallback.backend == auto.backend and fallback.requested_backend == "tcnn"


def test_tcnn_backend_for_a_grid_it_cannot_serve_is_refused():
    with pytest.raises(ValueError, match=r"backend='tcnn' cannot serve this grid on any machine: .*'torch-ngp'"):
        MultiResolutionFeatureGrid(3, backend="tcnn")


def test_backend_is_resolved_once_at_construction(monkeypatch):
    probes = []
    for name in ("triton_unavailable_reason", "tcnn_unavailable_reason"):

        def counted(self, device=None, name=name, probe=getattr(MultiResolutionFeatureGrid, name)):  # noqa: B008
            probes.append(name)
            return probe(self, device)

        monkeypatch.setattr(MultiResolutionFeatureGrid, name, counted)
    grid = MultiResolutionFeatureGrid(3, 4, 2, 8, 2, 12, backend="auto")
    assert probes.count("triton_unavailable_reason") == 1
    resolved, probed = grid.backend, list(probes)
    x = torch.rand(64, 3, requires_grad=True)
    for _ in range(3):
        grid(x).sum().backward()
    assert probes == probed and grid.backend == resolved and grid.requested_backend == "auto"


def test_layout_is_frozen_and_matches_the_tables():
    grid = small_grid(3, indexing="hash")
    layout = grid.layout
    with pytest.raises(AttributeError):
        layout.levels = ()
    assert layout.total_entries == grid.embeddings.shape[0] and layout.num_dense_levels == grid.num_dense_levels
    assert list(layout.offsets) == grid.level_starts.tolist() and list(layout.entries) == grid.num_entries
    assert [list(level.strides) for level in layout.levels] == grid.strides.tolist()
    assert [level.hashed for level in layout.levels] == [not plan["dense"] for plan in grid.levels]
    assert layout.hash_from == layout.wrap_from == grid.num_dense_levels
    assert all(level.resolution == math.ceil(level.scale) + 1 for level in layout.levels)


def test_tcnn_backend_matches_torch():
    probe = MultiResolutionFeatureGrid(3, 4, 2, 10, 4, 16, backend="torch", convention="tcnn", indexing="hash")
    reason = probe.tcnn_unavailable_reason()
    if reason is not None:
        pytest.skip(f"tiny-cuda-nn backend unavailable: {reason}")
    grid = MultiResolutionFeatureGrid(3, 4, 2, 10, 4, 16, backend="tcnn", convention="tcnn", indexing="hash").cuda()
    torch.nn.init.normal_(grid.embeddings)
    x = torch.rand(512, 3, device="cuda")
    out_tcnn = grid(x)
    grid.backend = "torch"
    torch.testing.assert_close(out_tcnn, grid(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_queries_address_the_same_rows_as_float32(dtype):
    # The paper's finest level (r_max 64) holds a dense lattice where x * scale needs more bits than
    # fp16/bf16 carry; the look-up must widen the queries rather than read neighbouring rows.
    grid = MultiResolutionFeatureGrid(3, 8, 4, 15, 4, 64, backend="torch")
    torch.nn.init.normal_(grid.embeddings)
    x = torch.rand(4000, 3).to(dtype)  # values exactly representable in `dtype`
    index, weights = grid.corner_indices(x)
    ref_index, ref_weights = grid.corner_indices(x.float())
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(weights, ref_weights)
    out = grid(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), grid(x.float()), rtol=0, atol=2e-2)


def test_half_precision_table_is_read_and_trained_in_float32():
    grid = small_grid(3).half()
    torch.nn.init.normal_(grid.embeddings)
    x = torch.rand(100, 3)
    out = grid(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_lookup(grid, x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert grid.embeddings.grad.dtype == torch.float16 and grid.embeddings.grad.abs().sum() > 0
