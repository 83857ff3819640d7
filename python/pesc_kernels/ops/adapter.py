"""Grouped GEMMs on expert segments: grouped_mm and the fused PESC adapter.

See docs/design.md, "Grouped GEMMs". Registers autograd for ``torch.ops.pesc.{grouped_mm, adapter}``;
their backward passes are ops too (``grouped_mm_backward``, ``adapter_backward``), so torch.compile
sees opaque, shape-stable calls in both directions. Validation and the fake implementations live
with the kernels (``csrc/adapter/ops.cpp``).

``torch.ops.pesc.adapter`` returns ``(y, h)``: ``h = x @ w_down`` is the ``[N, r]`` pre-activation
(in x's dtype) that autograd saves for the backward, which therefore never recomputes the down
projection (h is r/d the size of x). It carries no gradient; :func:`adapter` returns y only.
"""
from __future__ import annotations

import torch

from .. import _library, reference


def grouped_mm(x: torch.Tensor, w: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    """``y[seg e] = x[seg e] @ w[e]`` for every expert segment.

    Args:
        x: ``[N, K]`` rows grouped by expert (as :func:`permute` returns them), float32/float16/bfloat16.
        w: ``[E, K, M]`` per-expert weights, input-major (``y = x @ w``), dtype of x, E >= 1.
        expert_offsets: ``[E+1]`` int64, monotone, ``offsets[0] = 0`` and ``offsets[E] = N``; expert
            e's rows are ``x[offsets[e]:offsets[e+1]]``. Segments may be empty. CPU checks the values;
            CUDA cannot without a host sync, so there invalid offsets give unspecified (but in-bounds,
            deterministic) results.

    Returns ``y [N, M]`` in x's dtype, accumulated in float32. Gradients flow to x and w; the
    weight gradient is a per-expert reduction over the expert's rows, deterministic, no atomics.
    """
    if _library.use_kernel("grouped_mm", x.device):
        return torch.ops.pesc.grouped_mm(x, w, expert_offsets)
    return _library.fallback("grouped_mm", (x, w, expert_offsets), reference.grouped_mm)


def adapter(x: torch.Tensor, w_down: torch.Tensor, w_up: torch.Tensor, expert_offsets: torch.Tensor,
            activation: str = "gelu", scaling: float = 1.0) -> torch.Tensor:
    """Per-expert bottleneck adapter ``y[seg e] = scaling * act(x[seg e] @ w_down[e]) @ w_up[e]``.

    Args:
        x: ``[N, d]`` rows grouped by expert.
        w_down: ``[E, d, r]``; w_up: ``[E, r, d]`` (dtype of x); r >= 1 (tested from 1 to 1024).
        expert_offsets: ``[E+1]`` int64 segment bounds (see :func:`grouped_mm`).
        activation: one of ``gelu`` (exact erf), ``gelu_tanh``, ``silu``, ``relu``, ``identity``.
        scaling: multiplies the adapter output.

    Returns ``y [N, d]`` in x's dtype (float32 accumulation). Gradients flow to x, w_down and w_up.
    The backward reads the pre-activation ``h = x @ w_down [N, r]`` saved by the forward (not
    recomputed). On CUDA, for r <= 128 the forward keeps each row tile's rank-r intermediate in
    shared memory, reading x once and writing y (and h) once.
    """
    if _library.use_kernel("adapter", x.device):
        return torch.ops.pesc.adapter(x, w_down, w_up, expert_offsets, activation, scaling)[0]
    return _library.fallback("adapter", (x, w_down, w_up, expert_offsets, activation, scaling), reference.adapter)


def _register() -> None:
    lib = "pesc::"

    def grouped_mm_setup(ctx, inputs, output):
        x, w, expert_offsets = inputs
        ctx.save_for_backward(x, w, expert_offsets)

    def grouped_mm_backward(ctx, grad_y):
        x, w, expert_offsets = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:2])
        grad_x, grad_w = torch.ops.pesc.grouped_mm_backward(grad_y, x, w, expert_offsets, mask)
        return (grad_x if mask[0] else None), (grad_w if mask[1] else None), None

    torch.library.register_autograd(lib + "grouped_mm", grouped_mm_backward, setup_context=grouped_mm_setup)

    def adapter_setup(ctx, inputs, output):
        x, w_down, w_up, expert_offsets, activation, scaling = inputs
        _y, h = output
        ctx.mark_non_differentiable(h)
        ctx.set_materialize_grads(False)  # no zero [N, r] gradient for h
        ctx.save_for_backward(x, w_down, w_up, expert_offsets, h)
        ctx.activation, ctx.scaling = activation, scaling

    def adapter_backward(ctx, grad_y, _grad_h):
        x, w_down, w_up, expert_offsets, h = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        grads = torch.ops.pesc.adapter_backward(grad_y, x, w_down, w_up, expert_offsets, h, ctx.activation,
                                                ctx.scaling, mask)
        return (*(g if needed else None for g, needed in zip(grads, mask)), None, None, None)

    torch.library.register_autograd(lib + "adapter", adapter_backward, setup_context=adapter_setup)


if _library.extension_loaded():
    _register()
