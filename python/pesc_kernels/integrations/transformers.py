"""pesc_kernels as a Hugging Face transformers MoE backend (docs/design.md, "Hugging Face MoE models").

Importing this module registers the experts implementation ``"pesc"`` with transformers'
``ExpertsInterface``, so every experts class decorated with ``@use_experts_implementation``
(Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS, DeepSeek-V3, ...) can run on the pesc ops::

    import pesc_kernels.integrations.transformers  # registers "pesc"
    model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="pesc")
    # or, on a loaded model: model.set_experts_implementation("pesc"), or patch_moe(model)

The backend (:func:`pesc_experts_forward`) computes, for the experts module's weights in their own
layout (output-major ``[E, out, in]`` by default, input-major when ``is_transposed``; nothing is
copied)::

    x_perm, row_map, offsets = permute(x, top_k_index, E)                   # int64 ids as they come
    h = grouped_mm(x_perm, gate_up_proj, offsets, gate_up_proj_bias)        # [T*k, 2F], w read in place
    a = gated_activation(h, act)                                            # act(gate) * up, one pass
    y = grouped_mm(a, down_proj, offsets, down_proj_bias)                   # [T*k, d]
    out = unpermute(y, row_map, top_k_weights)                              # fp32 combine, any weight dtype

and honours every flag of the decorator: ``has_gate`` (``up_proj`` and ``act_fn`` when False),
``has_bias``, ``is_transposed``, ``is_concatenated`` (through the experts' ``_apply_gate``: the
default one and GPT-OSS's clamped SwiGLU run fused, any other runs as written),
``has_post_expert_norm`` (the experts' ``post_expert_norm`` on every routed row) and
``_is_expert_parallel`` (ids outside ``[0, E)`` mark slots of other ranks: they are dropped and
contribute zero). :func:`patch_moe` also replaces the routers' computation by the pesc routing ops
where that is exact, and :func:`hf_load_balancing_loss` is transformers' balancing loss on the pesc
op. transformers is an optional dependency: ``pip install 'pesc_kernels[hf]'``.
"""
from __future__ import annotations

import functools
import importlib
import types

import torch
import torch.nn.functional as F

try:
    from transformers import PreTrainedModel
    from transformers import activations as _hf_activations
    from transformers.integrations import moe as _hf_moe
except ImportError as error:  # pragma: no cover - exercised by a test that hides transformers
    raise ImportError(
        "pesc_kernels.integrations.transformers needs Hugging Face transformers: "
        "pip install 'pesc_kernels[hf]'") from error

from .. import ops
from ..reference.adapter import CLAMPED_SWIGLU

BACKEND = "pesc"

__all__ = ["BACKEND", "pesc_experts_forward", "patch_moe", "hf_load_balancing_loss", "gated_activation_of"]


# ---------------------------------------------------------------------------------------- experts
def _activation_name(act_fn) -> str | None:
    """The pesc activation name of a transformers activation module, or None when it has none."""
    if isinstance(act_fn, (torch.nn.SiLU, _hf_activations.SiLUActivation)):
        return "silu"
    if isinstance(act_fn, _hf_activations.GELUActivation):
        return "gelu"  # erf GELU, in torch or in Python
    if isinstance(act_fn, (_hf_activations.GELUTanh, _hf_activations.NewGELUActivation)):
        return "gelu_tanh"
    if isinstance(act_fn, torch.nn.GELU):
        return "gelu" if act_fn.approximate == "none" else "gelu_tanh"
    if isinstance(act_fn, torch.nn.ReLU):
        return "relu"
    if isinstance(act_fn, (torch.nn.Identity, _hf_activations.LinearActivation)):
        return "identity"
    return None


def _is_gpt_oss_gate(experts) -> bool:
    gpt_oss = _optional_class("transformers.models.gpt_oss.modeling_gpt_oss", "GptOssExperts")
    return gpt_oss is not None and type(experts)._apply_gate is gpt_oss._apply_gate


def gated_activation_of(experts) -> dict | None:
    """The :func:`pesc_kernels.ops.gated_activation` arguments equal to ``experts._apply_gate``, or
    None when the experts' gate is one pesc does not fuse (it then runs as the model wrote it)."""
    gate = type(experts)._apply_gate
    if gate is _hf_moe._default_apply_gate:  # act(gate) * up with h = [gate | up]
        name = _activation_name(experts.act_fn)
        return None if name is None else {"activation": name, "interleaved": False}
    if _is_gpt_oss_gate(experts):  # clamped SwiGLU with h = [g0, u0, g1, u1, ...]
        return {"activation": CLAMPED_SWIGLU, "interleaved": True, "limit": float(experts.limit),
                "alpha": float(experts.alpha)}
    return None


def _expert_params(experts):
    """(first weight, first bias, down weight, down bias) of an experts module, per has_gate/has_bias."""
    first = experts.gate_up_proj if experts.has_gate else experts.up_proj
    first_bias = down_bias = None
    if experts.has_bias:
        first_bias = experts.gate_up_proj_bias if experts.has_gate else experts.up_proj_bias
        down_bias = experts.down_proj_bias
    return first, first_bias, experts.down_proj, down_bias


def pesc_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``"pesc"`` experts implementation: ``[T, d]`` tokens, ``[T, k]`` ids and weights -> ``[T, d]``.

    Equal to transformers' eager experts loop up to rounding: the same experts, weights, biases,
    gate and combine, with float32 accumulation of the k terms. Deterministic, and no host sync.
    """
    first, first_bias, down, down_bias = _expert_params(self)
    # Hugging Face's default layout is output-major ([E, out, in]); is_transposed means input-major.
    w_transposed = not self.is_transposed
    x = hidden_states if hidden_states.dtype == first.dtype else hidden_states.to(first.dtype)
    # Expert-parallel code marks slots owned by other ranks with ids outside [0, E): drop them.
    x_perm, row_map, offsets = ops.permute(x, top_k_index, self.num_experts, drop_invalid=self._is_expert_parallel)
    h = ops.grouped_mm(x_perm, first, offsets, first_bias, w_transposed)
    if not self.has_gate:
        a = self.act_fn(h)
    else:
        fused = gated_activation_of(self)
        a = ops.gated_activation(h, **fused) if fused is not None else self._apply_gate(h)
    y = ops.grouped_mm(a.contiguous(), down, offsets, down_bias, w_transposed)
    if self.has_post_expert_norm:
        y = self.post_expert_norm(y)
    return ops.unpermute(y, row_map, top_k_weights).to(hidden_states.dtype)


_hf_moe.ExpertsInterface.register(BACKEND, pesc_experts_forward)


# ---------------------------------------------------------------------------------------- routers
@functools.lru_cache(maxsize=None)
def _optional_class(module_name: str, class_name: str):
    """A transformers class, or None when this transformers version does not have it."""
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None


def _softmax_router_forward(normalize_attr: str | None, cast_to_logits: bool, bias: bool):
    """Forward of a linear router with softmax top-k routing on pesc.ops.topk_gating.

    normalize_attr: the router attribute that switches renormalisation (None: always on);
    cast_to_logits: return the weights in the logits' dtype (else float32); bias: the Linear has one.
    """

    def forward(self, hidden_states):
        x = hidden_states.reshape(-1, self.hidden_dim)
        logits = F.linear(x, self.weight, self.bias if bias else None)
        normalize = True if normalize_attr is None else bool(getattr(self, normalize_attr))
        weights, indices = ops.topk_gating(logits, self.top_k, normalize)
        return logits, (weights.to(logits.dtype) if cast_to_logits else weights), indices.long()

    return forward


def _deepseek_v3_router_forward(self, hidden_states):
    x = hidden_states.view(-1, self.hidden_dim)
    logits = F.linear(x.type(torch.float32), self.weight.type(torch.float32))
    weights, indices = ops.grouped_topk_gating(
        logits, self.top_k, "sigmoid", self.e_score_correction_bias.float(), self.num_group, self.topk_group,
        bool(self.norm_topk_prob), float(self.routed_scaling_factor))
    return logits, weights, indices.long()


def _expert_count_refusal(router) -> str | None:
    if router.num_experts > 1024:
        return f"{router.num_experts} experts (pesc's routing ops take at most 1024)"
    return None


def _deepseek_v3_refusal(router) -> str | None:
    E, groups = router.num_experts, router.num_group
    if groups < 1 or E % groups:
        return f"n_group={groups} does not divide the {E} experts"
    if groups > 1 and E // groups < 2:
        return f"groups of {E // groups} expert (transformers scores a group by its two best experts)"
    return _expert_count_refusal(router)


# module, class -> (patched forward, the name patch_moe reports, refusal check)
_QWEN_STYLE = (_softmax_router_forward("norm_topk_prob", True, False), "topk_gating (softmax, norm_topk_prob)",
               _expert_count_refusal)
_ROUTERS = {
    ("transformers.models.mixtral.modeling_mixtral", "MixtralTopKRouter"):
        (_softmax_router_forward(None, False, False), "topk_gating (softmax, renormalised)", _expert_count_refusal),
    ("transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeTopKRouter"): _QWEN_STYLE,
    ("transformers.models.qwen3_moe.modeling_qwen3_moe", "Qwen3MoeTopKRouter"): _QWEN_STYLE,
    ("transformers.models.olmoe.modeling_olmoe", "OlmoeTopKRouter"): _QWEN_STYLE,
    ("transformers.models.gpt_oss.modeling_gpt_oss", "GptOssTopKRouter"):
        (_softmax_router_forward(None, True, True), "topk_gating (top-k logits, softmax over k)",
         _expert_count_refusal),
    ("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3TopkRouter"):
        (_deepseek_v3_router_forward, "grouped_topk_gating (sigmoid, bias, groups, scaling)", _deepseek_v3_refusal),
}


def _router_entry(module):
    for (module_name, class_name), entry in _ROUTERS.items():
        cls = _optional_class(module_name, class_name)
        if cls is not None and type(module) is cls:
            return entry
    return None


def _is_experts(module) -> bool:
    return hasattr(module, "has_gate") and hasattr(module, "_is_expert_parallel") and hasattr(module, "num_experts")


def _router_of(block):
    """The router module of an MoE block (the parent of an experts module), or None."""
    for name in ("gate", "router"):
        module = getattr(block, name, None)
        if isinstance(module, torch.nn.Module) and not isinstance(module, torch.nn.Linear):
            return name, module
    return None


def patch_moe(model: torch.nn.Module, routers: bool = True) -> dict[str, str]:
    """Runs a transformers MoE model's experts (and, with ``routers``, its routers) on pesc ops.

    Sets the experts implementation to ``"pesc"`` (``model.set_experts_implementation`` for a
    ``PreTrainedModel``, each experts module's config otherwise). With ``routers=True`` each MoE
    block's router keeps its module, parameters, class and hooks (``output_router_logits`` and the
    auxiliary loss keep working) and still returns ``(router_logits, weights, indices)``, but
    computes the routing with :func:`pesc_kernels.ops.topk_gating` (Mixtral, Qwen2-MoE, Qwen3-MoE,
    OLMoE, GPT-OSS) or :func:`pesc_kernels.ops.grouped_topk_gating` (DeepSeek-V3); the logits stay
    the router's own ``F.linear``. Routers pesc cannot reproduce exactly (another router class, a
    configuration the ops do not take) raise a ValueError naming the router and the reason
    before anything is changed; pass ``routers=False`` to patch the experts only.

    Returns ``{module name: what now computes it}`` for every patched module.
    """
    experts = [(name, module) for name, module in model.named_modules() if _is_experts(module)]
    if not experts:
        raise ValueError("patch_moe: the model has no transformers experts module (@use_experts_implementation)")
    plan = []
    if routers:
        modules = dict(model.named_modules())
        for name, _ in experts:
            parent_name = name.rpartition(".")[0]
            found = _router_of(modules[parent_name] if parent_name else model)
            if found is None:
                raise ValueError(f"patch_moe: no router found next to {name!r}; use routers=False")
            attr, router = found
            router_name = f"{parent_name}.{attr}" if parent_name else attr
            entry = _router_entry(router)
            if entry is None:
                raise ValueError(f"patch_moe: the router {router_name!r} ({type(router).__qualname__}) is not one "
                                 "pesc reproduces exactly; use routers=False to patch the experts only")
            forward, description, refusal = entry
            reason = refusal(router)
            if reason is not None:
                raise ValueError(f"patch_moe: the router {router_name!r} ({type(router).__qualname__}) cannot run on "
                                 f"pesc exactly: {reason}; use routers=False to patch the experts only")
            plan.append((router_name, router, forward, description))
    if isinstance(model, PreTrainedModel):
        model.set_experts_implementation(BACKEND)
    else:
        for _, module in experts:
            module.config._experts_implementation = BACKEND
    patched = {name: f"experts: {BACKEND}" for name, _ in experts}
    for router_name, router, forward, description in plan:
        router.forward = types.MethodType(forward, router)
        patched[router_name] = f"router: {description}"
    return patched


# ---------------------------------------------------------------------------------------- losses
def hf_load_balancing_loss(gate_logits, num_experts: int | None = None, top_k: int = 2,
                           attention_mask: torch.Tensor | None = None):
    """transformers' ``load_balancing_loss_func`` on :func:`pesc_kernels.ops.load_balancing_loss`.

    ``gate_logits`` is the tuple of every layer's ``[B*S, E]`` router logits (``outputs.router_logits``);
    like transformers it pools all layers, counts the top_k slots of every token (so the routed
    fractions sum to top_k) and excludes padding through the ``[B, S]`` 0/1 ``attention_mask``:
    the result is ``top_k * load_balancing_loss(cat(layers), cat(top-k ids), mask)``. Returns 0 (an
    int, as transformers does) when ``gate_logits`` is not a tuple. The gradient flows through the
    mean router probabilities; the top-k counts carry none.
    """
    if gate_logits is None or not isinstance(gate_logits, tuple):
        return 0
    device = gate_logits[0].device
    logits = torch.cat([layer.to(device) for layer in gate_logits])
    if num_experts is not None and num_experts != logits.shape[1]:
        raise ValueError(f"hf_load_balancing_loss: num_experts={num_experts} but the logits have "
                         f"{logits.shape[1]} columns")
    _, indices = ops.topk_gating(logits.detach(), top_k)
    mask = None
    if attention_mask is not None:
        mask = attention_mask.reshape(-1).to(device=device).bool().repeat(len(gate_logits))
    return top_k * ops.load_balancing_loss(logits, indices, mask)
