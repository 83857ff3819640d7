"""Benchmark cases for the routing ops: top-k gating plus the balancing loss (the training path).

Shapes: T in {4096, 16384}, E in {8, 16, 64}, k in {2, 4}; forward and forward+backward.
"""
from __future__ import annotations

import torch

from .. import ops, reference
from .case import Case, CaseRun, leaf


def _gating_and_balance(impl, logits, k, upstream, backward):
    def run():
        x = leaf(logits) if backward else logits
        weights, indices = impl.topk_gating(x, k)
        loss = (weights * upstream).sum() + impl.load_balancing_loss(x, indices)
        if backward:
            loss.backward()
        return loss

    return run


def _build(T, E, k, backward):
    def build(device, dtype):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(T, E, generator=gen).to(device=device, dtype=dtype)
        upstream = torch.randn(T, k, generator=gen).to(device)
        candidates = {
            "reference": _gating_and_balance(reference, logits, k, upstream, backward),
            "pesc": _gating_and_balance(ops, logits, k, upstream, backward),
        }
        elem = logits.element_size()
        # Ours reads logits (twice with the loss) and writes weights + indices (+ grad_logits).
        moved = T * E * elem * (2 + (2 if backward else 0)) + T * k * 8 * (2 if backward else 1)
        return CaseRun(candidates, bytes_moved=moved)

    return build


def cases() -> list[Case]:
    cases = []
    for T in (4096, 16384):
        for E in (8, 16, 64):
            for k in (2, 4):
                for backward in (False, True):
                    quick = T == 16384 and E == 8 and k == 2
                    sizes = ("full", "quick") if quick else ("full",)
                    if T == 4096 and E == 8 and k == 2:
                        sizes = sizes + ("tiny",)
                    if T == 16384 and k == 2 and E in (8, 64):
                        sizes = sizes + ("gpu",)
                    cases.append(Case(
                        family="gating",
                        name=f"topk_gating+load_balancing_loss {'fwd+bwd' if backward else 'fwd'}",
                        shape=f"T={T} E={E} k={k}",
                        build=_build(T, E, k, backward),
                        sizes=sizes,
                    ))
    return cases
