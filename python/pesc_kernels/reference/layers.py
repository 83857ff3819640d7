"""Reference PESC layers: the same math in plain PyTorch, three ways (DESIGN.md 1, 2.4).

All three take the parameters of :class:`pesc_kernels.PESCMoE` (``router.weight [E, d]``,
``w_down [E, d, r]``, ``w_up [E, r, d]``, same names, so ``load_state_dict`` moves them across)
and compute ``y = z + sum_{e in top-k} g_e * scaling * act(dropout(z) @ w_down[e]) @ w_up[e]``
with ``z = ffn(x)`` and the router reading x.

- :class:`PESCMoE`: the PESC dataflow (sort-based permute, per-expert GEMMs on contiguous
  segments, gather-based weighted combine) composed from the reference ops. Oracle and baseline.
- :class:`CamelidaeMoE`: the forward of the official PESC / Camelidae code
  (wuhy68/Parameter-Efficient-MoE, ``CamelidaeGateAdapter``): top-k of the logits, softmax over the
  k selected logits in the logits' dtype, ``repeat_interleave`` of the FFN output k times, a masked
  loop over the experts adding each adapter to its rows in place, then the gate-weighted sum of the
  k copies ``sum_j g_j (z + A_j(z))`` (equal to the PESC form because the gates sum to 1). As there,
  each expert applies its own dropout to its rows.
- :class:`SparsetralMoE`: the Sparsetral forward: fp32 softmax, top-k, renormalisation, the k
  weights scattered into a dense ``[T, E]`` matrix that is mostly zero, then every expert's adapter
  run on every token and multiplied by its column.

With dropout off (eval mode or ``adapter_dropout=0``) all three agree with
:class:`pesc_kernels.PESCMoE` up to rounding; :class:`PESCMoE` here also draws the same dropout
mask as the kernel layer for the same RNG state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference as _reference_ops  # this package (its ops are used at call time)
from .._moe_base import MoEAdapterBase
from .adapter import activation_fn


class PESCMoE(MoEAdapterBase):
    """Pure-PyTorch :class:`pesc_kernels.PESCMoE`: the same dataflow on the reference ops."""

    def _mix(self, z2, logits):
        return self._pesc_mix(_reference_ops, z2, logits)


class CamelidaeMoE(MoEAdapterBase):
    """The official PESC (Camelidae) forward: repeat_interleave plus a masked loop over experts.

    Requires ``normalize_top_k=True``: the official code always renormalises (softmax over the k
    selected logits) and its combine ``sum_j g_j (z + A_j)`` relies on the gates summing to 1.
    """

    def __init__(self, ffn, hidden_size, config, **kwargs):
        if not config.normalize_top_k:
            raise ValueError("CamelidaeMoE: the official forward always renormalises the top-k weights; "
                             "normalize_top_k=False is not representable")
        super().__init__(ffn, hidden_size, config, **kwargs)

    def _expert(self, e: int, h: torch.Tensor) -> torch.Tensor:
        """ParallelAdapterMLP: scaling * up(act(down(dropout(h))))."""
        c = self.config
        h = F.dropout(h, c.adapter_dropout, training=self.training)
        w_down, w_up = self._adapter_weights(h.dtype)
        return c.scaling * (activation_fn(c.activation)(h @ w_down[e]) @ w_up[e])

    def _mix(self, z2, logits):
        k, tokens, d = self.config.top_k, z2.shape[0], z2.shape[1]
        top_logits, top_indices = torch.topk(logits, k, dim=-1)
        gates = top_logits.softmax(dim=-1)
        flat = top_indices.reshape(-1)
        inputs = z2.repeat_interleave(k, dim=0)
        outputs = z2.repeat_interleave(k, dim=0)
        for e in range(self.config.num_experts):
            selected = flat == e
            outputs[selected] += self._expert(e, inputs[selected])
        y = (outputs.view(tokens, k, d) * gates.unsqueeze(-1)).sum(dim=1)
        return y, top_indices.to(torch.int32)


class SparsetralMoE(MoEAdapterBase):
    """The Sparsetral forward: every expert on every token, times its (mostly zero) routing weight."""

    def _mix(self, z2, logits):
        c = self.config
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top_weights, top_indices = torch.topk(probs, c.top_k, dim=-1)
        if c.normalize_top_k:
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        dense = torch.zeros_like(probs).scatter(1, top_indices, top_weights).to(z2.dtype)
        h = self._adapter_input(z2)
        w_down, w_up = self._adapter_weights(h.dtype)
        act = activation_fn(c.activation)
        y = z2
        for e in range(c.num_experts):
            y = y + dense[:, e, None] * (c.scaling * (act(h @ w_down[e]) @ w_up[e]))
        return y, top_indices.to(torch.int32)
