"""PESCMoE: the PESC mixture-of-adapters layer (docs/design.md, "The PESC layer").

For a token x in R^d with the frozen FFN output z = ffn(x):

    logits = router(x)                             router: Linear(d, E, bias=False), weight [E, d]
    g, S   = top-k of softmax(logits)              (renormalised over S when normalize_top_k)
    y      = z + sum_{e in S} g_e * scaling * act(dropout(z) @ w_down[e]) @ w_up[e]

w_down is [E, d, r] and w_up is [E, r, d] (input-major: ``h @ w``). w_down is drawn like an
``nn.Linear(d, r)`` weight (U(-1/sqrt(d), 1/sqrt(d))) and w_up is zero, so a fresh layer returns z.

``impl`` chooses how the routed combine is computed; the parameters, their names and the router
state are the same for every choice, so state dicts move freely between them:

- ``"ops"`` (default): the pesc_kernels ops (compiled CPU/CUDA kernels where they exist):
  ``topk_gating -> permute(dropout(z)) -> adapter -> unpermute(weights, residual=z)``;
- ``"reference"``: the same dataflow on :mod:`pesc_kernels.reference` (oracle and baseline);
- ``"camelidae"``: the official PESC / Camelidae forward (wuhy68/Parameter-Efficient-MoE): top-k of
  the logits, softmax over the k selected logits in the logits' dtype, ``repeat_interleave`` of z
  k times, a masked loop over the experts adding each adapter to its rows, then the gate-weighted
  sum of the k copies ``sum_j g_j (z + A_j(z))`` (equal to the PESC form because the gates sum to
  1); each expert applies its own dropout to its rows. Needs ``normalize_top_k=True``;
- ``"sparsetral"``: the Sparsetral forward: fp32 softmax, top-k, renormalisation, the k weights
  scattered into a dense, mostly zero ``[T, E]`` matrix, every expert's adapter run on every token
  and multiplied by its column.

With dropout off all four agree up to rounding; "ops" and "reference" also draw the same dropout
mask for the same RNG state. Dtypes: x, z and y share the model's dtype (fp32, fp16 or bf16). The
router logits come from the router's Linear in the activations' dtype, as Hugging Face MoE models do;
softmax, top-k, routing weights and the losses run in fp32 inside the ops, and the combine
accumulates in fp32. Under autocast with fp32 parameters the adapter weights are cast to the
activations' dtype (the cast is differentiable, so the fp32 parameters get gradients).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ops, reference
from .config import PESCConfig
from .reference.activations import activation_fn


class PESCMoE(nn.Module):
    """Wrap a (frozen) FFN into a PESC mixture of E rank-r adapters with top-k routing.

    Args:
        ffn: the FFN module to wrap (e.g. a ``LlamaMLP``); it must map ``[..., d]`` to ``[..., d]``
            and runs once per token.
        hidden_size: d.
        config: the :class:`pesc_kernels.PESCConfig`.
        impl: ``"ops"``, ``"reference"``, ``"camelidae"`` or ``"sparsetral"`` (see the module docs).
        freeze_ffn: set ``requires_grad=False`` on every FFN parameter (default True).
        device, dtype: of the new parameters; default: those of the FFN's first floating-point
            parameter (else the default device and dtype).

    Parameters: ``router.weight [E, d]``, ``w_down [E, d, r]`` and ``w_up [E, r, d]``. Dropout
    (``config.adapter_dropout``, training only) applies to the adapters' input ``z``, one mask per
    token shared by its k experts; the residual path keeps the undropped ``z``.

    After each forward, ``router_logits [T, E]``, ``expert_indices [T, k]`` (int32) and ``token_mask``
    ([T] bool, or None when every token counts) describe that step's routing for
    :func:`pesc_kernels.router_losses`. ``attention_mask`` (set by a crafted model's forward, [B, L]
    with 1 for real tokens) is what ``token_mask`` is derived from. In training with a non-zero
    ``aux_loss_coef``, the "ops" and "reference" dataflows compute the balancing loss together with
    the routing (:func:`pesc_kernels.ops.topk_gating_with_balancing_loss`, one softmax for both) and
    keep it in ``balancing_loss`` (0-dim fp32); otherwise ``balancing_loss`` is None and
    :func:`pesc_kernels.router_losses` computes it from the recorded routing, to the same value.
    """

    def __init__(self, ffn: nn.Module, hidden_size: int, config: PESCConfig, *, impl: str = "ops",
                 freeze_ffn: bool = True, device=None, dtype=None):
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
        self.impl = impl
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

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in _COMBINES:
            raise ValueError(f"PESCMoE: impl must be one of {', '.join(_COMBINES)}; got {value!r}")
        if value == "camelidae" and not self.config.normalize_top_k:
            raise ValueError("PESCMoE: impl='camelidae' (the official forward) always renormalises the top-k "
                             "weights; normalize_top_k=False is not representable")
        self._impl = value

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
        self.balancing_loss: torch.Tensor | None = None

    def computes_balancing_loss(self) -> bool:
        """Whether this forward computes the balancing loss with the routing: training, and the loss counts."""
        return self.training and self.config.aux_loss_coef != 0

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden_size={self.hidden_size}, num_experts={c.num_experts}, top_k={c.top_k}, "
                f"adapter_dim={c.adapter_dim}, activation={c.activation}, scaling={c.scaling}, "
                f"adapter_dropout={c.adapter_dropout}" + (f", impl={self.impl!r}" if self.impl != "ops" else ""))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d]`` (usually ``[B, S, d]`` or ``[T, d]``) -> ``y`` of the FFN output's shape and dtype."""
        if x.dim() < 2 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"PESCMoE: input must have shape [..., {self.hidden_size}] ([B, S, d] or [T, d]); "
                             f"got {tuple(x.shape)}")
        z = self.ffn(x)
        if not isinstance(z, torch.Tensor) or z.shape != x.shape:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"PESCMoE: the wrapped FFN must map hidden -> hidden (a tensor of shape "
                             f"{tuple(x.shape)}); it returned {got}")
        x2 = x.reshape(-1, self.hidden_size)
        z2 = z.reshape(-1, self.hidden_size)
        logits = self.router(x2)
        token_mask = self._token_mask(x.shape, logits.device)
        y2, indices, balancing_loss = _COMBINES[self.impl](self, z2, logits, token_mask)
        self.router_logits = logits
        self.expert_indices = indices
        self.token_mask = token_mask
        self.balancing_loss = balancing_loss
        return y2.view(z.shape)

    def adapter_input(self, z2: torch.Tensor) -> torch.Tensor:
        """dropout(z): one mask per token, shared by its k experts (no copy when inactive)."""
        p = self.config.adapter_dropout
        return F.dropout(z2, p, training=True) if self.training and p > 0 else z2

    def adapter_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """w_down, w_up in the activations' dtype (a no-op unless under autocast with fp32 parameters)."""
        return self.w_down.to(dtype), self.w_up.to(dtype)

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
            raise ValueError(f"PESCMoE: attention_mask of shape {tuple(self.attention_mask.shape)} does not match "
                             f"the layer input of shape {tuple(shape)}")
        return mask.reshape(-1).to(device=device, dtype=torch.bool)


# ------------------------------------------------------- routed combines: z [T, d], logits [T, E], token mask [T]
# Each returns (y [T, d], expert indices [T, k] int32, the balancing loss or None).

def _pesc_dataflow(api, layer: PESCMoE, z2: torch.Tensor, logits: torch.Tensor, token_mask: torch.Tensor | None):
    """topk_gating -> permute -> adapter -> unpermute, on the op API ``api`` (ops or reference)."""
    c = layer.config
    balancing_loss = None
    if layer.computes_balancing_loss():
        weights, indices, balancing_loss = api.topk_gating_with_balancing_loss(
            logits, c.top_k, c.normalize_top_k, token_mask)
    else:
        weights, indices = api.topk_gating(logits, c.top_k, c.normalize_top_k)
    h = layer.adapter_input(z2)
    h_perm, row_map, offsets = api.permute(h, indices, c.num_experts)
    w_down, w_up = layer.adapter_weights(h.dtype)
    y_perm = api.adapter(h_perm, w_down, w_up, offsets, c.activation, c.scaling)
    return api.unpermute(y_perm, row_map, weights, z2), indices, balancing_loss


def _camelidae_combine(layer: PESCMoE, z2: torch.Tensor, logits: torch.Tensor, token_mask: torch.Tensor | None):
    c = layer.config
    k, tokens, d = c.top_k, z2.shape[0], z2.shape[1]
    top_logits, top_indices = torch.topk(logits, k, dim=-1)
    gates = top_logits.softmax(dim=-1)
    flat = top_indices.reshape(-1)
    inputs = z2.repeat_interleave(k, dim=0)
    outputs = z2.repeat_interleave(k, dim=0)
    act = activation_fn(c.activation)
    for e in range(c.num_experts):
        selected = flat == e
        h = F.dropout(inputs[selected], c.adapter_dropout, training=layer.training)
        w_down, w_up = layer.adapter_weights(h.dtype)
        outputs[selected] += c.scaling * (act(h @ w_down[e]) @ w_up[e])
    y = (outputs.view(tokens, k, d) * gates.unsqueeze(-1)).sum(dim=1)
    return y, top_indices.to(torch.int32), None


def _sparsetral_combine(layer: PESCMoE, z2: torch.Tensor, logits: torch.Tensor, token_mask: torch.Tensor | None):
    c = layer.config
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    top_weights, top_indices = torch.topk(probs, c.top_k, dim=-1)
    if c.normalize_top_k:
        top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
    dense = torch.zeros_like(probs).scatter(1, top_indices, top_weights).to(z2.dtype)
    h = layer.adapter_input(z2)
    w_down, w_up = layer.adapter_weights(h.dtype)
    act = activation_fn(c.activation)
    y = z2
    for e in range(c.num_experts):
        y = y + dense[:, e, None] * (c.scaling * (act(h @ w_down[e]) @ w_up[e]))
    return y, top_indices.to(torch.int32), None


_COMBINES = {
    "ops": lambda layer, z2, logits, mask: _pesc_dataflow(ops, layer, z2, logits, mask),
    "reference": lambda layer, z2, logits, mask: _pesc_dataflow(reference, layer, z2, logits, mask),
    "camelidae": _camelidae_combine,
    "sparsetral": _sparsetral_combine,
}
IMPLS = tuple(_COMBINES)
