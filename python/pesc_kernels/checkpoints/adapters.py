"""Adapter-only PESC checkpoints: the routers and adapters of a crafted model, not the base model.

A checkpoint directory written by :func:`save_pesc` holds

- ``pesc_config.json``: the :class:`PESCConfig` (readable with ``PESCConfig.from_json_file``);
- ``pesc_adapters.safetensors``: for every PESC layer at qualified name ``L`` (relative to the
  Hugging Face model, peft wrappers removed) the tensors ``L.router.weight [E, d]``,
  ``L.w_down [E, d, r]`` and ``L.w_up [E, r, d]``, in the model's dtype, with metadata naming the
  format, hidden size and base model type.

:func:`load_pesc` also reads the official adapter file, ``moe_model.bin`` as the official
training script saves it (``[base_model.model.]M.moe_adapter.router.weight [E, d]`` and
``M.moe_adapter.experts.{expert_e | e}.adapter_{down [r, d] | up [d, r]}.weight``; see
:mod:`pesc_kernels.checkpoints.official_keys`). That file has no config: top_k and the scaling come from
``config=``, from the model when it is already crafted, from a ``pesc_config.json`` beside the
file (:func:`pesc_kernels.save_official` writes one) or from an official ``config.json`` beside it.

:func:`load_pesc` validates the whole checkpoint against the base model before changing it, then
crafts the model and copies the tensors onto each parameter's device and dtype.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..config import PESCConfig
from ..crafting import craft, find_targets, hidden_size_of, pesc_layers, unwrap_model
from .official_keys import LayerAdapters, check_adapters, official_adapters, strip_peft_prefix

CONFIG_NAME = "pesc_config.json"
WEIGHTS_NAME = "pesc_adapters.safetensors"
OFFICIAL_ADAPTERS_NAME = "moe_model.bin"
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


def load_pesc(base_model: nn.Module, path: str | os.PathLike, config: PESCConfig | None = None) -> nn.Module:
    """Craft ``base_model`` with the checkpoint's config and load its routers and adapters; return it.

    ``path`` is a directory written by :func:`save_pesc`, or an official ``moe_model.bin`` (the file or
    the directory holding it). ``base_model`` is an uncrafted model of the same architecture and size
    the checkpoint was saved from (optionally wrapped by peft), on any device and in any dtype:
    tensors are converted to each parameter's device and dtype. A model already crafted with the
    same config is loaded into as is. ``config`` is needed only for a ``moe_model.bin`` whose top_k
    and scaling cannot be found otherwise (see the module docstring); for a save_pesc directory it
    must equal the saved config. Any mismatch (missing files, another config, other layer names,
    E, r or d) raises before the model is modified.
    """
    path = Path(path)
    official_file = _official_adapter_file(path)
    if official_file is not None:
        return _load_official_adapters(base_model, official_file, config)
    directory = path
    from safetensors import safe_open

    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"load_pesc: {directory / name} not found; expected a directory written by "
                                    f"save_pesc ({CONFIG_NAME}, {WEIGHTS_NAME}) or an official "
                                    f"{OFFICIAL_ADAPTERS_NAME}")
    saved = PESCConfig.from_json_file(directory / CONFIG_NAME)
    if config is not None and config.to_dict() != saved.to_dict():
        raise ValueError(f"load_pesc: config={config} differs from the checkpoint's {saved}")
    config = saved
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


# ------------------------------------------------------------------------------- official moe_model.bin
def _official_adapter_file(path: Path) -> Path | None:
    """The official adapter file ``path`` names (the file, or moe_model.bin in a directory), else None."""
    if path.is_file():
        return path
    if path.is_dir() and (path / OFFICIAL_ADAPTERS_NAME).is_file() and not (path / WEIGHTS_NAME).is_file():
        return path / OFFICIAL_ADAPTERS_NAME
    return None


def _official_config_beside(file: Path) -> PESCConfig | None:
    """The PESCConfig from a pesc_config.json or an official config.json next to ``file``, if any."""
    if (file.parent / CONFIG_NAME).is_file():
        return PESCConfig.from_json_file(file.parent / CONFIG_NAME)
    config_json = file.parent / "config.json"
    if config_json.is_file():
        from . import official

        data = json.loads(config_json.read_text())
        if isinstance(data, dict) and all(f in data for f in official.OFFICIAL_FIELDS):
            flavor = official.detect_flavor(data, str(config_json))
            return official.pesc_config_from_official(data, flavor, str(config_json))
    return None


def _load_official_adapters(base_model: nn.Module, file: Path, config: PESCConfig | None) -> nn.Module:
    where = f"load_pesc: {file}"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise ValueError(f"{where} is not a torch state dict ({error})") from None
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: name it rather than surface pickle internals
        raise ValueError(f"{where} is not a torch state dict ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where} is not a state dict of tensors")
    tensors = {strip_peft_prefix(k): v for k, v in state.items()}
    layers, others = official_adapters({k: tuple(v.shape) for k, v in tensors.items()}, where)
    if others:
        raise ValueError(f"{where} holds tensors that are not PESC routers or adapters: {sorted(others)[:4]}")
    if not layers:
        raise ValueError(f"{where} holds no PESC routers or adapters")

    hf = unwrap_model(base_model)
    crafted = pesc_layers(hf)
    current = crafted[0][1].config if crafted else None
    if config is not None and current is not None and config.to_dict() != current.to_dict():
        raise ValueError(f"load_pesc: the model is already crafted with {current} but config={config}")
    config = config or current or _official_config_beside(file) or _stored_config(hf)
    if config is None:
        raise ValueError(f"{where} stores no top_k or scaling: pass config= (e.g. PESCConfig.camelidae() for the "
                         "released Camelidae models, PESCConfig.pesc_script() for the official training script's "
                         "defaults), or craft the model first")
    if crafted:
        hidden_size, modules = crafted[0][1].hidden_size, [name for name, _ in crafted]
    else:
        hidden_size, modules = hidden_size_of(hf), find_targets(hf, config.target_modules)
    check_adapters(layers, modules, num_experts=config.num_experts, adapter_dim=config.adapter_dim,
                   hidden_size=hidden_size, where=where)
    if not crafted:
        craft(base_model, config, hidden_size=hidden_size)
    with torch.no_grad():
        for name, layer in pesc_layers(hf):
            found: LayerAdapters = layers[name]
            layer.router.weight.copy_(tensors[found.router])
            for e in range(config.num_experts):  # nn.Linear weights are [out, in]; ours are input-major
                layer.w_down[e].copy_(tensors[found.down[e]].t())
                layer.w_up[e].copy_(tensors[found.up[e]].t())
    return base_model


def _stored_config(hf: nn.Module) -> PESCConfig | None:
    stored = getattr(getattr(hf, "config", None), "pesc", None)
    return PESCConfig.from_dict(stored) if isinstance(stored, dict) else None
