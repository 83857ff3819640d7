"""Benchmark cases for the PESC layer: its overhead over the dense FFN it wraps (docs/design.md, "Performance").

Every candidate does one training step, forward + backward with a random upstream gradient, on the
same SwiGLU FFN (Llama's MLP: ``down(silu(gate(x)) * up(x))``) and the same input (which requires
grad, as inside a model):

- ``dense``: the FFN alone (the baseline);
- ``reference``: ``PESCMoE(impl="reference")`` (the PESC dataflow on the reference ops);
- ``camelidae``: ``PESCMoE(impl="camelidae")`` (the official PESC forward);
- ``sparsetral``: ``PESCMoE(impl="sparsetral")`` (every expert on every token);
- ``pesc``: ``PESCMoE()`` (the ops: compiled kernels where they exist).

The headline is the overhead ratio ``time(variant) / time(dense)``. In the ``FFN trainable`` cases
the FFN weights receive gradients in every variant, so all variants do identical FFN work and the
ratio isolates the mixture of adapters (the setting of the overhead targets, FLOP floor
~1.03 and ~1.49 at the two CPU shapes). ``FFN frozen`` is PESC's real training setting (only input
gradients through the FFN); its FLOP floor is ~1.05 and ~1.73.

The runner (and benchmarks/bench_layer.py) also record each step's peak memory (bench/memory.py),
reported relative to the dense FFN's.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import PESCConfig
from ..layer import PESCMoE
from .case import Case, CaseRun, leaf

CANDIDATES = ("dense", "reference", "camelidae", "sparsetral", "pesc")
_IMPLS = {"reference": "reference", "camelidae": "camelidae", "sparsetral": "sparsetral", "pesc": "ops"}

# (d, F, T, E, k, r): the two CPU target shapes, plus a small one for smoke runs.
HEADLINE = (1024, 2816, 4096, 8, 2, 64)
SPARSETRAL = (1024, 2816, 4096, 16, 4, 512)
TINY = (256, 704, 512, 8, 2, 64)
# The GPU target shape (a Mistral-7B-sized FFN). It joins the full set only when a GPU is visible:
# on a CPU one step of it takes minutes.
GPU = (4096, 14336, 8192, 8, 2, 64)


class SwiGLU(nn.Module):
    """Llama's MLP, ``down(silu(gate(x)) * up(x))``, without biases."""

    def __init__(self, d: int, F: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, F, bias=False)
        self.up_proj = nn.Linear(d, F, bias=False)
        self.down_proj = nn.Linear(F, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def _dense_ffn(d: int, F: int, device, dtype) -> nn.Module:
    return SwiGLU(d, F).to(device=device, dtype=dtype)


def _train_step(module: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    params = [p for p in module.parameters() if p.requires_grad]

    def run():
        y = module(leaf(x))
        y.backward(upstream)
        for p in params:  # every iteration allocates its gradients afresh, as a training step does
            p.grad = None
        return y

    return run


def _flops(d, F, T, E, k, r, ffn_trainable) -> int:
    """PESC layer fwd+bwd: FFN (3 GEMMs; input grads, plus weight grads if trainable), router, adapters."""
    ffn = 2 * T * d * F * 3 * (3 if ffn_trainable else 2)
    router = 2 * T * d * E * 3
    adapters = 2 * T * k * d * r * 2 * 3
    return ffn + router + adapters


def _build(d, F, T, E, k, r, ffn_trainable):
    def build(device, dtype):
        torch.manual_seed(0)
        ffn = _dense_ffn(d, F, device, dtype)
        config = PESCConfig(num_experts=E, top_k=k, adapter_dim=r)
        layers = {name: PESCMoE(ffn, d, config, impl=impl).train() for name, impl in _IMPLS.items()}
        with torch.no_grad():  # trained-looking adapters (w_up is zero at init); identical in every variant
            layers["pesc"].w_up.normal_(0.0, 0.02)
        for name in ("reference", "camelidae", "sparsetral"):
            layers[name].load_state_dict(layers["pesc"].state_dict())
        ffn.requires_grad_(ffn_trainable)  # the layers froze it; this sets the same state for all variants
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(T, d, generator=gen).to(device=device, dtype=dtype)
        upstream = torch.randn(T, d, generator=gen).to(device=device, dtype=dtype)
        candidates = {"dense": _train_step(ffn, x, upstream)}
        candidates.update({name: _train_step(layers[name], x, upstream) for name in CANDIDATES[1:]})
        return CaseRun(candidates, flops=_flops(d, F, T, E, k, r, ffn_trainable))

    return build


def cases() -> list[Case]:
    cases = []
    plan = [(TINY, True, ("tiny",)), (HEADLINE, True, ("quick", "full")), (SPARSETRAL, True, ("full",)),
            (HEADLINE, False, ("full",)), (SPARSETRAL, False, ("full",))]
    if torch.cuda.is_available():
        plan.append((GPU, True, ("full", "gpu")))
    for (d, F, T, E, k, r), trainable, sizes in plan:
        cases.append(Case(
            family="layer",
            name=f"PESC layer fwd+bwd (FFN {'trainable' if trainable else 'frozen'})",
            shape=f"d={d} F={F} T={T} E={E} k={k} r={r}",
            build=_build(d, F, T, E, k, r, trainable),
            sizes=sizes,
            candidates=CANDIDATES,
        ))
    return cases
