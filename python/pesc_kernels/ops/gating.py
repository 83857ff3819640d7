"""Routing ops: top-k gating, the Switch load-balancing loss and the router z-loss.

See docs/design.md, "Routing". Registers autograd for ``torch.ops.pesc.{topk_gating,
load_balancing_loss, router_z_loss, topk_gating_with_balancing_loss}``; their backward passes are
ops too (``*_backward``), so torch.compile sees opaque, shape-stable calls in both directions.
Validation and the fake (meta) implementations live with the kernels (``csrc/gating/ops.cpp``).

Every routing op gives the same bits for any number of CPU threads (and for the same inputs on
one device, always).
"""
from __future__ import annotations

import torch

from .. import _library, reference


def topk_gating(logits: torch.Tensor, k: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router with top-k selection.

    Args:
        logits: ``[T, E]`` router logits, float32/float16/bfloat16, 1 <= E <= 1024.
        k: experts per token, 1 <= k <= E.
        normalize: renormalise the k selected probabilities to sum to 1 (PESC does).

    Returns:
        ``weights [T, k]`` float32 and ``indices [T, k]`` int32, in descending order of probability.
        Ranking ties go to the lower expert index. A row with NaN gives NaN weights but still k
        distinct valid ids. The softmax runs in float32. Gradient flows to ``logits`` from
        ``weights`` only, in ``logits``' dtype.
    """
    if _library.use_kernel("topk_gating", logits.device):
        return torch.ops.pesc.topk_gating(logits, k, normalize)
    return _library.fallback("topk_gating", (logits, k, normalize), reference.topk_gating)


def load_balancing_loss(
    logits: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch Transformer balancing loss ``E * sum_e f_e * P_e`` as a 0-dim float32 tensor.

    Args:
        logits: ``[T, E]`` router logits (float32/float16/bfloat16).
        indices: ``[T, k]`` int32 expert ids chosen for each token (e.g. from :func:`topk_gating`).
        mask: optional ``[T]`` bool, True for tokens that count (e.g. the attention mask).

    ``f_e`` is the fraction of the counted tokens' T*k routed slots that went to expert e and ``P_e``
    the mean softmax probability of expert e over counted tokens. Gradient flows to ``logits``
    through ``P`` only. Returns 0 when no token counts.
    """
    if _library.use_kernel("load_balancing_loss", logits.device):
        return torch.ops.pesc.load_balancing_loss(logits, indices, mask)
    return _library.fallback("load_balancing_loss", (logits, indices, mask), reference.load_balancing_loss)


def router_z_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Router z-loss ``mean_t logsumexp(logits_t)^2`` over counted tokens, 0-dim float32.

    Args:
        logits: ``[T, E]`` router logits (float32/float16/bfloat16).
        mask: optional ``[T]`` bool, True for tokens that count. Returns 0 when none does.
    """
    if _library.use_kernel("router_z_loss", logits.device):
        return torch.ops.pesc.router_z_loss(logits, mask)
    return _library.fallback("router_z_loss", (logits, mask), reference.router_z_loss)


def topk_gating_with_balancing_loss(
    logits: torch.Tensor, k: int, normalize: bool = True, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`topk_gating` and :func:`load_balancing_loss` of its selection, in one pass over the logits.

    Equal to ``weights, indices = topk_gating(logits, k, normalize)`` followed by
    ``load_balancing_loss(logits, indices, mask)``: the same values and the same gradient (the sum
    of the two ops' gradients; on CPU added in float32 and rounded once to ``logits``' dtype, so
    float32 gives the same bits as the two ops; when only one output is used, the backward is that
    op's own). On CPU the softmax is computed once for both, in one pass forward and one backward;
    on CUDA the op runs the two ops' kernels.

    Returns:
        ``weights [T, k]`` float32, ``indices [T, k]`` int32 and the 0-dim float32 balancing loss.
    """
    if _library.use_kernel("topk_gating_with_balancing_loss", logits.device):
        weights, indices, loss, _routed_counts = torch.ops.pesc.topk_gating_with_balancing_loss(
            logits, k, normalize, mask)
        return weights, indices, loss
    return _library.fallback("topk_gating_with_balancing_loss", (logits, k, normalize, mask),
                             reference.topk_gating_with_balancing_loss)


def _register() -> None:
    lib = "pesc::"

    def gating_setup(ctx, inputs, output):
        logits, _k, normalize = inputs
        weights, indices = output
        ctx.save_for_backward(logits, weights, indices)
        ctx.normalize = normalize

    def gating_backward(ctx, grad_weights, _grad_indices):
        logits, weights, indices = ctx.saved_tensors
        grad = torch.ops.pesc.topk_gating_backward(grad_weights, logits, weights, indices, ctx.normalize)
        return grad, None, None

    torch.library.register_autograd(lib + "topk_gating", gating_backward, setup_context=gating_setup)

    def balance_setup(ctx, inputs, output):
        logits, indices, mask = inputs
        ctx.save_for_backward(logits, indices, mask)

    def balance_backward(ctx, grad):
        logits, indices, mask = ctx.saved_tensors
        return torch.ops.pesc.load_balancing_loss_backward(grad, logits, indices, mask), None, None

    torch.library.register_autograd(lib + "load_balancing_loss", balance_backward, setup_context=balance_setup)

    def z_setup(ctx, inputs, output):
        logits, mask = inputs
        ctx.save_for_backward(logits, mask)

    def z_backward(ctx, grad):
        logits, mask = ctx.saved_tensors
        return torch.ops.pesc.router_z_loss_backward(grad, logits, mask), None

    torch.library.register_autograd(lib + "router_z_loss", z_backward, setup_context=z_setup)

    def fused_setup(ctx, inputs, output):
        logits, _k, normalize, mask = inputs
        weights, indices, _loss, routed_counts = output
        ctx.save_for_backward(logits, weights, indices, routed_counts, mask)
        ctx.normalize = normalize
        ctx.set_materialize_grads(False)  # an unused output's gradient is None: its part is skipped

    def fused_backward(ctx, grad_weights, _grad_indices, grad_loss, _grad_counts):
        logits, weights, indices, routed_counts, mask = ctx.saved_tensors
        if grad_loss is None and grad_weights is None:
            grad = None
        elif grad_loss is None:
            grad = torch.ops.pesc.topk_gating_backward(grad_weights, logits, weights, indices, ctx.normalize)
        elif grad_weights is None:
            grad = torch.ops.pesc.load_balancing_loss_backward(grad_loss, logits, indices, mask)
        else:
            grad = torch.ops.pesc.topk_gating_with_balancing_loss_backward(
                grad_weights, grad_loss, logits, weights, indices, routed_counts, mask, ctx.normalize)
        return grad, None, None, None

    torch.library.register_autograd(lib + "topk_gating_with_balancing_loss", fused_backward,
                                    setup_context=fused_setup)


if _library.extension_loaded():
    _register()
