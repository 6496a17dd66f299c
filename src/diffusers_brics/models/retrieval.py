"""Feature retrieval: key codes -> feature block (paper section 3.2, equations 1-2, Figure 3 middle).

The key code ``z`` of shape ``(B, C_z, H_z, W_z)``, ``C_z = N_h * C_key``, is

1. *tiled* interleavingly (each code repeated in a ``H_d/H_z x W_d/W_z`` patch) to ``(H_d, W_d)``;
2. in training, perturbed by the *relaxed-precision* noise ``N(0, (1 / (4 r_max))^2)`` and clipped to
   ``[0, 1]``, so the decoder learns to tolerate the imprecision of codes sampled later by diffusion. The
   authors' release draws it once per key code, before tiling (``noise_placement="per_key_code"``); the
   paper's eq. 1 once per tiled position (``"per_position"``);
3. split into ``N_h`` slices of ``C_key`` channels, each joined with the pixel coordinates
   ``((i + 0.5) / H_d, (j + 0.5) / W_d)`` into queries ``q`` in ``[0, 1]^(C_key + 2)``: in the release's order
   (column, row, key) or in eq. 1's (key, row, column);
4. looked up in the slice's own multi-resolution feature grid ``G_s`` and mapped by a small MLP ``F_mlp`` to
   ``C_d / N_h`` channels; the ``N_h`` results stacked along channels form the feature block ``f``.

In the authors' release (``gridencoder/grid.py``, the ``one_hash_group`` branch) each group also pools its grid
features over the image (mean, then 2nd-moment normalisation) and maps them with two small networks: one gives
the style that modulates the group's ``F_mlp`` (a `ModulatedMLP`), the other the group's part of the decoder's
style code. Both are used by default; a plain Linear/ReLU ``F_mlp`` and a decoder with a mapping network of its
own are the options the paper's text also allows.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .feature_grid import GridBackend, GridConvention, GridIndexing, MultiResolutionFeatureGrid
from .style_layers import MappingNetwork, ModulatedMLP, normalize_2nd_moment

QueryOrder = Literal["col-row-key", "key-row-col"]
NoisePlacement = Literal["per_key_code", "per_position"]
MlpType = Literal["modulated", "plain"]


def pixel_coordinates(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Normalised pixel centres ``((i + 0.5) / H, (j + 0.5) / W)`` as a ``(H * W, 2)`` tensor, row-major."""
    rows = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def _plain_mlp(in_features: int, hidden: int, out_features: int, hidden_layers: int) -> nn.Sequential:
    layers, width = [], in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class KeyCodeRetrieval(nn.Module):
    r"""Retrieves the feature block ``f`` (and the decoder's style) for key codes ``z``.

    Args:
        num_groups (`int`): ``N_h``, the number of groups of feature grids (and of key-code slices).
        key_channels (`int`): ``C_key``, channels of one key-code slice.
        feature_size (`int`): ``H_d = W_d``, the spatial size of the feature block.
        feature_channels (`int`): ``C_d``, the channels of the feature block (a multiple of ``N_h``).
        num_levels, features_per_level, log2_hashmap_size, min_resolution, max_resolution, init_scale,
        backend, convention, indexing: passed to every `MultiResolutionFeatureGrid`.
        mlp_type (`str`): ``"modulated"`` (release: `ModulatedMLP` styled by the group's pooled grid features)
            or ``"plain"`` (Linear/ReLU).
        mlp_hidden_layers (`int`): hidden layers of ``F_mlp`` (2: the release's 3 linear layers).
        mlp_hidden_channels (`int`, *optional*): their width; defaults to ``N_r * C_v``.
        style_dim (`int`, *optional*): with a value, each group maps its pooled grid features to
            ``style_dim / N_h`` channels of the decoder's style code (the release); None: no style here.
        style_layers (`int`): layers of those group style networks (release: 3).
        relaxed_precision (`bool`): add the relaxed-precision noise in training mode.
        noise_placement (`str`): ``"per_key_code"`` (release) or ``"per_position"`` (paper eq. 1).
        query_order (`str`): ``"col-row-key"`` (release) or ``"key-row-col"`` (paper eq. 1).
    """

    def __init__(
        self,
        num_groups: int = 4,
        key_channels: int = 1,
        feature_size: int = 64,
        feature_channels: int = 512,
        num_levels: int = 16,
        features_per_level: int = 4,
        log2_hashmap_size: int = 18,
        min_resolution: float = 16,
        max_resolution: float = 64,
        init_scale: float = 1e-4,
        backend: GridBackend = "auto",
        convention: GridConvention = "torch-ngp",
        indexing: GridIndexing = "tiled",
        mlp_type: MlpType = "modulated",
        mlp_hidden_layers: int = 2,
        mlp_hidden_channels: int | None = None,
        style_dim: int | None = 512,
        style_layers: int = 3,
        relaxed_precision: bool = True,
        noise_placement: NoisePlacement = "per_key_code",
        query_order: QueryOrder = "col-row-key",
    ):
        super().__init__()
        if feature_channels % num_groups:
            raise ValueError(
                f"feature_channels ({feature_channels}) must be a multiple of num_groups ({num_groups})"
            )
        if style_dim is not None and style_dim % num_groups:
            raise ValueError(f"style_dim ({style_dim}) must be a multiple of num_groups ({num_groups}): each group "
                             "of feature grids gives an equal part of the decoder's style")
        for name, value, allowed in (("mlp_type", mlp_type, ("modulated", "plain")),
                                     ("noise_placement", noise_placement, ("per_key_code", "per_position")),
                                     ("query_order", query_order, ("col-row-key", "key-row-col"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        self.num_groups = num_groups
        self.key_channels = key_channels
        self.feature_size = feature_size
        self.feature_channels = feature_channels
        self.max_resolution = max_resolution
        self.relaxed_precision = relaxed_precision
        self.noise_placement = noise_placement
        self.query_order = query_order
        self.grids = nn.ModuleList(
            MultiResolutionFeatureGrid(
                input_dim=key_channels + 2,
                num_levels=num_levels,
                features_per_level=features_per_level,
                log2_hashmap_size=log2_hashmap_size,
                min_resolution=min_resolution,
                max_resolution=max_resolution,
                init_scale=init_scale,
                backend=backend,
                convention=convention,
                indexing=indexing,
            )
            for _ in range(num_groups)
        )
        grid_channels = num_levels * features_per_level
        hidden = mlp_hidden_channels or grid_channels
        out_channels = feature_channels // num_groups
        if mlp_type == "modulated":
            # The release's modulation style: twice the grid channels, from a 2-layer mapping network.
            modulation_dim = 2 * grid_channels
            self.modulation_mappings = nn.ModuleList(
                MappingNetwork(grid_channels, modulation_dim, num_layers=2, hidden_features=grid_channels)
                for _ in range(num_groups)
            )
            self.mlps = nn.ModuleList(
                ModulatedMLP(grid_channels, hidden, out_channels, modulation_dim, mlp_hidden_layers + 1)
                for _ in range(num_groups)
            )
        else:
            self.modulation_mappings = None
            self.mlps = nn.ModuleList(
                _plain_mlp(grid_channels, hidden, out_channels, mlp_hidden_layers) for _ in range(num_groups)
            )
        self.style_dim = style_dim
        self.style_mappings = None if style_dim is None else nn.ModuleList(
            MappingNetwork(grid_channels, style_dim // num_groups, num_layers=style_layers,
                           hidden_features=grid_channels)
            for _ in range(num_groups)
        )

    @property
    def key_axes(self) -> tuple[int, ...]:
        """Axes of a query ``q`` that hold the key code (``C_key`` of them)."""
        first = 2 if self.query_order == "col-row-key" else 0
        return tuple(range(first, first + self.key_channels))

    @property
    def pixel_axes(self) -> tuple[int, int]:
        """Axes of a query ``q`` that hold the pixel's row and column coordinates."""
        return (1, 0) if self.query_order == "col-row-key" else (self.key_channels, self.key_channels + 1)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the relaxed-precision noise, ``1 / (4 r_max)``."""
        return 1.0 / (4.0 * self.max_resolution)

    def tile(self, z: torch.Tensor) -> torch.Tensor:
        """Interleaved tiling ``(B, C_z, H_z, W_z) -> (B, C_z, H_d, W_d)``: each code fills a patch."""
        factor_h = self.feature_size // z.shape[-2]
        factor_w = self.feature_size // z.shape[-1]
        return z.repeat_interleave(factor_h, dim=-2).repeat_interleave(factor_w, dim=-1)

    def _perturb(self, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return (z + noise * self.noise_std).clamp(0.0, 1.0)

    def queries(
        self, z: torch.Tensor, generator: torch.Generator | None = None, relaxed_precision: bool | None = None
    ) -> torch.Tensor:
        """Combined key codes ``q``: ``(N_h, B * H_d * W_d, C_key + 2)`` in ``[0, 1]``, at least float32.

        ``relaxed_precision`` adds the noise (drawn from ``generator``); None: in training mode, when the module
        was built with it. Half-precision codes (a model in fp16/bf16, or autocast) are widened first: the finest
        levels address cells of ``1 / r_max``, finer than bf16 resolves near 1 and close to fp16's limit.
        """
        if relaxed_precision is None:
            relaxed_precision = self.training and self.relaxed_precision
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        if relaxed_precision and self.noise_placement == "per_key_code":
            z = self._perturb(z, generator)
        tiled = self.tile(z)
        if relaxed_precision and self.noise_placement == "per_position":
            tiled = self._perturb(tiled, generator)
        batch, size = tiled.shape[0], self.feature_size
        # (B, N_h, C_key, H_d, W_d) -> (N_h, B, H_d, W_d, C_key)
        keys = tiled.view(batch, self.num_groups, self.key_channels, size, size).permute(1, 0, 3, 4, 2)
        coords = pixel_coordinates(size, size, device=z.device, dtype=tiled.dtype).view(1, 1, size, size, 2)
        coords = coords.expand(self.num_groups, batch, size, size, 2)
        parts = (coords.flip(-1), keys) if self.query_order == "col-row-key" else (keys, coords)
        return torch.cat(parts, dim=-1).reshape(self.num_groups, -1, self.key_channels + 2)

    def forward(
        self, z: torch.Tensor, generator: torch.Generator | None = None, relaxed_precision: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Key codes ``(B, C_z, H_z, W_z)`` in ``[0, 1]`` -> ``(f, style)``.

        ``f``: the feature block ``(B, C_d, H_d, W_d)``, in the MLPs' dtype (the codes may have any floating
        dtype). ``style``: ``(B, style_dim)``, the groups' parts of the decoder's style, or None without group
        style networks. ``generator`` and ``relaxed_precision`` as in `queries`.
        """
        batch, size = z.shape[0], self.feature_size
        queries = self.queries(z, generator, relaxed_precision)
        dtype = next(self.mlps.parameters()).dtype
        features, styles = [], []
        for group, (grid, mlp, q) in enumerate(zip(self.grids, self.mlps, queries)):
            h = grid.interpolate(q).view(batch, size * size, -1)  # (B, H_d * W_d, N_r * C_v), at least float32
            if self.modulation_mappings is not None or self.style_mappings is not None:
                pooled = normalize_2nd_moment(h.mean(dim=1))  # (B, N_r * C_v)
            h = h.to(dtype)
            if self.modulation_mappings is None:
                features.append(mlp(h))
            else:
                features.append(mlp(h, self.modulation_mappings[group](pooled)))
            if self.style_mappings is not None:
                # The release normalises once more before this network (which normalises its input again).
                styles.append(self.style_mappings[group](normalize_2nd_moment(pooled)))
        f = torch.cat(features, dim=-1)  # (B, H_d * W_d, C_d), group-major channels
        f = f.view(batch, size, size, self.feature_channels).permute(0, 3, 1, 2).contiguous()
        return f, (torch.cat(styles, dim=-1) if styles else None)
