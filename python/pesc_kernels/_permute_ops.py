"""Token permutation ops: dispatch rows to their experts and combine them back (DESIGN.md 2.2)."""
from __future__ import annotations

import torch

from . import _library, reference


def permute(x: torch.Tensor, indices: torch.Tensor, num_experts: int):
    """Stable counting sort of routed rows by expert.

    Args:
        x: ``[T, d]`` token rows (float32/float16/bfloat16).
        indices: ``[T, k]`` int32 expert ids in ``[0, num_experts)``.
        num_experts: E, 1 <= E <= 1024.

    Returns:
        ``x_perm [N, d]`` (N = T*k, dtype of x), ``row_map [T, k]`` int32 with
        ``x_perm[row_map[t, j]] = x[t]``, and ``expert_offsets [E+1]`` int64 such that expert e's rows
        are ``x_perm[offsets[e]:offsets[e+1]]``, in (t, j) row-major order. Gradient flows to x.
    """
    if _library.use_kernel("permute", x.device):
        return torch.ops.pesc.permute(x, indices, num_experts)
    return reference.permute(x, indices, num_experts)


def unpermute(y_perm: torch.Tensor, row_map: torch.Tensor, weights: torch.Tensor | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted combine: ``y[t] = residual[t] + sum_j weights[t, j] * y_perm[row_map[t, j]]``.

    Args:
        y_perm: ``[N, d]`` expert outputs in permuted order.
        row_map: ``[T, k]`` int32 from :func:`permute`.
        weights: optional ``[T, k]`` float32 routing weights (treated as 1 when None).
        residual: optional ``[T, d]`` added to the result (e.g. the shared FFN output).

    Returns ``y [T, d]`` in y_perm's dtype, accumulated in float32. Gradients flow to y_perm,
    weights and residual.
    """
    if _library.use_kernel("unpermute", y_perm.device):
        return torch.ops.pesc.unpermute(y_perm, row_map, weights, residual)
    return reference.unpermute(y_perm, row_map, weights, residual)
