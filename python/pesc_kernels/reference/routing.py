"""Reference grouped top-k routing, the DeepSeek-V3-style router (docs/design.md, "Routing variants").

grouped_topk_gating: logits [T, E] -> weights [T, k] fp32, indices [T, k] int32
  scores  s = softmax(logits) or sigmoid(logits); choices c = s + bias (bias picks experts only)
  groups  num_groups consecutive groups of E / num_groups experts, scored by the sum of their two
          largest choices; only the topk_groups best groups are eligible
  select  the k eligible experts with the largest choices, best first, ties to the lower index
  weights s at the selected experts, divided by (their sum + 1e-20) with normalize, times scaling
Computed in float32 (float64 for float64 logits). Ranking ties go to the lower index through stable
sorts; NaN choices rank as -inf here (the kernels rank NaN after -inf).
"""
from __future__ import annotations

import torch

from ._common import compute_dtype

SCORINGS = ("softmax", "sigmoid")


def _ranked(values: torch.Tensor, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Column order of each row: eligible first, then larger values, ties to the lower index."""
    order = torch.sort(torch.nan_to_num(values, nan=-torch.inf), dim=-1, descending=True, stable=True).indices
    if eligible is not None:
        order = order.gather(-1, torch.sort((~eligible).gather(-1, order).to(torch.int8), dim=-1, stable=True).indices)
    return order


def grouped_topk_gating(logits: torch.Tensor, k: int, scoring: str = "softmax", bias: torch.Tensor | None = None,
                        num_groups: int = 1, topk_groups: int = 1, normalize: bool = True, scaling: float = 1.0):
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
    T, E = logits.shape
    acc = compute_dtype(logits)
    lg = logits.to(acc)
    scores = torch.softmax(lg, dim=-1) if scoring == "softmax" else torch.sigmoid(lg)
    choices = scores.detach() if bias is None else scores.detach() + bias.to(acc)
    size = E // num_groups
    grouped = choices.view(T, num_groups, size)
    group_scores = grouped.gather(-1, _ranked(grouped)[..., : min(2, size)]).sum(-1)
    kept_groups = _ranked(group_scores)[:, :topk_groups]
    group_mask = torch.zeros(T, num_groups, dtype=torch.bool, device=logits.device).scatter_(1, kept_groups, True)
    eligible = group_mask.repeat_interleave(size, dim=1)
    indices = _ranked(choices, eligible)[:, :k]
    weights = scores.gather(1, indices)
    if normalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    weights = weights * scaling
    return weights.to(torch.promote_types(acc, torch.float32)), indices.to(torch.int32)
