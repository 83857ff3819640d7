"""Greedy generation and held-out exact-match accuracy.

Prompts are the chat-template rendering of every message before the answer plus the generation
prompt, tokenized exactly as in training (:func:`~pesc_demo.train.encoding.prompt_ids`), left
padded and decoded greedily until an end-of-turn token. An answer counts as correct when the decoded
text, with special tokens removed and surrounding whitespace stripped, equals the reference answer
stripped the same way. Under torch.distributed each rank generates a strided share of the prompts
and the results are gathered, so every rank returns the same report.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from .distributed import gather_objects
from .encoding import left_padded_prompts, prompt_ids


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos plus any end-of-turn ids in the model's generation config."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def unused_vocab_ids(model, tokenizer) -> list[int]:
    """Ids the model can emit but the tokenizer cannot decode (the embedding is padded, e.g. to a
    multiple of 8): generation suppresses them."""
    vocab = model.get_output_embeddings().weight.shape[0]
    return list(range(len(tokenizer), vocab))


def is_exact_match(text: str, reference: str) -> bool:
    """The exact-match criterion: equal after stripping surrounding whitespace."""
    return text.strip() == reference.strip()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, device,
             batch_size: int = 64) -> list[str]:
    """Greedy continuations of tokenized prompts, decoded without special tokens."""
    was_training = model.training
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    suppress = {"suppress_tokens": unused} if (unused := unused_vocab_ids(model, tokenizer)) else {}
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = {k: v.to(device) for k, v in left_padded_prompts(prompts[start:start + batch_size],
                                                                 tokenizer.pad_token_id).items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id, **suppress)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    model.train(was_training)
    return texts


def exact_match(model, tokenizer, conversations, *, device, max_new_tokens: int | None = None,
                batch_size: int = 64, keep_samples: int = 3) -> dict:
    """Held-out exact match overall and per task, plus a few sample generations per task.

    ``max_new_tokens`` defaults to the longest reference answer's token count plus 8.
    """
    if not conversations:
        raise ValueError("exact_match needs at least one conversation")
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(c.answer, add_special_tokens=False)) for c in conversations) + 8
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    mine = list(range(rank, len(conversations), world))
    texts = generate(model, tokenizer, [prompt_ids(tokenizer, conversations[i]) for i in mine],
                     max_new_tokens=max_new_tokens, device=device, batch_size=batch_size)
    results = sorted(pair for part in gather_objects(list(zip(mine, texts))) for pair in part)
    correct: dict[str, list[bool]] = defaultdict(list)
    samples: dict[str, list[dict]] = defaultdict(list)
    for index, text in results:
        conversation = conversations[index]
        task = conversation.task or "all"
        ok = is_exact_match(text, conversation.answer)
        correct[task].append(ok)
        if len(samples[task]) < keep_samples:
            samples[task].append({"prompt": conversation.prompt_messages[-1]["content"],
                                  "expected": conversation.answer, "generated": text, "correct": ok})
    total = sum(sum(v) for v in correct.values())
    return {
        "exact_match": total / len(results),
        "n": len(results),
        "per_task": {task: sum(v) / len(v) for task, v in correct.items()},
        "samples": dict(samples),
    }
