"""The official PESC model formats (Camelidae, Sparsetral, Qwen2idae) and their configs in our terms.

The models released with the PESC paper and its forks are Hugging Face checkpoints whose
``config.json`` is a stock Llama / Mistral / Qwen2 config plus the MoE fields ``num_experts``,
``topk``, ``adapter_dim`` and ``moe_scaling`` (``moe_dtype``, ``output_router_logits`` and
``auto_map`` do not change the forward), with ``model_type`` naming their remote-code classes:

============  ==========  ============================  ======================  =========================
flavor        base        experts                       adapter dropout         RoPE base
============  ==========  ============================  ======================  =========================
camelidae     Llama       ``experts.expert_{e}``        0.1 (hard-coded)        10000 (``rope_theta``
              (wuhy68)    (nn.ModuleDict)                                       ignored by their code)
camelidae     Llama       ``experts.{e}``               ``adapter_dropout``     ``rope_theta``
(serp-ai)                 (nn.ModuleList)               field
sparsetral    Mistral     ``experts.{e}``               ``adapter_dropout``     ``rope_theta``
qwen2idae     Qwen2       ``experts.expert_{e}``        0.1 (hard-coded)        ``rope_theta``
============  ==========  ============================  ======================  =========================

Every flavor computes ``y = z + sum_j g_j * moe_scaling * up(gelu(down(z)))`` with z the FFN output,
the router reading the FFN input, and g the softmax over the top-k router logits: our
``PESCConfig(activation="gelu", normalize_top_k=True)``. Their balancing loss always evaluates to
the constant E/k (it multiplies the routed fractions by the mean renormalised top-k weight, 1/k),
so it never trained the released routers; an imported config carries its coefficient (0.01, or
Sparsetral's ``router_aux_loss_coef``) into ``aux_loss_coef``, which weights our real Switch loss
only if the model is trained further. Inference is unaffected either way.

This module only translates configs (plain dicts, as in ``config.json``); the tensor names are in
:mod:`pesc_kernels.checkpoints.official_keys`, loading in :mod:`pesc_kernels.checkpoints.pretrained`, writing in
:mod:`pesc_kernels.checkpoints.export`. See docs/design.md.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from ..config import MAX_ADAPTER_DIM, MAX_EXPERTS, PESCConfig

OFFICIAL_FIELDS = ("num_experts", "topk", "adapter_dim", "moe_scaling")
CAMELIDAE_AUX_LOSS_COEF = 0.01  # hard-coded in the Camelidae and Qwen2idae forwards
OFFICIAL_ROPE_THETA = 10000.0  # the RoPE base of wuhy68's Camelidae code, whatever the config says
# Fields of an official config.json that have no place in the stock config: they become the
# PESCConfig, are rebuilt on export, or (moe_dtype, output_router_logits) do not change the forward.
_OFFICIAL_ONLY = {"model_type", "architectures", "auto_map", "num_experts", "topk", "adapter_dim", "moe_scaling",
                  "adapter_dropout", "router_aux_loss_coef", "moe_dtype", "output_router_logits", "rope_theta",
                  "rope_scaling", "rope_parameters", "transformers_version", "_name_or_path"}
# Fields of a stock config that the official config does not spell the same way.
_STOCK_ONLY = {"pesc", "rope_parameters", "rope_theta", "rope_scaling", "dtype", "torch_dtype", "architectures",
               "model_type", "auto_map", "transformers_version", "_name_or_path"}


@dataclass(frozen=True)
class Flavor:
    """One official model family: what its config.json says and what its modeling code does."""

    name: str
    model_type: str  # config.json's model_type
    base_model_type: str  # the stock transformers model it is built on
    architecture: str  # the causal-LM class name, in their modeling file and in transformers
    config_class: str
    expert_naming: str  # "dict": experts.expert_{e}; "list": experts.{e}
    fixed_dropout: float | None  # hard-coded adapter dropout; None: the config's adapter_dropout
    fixed_rope_theta: float | None  # hard-coded RoPE base; None: the config's rope_theta
    rope_scaling: bool  # whether their rotary embedding applies rope_scaling (linear / dynamic)
    extra_fields: tuple[str, ...] = ()  # further MoE fields their config class defines

    @property
    def auto_map(self) -> dict[str, str]:
        """Their remote-code classes, as the released checkpoints name them."""
        return {"AutoConfig": f"configuration_{self.name}.{self.config_class}",
                "AutoModelForCausalLM": f"modeling_{self.name}.{self.architecture}"}


FLAVORS = {
    "camelidae": Flavor("camelidae", "camelidae", "llama", "LlamaForCausalLM", "CamelidaeConfig", "dict",
                        fixed_dropout=0.1, fixed_rope_theta=OFFICIAL_ROPE_THETA, rope_scaling=True),
    "sparsetral": Flavor("sparsetral", "sparsetral", "mistral", "MistralForCausalLM", "SparsetralConfig", "list",
                         fixed_dropout=None, fixed_rope_theta=None, rope_scaling=False,
                         extra_fields=("adapter_dropout", "router_aux_loss_coef")),
    "qwen2idae": Flavor("qwen2idae", "qwen2idae", "qwen2", "Qwen2ForCausalLM", "Qwen2idaeConfig", "dict",
                        fixed_dropout=0.1, fixed_rope_theta=None, rope_scaling=False),
}
_FLAVOR_OF_BASE = {f.base_model_type: f for f in FLAVORS.values()}
# serp-ai's Camelidae: the Llama flavor with the Sparsetral config fields, honouring rope_theta.
_SERP_CAMELIDAE = Flavor("camelidae", "camelidae", "llama", "LlamaForCausalLM", "CamelidaeConfig", "list",
                         fixed_dropout=None, fixed_rope_theta=None, rope_scaling=True,
                         extra_fields=("adapter_dropout", "router_aux_loss_coef"))


def flavor_named(name: str) -> Flavor:
    if name not in FLAVORS:
        raise ValueError(f"unknown official flavor {name!r}; choose one of {', '.join(FLAVORS)}")
    return FLAVORS[name]


def is_pesc_kernels_config(config: dict) -> bool:
    """A config.json written by ``save_pretrained`` of a crafted model (it carries ``pesc``)."""
    return isinstance(config.get("pesc"), dict)


def detect_flavor(config: dict, where: str) -> Flavor:
    """The official flavor of an official ``config.json``; ValueError naming the field otherwise."""
    model_type = config.get("model_type")
    if model_type in FLAVORS:
        flavor = FLAVORS[model_type]
    elif model_type in _FLAVOR_OF_BASE and any(f in config for f in OFFICIAL_FIELDS):
        # The official config classes declare model_type "llama" / "mistral", so checkpoints saved by
        # their own save_pretrained say that instead of "camelidae" / "sparsetral".
        flavor = _FLAVOR_OF_BASE[model_type]
    elif model_type in _FLAVOR_OF_BASE:
        raise ValueError(f"{where}: model_type {model_type!r} with neither 'pesc' (a pesc_kernels checkpoint) nor "
                         f"the official fields {list(OFFICIAL_FIELDS)}: this is a dense model, not a PESC "
                         "checkpoint; craft it with pesc_kernels.craft")
    else:
        known = ", ".join(sorted({*FLAVORS, *_FLAVOR_OF_BASE}))
        raise ValueError(f"{where}: unsupported model_type {model_type!r}; from_pretrained reads pesc_kernels "
                         f"checkpoints (a config with 'pesc') and official PESC checkpoints with model_type {known}")
    missing = [f for f in OFFICIAL_FIELDS if f not in config]
    if missing:
        raise ValueError(f"{where}: model_type {model_type!r} needs the field {missing[0]!r} "
                         f"(official PESC fields: {list(OFFICIAL_FIELDS)})")
    if flavor.name == "camelidae" and "adapter_dropout" in config:
        return _SERP_CAMELIDAE
    return flavor


# ------------------------------------------------------------------------------ official -> ours
def _number(config: dict, name: str, where: str, *, low=None, high=None, integer=False, default=None):
    value = config.get(name, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{where}: field {name!r} must be {kind}; got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{where}: field {name!r} must be {bounds}; got {value!r}")
    return value


def pesc_config_from_official(config: dict, flavor: Flavor, where: str) -> PESCConfig:
    """The PESCConfig equivalent to an official config (fields checked, errors name them)."""
    experts = _number(config, "num_experts", where, low=1, high=MAX_EXPERTS, integer=True)
    top_k = _number(config, "topk", where, low=1, high=experts, integer=True)
    rank = _number(config, "adapter_dim", where, low=1, high=MAX_ADAPTER_DIM, integer=True)
    scaling = _number(config, "moe_scaling", where)
    if flavor.fixed_dropout is None:
        dropout = _number(config, "adapter_dropout", where, low=0.0, default=0.0)
        if dropout >= 1.0:
            raise ValueError(f"{where}: field 'adapter_dropout' must be in [0, 1); got {dropout!r}")
        aux = _number(config, "router_aux_loss_coef", where, low=0.0, default=CAMELIDAE_AUX_LOSS_COEF)
    else:
        dropout, aux = flavor.fixed_dropout, CAMELIDAE_AUX_LOSS_COEF
    return PESCConfig(num_experts=experts, top_k=top_k, adapter_dim=rank, activation="gelu", scaling=scaling,
                      adapter_dropout=dropout, aux_loss_coef=aux, z_loss_coef=0.0, normalize_top_k=True,
                      target_modules=["mlp"])


def stock_config_dict(config: dict, flavor: Flavor, where: str) -> dict:
    """The stock transformers config (as a dict for ``XConfig.from_dict``) computing what their code computes.

    RoPE: their code's base (10000 for wuhy68's Camelidae, with a warning when ``rope_theta`` says
    otherwise) and their scaling (linear / dynamic where their rotary embedding applies it; dropped,
    with a warning, where it does not).
    """
    stock = {k: v for k, v in config.items() if k not in _OFFICIAL_ONLY}
    stock["model_type"] = flavor.base_model_type
    stock["architectures"] = [flavor.architecture]
    stated = config.get("rope_theta")
    if flavor.fixed_rope_theta is not None:
        if stated is not None and float(stated) != flavor.fixed_rope_theta:
            warnings.warn(f"{where}: rope_theta is {stated} but the official Camelidae code ignores it and uses a "
                          f"RoPE base of {flavor.fixed_rope_theta:g}; the model is loaded as their code computes it "
                          f"(rope_theta={flavor.fixed_rope_theta:g})", UserWarning, stacklevel=3)
        stock["rope_theta"] = flavor.fixed_rope_theta
    else:
        stock["rope_theta"] = float(_number(config, "rope_theta", where, low=0.0, default=OFFICIAL_ROPE_THETA))
    scaling = config.get("rope_scaling")
    if scaling and not flavor.rope_scaling:
        warnings.warn(f"{where}: rope_scaling {scaling} is ignored by the official {flavor.name} code, so it is "
                      "dropped here as well", UserWarning, stacklevel=3)
    elif scaling:
        kind = scaling.get("type", scaling.get("rope_type")) if isinstance(scaling, dict) else None
        factor = scaling.get("factor") if isinstance(scaling, dict) else None
        if kind not in ("linear", "dynamic") or isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise ValueError(f"{where}: field 'rope_scaling' must be {{'type': 'linear' or 'dynamic', 'factor': "
                             f"<number>}} (what the official code supports); got {scaling!r}")
        stock["rope_scaling"] = {"rope_type": kind, "factor": float(factor)}
    return stock


# ------------------------------------------------------------------------------ ours -> official
def rope_of(stock: dict, where: str) -> tuple[float, str, float | None]:
    """``(rope_theta, rope type, factor)`` of a stock config dict (transformers 4 or 5 spelling)."""
    parameters = stock.get("rope_parameters")
    if isinstance(parameters, dict) and parameters:
        if not isinstance(parameters.get("rope_theta"), (int, float)):
            raise ValueError(f"{where}: rope_parameters {parameters} gives no single rope_theta (per-layer RoPE "
                             "is not representable in the official format)")
        theta = parameters["rope_theta"]
        kind = parameters.get("rope_type", parameters.get("type", "default"))
        return float(theta), kind, parameters.get("factor")
    scaling = stock.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    return float(stock.get("rope_theta", OFFICIAL_ROPE_THETA)), kind, scaling.get("factor")


def official_config(stock: dict, pesc: PESCConfig, flavor: Flavor, adapter_dtype: str,
                    where: str = "save_official") -> dict:
    """The official config.json for a crafted stock model (``stock``: its ``config.to_dict()``).

    Raises ValueError naming the setting when their modeling code would compute something else
    (another base model, activation, RoPE, biases or head size).
    """
    if stock.get("model_type") != flavor.base_model_type:
        raise ValueError(f"{where}: flavor {flavor.name!r} is the official {flavor.base_model_type}-based code; "
                         f"this model's model_type is {stock.get('model_type')!r}")
    if pesc.activation != "gelu":
        raise ValueError(f"{where}: the official code uses exact GELU adapters; this model has "
                         f"activation={pesc.activation!r}")
    if not pesc.normalize_top_k:
        raise ValueError(f"{where}: the official code always renormalises the top-k routing weights; this model "
                         "has normalize_top_k=False")
    theta, kind, factor = rope_of(stock, where)
    if flavor.fixed_rope_theta is not None and theta != flavor.fixed_rope_theta:
        raise ValueError(f"{where}: rope_theta is {theta:g} but the official {flavor.name} code always uses a RoPE "
                         f"base of {flavor.fixed_rope_theta:g}")
    if kind != "default" and not (flavor.rope_scaling and kind in ("linear", "dynamic")):
        allowed = "linear or dynamic scaling" if flavor.rope_scaling else "no rope scaling"
        raise ValueError(f"{where}: RoPE type {kind!r} cannot be expressed for the official {flavor.name} code "
                         f"(it supports {allowed})")
    heads, hidden = stock.get("num_attention_heads"), stock.get("hidden_size")
    if stock.get("head_dim") not in (None, hidden // heads if heads else None):
        raise ValueError(f"{where}: head_dim is {stock['head_dim']} but the official code uses hidden_size / "
                         f"num_attention_heads = {hidden // heads}")
    if flavor.name == "camelidae":
        for bias in ("attention_bias", "mlp_bias"):
            if stock.get(bias):
                raise ValueError(f"{where}: {bias}=True, but the official Camelidae code has no biases")
    if flavor.fixed_dropout is not None and pesc.adapter_dropout != flavor.fixed_dropout:
        warnings.warn(f"{where}: the official {flavor.name} code trains with adapter dropout {flavor.fixed_dropout} "
                      f"whatever the config says (this model has {pesc.adapter_dropout}); inference is unaffected",
                      UserWarning, stacklevel=3)
    official = {k: v for k, v in stock.items() if k not in _STOCK_ONLY}
    dtype = stock.get("dtype", stock.get("torch_dtype"))
    if dtype is not None:
        official["torch_dtype"] = str(dtype).removeprefix("torch.")
    official.update(
        model_type=flavor.model_type, architectures=[flavor.architecture], auto_map=flavor.auto_map,
        num_experts=pesc.num_experts, topk=pesc.top_k, adapter_dim=pesc.adapter_dim, moe_scaling=pesc.scaling,
        moe_dtype=adapter_dtype, output_router_logits=False, rope_theta=theta,
        rope_scaling={"type": kind, "factor": factor} if kind != "default" else None)
    if "adapter_dropout" in flavor.extra_fields:
        official["adapter_dropout"] = pesc.adapter_dropout
    if "router_aux_loss_coef" in flavor.extra_fields:
        official["router_aux_loss_coef"] = pesc.aux_loss_coef
    return dict(sorted(official.items()))
