"""The stages of examples/finetune.py: data, dense pre-training, fine-tuning one method, evaluation.

Each stage is a function of plain arguments so tests and other scripts can run them directly:

- :func:`load_data`: the synthetic splits, or user JSONL (with an optional held-out file).
- :func:`pretrain_dense`: build the embedded tiny Llama and train all of it briefly on the generic
  pre-training split (answers only, as in fine-tuning: the random task inputs carry no learnable
  signal), giving "the dense model", saved with its tokenizer.
- :func:`finetune`: load the dense model, apply a method (pesc / lora / full), train with the prompt
  masked, evaluate held-out exact match, save the checkpoint, metrics.json and the loss curve.
- :func:`evaluate_base`: held-out exact match of the dense model itself (the "before" row).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

import pesc_kernels

from ..data import heldout_split, load_jsonl, pretrain_split, train_split
from . import distributed, methods, report
from .batching import batch_stream
from .encoding import encode_all
from .evaluate import exact_match
from .loop import final_loss, train
from .models import load_base
from .tiny_llama import build_tiny_llama
from .tokenizer import ByteTokenizer


@dataclass
class RunSettings:
    """What every stage shares: where it runs and how it trains."""

    device: torch.device
    dtype: torch.dtype
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    batch_size: int = 16
    seed: int = 0
    max_length: int = 256
    eval_batch_size: int = 64
    max_new_tokens: int | None = None
    show_progress: bool = True
    fsdp: bool = False
    load_in_4bit: bool = False


@dataclass
class Data:
    train: list  # Conversations for fine-tuning
    heldout: list  # Conversations for exact-match evaluation
    pretrain: list  # Conversations for the embedded model's dense pre-training (empty for user data)
    source: str


def load_data(*, train_path=None, eval_path=None, eval_fraction: float = 0.1, train_per_task: int = 1000,
              heldout_per_task: int = 50, pretrain_per_task: int = 1000, seed: int = 0) -> Data:
    """User JSONL when ``train_path`` is given, else the synthetic splits.

    Without ``eval_path``, a seeded ``eval_fraction`` of the user records is held out (and not trained on).
    """
    if train_path is None:
        if eval_path is not None:
            raise ValueError("a held-out file (eval_path) needs a training file (train_path) as well")
        return Data(
            train=[ex.to_conversation() for ex in train_split(train_per_task, seed, heldout_per_task=heldout_per_task)],
            heldout=[ex.to_conversation() for ex in heldout_split(heldout_per_task, seed)],
            pretrain=[ex.to_conversation() for ex in pretrain_split(pretrain_per_task, seed, heldout_per_task)],
            source="synthetic",
        )
    records = load_jsonl(train_path)
    if eval_path is not None:
        return Data(records, load_jsonl(eval_path), [], f"{train_path} (held out: {eval_path})")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"--eval-fraction must be in (0, 1), got {eval_fraction}")
    order = list(range(len(records)))
    random.Random(f"{seed}:eval-split").shuffle(order)
    n_eval = max(1, round(len(records) * eval_fraction))
    if n_eval >= len(records):
        raise ValueError(f"{train_path} has {len(records)} records: too few to hold out {eval_fraction:.0%}")
    held = set(order[:n_eval])
    return Data([r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)], [],
                f"{train_path} ({n_eval} records held out)")


def pretrain_dense(data: Data, settings: RunSettings, out_dir, *, steps: int, lr: float) -> Path:
    """Pre-train the embedded tiny Llama densely; rank 0 saves it (and its tokenizer) to ``out_dir``."""
    out_dir = Path(out_dir)
    if not data.pretrain:
        raise ValueError("dense pre-training needs the synthetic pre-training split (it is empty for user data)")
    tokenizer = ByteTokenizer()
    model = build_tiny_llama(tokenizer, settings.seed).to(settings.device, settings.dtype)
    encoded = encode_all(tokenizer, data.pretrain, settings.max_length)
    batches = batch_stream(encoded, settings.batch_size, tokenizer.pad_token_id, settings.seed + 1,
                           settings.dist.rank, settings.dist.world_size)
    wrapped = distributed.wrap(model, settings.dist, settings.device, fsdp=settings.fsdp)
    result = train(wrapped, batches, steps=steps, lr=lr, device=settings.device, desc="dense pre-training",
                   show_progress=settings.show_progress and settings.dist.is_main, weight_decay=0.01)
    state = distributed.full_state_dict(wrapped)
    with distributed.consolidated(wrapped) as whole:
        if settings.dist.is_main:
            whole.save_pretrained(out_dir, state_dict=state)
            tokenizer.save_pretrained(out_dir)
            report.write_json(out_dir / "pretrain_metrics.json", {
                "steps": steps, "lr": lr, "batch_size": settings.batch_size, "world_size": settings.dist.world_size,
                "final_loss": final_loss(result["history"]), "seconds": result["seconds"],
                "tokens_per_s": result["tokens_per_s"], "history": result["history"],
                "parameters": sum(p.numel() for p in model.parameters())})
    distributed.barrier(settings.dist)
    return out_dir


def evaluate_base(base_dir, tokenizer, data: Data, settings: RunSettings) -> dict:
    """Held-out exact match of the un-fine-tuned base model."""
    model = load_base(base_dir, settings.device, settings.dtype, settings.load_in_4bit)
    return exact_match(model, tokenizer, data.heldout, device=settings.device,
                       max_new_tokens=settings.max_new_tokens, batch_size=settings.eval_batch_size)


@dataclass
class MethodSpec:
    """A fine-tuning method and its hyper-parameters."""

    method: str
    steps: int
    lr: float
    pesc: object = None  # PESCConfig for method "pesc"
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: tuple = methods.DEFAULT_LORA_TARGETS

    def describe(self) -> dict:
        if self.method == "pesc":
            return {"pesc": self.pesc.to_dict()}
        if self.method == "lora":
            return {"lora": {"rank": self.lora_rank, "alpha": self.lora_alpha if self.lora_alpha is not None
                             else self.lora_rank, "dropout": self.lora_dropout, "targets": list(self.lora_targets)}}
        return {}


def finetune(spec: MethodSpec, base_dir, tokenizer, data: Data, settings: RunSettings, out_dir) -> dict:
    """Fine-tune the base model with one method; returns its summary row plus "history" (see metrics.json)."""
    out_dir = Path(out_dir)
    torch.manual_seed(settings.seed)  # identical adapter initialisation on every rank
    model = load_base(base_dir, settings.device, settings.dtype, settings.load_in_4bit)
    model = methods.apply_method(model, spec.method, pesc=spec.pesc, lora_rank=spec.lora_rank,
                                 lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                                 lora_targets=spec.lora_targets)
    if not settings.load_in_4bit:
        model = model.to(settings.device, settings.dtype)
    elif spec.method == "pesc":  # 4-bit FFN weights give no float dtype to copy: use the compute dtype
        for parameter in pesc_kernels.pesc_parameters(model):
            parameter.data = parameter.data.to(settings.device, settings.dtype)
    params = methods.parameter_summary(model, spec.method)
    encoded = encode_all(tokenizer, data.train, settings.max_length)
    batches = batch_stream(encoded, settings.batch_size, tokenizer.pad_token_id, settings.seed + 2,
                           settings.dist.rank, settings.dist.world_size)
    wrapped = distributed.wrap(model, settings.dist, settings.device, fsdp=settings.fsdp)
    result = train(wrapped, batches, steps=spec.steps, lr=spec.lr, device=settings.device,
                   desc=f"fine-tune ({spec.method})", show_progress=settings.show_progress and settings.dist.is_main)
    state = distributed.full_state_dict(wrapped) if spec.method != "pesc" else None
    with distributed.consolidated(wrapped) as whole:
        heldout = exact_match(whole, tokenizer, data.heldout, device=settings.device,
                              max_new_tokens=settings.max_new_tokens, batch_size=settings.eval_batch_size)
        digests = distributed.gather_objects(distributed.trainable_digest(whole))
        if settings.dist.is_main:
            methods.save_checkpoint(whole, spec.method, out_dir / "checkpoint", base_dir, tokenizer, state)
    if len(set(digests)) != 1 and settings.dist.is_main:
        print(f"warning: the ranks' trainable weights differ after training (sha256 per rank: {digests})")
    row = {"name": spec.method, "method": spec.method, **params, "final_loss": final_loss(result["history"]),
           "tokens_per_s": result["tokens_per_s"], "train_seconds": result["seconds"], "heldout": heldout}
    if settings.dist.is_main:
        report.write_json(out_dir / "metrics.json", {
            **row, **spec.describe(), "steps": spec.steps, "lr": spec.lr, "batch_size": settings.batch_size,
            "world_size": settings.dist.world_size, "seed": settings.seed, "device": str(settings.device),
            "dtype": str(settings.dtype).replace("torch.", ""), "fsdp": settings.fsdp,
            "load_in_4bit": settings.load_in_4bit, "data": data.source, "trainable_sha256_per_rank": digests,
            "history": result["history"]})
        report.plot_losses({spec.method: result["history"]}, out_dir / "loss.png",
                           title=f"{spec.method}: answer loss per step")
    distributed.barrier(settings.dist)
    return {**row, "history": result["history"]}
