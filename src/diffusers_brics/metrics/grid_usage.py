"""Grid usage (paper Figure 4b): which feature-grid entries the key codes of a dataset actually read."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..models.autoencoder_brics import BRICSAutoencoder
from ..models.autoencoder_checks import check_latents
from ..utils import is_integer
from .codebook_usage import usage_summary


class GridUsage:
    """Counts, per group and level, how often each table entry is read with a non-zero interpolation weight.

    Feed key codes with `update`, then read `hit_fraction()`: ``(N_h, N_r)``, the share of a level's entries
    that were read at least once. Shared levels (more nodes than ``T``, tiled or hashed) count all ``T`` entries.
    Dense levels count, by default, the
    *reachable* nodes: those some query can touch, given key codes in ``[0, 1]`` and the fixed lattice of pixel
    coordinates (a grid finer than the feature block skips nodes between pixel centres, and with a
    non-integer scale the last node of an axis lies beyond ``1``). ``reachable_only=False`` counts every node.
    """

    def __init__(self, model: BRICSAutoencoder):
        self.model = model
        self.counts = [torch.zeros(grid.embeddings.shape[0], dtype=torch.long) for grid in model.retrieval.grids]

    @classmethod
    @torch.no_grad()
    def trained_entries(cls, model: BRICSAutoencoder) -> "GridUsage":
        """The entries training has moved out of their initialisation interval, counted as read once.

        An entry only moves when some training query reads it (its gradient is zero otherwise, and Adam leaves it
        where it is), and one that was moved lands back inside ``[-grid_init_scale, grid_init_scale]`` on all of its
        ``C_v`` features only by chance. So ``GridUsage.trained_entries(model).hit_fraction()`` is the share of
        entries that training reached, read off any saved model (EMA weights included) with no data.
        """
        usage = cls(model)
        bound = model.config.grid_init_scale
        for grid, counts in zip(model.retrieval.grids, usage.counts):
            counts += (grid.embeddings.detach().abs().amax(dim=-1) > bound).long().cpu()
        return usage

    @torch.no_grad()
    def update(self, key_codes: torch.Tensor) -> None:
        """Add the reads of key codes ``(B, C_z, H_z, W_z)`` in ``[0, 1]`` (relaxed-precision noise off).

        ``(C_z, H_z, W_z)`` is the model's ``latent_shape``; other shapes, values outside ``[0, 1]`` and NaN raise
        ValueError.
        """
        check_latents(key_codes, self.model.config, "key_codes")
        retrieval = self.model.retrieval
        queries = retrieval.queries(key_codes, relaxed_precision=False)
        for grid, q, counts in zip(retrieval.grids, queries, self.counts):
            index, weights = grid.corner_indices(q)
            read = index[weights > 0].cpu()
            counts += torch.bincount(read, minlength=counts.numel())

    def reachable_rows(self, grid, level: int) -> torch.Tensor:
        """Rows of a dense level's table that some query can touch (a shared level raises ValueError)."""
        _check_index("level", level, len(grid.levels))
        if not grid.levels[level]["dense"]:
            raise ValueError(f"level {level} is not dense: its {grid.indexing} entries are shared by several lattice "
                             "nodes")
        plan, retrieval = grid.levels[level], self.model.retrieval
        scale, size = plan["scale"], retrieval.feature_size
        key_nodes = torch.arange(int(scale + 0.5) + 2)  # key codes span [0, 1]
        centres = torch.floor((torch.arange(size) + 0.5) / size * scale + 0.5).long()
        pixel_nodes = torch.unique(torch.cat([centres, centres + 1]))
        axes = [key_nodes if axis in retrieval.key_axes else pixel_nodes for axis in range(grid.input_dim)]
        nodes = torch.cartesian_prod(*axes).view(-1, grid.input_dim)
        strides = torch.tensor([plan["nodes_per_axis"] ** d for d in range(grid.input_dim)])
        return torch.unique((nodes * strides).sum(-1) % plan["entries"]) + int(grid.level_starts[level])

    def unread_nodes(self, group: int, level: int) -> torch.Tensor:
        """``(M, D)`` lattice coordinates (key axes, then row, then column, whatever the grid's query order) of the
        reachable nodes of a dense level never read.

        Node ``k`` of a key axis sits at key value ``(k - 0.5) / scale``; where the unread nodes lie tells whether
        usage is limited by the key codes' range (outermost nodes) or by the grid's capacity (everywhere).
        """
        _check_index("group", group, len(self.counts))
        grid = self.model.retrieval.grids[group]
        rows = self.reachable_rows(grid, level)
        unread = rows[self.counts[group][rows] == 0] - int(grid.level_starts[level])
        n = grid.levels[level]["nodes_per_axis"]
        retrieval = self.model.retrieval
        order = [*retrieval.key_axes, *retrieval.pixel_axes]
        return torch.stack([(unread // n**d) % n for d in order], dim=-1)

    def level_rows(self, grid, level: int, reachable_only: bool = True) -> torch.Tensor:
        """Rows of a grid's table that a level's usage counts: every entry of a shared level; the reachable nodes
        of a dense level (all of its nodes with ``reachable_only=False``)."""
        _check_index("level", level, len(grid.levels))
        plan, start = grid.levels[level], int(grid.level_starts[level])
        if not plan["dense"]:
            return torch.arange(start, start + plan["entries"])
        if not reachable_only:
            return torch.arange(start, start + plan["nodes_per_axis"] ** grid.input_dim)
        return self.reachable_rows(grid, level)

    def level_summary(self, group: int, level: int, reachable_only: bool = True) -> dict[str, float]:
        """The reads of one level's (reachable) entries in the report a VQ codebook gets (`usage_summary`)."""
        _check_index("group", group, len(self.counts))
        grid = self.model.retrieval.grids[group]
        return usage_summary(self.counts[group][self.level_rows(grid, level, reachable_only)])

    def hit_fraction(self, reachable_only: bool = True) -> torch.Tensor:
        """``(N_h, N_r)`` fraction of (reachable) entries read at least once."""
        return torch.tensor([
            [float((counts[self.level_rows(grid, level, reachable_only)] > 0).float().mean())
             for level in range(len(grid.levels))]
            for grid, counts in zip(self.model.retrieval.grids, self.counts)
        ])


def _check_index(name: str, value: int, count: int) -> None:
    """Raise ValueError unless ``value`` is an integer in ``[0, count)``."""
    if not is_integer(value) or not 0 <= value < count:
        raise ValueError(f"{name} must be an integer in [0, {count - 1}] (there are {count} {name}s), got {value!r}")


@torch.no_grad()
def grid_usage(model: BRICSAutoencoder, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """``(N_h, N_r)`` hit fractions for the images of ``batches`` (each ``(B, 3, H, W)`` in ``[-1, 1]``)."""
    usage = GridUsage(model)
    for images in batches:
        usage.update(model.encode(images, sample_posterior=False).latents)
    return usage.hit_fraction()
