"""grouped_topk_gating (sigmoid/softmax scores, selection bias, group-limited top-k, scaling) against the reference.

Covers values and gradients over odd shapes (T = 0 and 1, E = 1, k = E, one group, groups of two,
many groups) and all dtypes, every option on and off, ties to the lower index (experts and groups),
NaN rows, the equality with topk_gating in its plain configuration, and the selection of
transformers' DeepSeek-V3 router. The generic contract (opcheck, torch.compile, determinism, bad
input, mixed devices, fallback) is tests/test_op_contract.py.
"""
import pytest
import torch
from _helpers import assert_close_to_reference, router_bad_input_tensors
from conftest import FLOAT_DTYPES
from op_info import BadInput, OpInfo, bad_inputs_of, gen, router_inputs

from pesc_kernels import ops, reference
from pesc_kernels.bench.gating import DEEPSEEK_V3_ROUTER, lean_torch_grouped_routing

# (T, E, k, num_groups, topk_groups)
SHAPES = [(0, 8, 2, 4, 2), (1, 1, 1, 1, 1), (1, 16, 16, 1, 1), (37, 16, 3, 4, 2), (64, 64, 6, 8, 3),
          (129, 256, 8, 8, 4), (50, 12, 5, 6, 3), (33, 10, 2, 5, 5)]
OPTIONS = [("sigmoid", True, True, 2.5), ("sigmoid", False, False, 1.0), ("softmax", True, False, 1.0),
           ("softmax", False, True, 0.5)]


def make_logits(T, E, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed + 31 * T + E)
    return (2 * torch.randn(T, E, generator=gen, dtype=torch.float64)).to(dtype).to(device)


def weights_and_grad(fn, logits, upstream, *args):
    leaf = logits.detach().clone().requires_grad_(True)
    weights, indices = fn(leaf, *args)
    (grad,) = torch.autograd.grad((weights.double() * upstream).sum(), leaf) if weights.numel() else (
        torch.zeros_like(leaf),)
    return weights.detach(), indices, grad


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o[0]}-bias{o[1]}-norm{o[2]}-x{o[3]}")
@pytest.mark.parametrize("T,E,k,groups,topk_groups", SHAPES, ids=[f"T{s[0]}-E{s[1]}-k{s[2]}-G{s[3]}" for s in SHAPES])
def test_matches_reference(T, E, k, groups, topk_groups, options, dtype, device):
    scoring, with_bias, normalize, scaling = options
    logits = make_logits(T, E, dtype, device)
    bias = (0.1 * torch.randn(E, generator=torch.Generator().manual_seed(E))).to(device) if with_bias else None
    upstream = torch.randn(T, k, dtype=torch.float64, device=device)
    args = (k, scoring, bias, groups, topk_groups, normalize, scaling)
    w, idx, grad = weights_and_grad(ops.grouped_topk_gating, logits, upstream, *args)
    w_ref, idx_ref, grad_ref = weights_and_grad(reference.grouped_topk_gating, logits, upstream, *args)
    w64, idx64, grad64 = weights_and_grad(reference.grouped_topk_gating, logits.double(), upstream, *args)
    case = f"T={T} E={E} k={k} G={groups}/{topk_groups} {options} {dtype}"
    assert w.dtype == torch.float32 and idx.dtype == torch.int32 and w.shape == idx.shape == (T, k), case
    assert torch.equal(idx, idx_ref) and torch.equal(idx, idx64.to(idx.device)), case
    assert_close_to_reference(w, w_ref, w64, name="weights " + case)
    assert grad.dtype == dtype, case
    assert_close_to_reference(grad, grad_ref, grad64, name="grad " + case)


def test_plain_configuration_equals_topk_gating(device):
    logits = make_logits(300, 24, torch.float32, device, seed=3).requires_grad_()
    for normalize in (True, False):
        w, idx = ops.grouped_topk_gating(logits, 4, normalize=normalize)
        w_top, idx_top = ops.topk_gating(logits, 4, normalize)
        assert torch.equal(idx, idx_top)
        torch.testing.assert_close(w, w_top, rtol=1e-6, atol=1e-7)
        g = torch.randn_like(w)
        torch.testing.assert_close(torch.autograd.grad(w, logits, g)[0], torch.autograd.grad(w_top, logits, g)[0],
                                   rtol=1e-5, atol=1e-7)


def test_ties_go_to_the_lower_index(device):
    # Experts 1, 2, 5 and 6 tie; of the groups of two, {2, 3} and {4, 5} tie on their two-best sums.
    logits = torch.tensor([[0.0, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.0]], device=device)
    w, idx = ops.grouped_topk_gating(logits, 2, "sigmoid", None, 1, 1, False)
    assert idx.tolist() == [[1, 2]]
    _, idx = ops.grouped_topk_gating(logits, 2, "sigmoid", None, 4, 1, False)
    assert idx.tolist() == [[2, 3]]  # groups {2,3} and {4,5} tie at sigmoid(1) + sigmoid(0.5): group 1 wins
    # A selection-only bias changes the choice but not the weights.
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0], device=device)
    w, idx = ops.grouped_topk_gating(logits, 1, "sigmoid", bias, 1, 1, False)
    assert idx.tolist() == [[7]]
    torch.testing.assert_close(w, torch.sigmoid(logits[:, 7:]))


def test_nan_rows_give_distinct_valid_ids(device):
    logits = make_logits(4, 16, torch.float32, device)
    logits[1, 3] = float("nan")
    logits[2] = float("nan")
    for scoring in ("softmax", "sigmoid"):
        w, idx = ops.grouped_topk_gating(logits, 6, scoring, None, 4, 2)
        for row in idx.tolist():
            assert len(set(row)) == 6 and all(0 <= e < 16 for e in row)
        assert torch.isnan(w[2]).all()


def test_selects_what_transformers_deepseek_v3_router_selects(device):
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    config = transformers.DeepseekV3Config(hidden_size=16, n_routed_experts=32, num_experts_per_tok=6, n_group=8,
                                           topk_group=3, routed_scaling_factor=2.5, norm_topk_prob=True)
    router = DeepseekV3TopkRouter(config).to(device)
    torch.manual_seed(0)
    with torch.no_grad():
        router.weight.normal_(0.0, 0.5)
        router.e_score_correction_bias.normal_(0.0, 0.1)
    x = torch.randn(500, 16, device=device)
    logits, w_hf, idx_hf = router(x)
    w, idx = ops.grouped_topk_gating(logits, 6, "sigmoid", router.e_score_correction_bias, 8, 3, True, 2.5)
    order_hf = idx_hf.argsort(dim=-1)
    assert torch.equal(idx.long().sort(dim=-1).values, idx_hf.sort(dim=-1).values)
    torch.testing.assert_close(w.gather(1, idx.long().argsort(dim=-1)), w_hf.gather(1, order_hf), rtol=1e-5,
                               atol=1e-6)


def test_lean_torch_baseline_matches_the_op():
    """The benchmark's plain-PyTorch DeepSeek-V3 router computes what the op computes (random
    logits: no ties), forward and gradient."""
    E, k, num_groups, topk_groups, scaling = DEEPSEEK_V3_ROUTER
    logits = torch.randn(777, E, generator=gen(3))
    bias = torch.randn(E, generator=gen(4)).mul(0.1)
    upstream = torch.randn(777, k, generator=gen(5))
    results = []
    for route in (lambda x: lean_torch_grouped_routing(x, k, bias, num_groups, topk_groups, scaling),
                  lambda x: ops.grouped_topk_gating(x, k, "sigmoid", bias, num_groups, topk_groups, True, scaling)):
        x = logits.clone().requires_grad_(True)
        weights, indices = route(x)
        (grad,) = torch.autograd.grad((weights * upstream).sum(), x)
        results.append((weights.detach(), indices, grad))
    (w, i, grad), (w_ops, i_ops, grad_ops) = results
    assert torch.equal(i.to(torch.int32), i_ops)  # both rank best first
    for a, b in ((w, w_ops), (grad, grad_ops)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())


# ------------------------------------------------------------------ the op table rows of this family
# Run by tests/test_op_contract.py (see tests/op_info.py).
def _grouped_topk_samples(device, dtype):
    logits, _, _ = router_inputs(37, 16, 3, dtype, device)
    bias = torch.randn(16, generator=gen(5)).mul(0.1).to(device)
    return [(logits, 3, "softmax", None, 1, 1, True, 1.0), (logits, 3, "sigmoid", bias, 4, 2, True, 2.5),
            (logits, 4, "sigmoid", bias, 8, 3, False, 1.0), (logits, 8, "softmax", bias, 2, 1, False, 0.5),
            (logits[:1], 16, "sigmoid", None, 1, 1, True, 1.0), (logits[:0], 2, "softmax", None, 4, 4, True, 1.0),
            (logits, 3)]


def _grouped_topk_backward_samples(device, dtype):
    samples = []
    for scoring, normalize, scaling in (("softmax", True, 1.0), ("sigmoid", True, 2.5), ("sigmoid", False, 1.5),
                                        ("softmax", False, 1.0)):
        logits, _, _ = router_inputs(37, 16, 3, dtype, device, seed=2)
        weights, indices = torch.ops.pesc.grouped_topk_gating(logits.detach(), 3, scoring, None, 4, 2, normalize,
                                                              scaling)
        samples.append((torch.randn_like(weights), logits.detach(), indices, scoring, normalize, scaling))
    return samples


def _grouped_topk_bad_inputs(device):
    logits, idx, bad_ids = router_bad_input_tensors(device)
    return {
        "grouped_topk_gating": [
            BadInput((logits[0], 2), ValueError, r"pesc.grouped_topk_gating: logits must be a 2-D tensor"),
            BadInput((logits, 2, "tanh"), ValueError, "unknown scoring 'tanh'; valid: softmax, sigmoid"),
            BadInput((logits, 2, "sigmoid", None, 3), ValueError, "num_groups must be >= 1 and divide E=8, got 3"),
            BadInput((logits, 2, "sigmoid", None, 4, 5), ValueError, r"topk_groups must be in \[1, num_groups=4\]"),
            BadInput((logits, 5, "sigmoid", None, 4, 2), ValueError,
                     r"k must be in \[1, topk_groups \* E / num_groups = 4\], got k=5"),
            BadInput((logits, 2, "sigmoid", torch.zeros(7, device=device)), ValueError,
                     r"bias.shape\[0\] must equal the number of experts E of logits \(8\)"),
            BadInput((logits, 2, "sigmoid", torch.zeros(8, device=device).half()), TypeError, "bias must be Float"),
            BadInput((logits, 2, "sigmoid", None, 1, 1, True, float("inf")), ValueError, "scaling must be finite"),
        ],
        "grouped_topk_gating_backward": [
            BadInput((torch.zeros(5, 3, device=device), logits, idx, "sigmoid", True, 1.0), ValueError,
                     "grad_weights must have the shape of indices"),
            BadInput((torch.zeros(5, 2, device=device), logits, idx.long(), "sigmoid", True, 1.0), TypeError,
                     "indices must be Int"),
            BadInput((torch.zeros(5, 2, device=device), logits, bad_ids, "sigmoid", True, 1.0), IndexError,
                     r"indices holds expert id 8 at \[3, 1\]", reads_data=True),
        ],
    }


def _large_grouped_topk(device, dtype):
    logits = router_inputs(9000, 64, 4, dtype, device, seed=3)[0]
    bias = torch.randn(64, generator=gen(6)).mul(0.1).to(device)
    return (logits, 6, "sigmoid", bias, 8, 4, True, 2.5)


OP_TABLE = [
    OpInfo("grouped_topk_gating", _grouped_topk_samples, bad_inputs_of(_grouped_topk_bad_inputs, "grouped_topk_gating"),
           public=ops.grouped_topk_gating, reference=reference.grouped_topk_gating, thread_invariant=True,
           large_sample=_large_grouped_topk),
    OpInfo("grouped_topk_gating_backward", _grouped_topk_backward_samples,
           bad_inputs_of(_grouped_topk_bad_inputs, "grouped_topk_gating_backward"), thread_invariant=True),
]
