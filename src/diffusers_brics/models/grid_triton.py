"""Triton kernels for the D-linear look-up of `MultiResolutionFeatureGrid` (``backend="triton"``).

Why by hand: the maintained multi-resolution grid kernels are CUDA C++ extensions built with a CUDA compiler
(tiny-cuda-nn: its own ``res_l`` nodes per axis and hashing only, ``D <= 4``; torch-ngp's ``gridencoder``: built
with ``nvcc`` at install time), and no maintained library ships a Triton one with this module's conventions
(``"torch-ngp"`` / ``"tcnn"`` nodes per axis, dense levels, ``"tiled"`` (paper eq. 6) or ``"hash"`` shared
levels). These kernels read the grid's own table (``embeddings``, ``(total_entries, F)``) with exactly the rows
and weights of `MultiResolutionFeatureGrid.corner_indices`, given the queries, the table and the grid's
`GridLayout` (nothing of the grid module itself), and need only the ``triton`` wheel from pip (which
bundles its compiler and ``ptxas``: no CUDA toolkit) and ``torch>=2.4`` (``torch.library.custom_op``). On a CPU
they run under Triton's interpreter, for tests: ``TRITON_INTERPRET=1`` set before Triton is first imported (diffusers
imports it), which ``tests/conftest.py`` does on machines without CUDA.

Work mapping: a launch has one program per (block of ``BLOCK`` queries, level). A program reads the level's
scalars (``scale_l``, first row, entries, strides) from small device tensors, computes the cell and fractions
of its queries in float32 (``pos = x * scale_l + 0.5``, ``cell = floor(pos)``, ``frac = pos - cell``, as the
torch path; the kernels are compiled without FMA contraction so that the cells are the same), then loops over
the ``2**D`` corners (unrolled), gathering a ``[BLOCK, F_pow2]`` tile of table rows per corner (features padded
to a power of two and masked). Row of a corner: ``sum_d (cell_d + bit_d) * stride_d`` (dense and tiled levels),
or the xor of ``(cell_d + bit_d) * prime_d`` masked to 32 bits (hashed levels, the same int64 arithmetic as
torch), taken modulo the level's entries where the level wraps (shared levels; every level in the ``"tcnn"``
convention). The forward pass writes its tile straight into the level-major ``(N, L * F)`` output. The backward
pass adds ``w_k * grad_out`` into a float32 table gradient with atomic adds and writes the query gradient of each
level (``scale_l * sum_k <grad_out, row_k> * d w_k / d pos``) to an ``(L, N, D)`` buffer that torch sums over the
levels, so that the query gradient is deterministic.

Both passes are ``torch.library`` custom ops (``diffusers_brics::grid_interpolate`` and its backward), so that
``torch.compile(..., fullgraph=True)`` keeps the look-up as one opaque op.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction, KernelInterface

if TYPE_CHECKING:  # only for annotations: the module loads on its own, without the package (see the tests)
    from .grid_layout import GridLayout

# Queries per program on a GPU; the interpreter takes larger blocks (fewer, vectorised programs).
_CUDA_BLOCK = 128
_INTERPRETER_BLOCK = 1024


@triton.jit
def _level_corners(x_ptr, offs, mask, level, scales_ptr, strides_ptr, starts_ptr, entries_ptr, primes_ptr,
                   hash_from, wrap_from, D: tl.constexpr):
    """The ``2**D`` corners around a block of queries ``offs`` at ``level`` (bit ``d`` of corner ``k``: its offset
    along axis ``d``): the level's scale, and per corner its table rows, weights and per-axis weight factors.

    One helper for all corners: each call of a jitted function costs the interpreter a re-patching of the language.
    """
    scale = tl.load(scales_ptr + level)
    start = tl.load(starts_ptr + level)
    entries = tl.load(entries_ptr + level)
    cells = ()
    fracs = ()
    strides = ()
    primes = ()
    for d in tl.static_range(D):
        pos = tl.load(x_ptr + offs * D + d, mask=mask, other=0.0) * scale + 0.5
        cell = tl.floor(pos)
        cells = cells + (cell.to(tl.int64),)
        fracs = fracs + (pos - cell,)
        strides = strides + (tl.load(strides_ptr + level * D + d),)
        primes = primes + (tl.load(primes_ptr + d),)
    rows = ()
    weights = ()
    factors = ()
    for k in tl.static_range(2**D):
        corner_factors = ()
        for d in tl.static_range(D):
            corner_factors = corner_factors + (fracs[d] if (k >> d) & 1 else 1.0 - fracs[d],)
        weight = corner_factors[0]
        for d in tl.static_range(1, D):  # ((f_0 * f_1) * f_2) ...: the torch path's order of products
            weight = weight * corner_factors[d]
        row = (cells[0] + (k & 1)) * strides[0]
        for d in tl.static_range(1, D):
            row += (cells[d] + ((k >> d) & 1)) * strides[d]
        if level >= hash_from:
            row = (cells[0] + (k & 1)) * primes[0]
            for d in tl.static_range(1, D):
                row = row ^ ((cells[d] + ((k >> d) & 1)) * primes[d])
            row = row & 0xFFFFFFFF
        if level >= wrap_from:
            row = row % entries
        rows = rows + (row + start,)
        weights = weights + (weight,)
        factors = factors + (corner_factors,)
    return scale, rows, weights, factors


@triton.jit
def _forward_kernel(x_ptr, table_ptr, out_ptr, scales_ptr, strides_ptr, starts_ptr, entries_ptr, primes_ptr,
                    N, num_levels, hash_from, wrap_from,
                    D: tl.constexpr, F: tl.constexpr, F_POW2: tl.constexpr, BLOCK: tl.constexpr):
    level = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    feats = tl.arange(0, F_POW2)
    tile_mask = mask[:, None] & (feats < F)[None, :]
    _, rows, weights, _ = _level_corners(x_ptr, offs, mask, level, scales_ptr, strides_ptr, starts_ptr, entries_ptr,
                                         primes_ptr, hash_from, wrap_from, D)
    acc = tl.zeros([BLOCK, F_POW2], dtype=tl.float32)
    for k in tl.static_range(2**D):
        values = tl.load(table_ptr + rows[k][:, None] * F + feats[None, :], mask=tile_mask, other=0.0)
        acc += weights[k][:, None] * values.to(tl.float32)
    tl.store(out_ptr + offs[:, None] * (num_levels * F) + level * F + feats[None, :], acc, mask=tile_mask)


@triton.jit
def _backward_kernel(x_ptr, table_ptr, grad_out_ptr, grad_table_ptr, grad_x_ptr, scales_ptr, strides_ptr,
                     starts_ptr, entries_ptr, primes_ptr, N, num_levels, hash_from, wrap_from,
                     D: tl.constexpr, F: tl.constexpr, F_POW2: tl.constexpr, BLOCK: tl.constexpr,
                     TABLE_GRAD: tl.constexpr, QUERY_GRAD: tl.constexpr):
    level = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    feats = tl.arange(0, F_POW2)
    tile_mask = mask[:, None] & (feats < F)[None, :]
    scale, rows, weights, factors = _level_corners(x_ptr, offs, mask, level, scales_ptr, strides_ptr, starts_ptr,
                                                   entries_ptr, primes_ptr, hash_from, wrap_from, D)
    grad = tl.load(grad_out_ptr + offs[:, None] * (num_levels * F) + level * F + feats[None, :], mask=tile_mask,
                   other=0.0).to(tl.float32)
    grad_pos = ()
    for d in tl.static_range(D):
        grad_pos = grad_pos + (tl.zeros([BLOCK], dtype=tl.float32),)
    for k in tl.static_range(2**D):
        elements = rows[k][:, None] * F + feats[None, :]
        if TABLE_GRAD:
            tl.atomic_add(grad_table_ptr + elements, weights[k][:, None] * grad, mask=tile_mask, sem="relaxed")
        if QUERY_GRAD:
            values = tl.load(table_ptr + elements, mask=tile_mask, other=0.0).to(tl.float32)
            dot = tl.sum(values * grad, axis=1)  # d loss / d w_k
            updated = ()
            for d in tl.static_range(D):
                # d w_k / d pos_d: the other axes' factors, times +1 (upper corner) or -1 (lower corner)
                slope = dot if (k >> d) & 1 else -dot
                for e in tl.static_range(D):
                    if e != d:
                        slope = slope * factors[k][e]
                updated = updated + (grad_pos[d] + slope,)
            grad_pos = updated
    if QUERY_GRAD:
        for d in tl.static_range(D):
            tl.store(grad_x_ptr + (level.to(tl.int64) * N + offs) * D + d, grad_pos[d] * scale, mask=mask)


INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)
"""Whether the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` when this module was imported)."""
# Triton's own helpers (tl.zeros, tl.sum) were interpreted or compiled by the setting when Triton was imported.
if isinstance(tl.zeros, JITFunction if INTERPRETED else InterpretedFunction):
    raise RuntimeError(
        "TRITON_INTERPRET changed between the first import of triton and of diffusers_brics.models.grid_triton; "
        "set it before anything imports triton (diffusers does)"
    )


def runs_on(device: torch.device) -> bool:
    """Whether the kernels can take tensors on ``device``: CUDA, or the CPU under the interpreter."""
    return device.type == "cuda" or (INTERPRETED and device.type == "cpu")


@functools.lru_cache(maxsize=64)
def _device_layout(scales: tuple[float, ...], strides: tuple[int, ...], starts: tuple[int, ...],
                   entries: tuple[int, ...], primes: tuple[int, ...], device: torch.device
                   ) -> tuple[torch.Tensor, ...]:
    """The level scales (float32), strides ``(L, D)``, first rows, entries and hash primes (int64) as tensors on
    ``device``, copied there once per layout (a copy per call would sync)."""
    ints = dict(dtype=torch.long, device=device)
    return (torch.tensor(scales, dtype=torch.float32, device=device),
            torch.tensor(strides, **ints).view(len(scales), len(primes)), torch.tensor(starts, **ints),
            torch.tensor(entries, **ints), torch.tensor(primes, **ints))


def _launch(kernel: KernelInterface, n: int, num_levels: int, device: torch.device, *args: Any, **constexprs: Any
            ) -> None:
    """Run ``kernel`` on a grid of (blocks of ``n`` queries, ``num_levels`` levels)."""
    block = _CUDA_BLOCK if device.type == "cuda" else _INTERPRETER_BLOCK
    block = min(block, max(16, triton.next_power_of_2(n)))
    grid = (triton.cdiv(n, block), num_levels)
    kernel[grid](*args, BLOCK=block, num_warps=4, enable_fp_fusion=False, **constexprs)


@torch.library.custom_op("diffusers_brics::grid_interpolate", mutates_args=())
def grid_interpolate(
    x: torch.Tensor,
    table: torch.Tensor,
    scales: list[float],
    strides: list[int],
    starts: list[int],
    entries: list[int],
    primes: list[int],
    hash_from: int,
    wrap_from: int,
) -> torch.Tensor:
    """D-linear look-up of ``x`` ``(N, D)`` float32 in ``table`` ``(E, F)``; returns ``(N, L * F)`` float32.

    Per level: ``scales``, ``starts`` (first row) and ``entries``; ``strides``: ``L * D`` row strides, level-major;
    ``primes``: the ``D`` hash primes. Levels ``>= hash_from`` are hashed, levels ``>= wrap_from`` wrap modulo their
    entries (see `GridLayout`).
    """
    n, dim = x.shape
    num_levels, features = len(scales), table.shape[1]
    out = torch.empty(n, num_levels * features, dtype=torch.float32, device=x.device)
    if n:
        layout = _device_layout(tuple(scales), tuple(strides), tuple(starts), tuple(entries), tuple(primes), x.device)
        _launch(_forward_kernel, n, num_levels, x.device, x, table, out, *layout, n, num_levels, hash_from, wrap_from,
                D=dim, F=features, F_POW2=triton.next_power_of_2(features))
    return out


@grid_interpolate.register_fake
def _(x, table, scales, strides, starts, entries, primes, hash_from, wrap_from):
    return x.new_empty(x.shape[0], len(scales) * table.shape[1], dtype=torch.float32)


@torch.library.custom_op("diffusers_brics::grid_interpolate_backward", mutates_args=())
def grid_interpolate_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    table: torch.Tensor,
    scales: list[float],
    strides: list[int],
    starts: list[int],
    entries: list[int],
    primes: list[int],
    hash_from: int,
    wrap_from: int,
    query_grad: bool,
    table_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `grid_interpolate`: ``(grad_x (N, D) float32, grad_table (E, F) in the table's dtype)``.

    A gradient that is not asked for (``query_grad`` / ``table_grad`` False) is returned empty, shape ``(0,)``.
    """
    n, dim = x.shape
    num_levels, features = len(scales), table.shape[1]
    grad_x = x.new_empty((num_levels, n, dim) if query_grad else (0,), dtype=torch.float32)  # fully written
    grad_table = table.new_zeros(table.shape if table_grad else (0,), dtype=torch.float32)
    if n and (query_grad or table_grad):
        layout = _device_layout(tuple(scales), tuple(strides), tuple(starts), tuple(entries), tuple(primes), x.device)
        _launch(_backward_kernel, n, num_levels, x.device, x, table, grad_out.contiguous(), grad_table, grad_x,
                *layout, n, num_levels, hash_from, wrap_from, D=dim, F=features,
                F_POW2=triton.next_power_of_2(features), TABLE_GRAD=table_grad, QUERY_GRAD=query_grad)
    return (grad_x.sum(0) if query_grad else grad_x), grad_table.to(table.dtype)


@grid_interpolate_backward.register_fake
def _(grad_out, x, table, scales, strides, starts, entries, primes, hash_from, wrap_from, query_grad,
      table_grad):
    grad_x = x.new_empty(x.shape if query_grad else (0,), dtype=torch.float32)
    return grad_x, table.new_empty(table.shape if table_grad else (0,))


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, table, *ctx.layout = inputs
    ctx.save_for_backward(x, table)


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, table = ctx.saved_tensors
    query_grad, table_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x, grad_table = grid_interpolate_backward(grad_out, x, table, *ctx.layout, query_grad, table_grad)
    return (grad_x if query_grad else None, grad_table if table_grad else None) + (None,) * len(ctx.layout)


grid_interpolate.register_autograd(_backward, setup_context=_setup_context)


def lookup(x: torch.Tensor, table: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    """The D-linear look-up on the kernels: ``x`` ``(N, D)`` in ``[0, 1]`` -> ``(N, L * F)`` float32.

    ``table`` ``(total_entries, F)``, float16, bfloat16 or float32, holds the levels as ``layout`` places them;
    ``x`` is read as float32. Both on a device the kernels take (`runs_on`).
    """
    return grid_interpolate(x.to(torch.float32).contiguous(), table, list(layout.scales), list(layout.strides),
                            list(layout.offsets), list(layout.entries), list(layout.primes), layout.hash_from,
                            layout.wrap_from)
