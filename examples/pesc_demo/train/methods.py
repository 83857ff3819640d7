"""The fine-tuning methods: PESC (crafted experts), LoRA (peft) and full fine-tuning.

- ``pesc``: :func:`pesc_kernels.craft` turns every FFN into shared-FFN experts with rank-r adapters
  and a top-k router and freezes the base; the checkpoint is adapter-only (``save_pesc``).
- ``lora``: peft LoRA on the FFN projections (``gate_proj``, ``up_proj``, ``down_proj`` by default:
  the same place PESC adds its experts). Its rank can be chosen to match the trainable parameter
  count of a PESC configuration; that count is measured by crafting a copy of the model on the meta
  device (no memory, no compute). The checkpoint is the peft adapter.
- ``full``: every weight trains; the checkpoint is the whole model.

Every checkpoint directory also holds ``finetune_info.json`` (method and the base model's path,
relative to the checkpoint) so ``examples/generate.py`` can find the base by itself.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import pesc_kernels

METHODS = ("pesc", "lora", "full")
DEFAULT_LORA_TARGETS = ("gate_proj", "up_proj", "down_proj")
INFO_FILE = "finetune_info.json"


def pesc_config(**fields):
    """A :class:`pesc_kernels.PESCConfig` from keyword fields (None values are left at the default)."""
    return pesc_kernels.PESCConfig(**{k: v for k, v in fields.items() if v is not None})


def pesc_trainable_count(model_config, config) -> int:
    """Trainable parameters PESC adds for ``config`` to a model of ``model_config`` (meta-device craft)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(model_config)
    pesc_kernels.craft(meta_model, config)
    return pesc_kernels.trainable_parameter_summary(meta_model)["trainable"]


def _is_target(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_params_per_rank(model, targets=DEFAULT_LORA_TARGETS) -> int:
    """LoRA parameters per unit of rank: sum of (in + out features) over the targeted Linear layers."""
    total = sum(m.in_features + m.out_features for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and _is_target(name, targets))
    if total == 0:
        raise ValueError(f"no nn.Linear module matches the LoRA targets {list(targets)}")
    return total


def matching_lora_rank(model, trainable_target: int, targets=DEFAULT_LORA_TARGETS) -> int:
    """The LoRA rank whose trainable parameter count is closest to ``trainable_target``."""
    return max(1, round(trainable_target / lora_params_per_rank(model, targets)))


def apply_method(model, method: str, *, pesc=None, lora_rank: int = 8, lora_alpha: float | None = None,
                 lora_dropout: float = 0.0, lora_targets=DEFAULT_LORA_TARGETS):
    """Prepare ``model`` for fine-tuning with ``method``; returns the model to train."""
    if method == "pesc":
        if pesc is None:
            raise ValueError("method 'pesc' needs a PESCConfig")
        return pesc_kernels.craft(model, pesc)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha if lora_alpha is not None else lora_rank,
                            lora_dropout=lora_dropout, target_modules=list(lora_targets), bias="none",
                            task_type="CAUSAL_LM")
        return get_peft_model(model, config)
    if method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def parameter_summary(model, method: str) -> dict:
    """Parameter counts: total, trainable, activated_per_token (all weights one token uses) and
    trainable_per_token (the trainable ones among them: PESC routes a token through only k of the E
    adapters, so this is less than ``trainable`` for PESC and equal to it for dense methods)."""
    counts = dict(pesc_kernels.trainable_parameter_summary(model))  # activated == total without PESC layers
    counts["trainable_per_token"] = counts["trainable"] - (counts["total"] - counts["activated_per_token"])
    return counts


def save_checkpoint(model, method: str, directory, base_model_dir, tokenizer=None, state_dict=None) -> Path:
    """Write the method's checkpoint (adapter-only for pesc and lora) plus finetune_info.json.

    ``state_dict``: the whole model's state dict when ``model.state_dict()`` would not give it
    (FSDP2, see :func:`pesc_demo.train.distributed.full_state_dict`); pesc reads the layers directly.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if method == "pesc":
        pesc_kernels.save_pesc(model, directory)
    elif method in ("lora", "full"):
        model.save_pretrained(directory, state_dict=state_dict)
        if method == "full" and tokenizer is not None:
            tokenizer.save_pretrained(directory)
    else:
        raise ValueError(f"unknown method {method!r}")
    info = {"method": method, "base_model": os.path.relpath(Path(base_model_dir).resolve(), directory.resolve())}
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


def checkpoint_info(directory) -> dict:
    """The method and the absolute base-model path recorded with a checkpoint."""
    directory = Path(directory)
    path = directory / INFO_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a checkpoint written by finetune.py")
    info = json.loads(path.read_text())
    info["base_model"] = str((directory / info["base_model"]).resolve())
    return info


def load_checkpoint(base_model, directory, method: str):
    """Apply a saved adapter checkpoint (pesc or lora) to ``base_model``.

    A ``full`` checkpoint is a whole model: load it with ``from_pretrained`` instead.
    """
    if method == "pesc":
        return pesc_kernels.load_pesc(base_model, directory)
    if method == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, directory)
    raise ValueError(f"load_checkpoint applies pesc or lora adapters, not {method!r}")
