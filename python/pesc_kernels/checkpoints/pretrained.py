"""from_pretrained(): a crafted stock Hugging Face model from a pesc_kernels or an official PESC checkpoint.

    model = pesc_kernels.from_pretrained("Camelidae-8x7B", dtype=torch.bfloat16, device_map="auto")

The directory is either written by ``save_pretrained`` of a crafted model (or by ``python -m
pesc_kernels convert --to pesc``) or an official Camelidae / Sparsetral / Qwen2idae checkpoint
(see :mod:`pesc_kernels.checkpoints.official`); no remote code runs. The steps, which never hold the weights
twice:

1. read config.json and the tensor headers, build the stock config (LlamaConfig, MistralConfig,
   Qwen2Config) and the PESCConfig, and check the adapters against the FFNs of that architecture;
2. load the non-PESC weights with transformers' own ``from_pretrained`` (so ``dtype``,
   ``device_map``, ``quantization_config`` and the rest pass through), renaming our ``M.ffn.*``
   FFN tensors to the stock ``M.*`` with a ``key_mapping`` and leaving the adapter tensors out;
3. ``craft`` the model and copy the routers and adapters in from the files, shard by shard
   (official ``adapter_down.weight [r, d]`` becomes ``w_down[e] [d, r]``, its transpose).

The PESC parameters take the FFN's device and dtype; when the FFN is quantised (4-bit) they take
the dtype of the input embeddings, i.e. the activations' dtype (bf16 in the paper's QLoRA recipe).
4-bit layers on the CPU are checked against bitsandbytes' shape rule there
(:func:`pesc_kernels.quantized.check_cpu_4bit_layout`).
"""
from __future__ import annotations

import contextlib
import os
import re
import threading

import torch

from ..crafting import craft, pesc_layers
from ..quantized import check_cpu_4bit_layout
from .layout import CheckpointLayout, describe_checkpoint
from .weight_files import ShardReader

_RESERVED = ("config", "key_mapping")
_CLASS_PATCH = threading.Lock()


def from_pretrained(path: str | os.PathLike, **hf_kwargs):
    """Load a PESC checkpoint directory as a crafted stock causal LM with every tensor in place.

    Args:
        path: a local checkpoint directory (pesc_kernels layout or official Camelidae / Sparsetral /
            Qwen2idae; safetensors or .bin, one file or sharded).
        **hf_kwargs: passed to the stock class's ``from_pretrained`` (``dtype``/``torch_dtype``,
            ``device_map``, ``quantization_config``, ``attn_implementation``, ...). ``config``,
            ``key_mapping`` and ``trust_remote_code=True`` are refused: the first two are set here,
            and no remote code is needed. ``output_loading_info=True`` returns ``(model, info)``.

    Raises:
        ValueError: an unknown ``model_type``, an official field that cannot be mapped (the message
            names it), or adapters that do not match the architecture (missing layers, E, r or d).
        RuntimeError: the base weights left parameters uninitialised (missing tensors).
    """
    for name in _RESERVED:
        if name in hf_kwargs:
            raise TypeError(f"from_pretrained: {name}= is set by pesc_kernels from the checkpoint; do not pass it")
    if hf_kwargs.pop("trust_remote_code", False):
        raise TypeError("from_pretrained: trust_remote_code=True is not needed: official PESC checkpoints load into "
                        "stock transformers classes without their remote code")
    want_info = hf_kwargs.pop("output_loading_info", False)
    layout = describe_checkpoint(path)
    model_class = layout.model_class()
    key_mapping, ignored = _renaming(layout)
    with _ignoring_unexpected(model_class, ignored):
        model, info = model_class.from_pretrained(layout.directory, config=layout.stock_config,
                                                  key_mapping=key_mapping or None, output_loading_info=True,
                                                  **hf_kwargs)
    _forget_renaming(model, key_mapping)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise RuntimeError(f"from_pretrained: {layout.directory} lacks base-model tensors, which would be left at "
                           f"their random initialisation: {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    check_cpu_4bit_layout(model)  # 4-bit inference on some CPUs would fail later, naming no layer
    craft(model, layout.pesc, hidden_size=layout.hidden_size)
    _place_pesc_parameters(model)
    copy_adapters(model, layout)
    return (model, info) if want_info else model


def _renaming(layout: CheckpointLayout) -> tuple[dict[str, str], list[str]]:
    """``key_mapping`` (checkpoint name -> stock name) and the unexpected-key patterns to ignore."""
    if layout.flavor is not None:  # official: the FFN is already at M.*; the adapters sit under M.moe_adapter.*
        return {}, [r"\.moe_adapter\."]
    mapping, ignored = {}, []
    for target in layout.pesc.target_modules:
        name = re.escape(target)
        # transformers replaces the matched text by the target literally (only a leading \\1 is expanded)
        mapping[rf"\.{name}\.ffn\."] = f".{target}."
        ignored.append(rf"(^|\.){name}\.(router\.weight|w_down|w_up)$")
    return mapping, ignored


@contextlib.contextmanager
def _ignoring_unexpected(model_class, patterns: list[str]):
    """Tell transformers that the adapter tensors are expected to be left over (copied in by us).

    transformers copies the class attribute ``_keys_to_ignore_on_load_unexpected`` into the instance
    when the model is built; setting it on the class for the duration of one load is the only way to
    keep its load report from listing the adapters as unexpected. A lock makes concurrent loads safe.
    """
    attribute = "_keys_to_ignore_on_load_unexpected"
    with _CLASS_PATCH:
        had_own = attribute in model_class.__dict__
        previous = model_class.__dict__.get(attribute)
        setattr(model_class, attribute, [*(getattr(model_class, attribute, None) or []), *patterns])
        try:
            yield
        finally:
            if had_own:
                setattr(model_class, attribute, previous)
            else:
                delattr(model_class, attribute)


def _forget_renaming(model, key_mapping: dict[str, str]) -> None:
    """Drop our key_mapping from the renamings transformers keeps for save_pretrained.

    transformers reverses the load-time renamings when saving; after crafting, the FFN really lives
    at ``M.ffn.*``, so reversing ours would write ``M.ffn.ffn.*``.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions and key_mapping:
        model._weight_conversions = [c for c in conversions
                                     if not set(getattr(c, "source_patterns", ())) & set(key_mapping)]


def _place_pesc_parameters(model) -> None:
    """PESC parameters of quantised FFNs in the activations' dtype; none may be left on the meta device."""
    embeddings = model.get_input_embeddings().weight
    for name, layer in pesc_layers(model):
        if not any(p.is_floating_point() for p in layer.ffn.parameters()):
            for parameter in (layer.router.weight, layer.w_down, layer.w_up):
                parameter.data = parameter.data.to(embeddings.dtype)
        if layer.w_down.device.type == "meta":
            raise NotImplementedError(f"from_pretrained: {name} was offloaded (meta device); offloading crafted "
                                      "layers is not supported, give a device_map that keeps them on a device")


def copy_adapters(model, layout: CheckpointLayout) -> None:
    """Copy every router and adapter of ``layout`` into the crafted ``model``, one shard at a time."""
    layers = dict(pesc_layers(model))
    by_shard: dict[int, list[tuple[str, str, object]]] = {}  # shard -> (tensor name, role, layer)
    for module, adapters in layout.adapters.items():
        layer = layers[module]
        roles = [(adapters.router, "router")]
        if layout.flavor is None:
            roles += [(adapters.down[0], "w_down"), (adapters.up[0], "w_up")]
        else:
            roles += [(name, ("down", e)) for e, name in enumerate(adapters.down)]
            roles += [(name, ("up", e)) for e, name in enumerate(adapters.up)]
        for name, role in roles:
            by_shard.setdefault(layout.tensors[name][0], []).append((name, role, layer))
    with torch.no_grad():
        for shard, entries in sorted(by_shard.items()):
            with ShardReader(layout.files.shards[shard]) as reader:
                for name, role, layer in entries:
                    tensor = reader.get(name)
                    if role == "router":
                        layer.router.weight.copy_(tensor)
                    elif role == "w_down":
                        layer.w_down.copy_(tensor)
                    elif role == "w_up":
                        layer.w_up.copy_(tensor)
                    else:  # official nn.Linear weights are [out, in]; ours are input-major
                        part, expert = role
                        target = layer.w_down if part == "down" else layer.w_up
                        target[expert].copy_(tensor.t())

