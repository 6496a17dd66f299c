import pytest
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


def test_unread_nodes_are_the_key_values_no_code_came_near():
    model = BRICSAutoencoder.from_preset("tiny").eval()
    grid = model.retrieval.grids[0]
    level = grid.num_dense_levels - 1
    scale = grid.levels[level]["scale"]
    usage = GridUsage(model)
    usage.update(torch.rand(200, 2, 8, 8) * 0.5)  # key codes in [0, 0.5): the upper key nodes stay unread
    nodes = usage.unread_nodes(0, level)
    assert nodes.shape[1] == grid.input_dim and len(nodes) > 0
    assert bool(((nodes[:, 0] - 0.5) / scale >= 0.5 - 1 / scale).all())
    reachable = usage.reachable_rows(grid, level).numel()
    torch.testing.assert_close(usage.hit_fraction()[0, level], torch.tensor(1 - len(nodes) / reachable))
    hashed = [i for i, plan in enumerate(grid.levels) if not plan["dense"]]
    assert hashed, "the tiny preset has hashed levels"
    with pytest.raises(ValueError, match="not dense"):
        usage.unread_nodes(0, hashed[0])


def test_trained_entries_are_exactly_the_entries_training_read():
    torch.manual_seed(0)
    model = BRICSAutoencoder.from_preset("tiny").eval()  # eval: no relaxed-precision noise, reads are known
    assert float(GridUsage.trained_entries(model).hit_fraction(reachable_only=False).max()) == 0.0
    codes = torch.rand(6, 2, 8, 8) * 0.5  # the upper half of the key range is never read
    grids = [p for n, p in model.named_parameters() if n.endswith("embeddings")]
    optimizer = torch.optim.Adam(grids, lr=1e-2, betas=(0.0, 0.99), eps=1e-15)
    for _ in range(3):
        optimizer.zero_grad()
        model.retrieval(codes)[0].sub(1).square().mean().backward()
        optimizer.step()
    read = GridUsage(model)
    read.update(codes)
    trained = GridUsage.trained_entries(model)
    for read_counts, trained_counts in zip(read.counts, trained.counts):
        assert torch.equal(read_counts > 0, trained_counts > 0)
    finest_dense = model.retrieval.grids[0].num_dense_levels - 1
    assert 0.0 < float(trained.hit_fraction()[:, finest_dense].max()) < 1.0
    torch.testing.assert_close(trained.hit_fraction(), read.hit_fraction())


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.rand(2, 2, 8, 8) * 2 - 1, r"\[0, 1\]"),  # codes mapped to [-1, 1]
        (torch.rand(2, 2, 8, 8).index_fill(3, torch.tensor([1]), float("nan")), "NaN"),
        (torch.rand(2, 2, 4, 4), r"shape \(batch, 2, 8, 8\)"),  # a smaller latent grid is tiled silently otherwise
        (torch.rand(2, 3, 8, 8), r"shape \(batch, 2, 8, 8\)"),
        (torch.rand(2, 8, 8), r"shape \(batch, 2, 8, 8\)"),
        (torch.ones(2, 2, 8, 8, dtype=torch.uint8), "floating point"),
    ],
    ids=["minus-one-to-one", "nan", "small-latents", "channels", "3d", "uint8"],
)
def test_update_rejects_key_codes_that_do_not_fit_the_model(codes, message):
    model = BRICSAutoencoder.from_preset("tiny").eval()
    assert model.latent_shape == (2, 8, 8)
    usage = GridUsage(model)
    with pytest.raises(ValueError, match=rf"^key_codes\b.*{message}"):
        usage.update(codes)
    assert all(int(counts.sum()) == 0 for counts in usage.counts)


def test_group_and_level_outside_the_model_raise_with_the_valid_range():
    model = BRICSAutoencoder.from_preset("tiny").eval()
    grid = model.retrieval.grids[0]
    levels, dense = len(grid.levels), grid.num_dense_levels
    usage = GridUsage(model)
    usage.update(torch.rand(2, 2, 8, 8))
    for group in (2, -1):
        with pytest.raises(ValueError, match=r"^group must be an integer in \[0, 1\]"):
            usage.unread_nodes(group, 0)
    for level in (levels, -1, 0.5):
        with pytest.raises(ValueError, match=rf"^level must be an integer in \[0, {levels - 1}\]"):
            usage.unread_nodes(0, level)
        with pytest.raises(ValueError, match=rf"^level must be an integer in \[0, {levels - 1}\]"):
            usage.level_rows(grid, level)
        with pytest.raises(ValueError, match=rf"^level must be an integer in \[0, {levels - 1}\]"):
            usage.reachable_rows(grid, level)
    # a hashed level has no lattice nodes to reach; level_rows counts all of its entries instead
    with pytest.raises(ValueError, match="not dense"):
        usage.reachable_rows(grid, dense)
    assert usage.level_rows(grid, dense).numel() == grid.levels[dense]["entries"]
