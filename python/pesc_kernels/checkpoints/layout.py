"""What a PESC checkpoint directory holds, read from its config and tensor headers (no weights).

Two layouts are recognised (see :mod:`pesc_kernels.checkpoints.official_keys` for the tensor names):

- ``pesc``: written by ``save_pretrained`` of a crafted model (or ``convert --to pesc``): a stock
  config with the PESCConfig under ``"pesc"``, the FFNs under ``M.ffn.*`` and the stacked adapters;
- an official flavor (:mod:`pesc_kernels.checkpoints.official`): the official config fields and tensor names.

:func:`describe_checkpoint` returns the stock transformers config, the PESCConfig, every tensor's
shard, dtype and shape, and the adapters per crafted FFN, after checking them against the FFNs a
stock model of that config has (built on the meta device, so no memory is used): any missing layer
or mismatched E, r or d is an error before a tensor is read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .._optional import require
from ..config import PESCConfig
from ..crafting import find_targets, hidden_size_of
from . import official
from .official_keys import LayerAdapters, check_adapters, official_adapters, our_adapters
from .weight_files import TensorInfo, WeightFiles, find_weight_files, tensor_infos


@dataclass
class CheckpointLayout:
    directory: Path
    flavor: official.Flavor | None  # None: the pesc_kernels layout
    stock_config: object  # a transformers PretrainedConfig of the base architecture
    pesc: PESCConfig
    files: WeightFiles
    tensors: dict[str, tuple[int, TensorInfo]]  # name -> (shard number, dtype and shape)
    adapters: dict[str, LayerAdapters]  # crafted FFN module path -> its adapter tensors
    modules: list[str]  # the crafted FFNs, in model order
    hidden_size: int

    @property
    def format_name(self) -> str:
        return "pesc" if self.flavor is None else self.flavor.name

    def model_class(self):
        """The stock causal-LM class to load the base weights with."""
        transformers = require("transformers", "loading a PESC checkpoint")
        for name in getattr(self.stock_config, "architectures", None) or []:
            if name.endswith("ForCausalLM") and hasattr(transformers, name):
                return getattr(transformers, name)
        return transformers.AutoModelForCausalLM._model_mapping[type(self.stock_config)]


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected a Hugging Face checkpoint directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return config


def stock_config_from(config: dict, directory: Path):
    """``(stock transformers config, PESCConfig, flavor or None)`` for a checkpoint's config.json."""
    transformers = require("transformers", "loading a PESC checkpoint")
    where = str(directory / "config.json")
    if official.is_pesc_kernels_config(config):
        pesc = PESCConfig.from_dict(config["pesc"])
        return transformers.AutoConfig.from_pretrained(directory), pesc, None
    flavor = official.detect_flavor(config, where)
    pesc = official.pesc_config_from_official(config, flavor, where)
    stock = official.stock_config_dict(config, flavor, where)
    config_class = transformers.AutoConfig.for_model(flavor.base_model_type).__class__
    try:
        return config_class.from_dict(stock), pesc, flavor
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: the {flavor.base_model_type} part of this {flavor.name} config is not valid: "
                         f"{error}") from None


def crafted_modules(stock_config, pesc: PESCConfig) -> tuple[list[str], int]:
    """The FFNs ``craft`` wraps in a stock model of ``stock_config``, and its hidden size (meta device)."""
    transformers = require("transformers", "loading a PESC checkpoint")
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(stock_config)
    return find_targets(skeleton, pesc.target_modules), hidden_size_of(skeleton)


def describe_checkpoint(directory: str | os.PathLike) -> CheckpointLayout:
    directory = Path(directory)
    config = read_config(directory)
    stock_config, pesc, flavor = stock_config_from(config, directory)
    files = find_weight_files(directory)
    tensors = tensor_infos(files)
    shapes = {name: info.shape for name, (_, info) in tensors.items()}
    where = str(directory)
    adapters, _ = official_adapters(shapes, where) if flavor else our_adapters(shapes, where)
    modules, hidden_size = crafted_modules(stock_config, pesc)
    check_adapters(adapters, modules, num_experts=pesc.num_experts, adapter_dim=pesc.adapter_dim,
                   hidden_size=hidden_size, where=where)
    return CheckpointLayout(directory, flavor, stock_config, pesc, files, tensors, adapters, modules, hidden_size)
