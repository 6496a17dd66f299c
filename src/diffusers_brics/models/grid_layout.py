"""Where every level of a `MultiResolutionFeatureGrid` lies in its parameter table, and how it is indexed.

`GridLayout` is computed once, by the grid's constructor, and handed with plain tensors (queries, the table) to
the look-up backends (`grid_triton`), which therefore need nothing from the grid module itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Coherent primes of instant-NGP's spatial hash (the first is 1 so that dimension 0 stays coherent).
HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037)


@dataclass(frozen=True)
class LevelLayout:
    """One level of the grid.

    Attributes:
        scale: ``r_min * b**l - 1``; a query ``q`` falls at ``q * scale + 0.5`` in the level's lattice.
        resolution: ``ceil(scale) + 1``.
        nodes_per_axis: ``resolution + 1`` (convention ``"torch-ngp"``) or ``resolution`` (``"tcnn"``).
        offset: the level's first row in the parameter table.
        entries: the level's rows (at most ``T``, padded to a multiple of 8).
        dense: one row per lattice node.
        hashed: a shared level indexed by the spatial hash (indexing ``"hash"``); shared levels that are not
            hashed are tiled (the dense row modulo ``entries``).
        wraps: rows are taken modulo ``entries`` (shared levels, and every level of the ``"tcnn"`` convention).
        strides: row stride of each axis, 0 from the first axis whose stride exceeds ``entries`` (as the
            authors' kernel, which stops adding axes there).
    """

    scale: float
    resolution: int
    nodes_per_axis: int
    offset: int
    entries: int
    dense: bool
    hashed: bool
    wraps: bool
    strides: tuple[int, ...]


@dataclass(frozen=True)
class GridLayout:
    """All levels of a grid of ``input_dim``-D queries, coarsest first (dense levels precede shared ones)."""

    input_dim: int
    levels: tuple[LevelLayout, ...]

    @classmethod
    def build(
        cls,
        input_dim: int,
        num_levels: int,
        min_resolution: float,
        max_resolution: float,
        log2_hashmap_size: int,
        convention: str,
        indexing: str,
    ) -> GridLayout:
        """The layout of a grid with these settings (see `MultiResolutionFeatureGrid` for their meaning)."""
        growth = (max_resolution / min_resolution) ** (1.0 / (num_levels - 1)) if num_levels > 1 else 1.0
        max_entries = 2**log2_hashmap_size
        levels, offset = [], 0
        for level in range(num_levels):
            scale = min_resolution * growth**level - 1.0
            resolution = math.ceil(scale) + 1
            nodes_per_axis = resolution + 1 if convention == "torch-ngp" else resolution
            dense_nodes = nodes_per_axis**input_dim
            entries = min(max_entries, dense_nodes)
            entries = (entries + 7) // 8 * 8  # tables are padded to a multiple of 8 entries, as in the official code
            dense = dense_nodes <= entries
            strides = tuple(nodes_per_axis**d if nodes_per_axis**d <= entries else 0 for d in range(input_dim))
            levels.append(LevelLayout(
                scale=scale, resolution=resolution, nodes_per_axis=nodes_per_axis, offset=offset, entries=entries,
                dense=dense, hashed=not dense and indexing == "hash", wraps=not dense or convention == "tcnn",
                strides=strides,
            ))
            offset += entries
        return cls(input_dim=input_dim, levels=tuple(levels))

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def total_entries(self) -> int:
        """Rows of the whole parameter table."""
        return sum(level.entries for level in self.levels)

    @property
    def num_dense_levels(self) -> int:
        return sum(level.dense for level in self.levels)

    @property
    def hash_from(self) -> int:
        """The first hashed level (``num_levels`` if none): hashed levels are the last ones."""
        return next((i for i, level in enumerate(self.levels) if level.hashed), self.num_levels)

    @property
    def wrap_from(self) -> int:
        """The first level whose rows wrap modulo its entries (``num_levels`` if none): they are the last ones."""
        return next((i for i, level in enumerate(self.levels) if level.wraps), self.num_levels)

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(level.scale for level in self.levels)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(level.offset for level in self.levels)

    @property
    def entries(self) -> tuple[int, ...]:
        return tuple(level.entries for level in self.levels)

    @property
    def strides(self) -> tuple[int, ...]:
        """The strides of every level, level-major: ``(L * D,)``."""
        return tuple(stride for level in self.levels for stride in level.strides)

    @property
    def primes(self) -> tuple[int, ...]:
        """The hash primes of the ``input_dim`` axes."""
        return HASH_PRIMES[: self.input_dim]
