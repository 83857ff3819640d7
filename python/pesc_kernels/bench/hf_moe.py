"""Benchmark cases for Hugging Face MoE blocks on the pesc backend (docs/design.md, "Hugging Face MoE models").

One Mixtral sparse MoE block (``MixtralSparseMoeBlock``: router + experts, Hugging Face's weight
layout) per case: the forward alone (under torch.no_grad, as in inference) or forward+backward
with gradients for the input and every parameter, as inside a training step. Candidates (the
first is the baseline):

  hf_grouped_mm  transformers' default experts implementation ("grouped_mm": torch's grouped GEMM
                 on sorted rows, the gate/up split and combine in plain PyTorch)
  hf_eager       transformers' eager loop over the experts
  pesc           the same block after pesc_kernels.integrations.transformers.patch_moe: the
                 experts on the pesc backend and the router on pesc.ops.topk_gating

All three share the parameters' values and the input. Shapes (T tokens, d hidden, F expert
intermediate size, E experts, k per token): Mixtral-like T=2048 d=1024 F=1408 E=16 k=4 and
fine-grained T=2048 d=1024 F=352 E=64 k=6 (the CPU targets), a quick T=512 d=512 F=704 E=8 k=2 and
a tiny smoke-test size. Needs transformers (the [hf] extra); without it the family has no cases.
"""
from __future__ import annotations

import copy
import importlib.util

import torch

from .case import Case, CaseRun, leaf

CANDIDATES = ("hf_grouped_mm", "hf_eager", "pesc")
MIXTRAL = (2048, 1024, 1408, 16, 4)
FINE_GRAINED = (2048, 1024, 352, 64, 6)
QUICK = (512, 512, 704, 8, 2)
TINY = (64, 64, 96, 4, 2)


def _blocks(T, d, F, E, k, device, dtype):
    """name -> a MixtralSparseMoeBlock with the same parameters, on its experts implementation."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from ..integrations.transformers import patch_moe

    config = MixtralConfig(hidden_size=d, intermediate_size=F, num_local_experts=E, num_experts_per_tok=k)
    torch.manual_seed(0)
    base = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        base.gate.weight.normal_(0.0, d ** -0.5)  # routing spread over the experts, as in a trained model
        base.experts.gate_up_proj.normal_(0.0, d ** -0.5)
        base.experts.down_proj.normal_(0.0, F ** -0.5)
    base = base.to(device=device, dtype=dtype).train()
    blocks = {}
    for name, implementation in (("hf_grouped_mm", "grouped_mm"), ("hf_eager", "eager"), ("pesc", None)):
        block = copy.deepcopy(base)
        if implementation is None:
            patch_moe(block)
        else:
            block.experts.config._experts_implementation = implementation
        blocks[name] = block
    return blocks


def _step(block, x, upstream, backward):
    params = list(block.parameters())

    def run():
        if not backward:
            with torch.no_grad():
                return block(x)
        y = block(leaf(x))
        y.backward(upstream)
        for p in params:  # every iteration allocates its gradients afresh, as a training step does
            p.grad = None
        return y

    return run


def _build(T, d, F, E, k, backward):
    def build(device, dtype):
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(1, T, d, generator=gen).to(device=device, dtype=dtype)
        upstream = torch.randn(1, T, d, generator=gen).to(device=device, dtype=dtype)
        blocks = _blocks(T, d, F, E, k, device, dtype)
        flops = 2 * T * d * E + 6 * T * k * d * F  # router + gate/up and down projections
        return CaseRun({name: _step(blocks[name], x, upstream, backward) for name in CANDIDATES},
                       flops=flops * (3 if backward else 1))

    return build


def cases() -> list[Case]:
    if importlib.util.find_spec("transformers") is None:
        return []
    plan = [(TINY, ("tiny",)), (QUICK, ("quick",)), (MIXTRAL, ("full",)), (FINE_GRAINED, ("full",))]
    cases = []
    for (T, d, F, E, k), sizes in plan:
        for backward in (False, True):
            cases.append(Case(family="hf_moe", name=f"Mixtral MoE block {'fwd+bwd' if backward else 'fwd'}",
                              shape=f"T={T} d={d} F={F} E={E} k={k}", build=_build(T, d, F, E, k, backward),
                              sizes=sizes, candidates=CANDIDATES))
    return cases
