"""Grouped GEMMs on expert segments: grouped_mm and the fused PESC adapter (DESIGN.md 2.3)."""
from __future__ import annotations

import torch

from . import _library, reference

ACTIVATIONS = tuple(reference.ACTIVATIONS)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    """``y[seg e] = x[seg e] @ w[e]`` for every expert segment.

    Args:
        x: ``[N, K]`` rows grouped by expert (as :func:`permute` returns them).
        w: ``[E, K, M]`` per-expert weights, input-major (``y = x @ w``), dtype of x.
        expert_offsets: ``[E+1]`` int64, monotone, ``offsets[0] = 0`` and ``offsets[E] = N``.

    Returns ``y [N, M]`` in x's dtype, accumulated in float32. Gradients flow to x and w.
    """
    if _library.use_kernel("grouped_mm", x.device):
        return torch.ops.pesc.grouped_mm(x, w, expert_offsets)
    return reference.grouped_mm(x, w, expert_offsets)


def adapter(x: torch.Tensor, w_down: torch.Tensor, w_up: torch.Tensor, expert_offsets: torch.Tensor,
            activation: str = "gelu", scaling: float = 1.0) -> torch.Tensor:
    """Per-expert bottleneck adapter ``y[seg e] = scaling * act(x[seg e] @ w_down[e]) @ w_up[e]``.

    Args:
        x: ``[N, d]`` rows grouped by expert.
        w_down: ``[E, d, r]``; w_up: ``[E, r, d]`` (dtype of x); 1 <= r <= 1024.
        expert_offsets: ``[E+1]`` int64 segment bounds (see :func:`grouped_mm`).
        activation: one of ``gelu`` (exact erf), ``gelu_tanh``, ``silu``, ``relu``, ``identity``.
        scaling: multiplies the adapter output.

    Returns ``y [N, d]`` in x's dtype. Gradients flow to x, w_down and w_up.
    """
    if _library.use_kernel("adapter", x.device):
        return torch.ops.pesc.adapter(x, w_down, w_up, expert_offsets, activation, scaling)
    return reference.adapter(x, w_down, w_up, expert_offsets, activation, scaling)
