"""Benchmark cases for the routing ops: top-k gating plus the balancing loss (the training path).

Shapes: T in {4096, 16384}, E in {8, 16, 64}, k in {2, 4}; forward and forward+backward; two cases
per shape, the drop-in ops ``topk_gating`` + ``load_balancing_loss`` and the fused
``topk_gating_with_balancing_loss`` (what the PESC layer calls in training).

fwd+bwd seeds the gradients of the weights (a fixed random ``[T, k]`` tensor) and of the loss (1)
with ``torch.autograd.backward``, so only the routing's own work is timed.

Candidates (the first is the baseline):
  lean_torch  the fastest plain-PyTorch formulation we know (:func:`lean_torch_routing`): fp32
              softmax, topk, renormalisation, f from a bincount of the ids, P the mean probability
  reference   the readable pesc_kernels.reference functions
  pesc        pesc_kernels.ops
"""
from __future__ import annotations

import torch

from .. import ops, reference
from .case import Case, CaseRun, leaf

CANDIDATES = ("lean_torch", "reference", "pesc")


def lean_torch_routing(logits: torch.Tensor, k: int, normalize: bool = True):
    """Top-k routing and the Switch balancing loss as a strong PyTorch user writes them.

    The same math as ``ops.topk_gating_with_balancing_loss(logits, k, normalize)`` (no mask):
    the gradient reaches the logits through the weights and through P; ``bincount`` carries none.
    Ranking the probabilities instead of the logits can only differ on ties after rounding.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = probs.topk(k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    num_experts = logits.shape[-1]
    fraction = torch.bincount(indices.flatten(), minlength=num_experts).float() / indices.numel()
    loss = num_experts * (fraction * probs.mean(dim=0)).sum()
    return weights, indices, loss


def _separate_ops(api):
    def route(x, k):
        weights, indices = api.topk_gating(x, k)
        return weights, indices, api.load_balancing_loss(x, indices)

    return route


def _fused_op(api):
    return lambda x, k: api.topk_gating_with_balancing_loss(x, k)


def _step(route, logits, k, upstream, backward):
    loss_grad = torch.ones((), device=upstream.device)

    def run():
        x = leaf(logits) if backward else logits
        weights, _, balance = route(x, k)
        if backward:
            # Upstream gradients seeded directly, as y.backward(upstream) in the other families.
            torch.autograd.backward((weights, balance), (upstream, loss_grad))
        return weights, balance

    return run


def _build(T, E, k, backward, fused):
    def build(device, dtype):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(T, E, generator=gen).to(device=device, dtype=dtype)
        upstream = torch.randn(T, k, generator=gen).to(device)
        ours = _fused_op(ops) if fused else _separate_ops(ops)
        candidates = {
            "lean_torch": _step(lean_torch_routing, logits, k, upstream, backward),
            "reference": _step(_fused_op(reference) if fused else _separate_ops(reference), logits, k, upstream,
                               backward),
            "pesc": _step(ours, logits, k, upstream, backward),
        }
        elem = logits.element_size()
        # Logits read once per pass (the separate ops make two forward and two backward passes),
        # weights + indices written, grad_weights read and grad_logits written in the backward.
        passes = 1 if fused else 2
        moved = T * E * elem * passes + T * k * 8
        if backward:
            moved += T * E * elem * (passes + 1) + T * k * 12
        return CaseRun(candidates, bytes_moved=moved)

    return build


def cases() -> list[Case]:
    cases = []
    for fused in (False, True):
        op = "topk_gating_with_balancing_loss" if fused else "topk_gating+load_balancing_loss"
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
                            name=f"{op} {'fwd+bwd' if backward else 'fwd'}",
                            shape=f"T={T} E={E} k={k}",
                            build=_build(T, E, k, backward, fused),
                            sizes=sizes,
                            candidates=CANDIDATES,
                        ))
    return cases
