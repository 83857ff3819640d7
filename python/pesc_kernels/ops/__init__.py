"""Public op API of pesc_kernels: PyTorch custom ops under ``torch.ops.pesc`` (docs/design.md, "Ops").

Each function calls the compiled CPU/CUDA kernel for its inputs' device, or, where no kernel exists,
validates its arguments exactly as the kernels do and runs the pure-PyTorch
:mod:`pesc_kernels.reference` (with one warning per device type). All ops support autograd,
``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``; they are deterministic and, on
CUDA, never synchronise with the host.

Conventions: T tokens, E experts, k experts per token, d hidden size, r adapter rank, N = T*k
routed rows. Activations fp32/fp16/bf16 with fp32 accumulation; routing weights fp32 (permute's
combine also takes fp16/bf16 weights); index tensors int32 (permute also takes int64 ids); expert
offsets int64.

One module per op family: :mod:`.gating` (routing), :mod:`.routing` (grouped top-k routing, the
DeepSeek-V3-style router), :mod:`.permute` (dispatch and combine), :mod:`.adapter` (grouped GEMMs,
the fused PESC adapter and the gated activation).
"""
from ..reference.activations import ACTIVATIONS as _ACTIVATION_FUNCTIONS
from ..reference.adapter import GATED_ACTIVATIONS
from .adapter import adapter, gated_activation, grouped_mm
from .gating import load_balancing_loss, router_z_loss, topk_gating, topk_gating_with_balancing_loss
from .permute import permute, unpermute
from .routing import grouped_topk_gating

ACTIVATIONS = tuple(_ACTIVATION_FUNCTIONS)  # the names `adapter` accepts

__all__ = [
    "topk_gating", "load_balancing_loss", "router_z_loss", "topk_gating_with_balancing_loss",
    "grouped_topk_gating",
    "permute", "unpermute",
    "grouped_mm", "adapter", "gated_activation", "ACTIVATIONS", "GATED_ACTIVATIONS",
]
