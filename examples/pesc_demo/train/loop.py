"""The training loop shared by dense pre-training and the three fine-tuning methods.

Per step: forward with labels (a crafted PESC model adds its router losses to ``outputs.loss``),
backward, gradient clipping at 1.0 over the trainable parameters, AdamW step, LR schedule step.
Logged per step, averaged over ranks: ``loss``, the cross-entropy over answer tokens recomputed from
the logits (the figure the methods are compared on), ``router_loss`` = ``outputs.loss - loss`` (the
weighted balancing/z losses, 0 for dense methods), the learning rate and the token throughput
(non-padding tokens of all ranks per second of wall time).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .encoding import IGNORE_INDEX


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not IGNORE_INDEX (fp32)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX)


def warmup_cosine(optimizer, steps: int, warmup_fraction: float = 0.05, final_fraction: float = 0.1):
    """Linear warm-up, then cosine decay to ``final_fraction`` of the peak learning rate."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model, lr: float, weight_decay: float = 0.0):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _mean_over_ranks(values: list[float], device) -> list[float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return (tensor / torch.distributed.get_world_size()).tolist()


def train(model, batches, *, steps: int, lr: float, device, desc: str = "train", show_progress: bool = True,
          weight_decay: float = 0.0) -> dict:
    """Run ``steps`` optimizer steps over ``batches``; ``model(**batch)`` returns ``(loss, logits)``
    (see :func:`pesc_demo.train.distributed.wrap`).

    Returns {"history": [per-step dicts], "seconds": wall time, "tokens": all ranks' tokens,
    "tokens_per_s": tokens / seconds}.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"train: steps must be at least 1, got {steps}")
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = warmup_cosine(optimizer, steps)
    trainable = optimizer.param_groups[0]["params"]
    model.train()
    history, tokens, start = [], 0.0, time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not show_progress, dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        batch = {name: tensor.to(device, non_blocking=True) for name, tensor in next(batches).items()}
        loss, logits = model(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            lm = answer_loss(logits.detach(), batch["labels"])
        mean_lm, router, step_tokens = _mean_over_ranks(
            [lm.item(), loss.item() - lm.item(), float(batch["attention_mask"].sum())], device)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        tokens += step_tokens * world
        elapsed = time.perf_counter() - start
        history.append({"step": step + 1, "loss": mean_lm, "router_loss": router,
                        "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / elapsed})
        bar.set_postfix(loss=f"{mean_lm:.3f}", tok_s=f"{tokens / elapsed:.0f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    return {"history": history, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def final_loss(history: list[dict], fraction: float = 0.1) -> float:
    """Mean answer loss over the last ``fraction`` of the steps (at least one): less noisy than the last step."""
    tail = history[-max(1, int(len(history) * fraction)):]
    return sum(h["loss"] for h in tail) / len(tail)
