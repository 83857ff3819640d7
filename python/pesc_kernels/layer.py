"""PESCMoE: the PESC mixture-of-adapters layer on the pesc_kernels ops (DESIGN.md 1).

    z = ffn(x)                                     frozen FFN, once per token
    logits = router(x)                             [T, E], in x's dtype (see below)
    weights, indices = ops.topk_gating(logits, k)  fp32 softmax + top-k (+ renormalisation)
    z_perm, row_map, offsets = ops.permute(dropout(z), indices, E)
    y_perm = ops.adapter(z_perm, w_down, w_up, offsets, activation, scaling)
    y = ops.unpermute(y_perm, row_map, weights, residual=z)  = z + sum_j g_j A_{e_j}(z)

Every step goes through :mod:`pesc_kernels.ops`, so the layer uses the compiled CPU/CUDA kernels
where they exist and the reference implementation (with one warning) elsewhere.

Dtypes: x, z and the outputs share the model's dtype (fp32, fp16 or bf16). The router logits are
computed by the router's Linear in the activations' dtype, as Hugging Face MoE models do; the
softmax, top-k, routing weights and the losses run in fp32 inside the ops, and the combine
accumulates in fp32. Under autocast with fp32 parameters the adapter weights are cast to the
activations' dtype for the op (the cast is differentiable, so the fp32 parameters get gradients).
"""
from __future__ import annotations

import torch

from . import ops
from ._moe_base import MoEAdapterBase


class PESCMoE(MoEAdapterBase):
    """Wrap a (frozen) FFN into a PESC mixture of E rank-r adapters with top-k routing.

    Args:
        ffn: an FFN module mapping ``[..., d] -> [..., d]`` (e.g. a ``LlamaMLP``); frozen, run once per token.
        hidden_size: d.
        config: a :class:`pesc_kernels.PESCConfig`.
        freeze_ffn, device, dtype: see :class:`pesc_kernels._moe_base.MoEAdapterBase`.

    Parameters: ``router.weight [E, d]``, ``w_down [E, d, r]`` and ``w_up [E, r, d]`` (zero at
    init, so the layer starts as the FFN). Dropout (``config.adapter_dropout``, training only) is
    applied to the adapters' input ``z``, one mask per token shared by its k experts; the residual
    path keeps the undropped ``z``.

    After each forward ``router_logits``, ``expert_indices`` and ``token_mask`` hold that step's
    routing for :func:`pesc_kernels.router_losses`.
    """

    def _mix(self, z2: torch.Tensor, logits: torch.Tensor):
        return self._pesc_mix(ops, z2, logits)
