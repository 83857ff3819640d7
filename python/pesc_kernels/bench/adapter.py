"""Benchmark cases for the grouped GEMMs: the PESC adapter (the heart of PESC) and grouped_mm.

Adapter shapes: N = T*k in {8192, 32768}, d in {1024, 4096}, r in {64, 512},
E in {8, 16}; forward and forward+backward (gradients for x, w_down and w_up), gelu, scaling 1.
Rows are routed uniformly at random, so segments are unequal, as in training.

Candidates (the first is the baseline):
  reference         the per-expert torch.mm loop of pesc_kernels.reference (autograd through slices)
  torch_loop_fn     the best pure-PyTorch formulation we could write: an autograd.Function running
                    per-expert torch.mm into preallocated outputs, saving h, with segment bounds
                    read on the host outside the timed region
  padded_bmm        torch.bmm over segments padded to the longest one (padding indices precomputed
                    outside the timed region)
  torch_grouped_mm  torch._grouped_mm for both projections (this torch has it on CPU too; a
                    device/dtype it rejects is skipped)
  pesc              pesc_kernels.ops.adapter

flops counts the GEMMs (fwd 4 N d r, fwd+bwd 12 N d r); bytes_moved is what an ideal
implementation must move: x, y and h plus the weights forward; dy, x, h, dx, weights and weight
gradients backward. On CUDA the runner (python -m pesc_kernels.bench) divides the achieved
bandwidth by the device-to-device copy bandwidth it measures in the same run (the target:
>= 0.7 for the adapter forward at d=4096, r=64, where small r makes it memory-bound).
"""
from __future__ import annotations

import torch

from .. import ops, reference
from .case import Case, CaseRun, leaf

ADAPTER_SHAPES = [(N, d, r, E) for N in (8192, 32768) for d in (1024, 4096) for r in (64, 512) for E in (8, 16)]
# The CPU target shape, forward and forward+backward; the full grid takes hours on a small CPU.
QUICK = {(32768, 1024, 64, 8, False), (32768, 1024, 64, 8, True)}
GPU = {(8192, 4096, 64, 8), (32768, 4096, 64, 8), (32768, 4096, 512, 8)}  # scripts/gpu_check.sh
TINY_ADAPTER = (1024, 256, 16, 4)  # smoke-test size (make test runs the tiny set)
GROUPED_MM_SHAPES = [(4096, 512, 1024, 8), (8192, 1024, 2816, 8), (16384, 4096, 1024, 16)]  # first: quick


def random_offsets(N: int, E: int, seed: int = 0) -> torch.Tensor:
    """Segment bounds of N rows routed uniformly at random to E experts."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(torch.randint(0, E, (N,), generator=gen), minlength=E)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _TorchLoopAdapter(torch.autograd.Function):
    """Pure-PyTorch adapter with a hand-written backward that saves h (the torch_loop_fn baseline)."""

    @staticmethod
    def forward(ctx, x, w_down, w_up, segments, activation, scaling):
        act = reference.ACTIVATIONS[activation]
        h = x.new_empty(x.shape[0], w_down.shape[2])
        y = x.new_empty(x.shape[0], w_up.shape[2])
        for e, start, end in segments:
            torch.mm(x[start:end], w_down[e], out=h[start:end])
        a = act(h) * scaling
        for e, start, end in segments:
            torch.mm(a[start:end], w_up[e], out=y[start:end])
        ctx.save_for_backward(x, w_down, w_up, h)
        ctx.segments, ctx.activation, ctx.scaling = segments, activation, scaling
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w_down, w_up, h = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        segments, scaling = ctx.segments, ctx.scaling
        with torch.enable_grad():
            h_leaf = h.detach().requires_grad_(True)
            a = reference.ACTIVATIONS[ctx.activation](h_leaf) * scaling
        grad_a = torch.empty_like(h)
        for e, start, end in segments:
            torch.mm(grad_y[start:end], w_up[e].t(), out=grad_a[start:end])
        (grad_h,) = torch.autograd.grad(a, h_leaf, grad_a)
        a = a.detach()
        grad_x = torch.empty_like(x)
        grad_down, grad_up = torch.zeros_like(w_down), torch.zeros_like(w_up)
        for e, start, end in segments:
            torch.mm(grad_h[start:end], w_down[e].t(), out=grad_x[start:end])
            torch.mm(x[start:end].t(), grad_h[start:end], out=grad_down[e])
            torch.mm(a[start:end].t(), grad_y[start:end], out=grad_up[e])
        return grad_x, grad_down, grad_up, None, None, None


def _adapter_candidates(offsets, x, N, E, activation="gelu", scaling=1.0):
    """name -> adapter(x, w_down, w_up) for every formulation (host-side preparation done here)."""
    act = reference.ACTIVATIONS[activation]
    bounds = offsets.tolist()
    segments = [(e, bounds[e], bounds[e + 1]) for e in range(E) if bounds[e + 1] > bounds[e]]
    longest = max(end - start for _, start, end in segments)
    flat = torch.cat([e * longest + torch.arange(end - start) for e, start, end in segments]).to(x.device)
    ends32 = offsets[1:].to(device=x.device, dtype=torch.int32)
    offsets = offsets.to(x.device)

    def padded_bmm(x, w_down, w_up):
        padded = x.new_zeros(E * longest, x.shape[1]).index_copy(0, flat, x).view(E, longest, -1)
        y = torch.bmm(act(torch.bmm(padded, w_down)) * scaling, w_up)
        return y.view(E * longest, -1).index_select(0, flat)

    def torch_grouped_mm(x, w_down, w_up):
        h = torch._grouped_mm(x, w_down, offs=ends32)
        return torch._grouped_mm(act(h) * scaling, w_up, offs=ends32)

    candidates = {
        "reference": lambda x, w_down, w_up: reference.adapter(x, w_down, w_up, offsets, activation, scaling),
        "torch_loop_fn": lambda x, w_down, w_up: _TorchLoopAdapter.apply(x, w_down, w_up, segments, activation,
                                                                         scaling),
        "padded_bmm": padded_bmm,
        "pesc": lambda x, w_down, w_up: ops.adapter(x, w_down, w_up, offsets, activation, scaling),
    }
    if _grouped_mm_works(x, E):
        candidates["torch_grouped_mm"] = torch_grouped_mm
    return candidates


def _grouped_mm_works(x: torch.Tensor, E: int) -> bool:
    """Whether torch._grouped_mm runs (with a backward) for x's device and dtype in this torch."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.zeros(32, 16, device=x.device, dtype=x.dtype, requires_grad=True)
        w = torch.zeros(E, 16, 16, device=x.device, dtype=x.dtype, requires_grad=True)
        ends = torch.full((E,), 32, device=x.device, dtype=torch.int32)
        torch._grouped_mm(a, w, offs=ends).backward(torch.ones(32, 16, device=x.device, dtype=x.dtype))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def _timed(fn, inputs, upstream, backward):
    def run():
        args = [leaf(t) for t in inputs] if backward else inputs
        out = fn(*args)
        if backward:
            out.backward(upstream)
        return out

    return run


def _build_adapter(N, d, r, E, backward):
    def build(device, dtype):
        gen = torch.Generator().manual_seed(0)
        offsets = random_offsets(N, E)
        x = torch.randn(N, d, generator=gen).to(device=device, dtype=dtype)
        w_down = (torch.randn(E, d, r, generator=gen) * d ** -0.5).to(device=device, dtype=dtype)
        w_up = (torch.randn(E, r, d, generator=gen) * r ** -0.5).to(device=device, dtype=dtype)
        upstream = torch.randn(N, d, generator=gen).to(device=device, dtype=dtype)
        candidates = {name: _timed(fn, (x, w_down, w_up), upstream, backward)
                      for name, fn in _adapter_candidates(offsets, x, N, E).items()}
        elem = x.element_size()
        moved = (2 * N * d + N * r + 2 * E * d * r) * elem
        if backward:
            moved += (3 * N * d + N * r + 4 * E * d * r) * elem
        return CaseRun(candidates, bytes_moved=moved, flops=(12 if backward else 4) * N * d * r)

    return build


def _build_grouped_mm(N, K, M, E, backward):
    def build(device, dtype):
        gen = torch.Generator().manual_seed(1)
        offsets = random_offsets(N, E, seed=1)
        x = torch.randn(N, K, generator=gen).to(device=device, dtype=dtype)
        w = (torch.randn(E, K, M, generator=gen) * K ** -0.5).to(device=device, dtype=dtype)
        upstream = torch.randn(N, M, generator=gen).to(device=device, dtype=dtype)
        ends32 = offsets[1:].to(device=device, dtype=torch.int32)
        offsets = offsets.to(device)
        fns = {
            "reference": lambda x, w: reference.grouped_mm(x, w, offsets),
            "pesc": lambda x, w: ops.grouped_mm(x, w, offsets),
        }
        if _grouped_mm_works(x, E):
            fns["torch_grouped_mm"] = lambda x, w: torch._grouped_mm(x, w, offs=ends32)
        candidates = {name: _timed(fn, (x, w), upstream, backward) for name, fn in fns.items()}
        elem = x.element_size()
        moved = (N * K + N * M + E * K * M) * elem * (3 if backward else 1)
        return CaseRun(candidates, bytes_moved=moved, flops=(6 if backward else 2) * N * K * M)

    return build


def _mode(backward: bool) -> str:
    return "fwd+bwd" if backward else "fwd"


def cases() -> list[Case]:
    candidates = ("reference", "torch_loop_fn", "padded_bmm", "torch_grouped_mm", "pesc")
    cases = []
    for N, d, r, E in ADAPTER_SHAPES + [TINY_ADAPTER]:
        for backward in (False, True):
            if (N, d, r, E) == TINY_ADAPTER:
                if not backward:
                    continue
                sizes = ("tiny",)
            else:
                sizes = ("full", "quick") if (N, d, r, E, backward) in QUICK else ("full",)
                sizes += ("gpu",) if (N, d, r, E) in GPU else ()
            cases.append(Case(family="adapter", name=f"adapter {_mode(backward)}", shape=f"N={N} d={d} r={r} E={E}",
                              build=_build_adapter(N, d, r, E, backward), sizes=sizes, candidates=candidates))
    for N, K, M, E in GROUPED_MM_SHAPES:
        for backward in (False, True):
            quick = (N, K, M, E) == GROUPED_MM_SHAPES[0] and backward
            cases.append(Case(family="adapter", name=f"grouped_mm {_mode(backward)}", shape=f"N={N} K={K} M={M} E={E}",
                              build=_build_grouped_mm(N, K, M, E, backward),
                              sizes=(("full", "quick") if quick else ("full",))
                              + (("gpu",) if (N, K, M, E) == GROUPED_MM_SHAPES[1] else ()),
                              candidates=("reference", "torch_grouped_mm", "pesc")))
    return cases
