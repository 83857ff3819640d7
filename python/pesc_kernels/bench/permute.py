"""Benchmark cases for the permutation ops: dispatch (permute) then weighted combine (unpermute).

One iteration is the MoE data movement around the experts, with the expert itself left out:
``x_perm, row_map, _ = permute(x, indices, E)``, then ``y = unpermute(x_perm, row_map, weights, x)``
(the permuted rows stand in for the expert outputs and x is the residual, as in PESCMoE where the
shared FFN output is both permuted and added back), and for fwd+bwd ``y.backward(upstream)`` with
gradients to x and the routing weights.

Candidates (the first is the baseline): ``lean_torch``, the short plain-PyTorch formulation a user
would write (a stable argsort of the flat ids, one ``index_select`` of the token rows, and the
weighted sum of each token's k rows plus the residual), ``reference`` (pesc_kernels.reference,
written for readability) and ``pesc``.

Shapes: T in {4096, 16384}, d in {1024, 4096}, (E, k) in {(8, 2), (64, 8)}.
"""
from __future__ import annotations

import torch

from .. import ops, reference
from .case import Case, CaseRun, leaf


class LeanTorch:
    """Dispatch and combine in a few lines of plain PyTorch (the ``lean_torch`` candidate)."""

    @staticmethod
    def permute(x, indices, num_experts):
        T, k = indices.shape
        order = indices.reshape(-1).argsort(stable=True)  # slots grouped by expert, in (t, j) order
        x_perm = x.index_select(0, order // k)
        row_map = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        return x_perm, row_map.view(T, k), None

    @staticmethod
    def unpermute(y_perm, row_map, weights, residual):
        T, k = row_map.shape
        rows = y_perm.index_select(0, row_map.reshape(-1)).view(T, k, -1)
        return residual + (rows * weights.to(y_perm.dtype).unsqueeze(-1)).sum(1)


def _dispatch_combine(impl, x, indices, weights, num_experts, upstream, backward):
    def run():
        hidden = leaf(x) if backward else x
        w = leaf(weights) if backward else weights
        x_perm, row_map, _ = impl.permute(hidden, indices, num_experts)
        y = impl.unpermute(x_perm, row_map, w, hidden)
        if backward:
            y.backward(upstream)
        return y

    return run


def bytes_moved(T, d, k, elem, backward):
    """Bytes our kernels must read plus write per iteration (rows dominate; int/fp32 routing data added).

    forward:  permute reads x, writes x_perm; unpermute reads x_perm and the residual, writes y.
    backward: unpermute_backward reads grad_y and x_perm (for grad_weights), writes grad_x_perm;
              permute's backward reads grad_x_perm and writes grad_x.
    """
    N = T * k
    rows = (3 * T + 2 * N) if not backward else (3 * T + 2 * N) + (2 * T + 3 * N)
    routing = N * 4 * 2 + N * 4 * 2  # indices in, row_map out; row_map and weights in
    if backward:
        routing += N * 4 * 4  # row_map twice, weights in, grad_weights out
    return rows * d * elem + routing


def _build(T, d, E, k, backward):
    def build(device, dtype):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(T, d, generator=gen).to(device=device, dtype=dtype)
        _, indices = reference.topk_gating(torch.randn(T, E, generator=gen), k)
        weights = torch.rand(T, k, generator=gen).to(device)
        upstream = torch.randn(T, d, generator=gen).to(device=device, dtype=dtype)
        indices = indices.to(device)
        candidates = {
            "lean_torch": _dispatch_combine(LeanTorch, x, indices, weights, E, upstream, backward),
            "reference": _dispatch_combine(reference, x, indices, weights, E, upstream, backward),
            "pesc": _dispatch_combine(ops, x, indices, weights, E, upstream, backward),
        }
        return CaseRun(candidates, bytes_moved=bytes_moved(T, d, k, x.element_size(), backward))

    return build


def cases() -> list[Case]:
    cases = []
    for T in (4096, 16384):
        for d in (1024, 4096):
            for E, k in ((8, 2), (64, 8)):
                for backward in (False, True):
                    sizes = ("full",)
                    if T == 16384 and d == 1024 and E == 8:  # the CPU target shape
                        sizes += ("quick",)
                    if T == 4096 and d == 1024 and E == 8:
                        sizes += ("tiny",)
                    if T == 16384 and d == 4096:  # memory-bound: the GPU bandwidth-fraction target
                        sizes += ("gpu",)
                    cases.append(Case(
                        family="permute",
                        name=f"permute+unpermute {'fwd+bwd' if backward else 'fwd'}",
                        shape=f"T={T} d={d} E={E} k={k}",
                        build=_build(T, d, E, k, backward),
                        candidates=("lean_torch", "reference", "pesc"),
                        sizes=sizes,
                    ))
    return cases
