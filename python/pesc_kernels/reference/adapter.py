"""Reference grouped GEMMs on expert segments: a plain per-expert loop of torch.mm (docs/design.md, "Grouped GEMMs").

grouped_mm: x [N, K], w [E, K, M] (or [E, M, K] with w_transposed), expert_offsets [E+1] int64,
            bias [E, M]? -> y [N, M], y[seg e] = x[seg e] @ W_e + bias[e]; rows past offsets[E] are 0
adapter:    y[seg e] = scaling * act(x[seg e] @ w_down[e]) @ w_up[e], w_down [E, d, r], w_up [E, r, d]
gated_activation: h [N, 2F] -> a [N, F], act(gate) * up (or GPT-OSS's clamped SwiGLU), gate and up
            concatenated (h = [gate | up]) or interleaved (gate = h[:, 0::2], up = h[:, 1::2])
Computed in the inputs' dtype, as a user's own PyTorch loop would (torch.mm accumulates in fp32).
"""
from __future__ import annotations

import torch

from .activations import ACTIVATIONS, activation_fn

# The names gated_activation accepts: act(gate) * up for every adapter activation, and GPT-OSS's
# clamped SwiGLU (csrc/adapter/gated.h carries the same list).
CLAMPED_SWIGLU = "clamped_swiglu"
GATED_ACTIVATIONS = (*ACTIVATIONS, CLAMPED_SWIGLU)


def _segments(expert_offsets: torch.Tensor):
    bounds = expert_offsets.tolist()  # host sync: reference only
    return [(e, bounds[e], bounds[e + 1]) for e in range(len(bounds) - 1) if bounds[e + 1] > bounds[e]]


def _with_dropped_rows(parts: list[torch.Tensor], x: torch.Tensor, expert_offsets: torch.Tensor, width: int):
    """The segments' rows followed by zeros for the rows past offsets[E] (dropped slots)."""
    kept = int(expert_offsets[-1])
    return torch.cat([x.new_zeros(0, width), *parts, x.new_zeros(x.shape[0] - kept, width)])


def grouped_mm(x: torch.Tensor, w: torch.Tensor, expert_offsets: torch.Tensor, bias: torch.Tensor | None = None,
               w_transposed: bool = False) -> torch.Tensor:
    M = w.shape[1] if w_transposed else w.shape[2]
    parts = []
    for e, start, end in _segments(expert_offsets):
        out = x[start:end] @ (w[e].t() if w_transposed else w[e])
        parts.append(out if bias is None else out + bias[e])
    return _with_dropped_rows(parts, x, expert_offsets, M)


def adapter(x: torch.Tensor, w_down: torch.Tensor, w_up: torch.Tensor, expert_offsets: torch.Tensor,
            activation: str = "gelu", scaling: float = 1.0) -> torch.Tensor:
    act = activation_fn(activation)
    parts = [scaling * (act(x[start:end] @ w_down[e]) @ w_up[e]) for e, start, end in _segments(expert_offsets)]
    return _with_dropped_rows(parts, x, expert_offsets, w_up.shape[2])


def gated_activation(h: torch.Tensor, activation: str = "silu", interleaved: bool = False, limit: float = 7.0,
                     alpha: float = 1.702) -> torch.Tensor:
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(GATED_ACTIVATIONS)}")
    gate, up = (h[:, 0::2], h[:, 1::2]) if interleaved else h.chunk(2, dim=-1)
    if activation == CLAMPED_SWIGLU:  # GPT-OSS
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1) * (gate * torch.sigmoid(gate * alpha))
    return ACTIVATIONS[activation](gate) * up
