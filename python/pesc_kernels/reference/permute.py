"""Reference token permutation: dispatch rows to experts and combine them back (docs/design.md, "Permutation").

permute:   x [T, d], indices [T, k] int32/int64 -> x_perm [N, d], row_map [T, k] int32, expert_offsets [E+1] int64
unpermute: y_perm [N, d], row_map [T, k], weights [T, k]?, residual [T, d]? -> y [T, d]
N = T * k. Rows of expert e are x_perm[offsets[e]:offsets[e+1]], in (t, j) row-major order. With
drop_invalid, slots whose id is outside [0, E) sort after every expert (offsets[E] counts the kept
slots), their rows of x_perm are zero and row_map holds ~row (< 0) for them; unpermute skips them.
"""
from __future__ import annotations

import torch

from ._common import compute_dtype


def permute(x: torch.Tensor, indices: torch.Tensor, num_experts: int, drop_invalid: bool = False):
    T, k = indices.shape
    flat = indices.reshape(-1).long()
    valid = (flat >= 0) & (flat < num_experts)
    if not drop_invalid and not bool(valid.all()):  # host sync: reference only
        raise IndexError(f"indices must lie in [0, {num_experts}), got values in [{flat.min()}, {flat.max()}]")
    key = torch.where(valid, flat, num_experts)  # dropped slots sort after the last expert
    order = torch.sort(key, stable=True).indices  # routed slot (t*k + j) of each permuted row
    x_perm = x.index_select(0, order // k)
    x_perm = torch.where(valid[order, None], x_perm, torch.zeros_like(x_perm))
    rows = torch.empty_like(order)
    rows[order] = torch.arange(order.numel(), device=x.device)
    row_map = torch.where(valid, rows, ~rows)
    counts = torch.bincount(key, minlength=num_experts + 1)[:num_experts]
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return x_perm, row_map.view(T, k).to(torch.int32), offsets


def unpermute(y_perm: torch.Tensor, row_map: torch.Tensor, weights: torch.Tensor | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    T, k = row_map.shape
    acc = compute_dtype(y_perm)
    entries = row_map.reshape(-1).long()
    kept = entries >= 0
    rows = y_perm.to(acc).index_select(0, torch.where(kept, entries, ~entries))  # row (t, j) at t*k + j
    if weights is not None:
        rows = rows * weights.reshape(-1, 1).to(acc)
    rows = torch.where(kept[:, None], rows, torch.zeros_like(rows))  # dropped slots add nothing
    token = torch.arange(T, device=y_perm.device).repeat_interleave(k)
    y = torch.zeros(T, y_perm.shape[1], dtype=acc, device=y_perm.device).index_add_(0, token, rows)
    if residual is not None:
        y = y + residual.to(acc)
    return y.to(y_perm.dtype)
