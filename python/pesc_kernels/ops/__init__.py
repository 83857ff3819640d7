"""Public op API of pesc_kernels: PyTorch custom ops under ``torch.ops.pesc`` (docs/design.md, "Ops").

Each function calls the compiled CPU/CUDA kernel for its inputs' device, or, where no kernel exists,
validates its arguments exactly as the kernels do and runs the pure-PyTorch
:mod:`pesc_kernels.reference` (with one warning per device type). All ops support autograd,
``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``; they are deterministic and, on
CUDA, never synchronise with the host.

Conventions: T tokens, E experts, k experts per token, d hidden size, r adapter rank, N = T*k
routed rows. Activations fp32/fp16/bf16 with fp32 accumulation; routing weights fp32; index
tensors int32; expert offsets int64.

One module per op family: :mod:`.gating` (routing), :mod:`.permute` (dispatch and combine),
:mod:`.adapter` (grouped GEMMs and the fused PESC adapter).
"""
from ..reference.activations import ACTIVATIONS as _ACTIVATION_FUNCTIONS
from .adapter import adapter, grouped_mm
from .gating import load_balancing_loss, router_z_loss, topk_gating, topk_gating_with_balancing_loss
from .permute import permute, unpermute

ACTIVATIONS = tuple(_ACTIVATION_FUNCTIONS)  # the names `adapter` accepts

__all__ = [
    "topk_gating", "load_balancing_loss", "router_z_loss", "topk_gating_with_balancing_loss",
    "permute", "unpermute",
    "grouped_mm", "adapter", "ACTIVATIONS",
]
