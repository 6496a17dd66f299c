"""Feature retrieval: key codes -> feature block (paper section 3.2, equations 1-2, Figure 3 middle).

The key code ``z`` of shape ``(B, C_z, H_z, W_z)``, ``C_z = N_h * C_key``, is

1. *tiled* interleavingly (each code repeated in a ``H_d/H_z x W_d/W_z`` patch) to ``(H_d, W_d)``;
2. in training, perturbed by the *relaxed-precision* noise ``N(0, (1 / (4 r_max))^2)`` and clipped to
   ``[0, 1]``, so the decoder learns to tolerate the imprecision of codes sampled later by diffusion;
3. split into ``N_h`` slices of ``C_key`` channels, each joined with the pixel coordinates
   ``((i + 0.5) / H_d, (j + 0.5) / W_d)`` into queries ``q`` in ``[0, 1]^(C_key + 2)``;
4. looked up in the slice's own multi-resolution feature grid ``G_s`` and mapped by a small MLP to
   ``C_d / N_h`` channels; the ``N_h`` results stacked along channels form the feature block ``f``.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .feature_grid import GridBackend, GridConvention, MultiResolutionFeatureGrid


def pixel_coordinates(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Normalised pixel centres ``((i + 0.5) / H, (j + 0.5) / W)`` as a ``(H * W, 2)`` tensor, row-major."""
    rows = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


class KeyCodeRetrieval(nn.Module):
    r"""Retrieves the feature block ``f`` for key codes ``z``: tiling, relaxed precision, grids and MLPs.

    Args:
        num_groups (`int`): ``N_h``, the number of groups of feature grids (and of key-code slices).
        key_channels (`int`): ``C_key``, channels of one key-code slice.
        feature_size (`int`): ``H_d = W_d``, the spatial size of the feature block.
        feature_channels (`int`): ``C_d``, the channels of the feature block (a multiple of ``N_h``).
        num_levels, features_per_level, log2_hashmap_size, min_resolution, max_resolution, init_scale,
        backend, convention: passed to every `MultiResolutionFeatureGrid`.
        mlp_hidden_layers (`int`): hidden layers of ``F_mlp`` (paper's FLOP count: 2).
        mlp_hidden_channels (`int`, *optional*): their width; defaults to ``N_r * C_v``.
        relaxed_precision (`bool`): add the relaxed-precision noise in training mode.
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
        mlp_hidden_layers: int = 2,
        mlp_hidden_channels: int | None = None,
        relaxed_precision: bool = True,
    ):
        super().__init__()
        if feature_channels % num_groups:
            raise ValueError(
                f"feature_channels ({feature_channels}) must be a multiple of num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.key_channels = key_channels
        self.feature_size = feature_size
        self.feature_channels = feature_channels
        self.max_resolution = max_resolution
        self.relaxed_precision = relaxed_precision
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
            )
            for _ in range(num_groups)
        )
        grid_channels = num_levels * features_per_level
        hidden = mlp_hidden_channels or grid_channels
        out_channels = feature_channels // num_groups

        def mlp() -> nn.Sequential:
            layers, width = [], grid_channels
            for _ in range(mlp_hidden_layers):
                layers += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            layers.append(nn.Linear(width, out_channels))
            return nn.Sequential(*layers)

        self.mlps = nn.ModuleList(mlp() for _ in range(num_groups))

    @property
    def noise_std(self) -> float:
        """Standard deviation of the relaxed-precision noise, ``1 / (4 r_max)``."""
        return 1.0 / (4.0 * self.max_resolution)

    def tile(self, z: torch.Tensor) -> torch.Tensor:
        """Interleaved tiling ``(B, C_z, H_z, W_z) -> (B, C_z, H_d, W_d)``: each code fills a patch."""
        factor_h = self.feature_size // z.shape[-2]
        factor_w = self.feature_size // z.shape[-1]
        return z.repeat_interleave(factor_h, dim=-2).repeat_interleave(factor_w, dim=-1)

    def queries(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Combined key codes ``q``: ``(N_h, B * H_d * W_d, C_key + 2)`` in ``[0, 1]``, at least float32.

        Half-precision codes (a model in fp16/bf16, or autocast) are widened first: the finest levels address
        cells of ``1 / r_max``, finer than bf16 resolves near 1 and close to fp16's limit.
        """
        tiled = self.tile(z.to(torch.promote_types(z.dtype, torch.float32)))
        if self.training and self.relaxed_precision:
            noise = randn_tensor(tiled.shape, generator=generator, device=tiled.device, dtype=tiled.dtype)
            tiled = (tiled + noise * self.noise_std).clamp(0.0, 1.0)
        batch, size = tiled.shape[0], self.feature_size
        # (B, N_h, C_key, H_d, W_d) -> (N_h, B, H_d, W_d, C_key)
        keys = tiled.view(batch, self.num_groups, self.key_channels, size, size).permute(1, 0, 3, 4, 2)
        coords = pixel_coordinates(size, size, device=z.device, dtype=tiled.dtype).view(1, 1, size, size, 2)
        coords = coords.expand(self.num_groups, batch, size, size, 2)
        return torch.cat((keys, coords), dim=-1).reshape(self.num_groups, -1, self.key_channels + 2)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Key codes ``(B, C_z, H_z, W_z)`` in ``[0, 1]`` -> feature block ``(B, C_d, H_d, W_d)``.

        The codes may have any floating dtype; the feature block has the MLPs' dtype.
        """
        batch, size = z.shape[0], self.feature_size
        queries = self.queries(z, generator)
        mlp_dtype = self.mlps[0][0].weight.dtype
        features = [mlp(grid.interpolate(q).to(mlp_dtype)) for grid, mlp, q in zip(self.grids, self.mlps, queries)]
        f = torch.cat(features, dim=-1)  # (B * H_d * W_d, C_d), group-major channels
        return f.view(batch, size, size, self.feature_channels).permute(0, 3, 1, 2).contiguous()
