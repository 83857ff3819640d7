"""save_official(): write a crafted model in the official PESC layout (Camelidae, Sparsetral, Qwen2idae).

Full checkpoint (``adapters_only=False``): ``config.json`` with the official ``model_type``,
``auto_map`` and MoE fields (:func:`pesc_kernels.checkpoints.official.official_config`), ``generation_config.json``
when the model has one, and the weights as safetensors (sharded past ``max_shard_size``, with
``model.safetensors.index.json``) under the official names: the FFN at ``M.{gate,up,down}_proj``,
``M.moe_adapter.router.weight [E, d]`` and per expert ``adapter_down.weight = w_down[e].T [r, d]``,
``adapter_up.weight = w_up[e].T [d, r]`` (see :mod:`pesc_kernels.checkpoints.official_keys`). Every tensor keeps
the model's dtype, so official -> ours -> official is bitwise. The official modeling files
(``configuration_<flavor>.py``, ``modeling_<flavor>.py``, which ``auto_map`` names) are not
written: copy them from the official repository to load the directory with ``trust_remote_code``.

Adapters only (``adapters_only=True``): ``moe_model.bin``, the file the official training script
saves (routers and experts, names prefixed with peft's ``base_model.model.``, loadable by the
official merge script), plus our ``pesc_config.json`` so :func:`pesc_kernels.load_pesc`
knows top_k and the scaling. The base model may then be quantised or carry LoRA layers.

The output is written to a temporary directory next to ``out_dir`` and renamed when complete.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..crafting import pesc_layers, unwrap_model
from . import official
from .adapters import CONFIG_NAME
from .official_keys import PEFT_PREFIX, official_expert_key, official_router_key
from .weight_files import SafetensorsWriter, atomic_directory, check_new_directory, shard_file_names, write_index

MOE_WEIGHTS_NAME = "moe_model.bin"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*$", re.IGNORECASE)


def save_official(model: nn.Module, out_dir: str | os.PathLike, flavor: str = "camelidae", adapters_only: bool = False,
                  *, max_shard_size: int | str = "5GB") -> Path:
    """Write ``model`` (crafted, optionally peft-wrapped) in the official layout of ``flavor``; return the path.

    Raises ValueError (before writing anything) when the model cannot be expressed in that layout:
    not crafted, PESC layers outside ``model.layers.N.mlp``, a setting their code does not compute
    (activation, RoPE, biases; see :func:`pesc_kernels.checkpoints.official.official_config`), or for a full
    checkpoint unmerged LoRA layers or quantised weights.
    """
    chosen = official.flavor_named(flavor)
    check_new_directory(out_dir)
    hf = unwrap_model(model)
    layers = pesc_layers(hf)
    if not layers:
        raise ValueError(f"save_official: {type(hf).__name__} has no PESC layers; craft it first")
    pesc = layers[0][1].config
    if any(layer.config.to_dict() != pesc.to_dict() for _, layer in layers):
        raise ValueError("save_official: the PESC layers do not share one PESCConfig; the official format has one")
    count = getattr(hf.config, "num_hidden_layers", None)
    expected = [f"model.layers.{i}.mlp" for i in range(count or 0)]
    if [name for name, _ in layers] != expected:
        raise ValueError(f"save_official: the official code crafts every decoder layer's FFN, model.layers.N.mlp for "
                         f"N < {count}; this model's PESC layers are {[name for name, _ in layers][:4]}")
    adapter_dtype = str(layers[0][1].w_down.dtype).removeprefix("torch.")
    stock = hf.config.to_dict()
    config = official.official_config(stock, pesc, chosen, adapter_dtype)  # validates before anything is written
    if adapters_only:
        with atomic_directory(out_dir) as staging:
            _save_moe_weights(layers, chosen.expert_naming, staging / MOE_WEIGHTS_NAME)
            pesc.to_json_file(staging / CONFIG_NAME)
        return Path(out_dir)

    _refuse_unmerged_or_quantised(hf)
    entries = official_tensors(hf, [name for name, _ in layers], chosen.expert_naming)
    limit = _parse_size(max_shard_size)
    with atomic_directory(out_dir) as staging:
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        generation = getattr(hf, "generation_config", None)
        if generation is not None and hf.can_generate():
            generation.save_pretrained(staging)
        write_safetensors_shards(staging, entries, limit)
    return Path(out_dir)


def _refuse_unmerged_or_quantised(hf: nn.Module) -> None:
    for name, module in hf.named_modules():
        if getattr(module, "adapter_layer_names", None):  # a peft tuner layer (LoRA, ...)
            raise ValueError(f"save_official: {name} carries unmerged peft adapters; merge them first "
                             "(model = model.merge_and_unload()), or save adapters_only=True")
    for name, parameter in hf.named_parameters():
        if not parameter.is_floating_point():
            raise ValueError(f"save_official: {name} is quantised ({parameter.dtype}); dequantise the model first "
                             "(model.dequantize() for bitsandbytes), or save adapters_only=True")


def official_tensors(hf: nn.Module, modules: list[str], naming: str) -> list[tuple[str, torch.Tensor]]:
    """``(official name, tensor)`` for every weight of a crafted model, in state-dict order (views, no copies
    except the per-expert transposes, which are made when written)."""
    state = hf.state_dict()
    embeddings = hf.get_input_embeddings().weight
    tied = getattr(hf.config, "tie_word_embeddings", False)
    module_set = set(modules)
    entries: list[tuple[str, torch.Tensor]] = []
    for name, tensor in state.items():
        if tied and name.endswith("lm_head.weight") and tensor.data_ptr() == embeddings.data_ptr():
            continue  # the official model ties it back to the embeddings, as save_pretrained would
        module, _, rest = name.partition(".ffn.") if ".ffn." in name else (None, None, None)
        if module in module_set:
            entries.append((f"{module}.{rest}", tensor))
            continue
        owner, _, suffix = name.rpartition(".")
        if owner.endswith(".router") and owner[: -len(".router")] in module_set and suffix == "weight":
            entries.append((official_router_key(owner[: -len(".router")]), tensor))
        elif owner in module_set and suffix in ("w_down", "w_up"):
            part = "down" if suffix == "w_down" else "up"
            entries += [(official_expert_key(owner, e, part, naming), tensor[e].t()) for e in range(tensor.shape[0])]
        else:
            entries.append((name, tensor))
    return entries


def write_safetensors_shards(directory: Path, entries: list[tuple[str, torch.Tensor]], limit: int) -> None:
    """Write ``entries`` in order as safetensors shards of at most ``limit`` bytes (a bigger tensor gets its own)."""
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, tensor in entries:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, tensor))
        size += nbytes
    names = shard_file_names(len(shards))
    weight_map, total = {}, 0
    for file_name, shard in zip(names, shards):
        layout = [(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in shard]
        with SafetensorsWriter(directory / file_name, layout) as writer:
            for name, tensor in shard:
                writer.write(name, tensor)
                weight_map[name] = file_name
                total += tensor.numel() * tensor.element_size()
    if len(shards) > 1:
        write_index(directory, weight_map, total)


def _save_moe_weights(layers, naming: str, path: Path) -> None:
    """``moe_model.bin``: what the official training script saves (peft-prefixed routers and experts)."""
    state = {}
    for module, layer in layers:
        state[PEFT_PREFIX + official_router_key(module)] = layer.router.weight.detach().to("cpu").clone()
        for e in range(layer.config.num_experts):
            for part, weights in (("down", layer.w_down), ("up", layer.w_up)):
                key = PEFT_PREFIX + official_expert_key(module, e, part, naming)
                state[key] = weights[e].detach().to("cpu").t().contiguous()
    torch.save(state, path)


def _parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "5GB" / "500MB" (powers of 1000, as transformers counts)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = _SIZE.match(str(size))
    if not match or float(match[1]) <= 0:
        raise ValueError(f"max_shard_size must be a positive byte count or a string like '5GB'; got {size!r}")
    return int(float(match[1]) * 1000 ** " KMGT".index(match[2].upper() or " "))
