"""Grouped GEMMs on expert segments (grouped_mm, the fused PESC adapter) and the gated activation.

See docs/design.md, "Grouped GEMMs". Registers autograd for
``torch.ops.pesc.{grouped_mm, adapter, gated_activation}``; their backward passes are ops too
(``grouped_mm_backward``, ``adapter_backward``, ``gated_activation_backward``), so torch.compile
sees opaque, shape-stable calls in both directions. Validation and the fake implementations live
with the kernels (``csrc/adapter/ops.cpp``).

``torch.ops.pesc.adapter`` returns ``(y, h)``: ``h = x @ w_down`` is the ``[N, r]`` pre-activation
(in x's dtype) that autograd saves for the backward, which therefore never recomputes the down
projection (h is r/d the size of x). It carries no gradient; :func:`adapter` returns y only.
"""
from __future__ import annotations

import torch

from .. import _library, reference


def grouped_mm(x: torch.Tensor, w: torch.Tensor, expert_offsets: torch.Tensor, bias: torch.Tensor | None = None,
               w_transposed: bool = False) -> torch.Tensor:
    """``y[seg e] = x[seg e] @ W_e + bias[e]`` for every expert segment.

    Args:
        x: ``[N, K]`` rows grouped by expert (as :func:`permute` returns them), float32/float16/bfloat16.
        w: per-expert weights in x's dtype, E >= 1: input-major ``[E, K, M]`` (``W_e = w[e]``), or with
            ``w_transposed=True`` output-major ``[E, M, K]`` (``W_e = w[e]^T``, the layout of
            ``nn.Linear`` and of Hugging Face's expert weights). Both layouts are read in place, in
            the forward and the backward: no copy of w is made.
        expert_offsets: ``[E+1]`` int64, monotone, ``offsets[0] = 0`` and ``offsets[E] <= N``; expert
            e's rows are ``x[offsets[e]:offsets[e+1]]``. Segments may be empty. Rows from
            ``offsets[E]`` to N belong to no expert (slots :func:`permute` dropped): their output
            rows are zero and they add nothing to the weight and bias gradients. CPU checks the
            values; CUDA cannot without a host sync, so there invalid offsets give unspecified (but
            in-bounds, deterministic) results.
        bias: optional ``[E, M]`` per-expert bias, dtype of x.

    Returns ``y [N, M]`` in x's dtype, accumulated in float32. Gradients flow to x, w and bias; the
    weight gradient is a per-expert reduction over the expert's rows and the bias gradient the
    per-expert column sums (float32, rows in order): deterministic, no atomics, and on CPU the same
    bits for any thread count.
    """
    if _library.use_kernel("grouped_mm", x.device):
        return torch.ops.pesc.grouped_mm(x, w, expert_offsets, bias, w_transposed)
    return _library.fallback("grouped_mm", (x, w, expert_offsets, bias, w_transposed), reference.grouped_mm)


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


def gated_activation(h: torch.Tensor, activation: str = "silu", interleaved: bool = False, limit: float = 7.0,
                     alpha: float = 1.702) -> torch.Tensor:
    """The gated activation of a gate/up projection's output: ``a = act(gate) * up``, in one pass.

    Args:
        h: ``[N, 2F]`` float32/float16/bfloat16, a gate and an up value per output column: gate =
            ``h[:, :F]``, up = ``h[:, F:]`` (concatenated, Mixtral/Qwen/OLMoE/DeepSeek), or with
            ``interleaved=True`` gate = ``h[:, 0::2]``, up = ``h[:, 1::2]`` (GPT-OSS).
        activation: ``silu`` (SwiGLU), ``gelu`` (GeGLU, exact erf), ``gelu_tanh``, ``relu``,
            ``identity``, or ``clamped_swiglu``: GPT-OSS's ``(clamp(up, -limit, limit) + 1) * g *
            sigmoid(alpha * g)`` with ``g = clamp(gate, max=limit)``.
        limit, alpha: parameters of ``clamped_swiglu`` (ignored by the other activations).

    Returns ``a [N, F]`` in h's dtype, computed in float32 and rounded once; h is read once and a
    written once (torch's ``act(gate) * up`` makes three passes). The gradient w.r.t. h is one op
    (``gated_activation_backward``) reading h and the upstream gradient once; clamped values pass no
    gradient, as with torch.clamp.
    """
    args = (h, activation, interleaved, limit, alpha)
    if _library.use_kernel("gated_activation", h.device):
        return torch.ops.pesc.gated_activation(*args)
    return _library.fallback("gated_activation", args, reference.gated_activation)


def _register() -> None:
    lib = "pesc::"

    def needs(ctx, i):
        # needs_input_grad (like the inputs) has no entry for trailing arguments left at their default.
        return i < len(ctx.needs_input_grad) and ctx.needs_input_grad[i]

    def full(inputs, required, defaults):
        """The op's inputs with the trailing arguments left at their defaults filled in: the first
        ``required`` arguments are always given, ``defaults`` are those of the rest."""
        return (*inputs, *defaults[len(inputs) - required:])

    def grouped_mm_setup(ctx, inputs, output):
        x, w, expert_offsets, bias, w_transposed = full(inputs, 3, (None, False))
        ctx.save_for_backward(x, w, expert_offsets)
        ctx.w_transposed = w_transposed
        ctx.bias_grad = bias is not None and needs(ctx, 3)

    def grouped_mm_backward(ctx, grad_y):
        x, w, expert_offsets = ctx.saved_tensors
        mask = [needs(ctx, 0), needs(ctx, 1), ctx.bias_grad]
        grads = torch.ops.pesc.grouped_mm_backward(grad_y, x, w, expert_offsets, ctx.w_transposed, mask)
        grad_x, grad_w, grad_bias = (g if m else None for g, m in zip(grads, mask))
        return grad_x, grad_w, None, grad_bias, None

    torch.library.register_autograd(lib + "grouped_mm", grouped_mm_backward, setup_context=grouped_mm_setup)

    def adapter_setup(ctx, inputs, output):
        x, w_down, w_up, expert_offsets, activation, scaling = full(inputs, 4, ("gelu", 1.0))
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

    def gated_setup(ctx, inputs, output):
        h, activation, interleaved, limit, alpha = full(inputs, 1, ("silu", False, 7.0, 1.702))
        ctx.save_for_backward(h)
        ctx.params = (activation, interleaved, limit, alpha)

    def gated_backward(ctx, grad_a):
        (h,) = ctx.saved_tensors
        return torch.ops.pesc.gated_activation_backward(grad_a, h, *ctx.params), None, None, None, None

    torch.library.register_autograd(lib + "gated_activation", gated_backward, setup_context=gated_setup)


if _library.extension_loaded():
    _register()
