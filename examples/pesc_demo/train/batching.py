"""Deterministic, rank-sharded batch streams.

Every epoch shuffles the item indices with a generator seeded by (seed, epoch), identically on all
ranks. Each step takes the next ``batch_size * world_size`` indices as the global batch, and rank r
keeps slice r of it, so ranks see disjoint data and the run is reproducible for a given world size.
An epoch's tail that does not fill a global batch carries over into the next epoch's order, so no
item is skipped.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .encoding import Encoded, collate


def index_stream(n_items: int, seed: int) -> Iterator[int]:
    """Item indices forever: a fresh seeded permutation per epoch."""
    if n_items <= 0:
        raise ValueError("cannot draw batches from an empty data set")
    epoch = 0
    while True:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        yield from torch.randperm(n_items, generator=generator).tolist()
        epoch += 1


def batch_stream(items: list[Encoded], batch_size: int, pad_token_id: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's padded batches (``batch_size`` conversations each), forever."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = index_stream(len(items), seed)
    while True:
        global_batch = [next(indices) for _ in range(batch_size * world_size)]
        mine = global_batch[rank * batch_size:(rank + 1) * batch_size]
        yield collate([items[i] for i in mine], pad_token_id)
