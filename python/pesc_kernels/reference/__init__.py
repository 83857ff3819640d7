"""Readable pure-PyTorch versions of every op: the oracle of the tests, a baseline of the
benchmarks, and the fallback on devices with no compiled kernels (docs/design.md, "Reference").

A leaf of pure functions: it imports nothing else from pesc_kernels. Routing and permutation
compute in float32 (float64 for float64 inputs, so the tests can measure the reference's own
rounding error against a float64 run); the grouped GEMMs compute in the inputs' dtype, as a user's
own per-expert loop would. The layer-level baselines (the PESC dataflow on these functions, the
official Camelidae forward and the Sparsetral forward) are ``pesc_kernels.PESCMoE(impl=...)``.
"""
from .activations import ACTIVATIONS, activation_fn
from .adapter import GATED_ACTIVATIONS, adapter, gated_activation, grouped_mm
from .gating import load_balancing_loss, router_z_loss, topk_gating, topk_gating_with_balancing_loss
from .permute import permute, unpermute
from .routing import grouped_topk_gating

__all__ = [
    "topk_gating", "load_balancing_loss", "router_z_loss", "topk_gating_with_balancing_loss",
    "grouped_topk_gating",
    "permute", "unpermute",
    "grouped_mm", "adapter", "gated_activation", "ACTIVATIONS", "GATED_ACTIVATIONS", "activation_fn",
]
