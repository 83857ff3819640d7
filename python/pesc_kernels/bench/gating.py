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

DeepSeek-V3's router, ``grouped_topk_gating`` (E=256, k=8, 8 groups of which 4 are kept, sigmoid
scores, a selection bias, routed scaling 2.5; T in {4096, 16384}, fwd and fwd+bwd), has the same
candidates; its ``lean_torch`` (:func:`lean_torch_grouped_routing`) is the formulation of
transformers' DeepseekV3 router with the masked scores at -inf.
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


def lean_torch_grouped_routing(logits: torch.Tensor, k: int, bias: torch.Tensor, num_groups: int,
                               topk_groups: int, scaling: float):
    """Group-limited sigmoid routing (DeepSeek-V3) as a strong PyTorch user writes it.

    The same math as ``ops.grouped_topk_gating(logits, k, "sigmoid", bias, num_groups,
    topk_groups, True, scaling)``: each group is scored by the sum of its two best biased scores,
    the best ``topk_groups`` groups are eligible, the weights are the unbiased scores of the k
    best eligible experts, renormalised and scaled.
    """
    T, E = logits.shape
    scores = torch.sigmoid(logits.float())
    choices = scores.detach() + bias
    group_scores = choices.view(T, num_groups, E // num_groups).topk(2, dim=-1).values.sum(dim=-1)
    kept = group_scores.topk(topk_groups, dim=-1).indices
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
    eligible = group_mask.unsqueeze(-1).expand(T, num_groups, E // num_groups).reshape(T, E)
    indices = choices.masked_fill(~eligible, float("-inf")).topk(k, dim=-1).indices
    weights = scores.gather(1, indices)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, indices


# DeepSeek-V3's router configuration: E, k, num_groups, topk_groups, routed scaling.
DEEPSEEK_V3_ROUTER = (256, 8, 8, 4, 2.5)


def _separate_ops(api):
    def route(x, k):
        weights, indices = api.topk_gating(x, k)
        return weights, indices, api.load_balancing_loss(x, indices)

    return route


def _fused_op(api):
    return lambda x, k: api.topk_gating_with_balancing_loss(x, k)


def _step(route, logits, upstream, backward):
    """One timed call: route(x) returns the differentiable outputs, upstream holds their gradients."""

    def run():
        x = leaf(logits) if backward else logits
        outputs = route(x)
        if backward:
            # Upstream gradients seeded directly, as y.backward(upstream) in the other families.
            torch.autograd.backward(outputs, upstream)
        return outputs

    return run


def _weights_and_loss(route, k):
    def outputs(x):
        weights, _, balance = route(x, k)
        return weights, balance

    return outputs


def _build(T, E, k, backward, fused):
    def build(device, dtype):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(T, E, generator=gen).to(device=device, dtype=dtype)
        upstream = torch.randn(T, k, generator=gen).to(device)
        grads = (upstream, torch.ones((), device=device))
        routes = {
            "lean_torch": lean_torch_routing,
            "reference": _fused_op(reference) if fused else _separate_ops(reference),
            "pesc": _fused_op(ops) if fused else _separate_ops(ops),
        }
        candidates = {name: _step(_weights_and_loss(route, k), logits, grads, backward)
                      for name, route in routes.items()}
        elem = logits.element_size()
        # Logits read once per pass (the separate ops make two forward and two backward passes),
        # weights + indices written, grad_weights read and grad_logits written in the backward.
        passes = 1 if fused else 2
        moved = T * E * elem * passes + T * k * 8
        if backward:
            moved += T * E * elem * (passes + 1) + T * k * 12
        return CaseRun(candidates, bytes_moved=moved)

    return build


def _build_grouped(T, backward):
    E, k, num_groups, topk_groups, scaling = DEEPSEEK_V3_ROUTER

    def build(device, dtype):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(T, E, generator=gen).to(device=device, dtype=dtype)
        bias = (0.1 * torch.randn(E, generator=gen)).to(device)
        upstream = torch.randn(T, k, generator=gen).to(device)
        args = (k, "sigmoid", bias, num_groups, topk_groups, True, scaling)
        routes = {
            "lean_torch": lambda x: lean_torch_grouped_routing(x, k, bias, num_groups, topk_groups, scaling),
            "reference": lambda x: reference.grouped_topk_gating(x, *args),
            "pesc": lambda x: ops.grouped_topk_gating(x, *args),
        }
        candidates = {name: _step(lambda x, route=route: route(x)[:1], logits, (upstream,), backward)
                      for name, route in routes.items()}
        # Logits read (again in the backward), weights + indices written; grad_weights read and
        # grad_logits written in the backward.
        moved = T * E * logits.element_size() + T * k * 8
        if backward:
            moved += 2 * T * E * logits.element_size() + T * k * 8
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
    for T, sizes in ((512, ("tiny",)), (4096, ("full",)), (16384, ("full", "quick", "gpu"))):
        for backward in (False, True):
            cases.append(Case(
                family="gating",
                name=f"grouped_topk_gating {'fwd+bwd' if backward else 'fwd'}",
                shape=f"T={T} E=256 k=8 groups=8/4 sigmoid",
                build=_build_grouped(T, backward),
                sizes=sizes,
                candidates=CANDIDATES,
            ))
    return cases
