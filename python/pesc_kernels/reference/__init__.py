"""Readable pure-PyTorch versions of every op (and, later, of the layer).

They are the oracle of the tests, the baseline of the benchmarks, and the fallback on devices with
no compiled kernels. Each computes in float32, or in float64 when given float64 inputs, so the
tests can measure the reference's own rounding error against a float64 run.
"""
from .gating import load_balancing_loss, router_z_loss, topk_gating

__all__ = ["topk_gating", "load_balancing_loss", "router_z_loss"]
