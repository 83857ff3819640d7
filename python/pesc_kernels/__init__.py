"""pesc_kernels: kernels and a model layer for Parameter-Efficient Sparsity Crafting (PESC).

PESC (arXiv 2401.02731) turns a dense transformer into a mixture of adapters: every expert shares
the frozen dense FFN and adds a small rank-r adapter, and a top-k router picks experts per token.

- :mod:`pesc_kernels.ops`: the custom ops (``torch.ops.pesc.*``), CPU and CUDA.
- :mod:`pesc_kernels.reference`: pure-PyTorch versions of every op (oracle, baseline, fallback).
- :class:`PESCConfig`, :class:`PESCMoE`, :func:`craft`, :func:`router_losses`,
  :func:`save_pesc` / :func:`load_pesc`: the model layer for Hugging Face causal LMs.
- :func:`from_pretrained` / :func:`save_official`: official PESC checkpoints (Camelidae, Sparsetral,
  Qwen2idae) in and out; ``python -m pesc_kernels convert`` converts directories.
"""
from . import ops, reference
from ._library import build_info, cpu_buffer_cache_info, empty_cpu_buffer_cache, set_cpu_buffer_cache_limit
from ._version import __version__
from .checkpoints import from_pretrained, load_pesc, save_official, save_pesc
from .config import PESCConfig
from .crafting import craft, pesc_parameters, router_losses, trainable_parameter_summary
from .layer import PESCMoE

__all__ = [
    "ops", "reference", "build_info", "__version__",
    "cpu_buffer_cache_info", "empty_cpu_buffer_cache", "set_cpu_buffer_cache_limit",
    "PESCConfig", "PESCMoE", "craft", "trainable_parameter_summary", "router_losses", "pesc_parameters",
    "save_pesc", "load_pesc", "from_pretrained", "save_official",
]
