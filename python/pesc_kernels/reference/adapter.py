"""Reference grouped GEMMs on expert segments: a plain per-expert loop of torch.mm (docs/design.md, "Grouped GEMMs").

grouped_mm: x [N, K], w [E, K, M], expert_offsets [E+1] int64 -> y [N, M], y[seg e] = x[seg e] @ w[e]
adapter:    y[seg e] = scaling * act(x[seg e] @ w_down[e]) @ w_up[e], w_down [E, d, r], w_up [E, r, d]
Computed in the inputs' dtype, as a user's own PyTorch loop would (torch.mm accumulates in fp32).
"""
from __future__ import annotations

import torch

from .activations import activation_fn


def _segments(expert_offsets: torch.Tensor):
    bounds = expert_offsets.tolist()  # host sync: reference only
    return [(e, bounds[e], bounds[e + 1]) for e in range(len(bounds) - 1) if bounds[e + 1] > bounds[e]]


def grouped_mm(x: torch.Tensor, w: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    parts = [x.new_zeros(0, w.shape[2])]
    parts += [x[start:end] @ w[e] for e, start, end in _segments(expert_offsets)]
    return torch.cat(parts)


def adapter(x: torch.Tensor, w_down: torch.Tensor, w_up: torch.Tensor, expert_offsets: torch.Tensor,
            activation: str = "gelu", scaling: float = 1.0) -> torch.Tensor:
    act = activation_fn(activation)
    parts = [x.new_zeros(0, w_up.shape[2])]
    parts += [scaling * (act(x[start:end] @ w_down[e]) @ w_up[e]) for e, start, end in _segments(expert_offsets)]
    return torch.cat(parts)
