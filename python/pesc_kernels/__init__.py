"""pesc_kernels: kernels and a model layer for Parameter-Efficient Sparsity Crafting (PESC).

PESC (arXiv 2401.02731) turns a dense transformer into a mixture of adapters: every expert shares
the frozen dense FFN and adds a small rank-r adapter, and a top-k router picks experts per token.

- :mod:`pesc_kernels.ops`: the custom ops (``torch.ops.pesc.*``), CPU and CUDA.
- :mod:`pesc_kernels.reference`: pure-PyTorch versions of every op (oracle, baseline, fallback).
"""
from . import ops, reference
from ._library import build_info
from ._version import __version__

__all__ = ["ops", "reference", "build_info", "__version__"]
