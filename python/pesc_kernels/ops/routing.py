"""Grouped top-k routing: the DeepSeek-V3-style router as one op (docs/design.md, "Routing variants").

Registers autograd for ``torch.ops.pesc.grouped_topk_gating``; its backward is an op too
(``grouped_topk_gating_backward``), so torch.compile sees opaque, shape-stable calls in both
directions. Validation and the fake implementation live with the kernels (``csrc/routing/ops.cpp``).
"""
from __future__ import annotations

import torch

from .. import _library, reference


def grouped_topk_gating(logits: torch.Tensor, k: int, scoring: str = "softmax", bias: torch.Tensor | None = None,
                        num_groups: int = 1, topk_groups: int = 1, normalize: bool = True, scaling: float = 1.0):
    """Top-k routing with the options of DeepSeek-V3's router.

    Args:
        logits: ``[T, E]`` router logits, float32/float16/bfloat16 (math in float32), 1 <= E <= 1024.
        k: experts per token, ``1 <= k <= topk_groups * E / num_groups``.
        scoring: ``"softmax"`` (over all E) or ``"sigmoid"`` (per expert) scores ``s``.
        bias: optional ``[E]`` float32 added to the scores for the selection only (DeepSeek-V3's
            ``e_score_correction_bias``); it never reaches the weights and gets no gradient.
        num_groups, topk_groups: group-limited selection: the E experts form ``num_groups``
            consecutive groups, each scored by the sum of its two largest (biased) scores, and only
            the ``topk_groups`` best groups are eligible. ``num_groups = 1`` disables it.
        normalize: divide the k selected scores by their sum (plus 1e-20).
        scaling: multiply the weights by this routed scaling factor.

    Returns ``weights [T, k]`` float32 (the unbiased scores of the selected experts, normalized and
    scaled) and ``indices [T, k]`` int32, best first. Every ranking is deterministic, ties to the
    lower index, NaN after every number (a row with NaN gives NaN weights but k distinct valid ids).
    The gradient reaches the logits through the weights. With ``scoring="softmax"``, no bias and
    one group it selects what :func:`topk_gating` selects.
    """
    args = (logits, k, scoring, bias, num_groups, topk_groups, normalize, scaling)
    if _library.use_kernel("grouped_topk_gating", logits.device):
        return torch.ops.pesc.grouped_topk_gating(*args)
    return _library.fallback("grouped_topk_gating", args, reference.grouped_topk_gating)


def _register() -> None:
    defaults = ("softmax", None, 1, 1, True, 1.0)

    def setup(ctx, inputs, output):
        logits, _k, scoring, _bias, _groups, _topk_groups, normalize, scaling = (*inputs, *defaults[len(inputs) - 2:])
        _weights, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(logits, indices)
        ctx.params = (scoring, normalize, scaling)

    def backward(ctx, grad_weights, _grad_indices):
        logits, indices = ctx.saved_tensors
        grad = torch.ops.pesc.grouped_topk_gating_backward(grad_weights.contiguous(), logits, indices, *ctx.params)
        return grad, None, None, None, None, None, None, None

    torch.library.register_autograd("pesc::grouped_topk_gating", backward, setup_context=setup)


if _library.extension_loaded():
    _register()
