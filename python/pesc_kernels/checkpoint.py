"""Adapter-only PESC checkpoints: the routers and adapters of a crafted model, not the base model.

A checkpoint directory holds

- ``pesc_config.json``: the :class:`PESCConfig` (readable with ``PESCConfig.from_json_file``);
- ``pesc_adapters.safetensors``: for every PESC layer at qualified name ``L`` (relative to the
  Hugging Face model, peft wrappers removed) the tensors ``L.router.weight [E, d]``,
  ``L.w_down [E, d, r]`` and ``L.w_up [E, r, d]``, in the model's dtype, with metadata naming the
  format, hidden size and base model type.

:func:`load_pesc` validates the whole checkpoint against the base model before changing it, then
crafts the model and copies the tensors onto each parameter's device and dtype.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ._version import __version__
from .config import PESCConfig
from .crafting import craft, find_targets, hidden_size_of, pesc_layers, unwrap_model

CONFIG_NAME = "pesc_config.json"
WEIGHTS_NAME = "pesc_adapters.safetensors"
FORMAT = "pesc_kernels.adapters/1"
_SUFFIXES = ("router.weight", "w_down", "w_up")


def _layer_tensors(layer) -> dict[str, torch.Tensor]:
    return {"router.weight": layer.router.weight, "w_down": layer.w_down, "w_up": layer.w_up}


def _expected_shapes(config: PESCConfig, hidden_size: int) -> dict[str, tuple[int, ...]]:
    E, r, d = config.num_experts, config.adapter_dim, hidden_size
    return {"router.weight": (E, d), "w_down": (E, d, r), "w_up": (E, r, d)}


def save_pesc(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``pesc_config.json`` and ``pesc_adapters.safetensors`` (routers and adapters only)."""
    from safetensors.torch import save_file

    layers = pesc_layers(model)
    if not layers:
        raise ValueError(f"save_pesc: {type(unwrap_model(model)).__name__} has no PESC layers; craft it first")
    config = layers[0][1].config
    if any(layer.config.to_dict() != config.to_dict() for _, layer in layers):
        raise ValueError("save_pesc: the PESC layers do not share one PESCConfig; a checkpoint holds one config")
    hf = unwrap_model(model)
    tensors = {f"{name}.{suffix}": t.detach().to("cpu").contiguous()
               for name, layer in layers for suffix, t in _layer_tensors(layer).items()}
    metadata = {
        "format": FORMAT,
        "pesc_kernels_version": __version__,
        "hidden_size": str(layers[0][1].hidden_size),
        "model_type": str(getattr(getattr(hf, "config", None), "model_type", "")),
        "modules": json.dumps([name for name, _ in layers]),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.to_json_file(directory / CONFIG_NAME)
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata=metadata)


def load_pesc(base_model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Craft ``base_model`` with the checkpoint's config and load its routers and adapters; return it.

    ``base_model`` is an uncrafted model of the same architecture and size the checkpoint was saved
    from (optionally wrapped by peft), on any device and in any dtype: tensors are converted to
    each parameter's device and dtype. A model already crafted with the same config is loaded
    into as is. Any mismatch (missing files, another config, other layer names, other shapes)
    raises before the model is modified.
    """
    from safetensors import safe_open

    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"load_pesc: {directory / name} not found; "
                                    "expected a directory written by save_pesc")
    config = PESCConfig.from_json_file(directory / CONFIG_NAME)
    hf = unwrap_model(base_model)
    crafted = pesc_layers(hf)
    if crafted:
        current = crafted[0][1].config
        if current.to_dict() != config.to_dict():
            raise ValueError(f"load_pesc: the model is already crafted with {current} but the checkpoint has {config}")
        hidden_size = crafted[0][1].hidden_size
        modules = [name for name, _ in crafted]
    else:
        hidden_size = hidden_size_of(hf)
        modules = find_targets(hf, config.target_modules)

    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"load_pesc: {directory / WEIGHTS_NAME} is not a pesc_kernels adapter checkpoint "
                             f"(format {metadata.get('format')!r}, expected {FORMAT!r})")
        saved_hidden = int(metadata.get("hidden_size", hidden_size))
        if saved_hidden != hidden_size:
            raise ValueError(f"load_pesc: the checkpoint was saved from a model with hidden_size={saved_hidden} "
                             f"({metadata.get('model_type') or 'unknown type'}); "
                             f"this model has hidden_size={hidden_size}")
        shapes = _expected_shapes(config, hidden_size)
        expected = {f"{m}.{s}": shapes[s] for m in modules for s in _SUFFIXES}
        keys = set(f.keys())
        missing, unexpected = sorted(expected.keys() - keys), sorted(keys - expected.keys())
        if missing or unexpected:
            raise ValueError(f"load_pesc: the checkpoint's layers do not match the model's FFNs ({len(modules)} "
                             f"modules matching target_modules={config.target_modules}): missing {missing[:4]}"
                             f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                             f"{' ...' if len(unexpected) > 4 else ''}")
        for key, shape in expected.items():
            saved = tuple(f.get_slice(key).get_shape())
            if saved != shape:
                raise ValueError(f"load_pesc: {key} has shape {list(saved)} in the checkpoint but the model needs "
                                 f"{list(shape)} (hidden_size={hidden_size}, num_experts={config.num_experts}, "
                                 f"adapter_dim={config.adapter_dim})")
        if not crafted:
            craft(base_model, config, hidden_size=hidden_size)
        with torch.no_grad():
            for name, layer in pesc_layers(hf):
                for suffix, param in _layer_tensors(layer).items():
                    param.copy_(f.get_tensor(f"{name}.{suffix}"))
    return base_model
