"""Reference routing ops: softmax top-k gating, Switch balancing loss, z-loss (docs/design.md, "Routing").

logits [T, E] -> weights [T, k] (float32, or float64 for float64 logits), indices [T, k] int32.
``topk_gating_with_balancing_loss`` is the composition of ``topk_gating`` and ``load_balancing_loss``.
"""
from __future__ import annotations

import torch

from ._common import compute_dtype


def topk_order(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Expert ids of the k best logits per row: larger first, ties to the lower id, NaN last.

    Two stable sorts give that order exactly: by value (NaN treated as -inf), then by is-NaN.
    """
    x = logits.to(compute_dtype(logits))
    nan = torch.isnan(x)
    by_value = torch.sort(x.masked_fill(nan, float("-inf")), dim=-1, descending=True, stable=True).indices
    nan_last = torch.sort(nan.gather(-1, by_value).to(torch.uint8), dim=-1, stable=True).indices
    return by_value.gather(-1, nan_last)[:, :k]


def topk_gating(logits: torch.Tensor, k: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(logits.to(compute_dtype(logits)), dim=-1)
    order = topk_order(logits, k)
    weights = probs.gather(-1, order)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, order.to(torch.int32)


def _token_weights(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(logits.shape[0], dtype=compute_dtype(logits), device=logits.device)
    return mask.to(compute_dtype(logits))


def load_balancing_loss(logits: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    num_experts, k = logits.shape[1], indices.shape[1]
    probs = torch.softmax(logits.to(compute_dtype(logits)), dim=-1)
    counted = _token_weights(logits, mask)
    tokens = counted.sum().clamp(min=1)  # with no counted token every term below is 0
    slot_counts = torch.zeros(num_experts, dtype=probs.dtype, device=logits.device)
    slot_counts.index_add_(0, indices.reshape(-1).long(), counted.repeat_interleave(k))
    fraction = slot_counts / (tokens * k)
    mean_prob = (probs * counted[:, None]).sum(dim=0) / tokens
    return num_experts * (fraction * mean_prob).sum()


def router_z_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    counted = _token_weights(logits, mask)
    lse = torch.logsumexp(logits.to(compute_dtype(logits)), dim=-1)
    return (lse.square() * counted).sum() / counted.sum().clamp(min=1)


def topk_gating_with_balancing_loss(
    logits: torch.Tensor, k: int, normalize: bool = True, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    weights, indices = topk_gating(logits, k, normalize)
    return weights, indices, load_balancing_loss(logits, indices, mask)
