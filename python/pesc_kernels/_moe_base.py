"""Parameters and bookkeeping shared by PESCMoE and the reference layers (DESIGN.md 1).

For a token x in R^d with the frozen FFN output z = F(x):

    logits = x @ W_router^T                       router: Linear(d, E, bias=False), weight [E, d]
    g, S   = top-k of softmax(logits)             (renormalised over S when normalize_top_k)
    y      = z + sum_{e in S} g_e * scaling * act(dropout(z) @ w_down[e]) @ w_up[e]

w_down is [E, d, r] and w_up is [E, r, d] (input-major: ``h @ w``). w_down is drawn like an
``nn.Linear(d, r)`` weight (kaiming-uniform with a=sqrt(5), i.e. U(-1/sqrt(d), 1/sqrt(d))) and w_up is
zero, so a freshly built layer returns exactly z. Subclasses only implement ``_mix``, the routed
combine; parameter names, initialisation, input checks and the router state kept for the losses are
the same for all of them, so their state dicts are interchangeable.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import PESCConfig


class MoEAdapterBase(nn.Module):
    """A frozen FFN plus a router and E stacked bottleneck adapters; see the module docstring.

    Args:
        ffn: the FFN module to wrap; it must map ``[..., d]`` to ``[..., d]``. It runs once per token.
        hidden_size: d.
        config: the :class:`PESCConfig`.
        freeze_ffn: set ``requires_grad=False`` on every FFN parameter (default True).
        device, dtype: of the new parameters; default: those of the FFN's first floating-point
            parameter (else the default device and dtype).

    After each forward, ``router_logits [T, E]``, ``expert_indices [T, k]`` (int32) and
    ``token_mask [T]`` (bool, or None when every token counts) describe that step's routing, for the
    balancing and z losses. ``attention_mask`` (set by a crafted model's forward, [B, L] with 1 for
    real tokens) is what ``token_mask`` is derived from.
    """

    def __init__(self, ffn: nn.Module, hidden_size: int, config: PESCConfig, *, freeze_ffn: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if not isinstance(config, PESCConfig):
            raise TypeError(f"config must be a PESCConfig; got {type(config).__name__}")
        config.validate()
        if not isinstance(ffn, nn.Module):
            raise TypeError(f"ffn must be an nn.Module; got {type(ffn).__name__}")
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive int; got {hidden_size!r}")
        reference_param = next((p for p in ffn.parameters() if p.is_floating_point()), None)
        if device is None:  # quantised FFNs (4-bit) have integer weights only: still on the FFN's device
            placed = reference_param if reference_param is not None else next(ffn.parameters(), None)
            device = placed.device if placed is not None else None
        if dtype is None:
            dtype = reference_param.dtype if reference_param is not None else torch.get_default_dtype()

        self.config = config
        self.hidden_size = hidden_size
        self.ffn = ffn
        if freeze_ffn:
            ffn.requires_grad_(False)
        E, r, d = config.num_experts, config.adapter_dim, hidden_size
        self.router = nn.Linear(d, E, bias=False, device=device, dtype=dtype)
        self.w_down = nn.Parameter(torch.empty(E, d, r, device=device, dtype=dtype))
        self.w_up = nn.Parameter(torch.empty(E, r, d, device=device, dtype=dtype))
        self.reset_parameters()
        self.attention_mask: torch.Tensor | None = None
        self.clear_router_state()

    def reset_parameters(self) -> None:
        """Router and w_down as nn.Linear initialises its weight; w_up zero (crafted == dense)."""
        self.router.reset_parameters()
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            self.w_down.uniform_(-bound, bound)
            self.w_up.zero_()

    def clear_router_state(self) -> None:
        self.router_logits: torch.Tensor | None = None
        self.expert_indices: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden_size={self.hidden_size}, num_experts={c.num_experts}, top_k={c.top_k}, "
                f"adapter_dim={c.adapter_dim}, activation={c.activation}, scaling={c.scaling}, "
                f"adapter_dropout={c.adapter_dropout}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d]`` (usually ``[B, S, d]`` or ``[T, d]``) -> ``y`` of the FFN output's shape and dtype."""
        if x.dim() < 2 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"{type(self).__name__}: input must have shape [..., {self.hidden_size}] "
                             f"([B, S, d] or [T, d]); got {tuple(x.shape)}")
        z = self.ffn(x)
        if not isinstance(z, torch.Tensor) or z.shape != x.shape:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{type(self).__name__}: the wrapped FFN must map hidden -> hidden (a tensor of "
                             f"shape {tuple(x.shape)}); it returned {got}")
        x2 = x.reshape(-1, self.hidden_size)
        z2 = z.reshape(-1, self.hidden_size)
        logits = self.router(x2)
        y2, indices = self._mix(z2, logits)
        self.router_logits = logits
        self.expert_indices = indices
        self.token_mask = self._token_mask(x.shape, logits.device)
        return y2.view(z.shape)

    def _mix(self, z2: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [T, d]``, ``logits [T, E]`` -> ``(y [T, d], expert indices [T, k] int32)``."""
        raise NotImplementedError

    # Helpers for the subclasses' _mix --------------------------------------------------------
    def _adapter_input(self, z2: torch.Tensor) -> torch.Tensor:
        """dropout(z): one mask per token, shared by its k experts (no copy when inactive)."""
        p = self.config.adapter_dropout
        return F.dropout(z2, p, training=True) if self.training and p > 0 else z2

    def _adapter_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """w_down, w_up in the activations' dtype (a no-op unless under autocast with fp32 parameters)."""
        return self.w_down.to(dtype), self.w_up.to(dtype)

    def _pesc_mix(self, impl, z2: torch.Tensor, logits: torch.Tensor):
        """The PESC dataflow on the op API ``impl`` (pesc_kernels.ops or the reference ops)."""
        c = self.config
        weights, indices = impl.topk_gating(logits, c.top_k, c.normalize_top_k)
        h = self._adapter_input(z2)
        h_perm, row_map, offsets = impl.permute(h, indices, c.num_experts)
        w_down, w_up = self._adapter_weights(h.dtype)
        y_perm = impl.adapter(h_perm, w_down, w_up, offsets, c.activation, c.scaling)
        return impl.unpermute(y_perm, row_map, weights, z2), indices

    def _token_mask(self, shape: torch.Size, device: torch.device) -> torch.Tensor | None:
        """Which of this call's tokens count in the router losses (None: all of them)."""
        mask = self.attention_mask
        if mask is None:
            return None
        tokens = math.prod(shape[:-1])
        if mask.dim() == 2 and len(shape) == 3 and mask.shape[0] == shape[0] and mask.shape[1] >= shape[1]:
            # With a KV cache the mask covers past and current positions; this call holds the last S.
            mask = mask[:, mask.shape[1] - shape[1]:]
        if mask.numel() != tokens:
            raise ValueError(f"{type(self).__name__}: attention_mask of shape {tuple(self.attention_mask.shape)} "
                             f"does not match the layer input of shape {tuple(shape)}")
        return mask.reshape(-1).to(device=device, dtype=torch.bool)
