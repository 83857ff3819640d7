"""Readable pure-PyTorch versions of every op and of the PESC layer (plus the public Camelidae and
Sparsetral forwards, as benchmark baselines).

They are the oracle of the tests, the baseline of the benchmarks, and the fallback on devices with
no compiled kernels. Routing and permutation compute in float32 (float64 for float64 inputs, so
the tests can measure the reference's own rounding error against a float64 run); the grouped GEMMs
compute in the inputs' dtype, as a user's own per-expert loop would.
"""
from .adapter import ACTIVATIONS, adapter, grouped_mm
from .gating import load_balancing_loss, router_z_loss, topk_gating
from .permute import permute, unpermute
from .layers import CamelidaeMoE, PESCMoE, SparsetralMoE  # after the ops: the layers use them

__all__ = [
    "topk_gating", "load_balancing_loss", "router_z_loss",
    "permute", "unpermute",
    "grouped_mm", "adapter", "ACTIVATIONS",
    "PESCMoE", "CamelidaeMoE", "SparsetralMoE",
]
