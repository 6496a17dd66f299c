"""Multi-resolution feature grid: the feature tables of one group of BRICS (paper section 3.2, supp. A.1).

A query ``q`` in ``[0, 1]^D`` (``D = C_key + 2``: one key-code slice joined with the pixel coordinates) is
looked up at ``N_r`` resolutions. Level ``l`` has ``scale_l = r_min * b**l - 1`` cells per axis, with the
growth factor ``b = (r_max / r_min) ** (1 / (N_r - 1))``. The ``2**D`` grid nodes around
``q * scale_l + 0.5`` are read from the level's table and D-linearly interpolated; the ``N_r`` results of
``C_v`` features each are concatenated. A level's table is *dense* (one entry per grid node) while its nodes
fit in ``T`` entries. Beyond, several nodes share an entry, by one of two ``indexing`` rules:

* ``"tiled"`` (the paper's eq. 6 and the authors' training command): the dense row index modulo ``T``,
  ``(sum_d x_d * stride_d) mod T``, so the lattice wraps around the table like a tiling. As in the authors'
  kernel, the sum stops at the first axis whose stride exceeds ``T`` (with ``C_key = 1`` it never does);
* ``"hash"`` (instant-NGP): a coherent-prime spatial hash of the node modulo ``T``.

Gradients reach both the tables and the queries: the interpolation weights are differentiable in ``q``,
which is how BRICS trains its key codes without a straight-through estimator (the torch backend's look-up and its
hand-written backward are in `grid_interpolation`).

Two indexing conventions are supported:

* ``"torch-ngp"`` (default, the paper's official code): ``res_l + 1`` nodes per axis, which reproduces the
  paper's parameter counts (64x64x4 codes: 18,630,272 grid parameters, Table 3).
* ``"tcnn"``: tiny-cuda-nn's ``Grid``/``Hash`` encoding (``res_l`` nodes per axis). Only this convention can
  run on the optional ``tinycudann`` backend, which then uses this module's own parameter tensor.

The optional ``"triton"`` backend (`grid_triton`) runs the same look-up, for either convention and indexing, as
Triton kernels on CUDA tensors (on CPU tensors only under Triton's interpreter, ``TRITON_INTERPRET=1``). It is
given the queries, the table and the grid's `GridLayout` (`grid_layout`), computed once by the constructor.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import torch
from torch import nn

from .grid_interpolation import InterpolateTable, corner_bits, corner_weights
from .grid_layout import HASH_PRIMES, GridLayout

_UINT32_MASK = 0xFFFFFFFF

GridBackend = Literal["auto", "torch", "triton", "tcnn"]
GridConvention = Literal["torch-ngp", "tcnn"]
GridIndexing = Literal["tiled", "hash"]


class MultiResolutionFeatureGrid(nn.Module):
    r"""The multi-resolution feature tables of one group, and the D-linear look-up into them.

    Args:
        input_dim (`int`): query dimension ``D = C_key + 2`` (2 to 5).
        num_levels (`int`): number of resolutions ``N_r`` (paper: 16).
        features_per_level (`int`): features per entry ``C_v`` (paper: 4).
        log2_hashmap_size (`int`): ``log2(T)``, the most entries a level's table may hold (paper: 18).
        min_resolution (`float`): ``r_min``, resolution of the coarsest level (official code: 16).
        max_resolution (`float`): ``r_max``, resolution of the finest level (paper: 64, or 32 for small codes).
        init_scale (`float`): entries are initialised uniformly in ``[-init_scale, init_scale]`` (1e-4).
        backend (`str`): ``"torch"`` (any device), ``"triton"`` (the Triton kernels of `grid_triton`: CUDA
            tensors, and CPU ones under ``TRITON_INTERPRET=1``), ``"tcnn"`` (tiny-cuda-nn, CUDA, ``D <= 4``,
            convention ``"tcnn"``), or ``"auto"``: ``triton`` on a machine with CUDA and Triton, else ``tcnn``
            where it can run, else ``torch``. A runtime choice, resolved once here: ``backend`` holds the result
            (``requested_backend`` what was asked). A named backend that cannot run on this machine (its package
            or a CUDA device missing) is not refused: the grid warns and resolves ``"auto"`` instead, so that a
            model saved with ``"triton"`` loads anywhere. Only ``"tcnn"`` for a grid it can serve nowhere
            (convention, indexing or ``D``) is a ValueError.
        convention (`str`): ``"torch-ngp"`` (the paper's counts) or ``"tcnn"``; see the module docstring.
        indexing (`str`): how levels with more nodes than ``T`` share entries: ``"tiled"`` (paper eq. 6, the
            authors' command) or ``"hash"`` (instant-NGP, and what tiny-cuda-nn implements).

    Shapes: ``grid(x)`` takes ``x`` of shape ``(N, D)`` in ``[0, 1]`` and returns
    ``(N, num_levels * features_per_level)``, level-major.

    The look-up dispatches on ``backend`` alone, without probing the machine again. A call that the ``triton`` or
    ``tcnn`` backend cannot take (tensors on a device its kernels do not run on, e.g. after ``model.cpu()``; float64
    on ``triton``, whose kernels compute in float32) runs on the torch path, with a warning the first time for this
    grid that names the backend and the fix (move the model to CUDA, or ``grid_backend="torch"``). The torch path
    gives the same results up to float rounding; it is taken rather than raising an error so that a model built on
    a GPU machine can still be evaluated on a CPU.

    ``layout`` (a frozen `GridLayout`, computed once here) places every level in ``embeddings``; the backends are
    given it with the queries and the table.
    """

    def __init__(
        self,
        input_dim: int = 3,
        num_levels: int = 16,
        features_per_level: int = 4,
        log2_hashmap_size: int = 18,
        min_resolution: float = 16,
        max_resolution: float = 64,
        init_scale: float = 1e-4,
        backend: GridBackend = "auto",
        convention: GridConvention = "torch-ngp",
        indexing: GridIndexing = "tiled",
    ):
        super().__init__()
        if not 2 <= input_dim <= len(HASH_PRIMES):
            raise ValueError(f"input_dim must be between 2 and {len(HASH_PRIMES)} (C_key + 2), got {input_dim}")
        if num_levels < 1 or features_per_level < 1:
            raise ValueError(
                f"num_levels and features_per_level must be >= 1, got {num_levels} and {features_per_level}"
            )
        if not 1 <= log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must be between 1 and 30, got {log2_hashmap_size}")
        if not 1 <= min_resolution <= max_resolution:
            raise ValueError(
                f"need 1 <= min_resolution <= max_resolution, got min_resolution={min_resolution}, "
                f"max_resolution={max_resolution}"
            )
        if convention not in ("torch-ngp", "tcnn"):
            raise ValueError(f"convention must be 'torch-ngp' or 'tcnn', got {convention!r}")
        if backend not in ("auto", "torch", "triton", "tcnn"):
            raise ValueError(f"backend must be 'auto', 'torch', 'triton' or 'tcnn', got {backend!r}")
        if indexing not in ("tiled", "hash"):
            raise ValueError(f"indexing must be 'tiled' or 'hash', got {indexing!r}")

        self.input_dim = input_dim
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution
        self.convention = convention
        self.indexing = indexing
        self.layout = GridLayout.build(
            input_dim, num_levels, min_resolution, max_resolution, log2_hashmap_size, convention, indexing
        )
        self.embeddings = nn.Parameter(torch.empty(self.layout.total_entries, features_per_level))
        nn.init.uniform_(self.embeddings, -init_scale, init_scale)

        # Dense levels come first (resolutions grow with the level), shared (tiled or hashed) ones last.
        self.num_dense_levels = self.layout.num_dense_levels
        bits = corner_bits(input_dim)
        # The authors' kernel adds an axis to a tiled index only while its stride fits in the table (stride 0).
        strides = torch.tensor([level.strides for level in self.layout.levels], dtype=torch.long)
        # Kept as Python floats, not a buffer: `module.half()` would round a float buffer to 11 bits.
        self.scales = self.layout.scales
        # Row strides of the dense levels, and of every level under tiling: (L, D).
        self.register_buffer("strides", strides, persistent=False)
        # Offset of every corner from the cell's first corner in a dense (or tiled) table: (L, 2**D).
        self.register_buffer("corner_offsets", strides @ bits.T, persistent=False)
        self.register_buffer("level_starts", torch.tensor(self.layout.offsets, dtype=torch.long), persistent=False)
        self.register_buffer("primes", torch.tensor(self.layout.primes, dtype=torch.long), persistent=False)
        self.register_buffer(
            "level_entries", torch.tensor(self.layout.entries, dtype=torch.long), persistent=False
        )
        self._tcnn = None
        self._warned_torch_path = False
        self.requested_backend = backend
        self.backend = self._resolve_backend(backend)

    # ------------------------------------------------------------------ backends
    def _tcnn_config(self) -> dict:
        growth = (self.max_resolution / self.min_resolution) ** (1.0 / max(self.num_levels - 1, 1))
        return {
            "otype": "Grid",
            "type": "Hash",
            "n_levels": self.num_levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.min_resolution,
            "per_level_scale": growth,
            "interpolation": "Linear",
        }

    def _resolve_backend(self, backend: str) -> str:
        """The backend this grid runs on, chosen once (by the constructor); see the class docstring."""
        if backend == "torch":
            return "torch"
        if backend == "auto":
            return self._best_backend()
        if backend == "tcnn" and self._tcnn_grid_reason() is not None:  # the configuration, not the machine
            raise ValueError(f"backend='tcnn' cannot serve this grid on any machine: {self._tcnn_grid_reason()}")
        reason = self.triton_unavailable_reason() if backend == "triton" else self.tcnn_unavailable_reason()
        if reason is None:
            return backend
        resolved = self._best_backend()
        warnings.warn(
            f"grid backend {backend!r} cannot run on this machine: {reason}. Using 'auto' instead, which picks "
            f"{resolved!r} here (the same results up to float rounding). The backend is a runtime choice, not part "
            "of the model: pass grid_backend='auto' (BRICSAutoencoder, also to from_pretrained) or backend='auto' "
            "(MultiResolutionFeatureGrid) to choose without this warning",
            UserWarning,
            stacklevel=3,
        )
        return resolved

    def _best_backend(self) -> str:
        """What ``"auto"`` picks: ``triton`` on a CUDA machine with Triton, else ``tcnn`` where it can run, else
        ``torch``."""
        if self.triton_unavailable_reason(device="cuda") is None:
            return "triton"
        return "tcnn" if self.tcnn_unavailable_reason(device="cuda") is None else "torch"

    def triton_unavailable_reason(self, device: str | None = None) -> str | None:
        """Why the Triton backend cannot run on this machine, or None when it can.

        With ``device="cuda"`` (what ``"auto"`` asks): None only where a CUDA device can run the compiled kernels.
        Without: also None where they run on the CPU, under Triton's interpreter (``TRITON_INTERPRET=1``, tests).
        """
        if not hasattr(torch.library, "custom_op"):
            return f"the Triton backend needs torch>=2.4 (torch.library.custom_op), got {torch.__version__}"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "the triton package is not installed (pip install 'diffusers-brics[triton]')"
        if not torch.cuda.is_available():
            cuda_reason = "Triton's kernels need a CUDA device"
        elif torch.version.hip is None and torch.cuda.get_device_capability() < (7, 0):
            cuda_reason = ("Triton compiles for NVIDIA GPUs of compute capability 7.0 or newer (as torch.compile "
                           "requires)")
        else:
            return None
        if device == "cuda":
            return cuda_reason
        try:
            from . import grid_triton
        except (ImportError, RuntimeError) as error:
            return f"{cuda_reason}, and the kernels cannot run under Triton's interpreter: {error}"
        return None if grid_triton.INTERPRETED else f"{cuda_reason} (or TRITON_INTERPRET=1 for Triton's interpreter)"

    def _tcnn_grid_reason(self) -> str | None:
        """Why tiny-cuda-nn cannot serve this grid's configuration on any machine, or None."""
        if self.convention != "tcnn":
            return "tiny-cuda-nn indexes grids with the 'tcnn' convention; this grid uses 'torch-ngp'"
        if self.indexing != "hash" and self.num_dense_levels < self.num_levels:
            return "tiny-cuda-nn hashes the levels that exceed its table; this grid tiles them (indexing='tiled')"
        if self.input_dim > 4:
            return f"tiny-cuda-nn supports input_dim 2 to 4, got {self.input_dim}"
        return None

    def tcnn_unavailable_reason(self, device: str | None = None) -> str | None:
        """Why the tiny-cuda-nn backend cannot serve this grid on this machine, or None when it can."""
        reason = self._tcnn_grid_reason()
        if reason is not None:
            return reason
        if not torch.cuda.is_available():
            return "tiny-cuda-nn needs a CUDA device"
        try:
            import tinycudann  # noqa: F401
        except ImportError:
            return "the tinycudann package is not installed"
        return None

    def _tcnn_module(self):
        if self._tcnn is None:
            import tinycudann as tcnn

            module = tcnn.Encoding(self.input_dim, self._tcnn_config(), dtype=torch.float32)
            if module.params.numel() != self.embeddings.numel():
                raise ValueError(
                    f"tiny-cuda-nn lays this grid out in {module.params.numel()} parameters, this module holds "
                    f"{self.embeddings.numel()}: the tables cannot be shared"
                )
            # Keep the encoding out of the module tree so that its own parameters are never trained or saved.
            object.__setattr__(self, "_tcnn", module)
        return self._tcnn

    # ------------------------------------------------------------------ look-up
    def lattice(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each query falls at each level: its cell's fractions and the table rows of the cell's corners.

        Args:
            x: ``(N, D)`` queries in ``[0, 1]``.

        Returns:
            ``frac``: ``(D, L, N)``, the position of the query inside its cell along each axis, differentiable in ``x``;
            ``index``: ``(2**D, L, N)`` rows of ``embeddings``, corner ``k`` offset by ``(k >> d) & 1`` along axis
            ``d``. Axis- and corner-major with the queries innermost, so that the elementwise steps run over long
            rows. Computed in at least float32: half precision cannot address a fine level's nodes (fp16 has 11
            significant bits, bf16 8, so ``x * scale`` already rounds to the wrong cell at modest scales).
        """
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        scales = torch.tensor(self.scales, dtype=x.dtype, device=x.device)
        pos = x.T.unsqueeze(1) * scales.view(1, -1, 1) + 0.5  # (D, L, N)
        cell = torch.floor(pos).detach()
        frac = pos - cell

        parts = []
        nd = self.num_dense_levels
        if nd > 0:
            # Row of the cell's first corner, in float (exact: tables hold < 2**24 entries), then per corner.
            base = (cell[:, :nd] * self.strides[:nd].T.to(x.dtype).unsqueeze(-1)).sum(0).long()  # (L_dense, N)
            dense = base + self.corner_offsets[:nd].T.unsqueeze(-1)  # (K, L_dense, N)
            if self.convention == "tcnn":  # tcnn's last node per axis wraps around the table
                dense = dense % self.level_entries[:nd].view(1, -1, 1)
            parts.append(dense)
        if nd < self.num_levels and self.indexing == "tiled":
            # The dense row modulo T (paper eq. 6), in integers: the unwrapped row may pass 2**24.
            base = (cell[:, nd:].long() * self.strides[nd:].T.unsqueeze(-1)).sum(0)  # (L_shared, N)
            tiled = (base + self.corner_offsets[nd:].T.unsqueeze(-1)) % self.level_entries[nd:].view(1, -1, 1)
            parts.append(tiled)
        elif nd < self.num_levels:
            hashed_cells = cell[:, nd:].long()  # (D, L_hash, N)
            primes = self.primes.view(-1, 1, 1)
            low, high = hashed_cells * primes, (hashed_cells + 1) * primes
            hashed = torch.stack((low[0], high[0]))
            for d in range(1, self.input_dim):
                pair = torch.stack((low[d], high[d]))
                hashed = torch.bitwise_xor(pair.unsqueeze(1), hashed.unsqueeze(0)).flatten(0, 1)
            hashed = (hashed & _UINT32_MASK) % self.level_entries[nd:].view(1, -1, 1)
            parts.append(hashed)
        index = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return frac, index + self.level_starts.view(1, -1, 1)

    def corner_indices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows and interpolation weights of the ``2**D`` corners around each query at each level.

        Args:
            x: ``(N, D)`` queries in ``[0, 1]``.

        Returns:
            ``index``: ``(2**D, L, N)`` rows of ``embeddings``; ``weights``: ``(2**D, L, N)``, differentiable in
            ``x`` and summing to 1 over the corners. Corner ``k`` is offset by ``(k >> d) & 1`` along axis ``d``.
        """
        frac, index = self.lattice(x)
        return index, corner_weights(frac)

    def interpolate(self, x: torch.Tensor) -> torch.Tensor:
        """The look-up without input checks, for callers that guarantee ``(N, D)`` queries in ``[0, 1]``.

        Runs on ``backend``, or on the torch path (with a warning the first time) for a call the backend cannot
        take; see the class docstring. Returns ``(N, num_levels * features_per_level)`` in the dtype of ``x``.
        """
        if self.backend == "triton":
            # Imported on first use: Triton is optional.
            from . import grid_triton

            if torch.float64 in (x.dtype, self.embeddings.dtype):
                self._warn_torch_path("its kernels compute in float32, this call is in float64", "float32 tensors")
            elif not grid_triton.runs_on(x.device):
                self._warn_torch_path(
                    f"its kernels take CUDA tensors (CPU ones only under TRITON_INTERPRET=1), got {x.device.type} "
                    "tensors",
                    "the model on a CUDA device",
                )
            else:
                return grid_triton.lookup(x, self.embeddings, self.layout).to(x.dtype)
        elif self.backend == "tcnn":
            if x.is_cuda:
                return self._tcnn_lookup(x)
            self._warn_torch_path(f"tiny-cuda-nn takes CUDA tensors, got {x.device.type} tensors",
                                  "the model on a CUDA device")
        frac, index = self.lattice(x)
        out = InterpolateTable.apply(frac, index, self.embeddings.to(frac.dtype))  # (N, L, F)
        return out.view(x.shape[0], self.num_levels * self.features_per_level).to(x.dtype)

    def _tcnn_lookup(self, x: torch.Tensor) -> torch.Tensor:
        """The look-up on tiny-cuda-nn's encoding, reading this module's table; CUDA ``x``."""
        from tinycudann.modules import _module_function

        module = self._tcnn_module()
        out = _module_function.apply(module.native_tcnn_module, x.contiguous(), self.embeddings.view(-1), 1.0)
        return out.to(x.dtype)

    def _warn_torch_path(self, reason: str, fix: str) -> None:
        """Warn, once per grid, that a call the backend cannot take runs on the torch path."""
        if self._warned_torch_path:
            return
        self._warned_torch_path = True
        warnings.warn(
            f"grid backend {self.backend!r} cannot take this call: {reason}. It runs on the torch path (the same "
            f"results up to float rounding), as will every such call of this grid. Use {fix}, or "
            "grid_backend='torch' (BRICSAutoencoder) / grid.backend = 'torch', to avoid this warning",
            UserWarning,
            stacklevel=3,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Look up ``x`` of shape ``(N, D)`` in ``[0, 1]``; returns ``(N, num_levels * features_per_level)``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.input_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.input_dim}), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating point tensor, got dtype {x.dtype}")
        if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError("x must lie in [0, 1] (and contain no NaN)")
        return self.interpolate(x)

    @property
    def levels(self) -> list[dict]:
        """Per level, the fields of its `LevelLayout` as a dict (``scale``, ``nodes_per_axis``, ``entries``,
        ``dense``, ...); ``layout`` holds them as a frozen dataclass."""
        return [dataclasses.asdict(level) for level in self.layout.levels]

    @property
    def num_entries(self) -> list[int]:
        """Table size of each level."""
        return list(self.layout.entries)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, num_levels={self.num_levels}, features_per_level="
            f"{self.features_per_level}, log2_hashmap_size={self.log2_hashmap_size}, resolution="
            f"{self.min_resolution}..{self.max_resolution}, dense_levels={self.num_dense_levels}, "
            f"indexing={self.indexing!r}, convention={self.convention!r}, backend={self.backend!r}"
            + (f" (requested {self.requested_backend!r})" if self.requested_backend != self.backend else "")
        )
