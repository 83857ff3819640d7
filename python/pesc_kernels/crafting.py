"""craft(): turn a Hugging Face causal LM into a PESC model in place, and the training losses.

Crafting replaces every FFN named in ``PESCConfig.target_modules`` (default: each decoder layer's
``mlp``) by a :class:`PESCMoE` wrapping it, freezes every pre-existing parameter (parameters owned by
peft tuners such as LoRA keep their setting), stores the settings in ``model.config.pesc`` and wraps
the model's ``forward`` so that, when ``labels`` are given, the loss becomes

    loss = lm_loss + aux_loss_coef * sum_layers load_balancing_loss + z_loss_coef * sum_layers router_z_loss

with padding excluded through ``attention_mask``. Because this lives in the model's own forward,
the Hugging Face Trainer, accelerate and plain loops all train with it, also under peft.

The forward wrapper is a bound method stored on the instance (``model.forward``) whose signature
is the original's (``functools.wraps``), so the Trainer's column filtering and accelerate's
re-wrapping of ``forward.__func__`` work; peft reaches it because its tuners call
``model.forward`` directly.
"""
from __future__ import annotations

import functools
import inspect
import types
import warnings
from collections.abc import MutableMapping

import torch
from torch import nn

from . import ops
from .config import PESCConfig
from .layer import PESCMoE

IGNORE_INDEX = -100  # Hugging Face's label value for positions without a target


# ------------------------------------------------------------------------------------------ helpers
def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside peft and DDP/DataParallel wrappers (the model itself otherwise)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif callable(getattr(type(model), "get_base_model", None)):  # peft.PeftModel
            inner = model.get_base_model()
            if inner is model:
                return model
            model = inner
        else:
            return model


def pesc_layers(model: nn.Module) -> list[tuple[str, PESCMoE]]:
    """``(qualified name, layer)`` of every PESC layer, names relative to :func:`unwrap_model`."""
    return [(name, m) for name, m in unwrap_model(model).named_modules() if isinstance(m, PESCMoE)]


def pesc_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The routers' and adapters' parameters (e.g. for an optimizer, or to unfreeze them)."""
    return [p for _, layer in pesc_layers(model) for p in (layer.router.weight, layer.w_down, layer.w_up)]


def hidden_size_of(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"craft: cannot read hidden_size from {type(model).__name__}.config; pass hidden_size=")
    return size


def find_targets(model: nn.Module, target_modules: list[str]) -> list[str]:
    """Qualified names of the modules to wrap: name == t or name ends with "." + t, outermost only."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, PESCMoE):
            continue
        if any(name == f or name.startswith(f + ".") for f in found):
            continue  # inside a module already selected
        if any(name == t or name.endswith("." + t) for t in target_modules):
            found.append(name)
    return found


def _peft_owned_parameters(model: nn.Module) -> set[int]:
    """ids of parameters owned by peft tuner layers (LoRA A/B, ...): craft leaves them as they are."""
    owned: set[int] = set()
    for module in model.modules():
        for attr in getattr(module, "adapter_layer_names", ()):
            sub = getattr(module, attr, None)
            if isinstance(sub, nn.Module):
                owned.update(id(p) for p in sub.parameters())
    return owned


# -------------------------------------------------------------------------------------------- craft
def craft(model: nn.Module, config: PESCConfig | None = None, *, hidden_size: int | None = None) -> nn.Module:
    """Turn ``model`` into a PESC model in place and return it.

    Args:
        model: a Hugging Face causal LM (Llama, Mistral, Qwen2, or any model whose decoder layers
            have an FFN module mapping hidden -> hidden), optionally wrapped by peft.
        config: the :class:`PESCConfig`; default: ``model.config.pesc`` if present (a config saved
            from a crafted model), else ``PESCConfig()``.
        hidden_size: d; default ``model.config.hidden_size``.

    Every FFN named by ``config.target_modules`` is wrapped by a :class:`PESCMoE` whose parameters
    are created on the FFN's device and in its dtype. Every other parameter is frozen, except
    parameters of peft tuners (e.g. LoRA on q_proj/v_proj), which keep their ``requires_grad``;
    apply peft *before* crafting, because peft's ``get_peft_model`` freezes every parameter that is
    not its own.
    """
    hf = unwrap_model(model)
    if config is None:
        stored = getattr(getattr(hf, "config", None), "pesc", None)
        config = PESCConfig.from_dict(stored) if stored is not None else PESCConfig()
    if not isinstance(config, PESCConfig):
        raise TypeError(f"craft: config must be a PESCConfig; got {type(config).__name__}")
    config.validate()
    if pesc_layers(hf):
        raise ValueError(f"craft: {type(hf).__name__} is already crafted (it contains PESCMoE layers)")
    d = hidden_size if hidden_size is not None else hidden_size_of(hf)
    targets = find_targets(hf, config.target_modules)
    if not targets:
        raise ValueError(f"craft: no module of {type(hf).__name__} matches target_modules={config.target_modules}; "
                         "set PESCConfig.target_modules to the name of the decoder layers' FFN module")

    keep = _peft_owned_parameters(model)
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = hf.get_submodule(parent_name) if parent_name else hf
        ffn = getattr(parent, attr)
        # A new module starts in training mode; take the FFN's, so an eval model gets no adapter dropout.
        setattr(parent, attr, PESCMoE(ffn, d, config, freeze_ffn=False).train(ffn.training))
    if getattr(hf, "config", None) is not None:
        hf.config.pesc = config.to_dict()
    _install_forward(hf)
    return model


def trainable_parameter_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` (requires_grad) and ``activated_per_token``.

    ``activated_per_token`` counts what one token uses: everything except the adapters of the
    ``E - k`` experts it is not routed to, in every PESC layer (the router counts in full).
    """
    params = list(model.parameters())  # shared (tied) parameters appear once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    idle = 0
    for _, layer in pesc_layers(model):
        c = layer.config
        per_expert = layer.w_down[0].numel() + layer.w_up[0].numel()
        idle += (c.num_experts - c.top_k) * per_expert
    return {"total": total, "trainable": trainable, "activated_per_token": total - idle}


# ------------------------------------------------------------------------------------------- losses
def router_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unweighted router losses of the last forward pass, summed over the PESC layers.

    Returns ``{"aux_loss": sum_l load_balancing_loss_l, "z_loss": sum_l router_z_loss_l}`` (0-dim
    float32, differentiable). Padding tokens are excluded when the forward got an ``attention_mask``.
    ``aux_loss`` is the Switch Transformer loss ``E * sum_e f_e * P_e`` (1 per layer when balanced).
    The official PESC code's balancing loss, by contrast, always evaluates to the constant E/k (it
    multiplies the routed fractions by the mean of the renormalised top-k weights, 1/k by
    construction, instead of the mean router probabilities), so its gradient is zero.

    A layer that computed its balancing loss with the routing (``PESCMoE.balancing_loss``, in
    training with a non-zero ``aux_loss_coef``) contributes that tensor; the others' is computed
    here from the recorded logits and indices. Both give the same value and gradient.
    """
    layers = pesc_layers(model)
    if not layers:
        raise ValueError(f"router_losses: {type(unwrap_model(model)).__name__} has no PESC layers; craft it first")
    ran = [layer for _, layer in layers if layer.router_logits is not None]
    if not ran:
        raise RuntimeError("router_losses: no PESC layer has routing state; run a forward pass first")
    device = ran[0].router_logits.device
    aux = z = None
    for layer in ran:
        a = layer.balancing_loss
        if a is None:
            a = ops.load_balancing_loss(layer.router_logits, layer.expert_indices, layer.token_mask)
        a = a.to(device)
        b = ops.router_z_loss(layer.router_logits, layer.token_mask).to(device)
        aux, z = (a, b) if aux is None else (aux + a, z + b)
    return {"aux_loss": aux, "z_loss": z}


def _install_forward(hf: nn.Module) -> None:
    current = hf.__dict__.get("forward")
    if isinstance(current, types.MethodType) and current.__self__ is hf:
        inner = current.__func__  # an instance-level forward (e.g. accelerate's): keep it inside ours
    else:
        inner = type(hf).forward
    names = list(inspect.signature(inner).parameters)[1:]  # positional order, without self

    @functools.wraps(inner)
    def forward(self, *args, **kwargs):
        return _crafted_forward(self, inner, names, args, kwargs)

    hf.forward = types.MethodType(forward, hf)


def _argument(name: str, names: list[str], args: tuple, kwargs: dict):
    if name in kwargs:
        return kwargs[name]
    if name in names and names.index(name) < len(args):
        return args[names.index(name)]
    return None


def _crafted_forward(self, inner, names, args, kwargs):
    layers = [layer for _, layer in pesc_layers(self)]
    mask = _argument("attention_mask", names, args, kwargs)
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None  # 4-D/float masks: all count
    for layer in layers:
        layer.clear_router_state()
        layer.attention_mask = mask
    # In training the layers compute their balancing loss from this mask, and activation
    # checkpointing runs them again during the backward: they must see the same mask then, so it
    # stays set until the next forward. Without a backward to come it is cleared at once.
    keep_mask = self.training and torch.is_grad_enabled()
    try:
        out = inner(self, *args, **kwargs)
    finally:
        if not keep_mask:
            for layer in layers:
                layer.attention_mask = None
    labels = _argument("labels", names, args, kwargs)
    if (not layers or (labels is None and not self.training) or layers[0].router_logits is None
            or not isinstance(out, (tuple, MutableMapping))):  # e.g. a bare tensor: nothing to add to
        return out
    _warn_if_untrainable(self, layers)
    losses = router_losses(self)
    config = layers[0].config
    terms = [coef * losses[name] for coef, name in ((config.aux_loss_coef, "aux_loss"), (config.z_loss_coef, "z_loss"))
             if coef]
    if labels is not None and terms and _has_loss(out):
        loss = out[0] if isinstance(out, tuple) else out["loss"]
        extra = (sum(terms) * _micro_batch_share(labels, kwargs)).to(loss.device)
        if isinstance(out, tuple):
            out = (loss + extra,) + tuple(out[1:])
        else:
            out["loss"] = loss + extra
    if not isinstance(out, tuple):
        out["aux_loss"] = losses["aux_loss"]
        out["z_loss"] = losses["z_loss"]
    return out


def _has_loss(out) -> bool:
    if isinstance(out, tuple):
        return len(out) > 0 and isinstance(out[0], torch.Tensor) and out[0].dim() == 0
    return out.get("loss") is not None


def _micro_batch_share(labels: torch.Tensor, kwargs: dict):
    """Weight of this micro-batch's router losses: 1, or its share of ``num_items_in_batch``.

    With ``num_items_in_batch`` (the Trainer passes it under gradient accumulation) the LM loss is
    a sum over this micro-batch's target tokens divided by the whole accumulated batch's count, so
    the router losses (per-micro-batch means) get the same share: summed over the micro-batches
    they then form a token-weighted mean, instead of growing with the accumulation steps.
    """
    total = kwargs.get("num_items_in_batch")
    if total is None:
        return 1.0
    targets = kwargs.get("shift_labels")
    targets = targets if targets is not None else labels[..., 1:]
    count = (targets != kwargs.get("ignore_index", IGNORE_INDEX)).sum()
    total = total.to(count.device) if isinstance(total, torch.Tensor) else total
    return count / total


def _warn_if_untrainable(model: nn.Module, layers: list[PESCMoE]) -> None:
    """Warn once when training cannot reach the routers: frozen PESC parameters, or router logits
    recorded without a graph (reentrant activation checkpointing runs the first forward under no_grad)."""
    if getattr(model, "_pesc_warned", False) or not (model.training and torch.is_grad_enabled()):
        return
    if not any(p.requires_grad for layer in layers for p in (layer.router.weight, layer.w_down, layer.w_up)):
        message = ("training a crafted model whose routers and adapters are all frozen. peft's get_peft_model "
                   "freezes every non-peft parameter: craft after get_peft_model, or call p.requires_grad_(True) "
                   "for p in pesc_kernels.pesc_parameters(model)")
    elif any(layer.router.weight.requires_grad and not layer.router_logits.requires_grad for layer in layers):
        message = ("the router logits carry no gradient, so the balancing and z losses cannot train the routers; "
                   "with activation checkpointing use gradient_checkpointing_kwargs={'use_reentrant': False}")
    else:
        return
    model._pesc_warned = True
    warnings.warn("pesc_kernels: " + message, RuntimeWarning, stacklevel=3)
