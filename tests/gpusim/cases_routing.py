"""Simulated-GPU cases of the grouped top-k routing launchers (routing/kernels.h): the DeepSeek-V3-style
router (softmax or sigmoid scores, a selection-only bias, group-limited top-k, routed scaling) and
its backward.

Oracle: the CPU kernels (torch.ops.pesc.*), which run the same per-token functions of
routing/math.h. Indices bitwise; weights and gradients within the tolerance rule of
tests/_helpers.py against float64 math for the CPU kernel's selection (the scores and the
renormalisation of routing/math.h in float64). Ids outside [0, E) in the backward (the CPU kernel
rejects them; CUDA cannot raise without a sync) contribute nothing, as routing/kernels.h says.
"""
from __future__ import annotations

import torch
from cases_gating import bad_ids
from compare import assert_bitwise, assert_close, assert_ran
from simcase import DTYPE_CODES, Case, out_like

F32, I32 = torch.float32, torch.int32
DT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
SCORE = {"softmax": 0, "sigmoid": 1}  # pesc::RouterScore
EPS = 1e-20  # kRoutingNormalizeEps


def make_logits(T, E, dtype, seed, special=False):
    """Router logits; with `special`, rows with exact ties, a NaN and +inf as well."""
    gen = torch.Generator().manual_seed(seed)
    logits = (2.0 * torch.randn(T, E, generator=gen, dtype=torch.float64)).to(dtype)
    if special and T >= 3 and E >= 4:
        logits[0] = 0.25  # every expert tied: the lower ids (and groups) win
        logits[1, E // 3] = float("nan")
        logits[2, E - 1] = float("inf")
    return logits


def scores64(logits, scoring):
    lg = logits.double()
    return torch.softmax(lg, dim=-1) if scoring == "softmax" else torch.sigmoid(lg)


def weights64(logits, indices, scoring, normalize, scaling):
    """routing/math.h's weights in float64 for the given selection; invalid ids have score 0."""
    E = logits.shape[1]
    ids = indices.long()
    valid = (ids >= 0) & (ids < E)
    u = torch.where(valid, scores64(logits, scoring).gather(-1, ids.clamp(0, max(E - 1, 0))), 0.0)
    if normalize:
        u = u / (u.sum(-1, keepdim=True) + EPS)
    return scaling * u


def _ints(dtype, T, E, k, scoring, num_groups, topk_groups, normalize):
    return {"dtype": DTYPE_CODES[dtype], "T": T, "E": E, "k": k, "num_groups": num_groups,
            "topk_groups": topk_groups, "score": SCORE[scoring], "normalize": int(normalize)}


def _cost(T, E, k, topk_groups):
    """Estimated simulated work in millions of instructions (one thread per token, each choice or
    group score recomputed from the logits per selection round), only used to balance the shards."""
    return 0.05 + -(-T // 32) * 32 * E * (topk_groups + 2 * k + 2) * 30 / 1e6


def case_name(op, T, E, k, dtype, scoring, bias, num_groups, topk_groups, normalize, scaling, tag=""):
    return (f"{op}_T{T}_E{E}_k{k}_G{num_groups}_{topk_groups}_{scoring}" + ("_bias" if bias else "")
            + ("" if normalize else "_raw") + (f"_x{scaling:g}".replace(".", "p") if scaling != 1.0 else "")
            + f"_{DT[dtype]}" + tag)


def grouped_topk_case(T, E, k, dtype, scoring="sigmoid", with_bias=True, num_groups=1, topk_groups=1,
                      normalize=True, scaling=1.0, seed=0, special=False):
    logits = make_logits(T, E, dtype, seed, special)
    bias = (0.1 * torch.randn(E, generator=torch.Generator().manual_seed(seed + 1))) if with_bias else None
    name = case_name("grouped_topk_gating", T, E, k, dtype, scoring, with_bias, num_groups, topk_groups, normalize,
                     scaling, "_special" if special else "")

    def check(result):
        assert_ran(result, name)
        weights = result.buffers["weights"].as_tensor(F32, (T, k))
        indices = result.buffers["indices"].as_tensor(I32, (T, k))
        cpu_weights, cpu_indices = torch.ops.pesc.grouped_topk_gating(logits, k, scoring, bias, num_groups,
                                                                      topk_groups, normalize, scaling)
        assert_bitwise(indices, cpu_indices, name + " indices")
        ref = weights64(logits, cpu_indices, scoring, normalize, scaling)
        assert_close(weights, cpu_weights, ref, name + " weights")

    return Case(name, "grouped_topk_gating", _ints(dtype, T, E, k, scoring, num_groups, topk_groups, normalize),
                {"logits": logits, "bias": bias, "weights": out_like((T, k), F32), "indices": out_like((T, k), I32)},
                check, floats={"scaling": scaling}, cost=_cost(T, E, k, topk_groups))


def grouped_topk_backward_case(T, E, k, dtype, scoring="sigmoid", num_groups=1, topk_groups=1, normalize=True,
                               scaling=1.0, seed=0, corrupt_ids=False):
    logits = make_logits(T, E, dtype, seed)
    bias = 0.1 * torch.randn(E, generator=torch.Generator().manual_seed(seed + 1))
    _, indices = torch.ops.pesc.grouped_topk_gating(logits, k, scoring, bias, num_groups, topk_groups, normalize,
                                                    scaling)
    if corrupt_ids:
        indices = bad_ids(indices, E, seed)
    grad_weights = torch.randn(T, k, generator=torch.Generator().manual_seed(seed + 3))
    name = case_name("grouped_topk_gating_backward", T, E, k, dtype, scoring, False, num_groups, topk_groups,
                     normalize, scaling, "_bad_ids" if corrupt_ids else "")

    def check(result):
        assert_ran(result, name)
        grad = result.buffers["grad_logits"].as_tensor(dtype, (T, E))
        leaf = logits.double().requires_grad_(True)
        loss = (weights64(leaf, indices, scoring, normalize, scaling) * grad_weights.double()).sum()
        ref = torch.autograd.grad(loss, leaf)[0] if loss.requires_grad else torch.zeros(T, E, dtype=torch.float64)
        if corrupt_ids:  # the CPU kernel rejects such ids; the correctly rounded float64 math stands in
            cpu = ref.to(dtype)
        else:
            cpu = torch.ops.pesc.grouped_topk_gating_backward(grad_weights, logits, indices, scoring, normalize,
                                                              scaling)
        assert_close(grad, cpu, ref, name + " grad_logits")

    # the glue passes num_groups = topk_groups = 1: the backward reads the selection from `indices`
    return Case(name, "grouped_topk_gating_backward", _ints(dtype, T, E, k, scoring, 1, 1, normalize),
                {"grad_weights": grad_weights, "logits": logits, "indices": indices,
                 "grad_logits": out_like((T, E), dtype)},
                check, floats={"scaling": scaling}, cost=_cost(T, E, k, 0))


def cases():
    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out += [
            # DeepSeek-V3's router in small: sigmoid, bias, 4 groups of which 2 are eligible, scaling
            grouped_topk_case(7, 8, 2, dtype, "sigmoid", True, 4, 2, True, 2.5, seed=1),
            # several groups kept, softmax scores, no renormalisation (DeepSeek-V2 style)
            grouped_topk_case(7, 60, 6, dtype, "softmax", False, 6, 3, False, 1.0, seed=2),
            grouped_topk_backward_case(7, 8, 2, dtype, "sigmoid", 4, 2, True, 2.5, seed=3),
            grouped_topk_backward_case(7, 60, 6, dtype, "softmax", 6, 3, False, 1.5, seed=4),
        ]
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    out += [
        # DeepSeek-V3's own shape: 256 experts in 8 groups, 4 kept, k = 8
        grouped_topk_case(7, 256, 8, f32, "sigmoid", True, 8, 4, True, 2.5, seed=5),
        grouped_topk_backward_case(7, 256, 8, bf16, "sigmoid", 8, 4, True, 2.5, seed=6),
        # two blocks of 128 tokens
        grouped_topk_case(130, 16, 4, f16, "sigmoid", True, 4, 2, True, 1.0, seed=7),
        grouped_topk_backward_case(130, 16, 4, f32, "softmax", 4, 2, True, 1.0, seed=8),
        # one group (plain top-k with bias), one expert, one token, no token
        grouped_topk_case(7, 60, 3, f32, "softmax", True, 1, 1, True, 1.0, seed=9),
        grouped_topk_case(7, 1, 1, f32, "softmax", False, 1, 1, True, 1.0, seed=10),
        grouped_topk_case(7, 1, 1, bf16, "sigmoid", True, 1, 1, False, 2.0, seed=11),
        grouped_topk_case(1, 60, 60, f16, "sigmoid", False, 3, 3, True, 1.0, seed=12),
        grouped_topk_case(0, 8, 2, f32, "sigmoid", True, 4, 2, True, 1.0, seed=13),
        grouped_topk_backward_case(7, 1, 1, f16, "sigmoid", 1, 1, False, 2.0, seed=14),
        grouped_topk_backward_case(7, 1, 1, f32, "softmax", 1, 1, True, 1.0, seed=15),
        grouped_topk_backward_case(0, 8, 2, f32, "softmax", 1, 1, True, 1.0, seed=16),
        # ties, NaN and +inf; groups whose scores tie
        grouped_topk_case(7, 16, 3, f32, "sigmoid", False, 4, 2, True, 1.0, seed=17, special=True),
        grouped_topk_case(7, 16, 3, bf16, "softmax", False, 4, 3, False, 1.0, seed=18, special=True),
        # ids outside [0, E) contribute nothing
        grouped_topk_backward_case(7, 16, 4, f32, "sigmoid", 4, 2, True, 2.5, seed=19, corrupt_ids=True),
        grouped_topk_backward_case(7, 16, 4, f16, "softmax", 4, 2, False, 1.0, seed=20, corrupt_ids=True),
    ]
    return out
