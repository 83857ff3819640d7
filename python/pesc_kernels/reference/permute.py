"""Reference token permutation: dispatch rows to experts and combine them back (docs/design.md, "Permutation").

permute:   x [T, d], indices [T, k] int32 -> x_perm [N, d], row_map [T, k] int32, expert_offsets [E+1] int64
unpermute: y_perm [N, d], row_map [T, k], weights [T, k] fp32?, residual [T, d]? -> y [T, d]
N = T * k. Rows of expert e are x_perm[offsets[e]:offsets[e+1]], in (t, j) row-major order.
"""
from __future__ import annotations

import torch

from ._common import compute_dtype


def permute(x: torch.Tensor, indices: torch.Tensor, num_experts: int):
    T, k = indices.shape
    flat = indices.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= num_experts):  # host sync: reference only
        raise IndexError(f"indices must lie in [0, {num_experts}), got values in [{flat.min()}, {flat.max()}]")
    order = torch.sort(flat, stable=True).indices  # routed slot (t*k + j) of each permuted row
    x_perm = x.index_select(0, order // k)
    row_map = torch.empty_like(order)
    row_map[order] = torch.arange(order.numel(), device=x.device)
    counts = torch.bincount(flat, minlength=num_experts)
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return x_perm, row_map.view(T, k).to(torch.int32), offsets


def unpermute(y_perm: torch.Tensor, row_map: torch.Tensor, weights: torch.Tensor | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    T, k = row_map.shape
    acc = compute_dtype(y_perm)
    rows = y_perm.to(acc).index_select(0, row_map.reshape(-1).long())  # [T*k, d], row (t, j) at t*k + j
    if weights is not None:
        rows = rows * weights.reshape(-1, 1).to(acc)
    token = torch.arange(T, device=y_perm.device).repeat_interleave(k)
    y = torch.zeros(T, y_perm.shape[1], dtype=acc, device=y_perm.device).index_add_(0, token, rows)
    if residual is not None:
        y = y + residual.to(acc)
    return y.to(y_perm.dtype)
