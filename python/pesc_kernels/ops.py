"""Public op API of pesc_kernels: PyTorch custom ops under ``torch.ops.pesc`` (DESIGN.md 2).

Each function here calls the compiled CPU/CUDA kernel for its inputs' device, or the pure-PyTorch
:mod:`pesc_kernels.reference` (with one warning per device type) where no kernel exists. All ops
support autograd, ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``; they are
deterministic and, on CUDA, never synchronise with the host.

Conventions: T tokens, E experts, k experts per token, d hidden size, r adapter rank, N = T*k
routed rows. Activations fp32/fp16/bf16 with fp32 accumulation; routing weights fp32; index
tensors int32; expert offsets int64.
"""
from ._adapter_ops import ACTIVATIONS, adapter, grouped_mm
from ._gating_ops import load_balancing_loss, router_z_loss, topk_gating
from ._permute_ops import permute, unpermute

__all__ = [
    "topk_gating", "load_balancing_loss", "router_z_loss",
    "permute", "unpermute",
    "grouped_mm", "adapter", "ACTIVATIONS",
]
