"""The torch backend's D-linear look-up into a feature table (`feature_grid.MultiResolutionFeatureGrid` calls it):
the corners of each query's cell, their weights, and an autograd function that reads the weighted rows and gives the
gradients of the table and of the queries' fractions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def corner_bits(input_dim: int) -> torch.Tensor:
    """(2**D, D) 0/1 offsets of the corners of a cell; bit d of corner k is ``(k >> d) & 1``."""
    corners = torch.arange(2**input_dim)
    return torch.stack([(corners >> d) & 1 for d in range(input_dim)], dim=1)


def corner_weights(frac: torch.Tensor, derivative: int | None = None) -> torch.Tensor:
    """D-linear weights ``(2**D, L, N)`` of the corners of each query's cell, from its fractions ``(D, L, N)``.

    Corner ``k`` weighs ``prod_d (frac_d if (k >> d) & 1 else 1 - frac_d)``. With ``derivative=d`` the factor of axis
    ``d`` is replaced by its derivative (-1 or +1): the weights' derivatives in ``frac_d``. Built one axis at a time
    with the queries innermost, so that every product runs over long contiguous rows.
    """
    sign = frac.new_tensor([-1.0, 1.0]).view(2, 1, 1)
    weights = sign if derivative == 0 else torch.stack((1 - frac[0], frac[0]))  # (2, L, N)
    for d in range(1, frac.shape[0]):
        pair = sign if derivative == d else torch.stack((1 - frac[d], frac[d]))
        weights = (pair.unsqueeze(1) * weights.unsqueeze(0)).flatten(0, 1)  # axis d's bit the most significant
    return weights


class InterpolateTable(torch.autograd.Function):
    """``out[n, l] = sum_k w_k(frac[:, l, n]) * table[index[k, l, n]]``: fractions ``(D, L, N)`` and rows ``(2**D, L,
    N)`` -> ``(N, L, F)``.

    Written by hand for speed and memory on a CPU (autograd through a gather keeps the gathered rows and accumulates
    the table gradient with a slow ``index_put_``):

    * the forward is one `torch.nn.functional.embedding_bag` (a bag per query and level, its corners weighted by
      ``per_sample_weights``), which reads the rows without keeping them;
    * it saves the fractions and the rows (as int32): 4 bytes per corner, level and query, where autograd would keep
      the weights, the rows (int64) and the gathered rows (``12 + 4 F`` bytes); the backward recomputes the weights;
    * the backward gives the table gradient by ``index_add_`` and the fractions' gradient from the weights'
      closed-form derivatives (``corner_weights(frac, derivative=d)``), instead of autograd's chain of broadcast
      products.
    """

    @staticmethod
    def forward(ctx, frac: torch.Tensor, index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        corners, levels, queries = index.shape
        # Bags in query-major order, so that the output is already (N, L, F).
        bag_index = index.permute(2, 1, 0).contiguous().view(-1, corners)
        bag_weights = corner_weights(frac).permute(2, 1, 0).contiguous().view(-1, corners)
        out = F.embedding_bag(bag_index, table, per_sample_weights=bag_weights, mode="sum")
        # Saved as int32 (tables hold < 2**31 entries), widened again in the backward: CPU gathers and scatters
        # with int32 indices are several times slower.
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            ctx.save_for_backward(frac, bag_index.to(torch.int32), table)
        return out.view(queries, levels, table.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        frac, bag_index, table = ctx.saved_tensors
        bag_index = bag_index.long()
        queries, levels, features = grad_out.shape
        grad_out = grad_out.contiguous().view(-1, features)  # (N * L, F)
        grad_frac = grad_table = None
        if ctx.needs_input_grad[0]:
            rows = table.index_select(0, bag_index.view(-1)).view(*bag_index.shape, features)  # (N * L, K, F)
            grad_weights = torch.bmm(rows, grad_out.unsqueeze(-1)).view(queries, levels, -1).permute(2, 1, 0)
            grad_weights = grad_weights.contiguous()  # (K, L, N)
            grad_frac = torch.stack(
                [(grad_weights * corner_weights(frac, derivative=d)).sum(0) for d in range(frac.shape[0])]
            )
        if ctx.needs_input_grad[2]:
            bag_weights = corner_weights(frac).permute(2, 1, 0).contiguous().view(bag_index.shape)
            # One 1-D scatter per feature: about twice as fast on a CPU as one scatter of F-wide rows.
            grad_table = table.new_zeros(features, table.shape[0])
            for f in range(features):
                grad_table[f].index_add_(0, bag_index.view(-1), (bag_weights * grad_out[:, f : f + 1]).view(-1))
            grad_table = grad_table.T
        return grad_frac, None, grad_table
