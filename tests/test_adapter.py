"""Grouped GEMMs on expert segments (grouped_mm, adapter) and the gated activation against the reference.

Covers values and all gradients over odd segmentations (empty experts, one expert holding every row,
N = 0, E = 64 with N = 50, segments straddling 64-row tiles), d not a multiple of 8, ranks 1 to
1024 (both CUDA adapter paths: fused for r <= 128, two-pass above), every activation, all dtypes,
partial gradients (output_mask), non-contiguous inputs, and on CUDA offset clamping and TF32;
grouped_mm with output-major weights (w_transposed) and a per-expert bias, rows past offsets[E]
(dropped slots: zero outputs, no weight-gradient contribution), and gated_activation for every
activation in both layouts, its clamp edges and NaN. The generic contract (opcheck, torch.compile,
determinism, bad input, mixed devices, fallback) is tests/test_op_contract.py.
"""
import pytest
import torch
from _helpers import assert_close_to_reference
from conftest import FLOAT_DTYPES
from op_info import BadInput, OpInfo, bad_inputs_of, offsets_from_counts, randn, random_counts

from pesc_kernels import ops, reference

# name -> (rows per expert, d): the segmentations every op is checked on.
SEGMENTS = {
    "E1": ([37], 27),
    "empty_experts": ([0, 65, 0, 0, 130, 1, 0], 72),
    "one_expert_all_rows": ([0, 0, 200, 0], 40),
    "N0": ([0, 0, 0], 16),
    "E64_N50": (torch.bincount(torch.randint(0, 64, (50,), generator=torch.Generator().manual_seed(5)),
                               minlength=64).tolist(), 100),
    "tile_straddle": ([63, 64, 65, 1, 127], 130),
}
ACTIVATION_NAMES = ["gelu", "gelu_tanh", "silu", "relu", "identity"]
GATED_NAMES = ACTIVATION_NAMES + ["clamped_swiglu"]


def offsets_of(counts, device):
    return torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int64, device=device)


def make(shape, dtype, device, gen, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype).to(device)


def value_and_grads(fn, inputs, upstream):
    """fn(*inputs) and the gradients of sum(out * upstream) w.r.t. every input (zeros where unused)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    loss = (out.double() * upstream).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else [None] * len(leaves)
    return out.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def check_against_reference(ours, ref, inputs, upstream, case):
    """Values and gradients of `ours` vs `ref` in the inputs' dtype and vs `ref` in float64."""
    out, grads = value_and_grads(ours, inputs, upstream)
    out_ref, grads_ref = value_and_grads(ref, inputs, upstream)
    out64, grads64 = value_and_grads(ref, [t.double() for t in inputs], upstream)
    assert out.dtype == inputs[0].dtype and out.device == inputs[0].device, case
    assert_close_to_reference(out, out_ref, out64, name="value " + case)
    for i, (g, g_ref, g64) in enumerate(zip(grads, grads_ref, grads64)):
        assert g.dtype == inputs[i].dtype, case
        assert_close_to_reference(g, g_ref, g64, name=f"grad of input {i} " + case)


def adapter_inputs(counts, d, r, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed + 31 * r + d)
    N, E = sum(counts), len(counts)
    x = make((N, d), dtype, device, gen)
    w_down = make((E, d, r), dtype, device, gen, d ** -0.5)
    w_up = make((E, r, d), dtype, device, gen, r ** -0.5)
    upstream = torch.randn(N, d, generator=gen, dtype=torch.float64).to(device)
    return x, w_down, w_up, offsets_of(counts, device), upstream


def check_adapter(counts, d, r, dtype, device, activation, scaling, seed=0):
    x, w_down, w_up, offsets, upstream = adapter_inputs(counts, d, r, dtype, device, seed)
    case = f"counts={counts} d={d} r={r} {activation} scaling={scaling} {dtype}"
    check_against_reference(
        lambda a, b, c: ops.adapter(a, b, c, offsets, activation, scaling),
        lambda a, b, c: reference.adapter(a, b, c, offsets, activation, scaling),
        [x, w_down, w_up], upstream, case)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("segments", SEGMENTS, ids=str)
def test_grouped_mm_matches_reference(segments, dtype, device):
    counts, K = SEGMENTS[segments]
    for M in (1, 24, 77):
        gen = torch.Generator().manual_seed(M)
        N, E = sum(counts), len(counts)
        x = make((N, K), dtype, device, gen)
        w = make((E, K, M), dtype, device, gen, K ** -0.5)
        offsets = offsets_of(counts, device)
        upstream = torch.randn(N, M, generator=gen, dtype=torch.float64).to(device)
        check_against_reference(lambda a, b: ops.grouped_mm(a, b, offsets),
                                lambda a, b: reference.grouped_mm(a, b, offsets),
                                [x, w], upstream, f"{segments} K={K} M={M} {dtype}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("segments", SEGMENTS, ids=str)
def test_grouped_mm_output_major_with_bias_matches_reference(segments, dtype, device):
    """w [E, M, K] read transposed in place (no copy) and a per-expert bias, with every gradient."""
    counts, K = SEGMENTS[segments]
    for M in (1, 24, 77):
        gen = torch.Generator().manual_seed(M + 1)
        N, E = sum(counts), len(counts)
        x = make((N, K), dtype, device, gen)
        w = make((E, M, K), dtype, device, gen, K ** -0.5)
        bias = make((E, M), dtype, device, gen)
        offsets = offsets_of(counts, device)
        upstream = torch.randn(N, M, generator=gen, dtype=torch.float64).to(device)
        check_against_reference(lambda a, b, c: ops.grouped_mm(a, b, offsets, c, w_transposed=True),
                                lambda a, b, c: reference.grouped_mm(a, b, offsets, c, w_transposed=True),
                                [x, w, bias], upstream, f"{segments} K={K} M={M} {dtype} output-major + bias")


def test_output_major_weights_are_not_copied(device):
    """A transposed view is all grouped_mm reads: the same bits as the input-major weights, forward
    and backward, and no [E, K, M] copy is allocated (the peak stays far below the weights' size)."""
    counts, K, M = [300, 0, 212], 256, 384
    gen = torch.Generator().manual_seed(0)
    x = make((sum(counts), K), torch.float32, device, gen)
    w = make((3, K, M), torch.float32, device, gen, K ** -0.5)
    w_out = w.transpose(1, 2).contiguous()
    offsets = offsets_of(counts, device)
    torch.testing.assert_close(ops.grouped_mm(x, w_out, offsets, w_transposed=True), ops.grouped_mm(x, w, offsets))
    gy = make((sum(counts), M), torch.float32, device, gen)
    gx_t, gw_t, _ = torch.ops.pesc.grouped_mm_backward(gy, x, w_out, offsets, True, [True, True, False])
    gx, gw, _ = torch.ops.pesc.grouped_mm_backward(gy, x, w, offsets, False, [True, True, False])
    torch.testing.assert_close(gx_t, gx)
    torch.testing.assert_close(gw_t, gw.transpose(1, 2))
    if device.type == "cpu":
        from pesc_kernels.bench.memory import peak_memory_bytes

        peak = peak_memory_bytes(lambda: ops.grouped_mm(x, w_out, offsets, w_transposed=True), device)
        output_bytes = sum(counts) * M * 4
        assert peak < output_bytes + w.numel() * w.element_size() // 2, peak  # a copy of w would add all of it


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_rows_past_the_last_offset_are_dropped(dtype, device):
    """Rows offsets[E] .. N (slots permute dropped) belong to no expert: zero outputs, zero input
    gradients, no contribution to weight or bias gradients, in grouped_mm and adapter alike."""
    counts, K, M, dropped = [13, 0, 40, 7], 24, 10, 9
    gen = torch.Generator().manual_seed(2)
    N, E = sum(counts) + dropped, len(counts)
    x = make((N, K), dtype, device, gen)
    w = make((E, M, K), dtype, device, gen, K ** -0.5)
    bias = make((E, M), dtype, device, gen)
    offsets = offsets_of(counts, device)
    assert offsets[-1] == N - dropped
    upstream = torch.randn(N, M, generator=gen, dtype=torch.float64).to(device)
    check_against_reference(lambda a, b, c: ops.grouped_mm(a, b, offsets, c, w_transposed=True),
                            lambda a, b, c: reference.grouped_mm(a, b, offsets, c, w_transposed=True),
                            [x, w, bias], upstream, f"dropped rows {dtype}")
    leaves = [t.clone().requires_grad_() for t in (x, w, bias)]
    y = ops.grouped_mm(leaves[0], leaves[1], offsets, leaves[2], w_transposed=True)
    y.backward(upstream.to(dtype))
    assert torch.equal(y[N - dropped:], torch.zeros_like(y[N - dropped:]))
    assert torch.equal(leaves[0].grad[N - dropped:], torch.zeros_like(leaves[0].grad[N - dropped:]))
    # The weight and bias gradients equal those of the kept rows alone.
    kept = [t.clone().requires_grad_() for t in (x[: N - dropped], w, bias)]
    ops.grouped_mm(kept[0], kept[1], offsets, kept[2], w_transposed=True).backward(upstream[: N - dropped].to(dtype))
    assert torch.equal(leaves[1].grad, kept[1].grad) and torch.equal(leaves[2].grad, kept[2].grad)
    x_a, w_down, w_up, _, up_a = adapter_inputs([20, 0, 11], 16, 8, dtype, device)
    check_against_reference(lambda a, b, c: ops.adapter(a, b, c, offsets_of([20, 0, 6], device), "silu", 0.5),
                            lambda a, b, c: reference.adapter(a, b, c, offsets_of([20, 0, 6], device), "silu", 0.5),
                            [x_a, w_down, w_up], up_a, f"adapter dropped rows {dtype}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["concatenated", "interleaved"])
@pytest.mark.parametrize("activation", GATED_NAMES)
def test_gated_activation_matches_reference(activation, interleaved, dtype, device):
    for N, F in ((0, 5), (1, 1), (37, 13), (130, 64)):
        gen = torch.Generator().manual_seed(N + F)
        h = make((N, 2 * F), dtype, device, gen, scale=4.0)  # past the clamp limit of 3 below
        upstream = torch.randn(N, F, generator=gen, dtype=torch.float64).to(device)
        check_against_reference(lambda t: ops.gated_activation(t, activation, interleaved, 3.0, 1.5),
                                lambda t: reference.gated_activation(t, activation, interleaved, 3.0, 1.5),
                                [h], upstream, f"{activation} interleaved={interleaved} N={N} F={F} {dtype}")


def test_gated_activation_edges(device):
    """At and beyond the clamp bounds no gradient passes, as with torch.clamp; NaN stays NaN."""
    limit = 2.0
    gate = torch.tensor([-50.0, -limit, 0.0, limit, limit + 1e-3, 50.0, float("nan"), 1.0], device=device)
    up = torch.tensor([-limit - 1e-3, -limit, 0.5, limit, 3.0, -1.0, 1.0, float("nan")], device=device)
    for interleaved in (False, True):
        h = torch.stack([gate, up], 1).reshape(1, -1) if interleaved else torch.cat([gate, up])[None]
        for activation in GATED_NAMES:
            ours = h.clone().requires_grad_()
            ref = h.clone().requires_grad_()
            a = ops.gated_activation(ours, activation, interleaved, limit, 1.702)
            b = reference.gated_activation(ref, activation, interleaved, limit, 1.702)
            torch.testing.assert_close(a, b, equal_nan=True, msg=activation)
            a.backward(torch.ones_like(a))
            b.backward(torch.ones_like(b))
            torch.testing.assert_close(ours.grad, ref.grad, equal_nan=True, msg=activation)


def test_gated_activation_sigmoid_accuracy(device):
    """SwiGLU's sigmoid (a polynomial exp that vectorises on CPU) stays within a few ulp of fp64
    (the clamped variant also rounds alpha * gate to fp32 first, as torch does: ~1e-5 at |alpha g| ~ 70)."""
    gate = torch.linspace(-100.0, 100.0, 200001, device=device)
    h = torch.stack([gate, torch.ones_like(gate)], 1).reshape(1, -1)  # interleaved, up = 1
    for activation, expected, rtol in (
            ("silu", torch.nn.functional.silu(gate.double()), 4e-7),
            ("clamped_swiglu", reference.gated_activation(h.double(), "clamped_swiglu", True), 1e-5)):
        got = ops.gated_activation(h, activation, True).double().reshape(-1)
        expected = expected.reshape(-1)
        assert ((got - expected).abs() <= rtol * expected.abs() + 1e-30).all(), activation


def test_gated_activation_names():
    assert ops.GATED_ACTIVATIONS == tuple(GATED_NAMES)
    with pytest.raises(ValueError, match="unknown activation 'swish'; valid: " + ", ".join(GATED_NAMES) + "$"):
        ops.gated_activation(torch.zeros(2, 4), "swish")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("segments", SEGMENTS, ids=str)
def test_adapter_segments_match_reference(segments, dtype, device):
    counts, d = SEGMENTS[segments]
    for r in (1, 16, 64, 130):
        check_adapter(counts, d, r, dtype, device, "gelu", 0.5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("r", [1, 2, 8, 17, 32, 63, 64, 100, 128, 129, 256, 512, 1024])
def test_adapter_ranks_match_reference(r, dtype, device):
    check_adapter([70, 0, 131, 30], 72, r, dtype, device, "gelu", 0.25)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_adapter_activations_match_reference(activation, dtype, device):
    for r, scaling in ((24, 1.0), (24, 0.25), (200, 2.0)):
        check_adapter([90, 3, 0, 66], 40, r, dtype, device, activation, scaling)


def test_activations_match_the_compiled_list():
    assert ops.ACTIVATIONS == tuple(ACTIVATION_NAMES)
    x, w_down, w_up, offsets, _ = adapter_inputs([3, 2], 8, 4, torch.float32, "cpu")
    with pytest.raises(ValueError, match="unknown activation 'swish'; valid: " + ", ".join(ACTIVATION_NAMES) + "$"):
        ops.adapter(x, w_down, w_up, offsets, "swish")


def test_activation_edge_values(device):
    """Large, tiny and zero pre-activations behave as the torch activations do."""
    h = torch.tensor([[-100.0, -20.0, -1e-3, -0.0, 0.0, 1e-3, 20.0, 100.0]], device=device)
    d = h.shape[1]
    x = torch.eye(d, device=device)[:1]  # h = x @ w_down = w_down[0, 0]
    w_down = torch.zeros(1, d, d, device=device)
    w_down[0, 0] = h[0]
    w_up = torch.eye(d, device=device)[None]
    offsets = torch.tensor([0, 1], device=device)
    for activation in ACTIVATION_NAMES:
        ours = ops.adapter(x, w_down, w_up, offsets, activation)
        expected = reference.ACTIVATIONS[activation](h)
        torch.testing.assert_close(ours, expected, equal_nan=True, msg=activation)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_partial_gradients(dtype, device):
    """Only the gradients autograd asks for are computed (output_mask), and they are unchanged."""
    counts, d, r = [40, 0, 77], 48, 24
    x, w_down, w_up, offsets, upstream = adapter_inputs(counts, d, r, dtype, device)
    full = torch.ops.pesc.adapter_backward(upstream.to(dtype), x, w_down, w_up, offsets,
                                           torch.ops.pesc.adapter(x, w_down, w_up, offsets)[1], "gelu", 1.0,
                                           [True, True, True])
    for mask in ([True, False, False], [False, True, False], [False, False, True], [False, True, True]):
        leaves = [t.detach().clone().requires_grad_(m) for t, m in zip((x, w_down, w_up), mask)]
        ops.adapter(*leaves, offsets).backward(upstream.to(dtype))
        for leaf, m, g in zip(leaves, mask, full):
            assert (leaf.grad is not None) == m
            if m:
                assert torch.equal(leaf.grad, g), mask
    h = torch.ops.pesc.adapter(x, w_down, w_up, offsets)[1]
    masked = torch.ops.pesc.adapter_backward(upstream.to(dtype), x, w_down, w_up, offsets, h, "gelu", 1.0,
                                             [False, True, False])
    assert masked[0].shape == (0,) and masked[2].shape == (0,) and torch.equal(masked[1], full[1])
    w = torch.randn(3, d, 5, device=device, dtype=dtype)
    gx, gw, gb = torch.ops.pesc.grouped_mm_backward(torch.ones(sum(counts), 5, device=device, dtype=dtype), x, w,
                                                    offsets, False, [True, False, False])
    assert gx.shape == x.shape and gw.shape == (0,) and gb.shape == (0,)


def test_adapter_returns_pre_activation(device):
    x, w_down, w_up, offsets, _ = adapter_inputs([5, 0, 9], 16, 8, torch.float32, device)
    y, h = torch.ops.pesc.adapter(x.requires_grad_(), w_down, w_up, offsets, "silu", 0.5)
    torch.testing.assert_close(h, reference.grouped_mm(x.detach(), w_down, offsets))
    assert y.requires_grad and not h.requires_grad


def test_non_contiguous_inputs(device):
    counts, d, r = [33, 0, 20], 24, 8
    x, w_down, w_up, offsets, upstream = adapter_inputs(counts, d, r, torch.float32, device)
    x_t = x.t().contiguous().t()
    w_down_t = w_down.transpose(1, 2).contiguous().transpose(1, 2)
    w_up_t = w_up.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (x_t.is_contiguous() or w_down_t.is_contiguous() or w_up_t.is_contiguous())
    assert torch.equal(ops.adapter(x_t, w_down_t, w_up_t, offsets), ops.adapter(x, w_down, w_up, offsets))
    assert torch.equal(ops.grouped_mm(x_t, w_down_t, offsets), ops.grouped_mm(x, w_down, offsets))
    # A zero-stride upstream gradient (from .sum()) works too.
    for fn in (lambda a: ops.adapter(a, w_down, w_up, offsets), lambda a: ops.grouped_mm(a, w_down, offsets)):
        leaf = x.clone().requires_grad_(True)
        fn(leaf).sum().backward()
        expected = x.clone().requires_grad_(True)
        fn(expected).backward(torch.ones_like(fn(x)))
        assert torch.equal(leaf.grad, expected.grad)


# CUDA-only behaviour (offset clamping, TF32): collected only where a GPU is visible, like the
# CUDA cases of the device-parametrized tests.
if torch.cuda.is_available():

    def test_cuda_invalid_offsets_are_clamped():
        """CUDA cannot check offsets without a host sync: it clamps them (documented) and stays in bounds.

        c[0] = 0, c[e] = min(N, max(0, offsets[0..e])) for 0 < e <= E; rows c[E] .. N are dropped (zero).
        """
        N, d, r = 40, 16, 8
        x = torch.randn(N, d, device="cuda")
        w_down, w_up = torch.randn(4, d, r, device="cuda"), torch.randn(4, r, d, device="cuda")
        for bad, clamped in (([3, 10, 5, 50, 38], [0, 10, 10, 40, 40]), ([-4, -2, 20, 20, 7], [0, 0, 20, 20, 20])):
            offsets = torch.tensor(bad, device="cuda")
            expected = reference.adapter(x, w_down, w_up, torch.tensor(clamped, device="cuda"))
            torch.testing.assert_close(ops.adapter(x, w_down, w_up, offsets), expected)
            torch.testing.assert_close(ops.grouped_mm(x, w_down, offsets),
                                       reference.grouped_mm(x, w_down, torch.tensor(clamped, device="cuda")))
            torch.cuda.synchronize()


    def test_cuda_tf32_only_when_allowed():
        counts, d, r = [300, 0, 257], 512, 64
        x, w_down, w_up, offsets, _ = adapter_inputs(counts, d, r, torch.float32, "cuda")
        expected = reference.adapter(x.double(), w_down.double(), w_up.double(), offsets)
        previous = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            exact = ops.adapter(x, w_down, w_up, offsets)
            torch.backends.cuda.matmul.allow_tf32 = True
            tf32 = ops.adapter(x, w_down, w_up, offsets)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        scale = expected.abs().max().item()
        assert (exact.double() - expected).abs().max().item() <= 1e-5 * scale
        assert (tf32.double() - expected).abs().max().item() <= 1e-2 * scale


# ------------------------------------------------------------------ the op table rows of this family
# Run by tests/test_op_contract.py (see tests/op_info.py).
def _gemm_inputs(counts, d, r, dtype, device, seed=0):
    N, E = sum(counts), len(counts)
    x = randn((N, d), dtype, device, seed, grad=True)
    w_down = randn((E, d, r), dtype, device, seed + 1, d ** -0.5, grad=True)
    w_up = randn((E, r, d), dtype, device, seed + 2, r ** -0.5, grad=True)
    return x, w_down, w_up, offsets_from_counts(counts, device)


def _output_major(w):
    """The same weights stored output-major ([E, M, K], nn.Linear's and transformers' layout)."""
    return w.detach().transpose(1, 2).contiguous().requires_grad_(w.requires_grad)


def _dropped_offsets(offsets, dropped):
    """Offsets whose last segment ends `dropped` rows before N (rows permute dropped)."""
    out = offsets.clone()
    out[1:] = torch.minimum(out[1:], out[-1] - dropped)
    return out


def _grouped_mm_samples(device, dtype):
    x, w_down, _, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    x0, w0, _, offsets0 = _gemm_inputs([0, 0, 0], 16, 4, dtype, device)
    bias = randn((4, 12), dtype, device, 7, grad=True)
    return [(x, w_down, offsets), (x.detach(), w_down, offsets), (x0, w0, offsets0),
            (x, w_down, offsets, bias), (x, _output_major(w_down), offsets, None, True),
            (x, _output_major(w_down), _dropped_offsets(offsets, 3), bias, True)]


def _grouped_mm_backward_samples(device, dtype):
    x, w_down, _, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    grad_y = randn((30, 12), dtype, device, 5)
    x, w = x.detach(), w_down.detach()
    samples = [(grad_y, x, w, offsets, False, mask)
               for mask in ([True, True, True], [True, False, False], [False, True, False], [False, False, True])]
    return samples + [(grad_y, x, _output_major(w), offsets, True, [True, True, True]),
                      (grad_y, x, _output_major(w), _dropped_offsets(offsets, 3), True, [True, True, True])]


def _gated_samples(device, dtype):
    h = randn((29, 2 * 11), dtype, device, 3, scale=3.0, grad=True)  # beyond the clamp limit
    return [(h, act, interleaved, 2.5, 1.702) for act in reference.GATED_ACTIVATIONS
            for interleaved in (False, True)] + [(h[:0], "silu", False, 7.0, 1.702), (h[:1, :2],)]


def _gated_backward_samples(device, dtype):
    h = randn((29, 2 * 11), dtype, device, 3, scale=3.0)
    grad_a = randn((29, 11), dtype, device, 4)
    return [(grad_a, h, act, interleaved, 2.5, 1.702) for act in ("silu", "gelu", "clamped_swiglu")
            for interleaved in (False, True)]


def _adapter_samples(device, dtype):
    x, w_down, w_up, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    return [(x, w_down, w_up, offsets, act, scaling) for act, scaling in (("gelu", 1.0), ("relu", 0.5),
                                                                          ("identity", 1.0))]


def _adapter_backward_samples(device, dtype):
    x, w_down, w_up, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    x, w_down, w_up = x.detach(), w_down.detach(), w_up.detach()
    grad_y = randn(x.shape, dtype, device, 5)
    samples = []
    for act, scaling in (("gelu", 1.0), ("silu", 0.5)):
        h = torch.ops.pesc.adapter(x, w_down, w_up, offsets, act, scaling)[1]
        for mask in ([True, True, True], [False, True, True], [True, False, False]):
            samples.append((grad_y, x, w_down, w_up, offsets, h, act, scaling, mask))
    return samples


def _gemm_bad_inputs(device):
    x = torch.randn(10, 8, device=device)
    w = torch.randn(3, 8, 5, device=device)
    w_down = torch.randn(3, 8, 4, device=device)
    w_up = torch.randn(3, 4, 8, device=device)
    offs = torch.tensor([0, 4, 4, 10], device=device)
    h = torch.randn(10, 4, device=device)

    def adp(*args):
        return args + (("gelu", 1.0) if len(args) == 4 else ())

    return {
        "grouped_mm": [
            BadInput((x[0], w, offs), ValueError, "pesc.grouped_mm: x must be a 2-D tensor"),
            BadInput((x.int(), w, offs), TypeError, "x must be float32, float16 or bfloat16"),
            BadInput((x.double(), w.double(), offs), TypeError, "x must be float32, float16 or bfloat16"),
            BadInput((x, w[0], offs), ValueError, r"w must be a 3-D tensor \[E, K, M\]"),
            BadInput((x, w.half(), offs), TypeError, r"w must have the dtype of x \(Float\), got Half"),
            BadInput((x, w[:, :7], offs), ValueError, r"w.shape\[1\] must equal x.shape\[1\] \(K\) \(8\)"),
            BadInput((x, w[:0], offs[:1]), ValueError, r"w.shape\[0\] \(number of experts E\) must be >= 1"),
            BadInput((x, w, offs.int()), TypeError, "expert_offsets must be Long, got Int"),
            BadInput((x, w, offs[None]), ValueError, r"expert_offsets must be a 1-D tensor \[E\+1\]"),
            BadInput((x, w, offs[:3]), ValueError,
                     r"expert_offsets.shape\[0\] must equal the number of experts E plus 1 \(4\)"),
            BadInput((x, w, torch.tensor([1, 4, 4, 10], device=device)), ValueError,
                     r"expert_offsets\[0\] must be 0, got 1", reads_data=True),
            BadInput((x, w, torch.tensor([0, 4, 4, 11], device=device)), ValueError,
                     r"expert_offsets\[E=3\] must be <= the number of rows N=10 of x, got 11", reads_data=True),
            BadInput((x, w, offs, None, True), ValueError,
                     r"w.shape\[2\] must equal x.shape\[1\] \(K, w_transposed\) \(8\)"),
            BadInput((x, w, offs, torch.zeros(3, 4, device=device)), ValueError,
                     r"bias.shape\[1\] must equal the output width M of w \(5\)"),
            BadInput((x, w, offs, torch.zeros(2, 5, device=device)), ValueError,
                     r"bias.shape\[0\] must equal w.shape\[0\] \(E\)"),
            BadInput((x, w, offs, torch.zeros(3, 5, device=device).half()), TypeError,
                     r"bias must have the dtype of x"),
        ],
        "grouped_mm_backward": [
            BadInput((x[:, :4], x, w, offs, False, [True, True, True]), ValueError,
                     r"pesc.grouped_mm_backward: grad_y.shape\[1\] must equal the output width M of w"),
            BadInput((x[:, :5], x, w.transpose(1, 2), offs, False, [True, True, True]), ValueError,
                     r"w.shape\[1\] must equal x.shape\[1\] \(K\)"),
        ],
        "gated_activation": [
            BadInput((h[:, :3], "silu", False, 7.0, 1.702), ValueError,
                     r"pesc.gated_activation: h.shape\[1\] must be even"),
            BadInput((h, "swiglu", False, 7.0, 1.702), ValueError,
                     "unknown activation 'swiglu'; valid: gelu, gelu_tanh, silu, relu, identity, clamped_swiglu"),
            BadInput((h, "clamped_swiglu", True, -1.0, 1.702), ValueError, "limit must be >= 0, got -1"),
            BadInput((h.int(), "silu", False, 7.0, 1.702), TypeError, "h must be float32, float16 or bfloat16"),
        ],
        "gated_activation_backward": [
            BadInput((h[:, :3], h, "silu", False, 7.0, 1.702), ValueError,
                     r"grad_a.shape\[1\] must equal h.shape\[1\] / 2 \(F\) \(2\)"),
            BadInput((h[:, :2].half(), h, "silu", False, 7.0, 1.702), TypeError, "grad_a must have the dtype of h"),
        ],
        "adapter": [
            BadInput((x, w_down, w_up, offs, "tanh", 1.0), ValueError,
                     "pesc.adapter: unknown activation 'tanh'; valid:"),
            BadInput(adp(x, w_down[:, :6], w_up, offs), ValueError,
                     r"w_down.shape\[1\] must equal x.shape\[1\] \(d\)"),
            BadInput(adp(x, w_down, w_up[:, :3], offs), ValueError,
                     r"w_up.shape\[1\] must equal w_down.shape\[2\] \(r\)"),
            BadInput(adp(x, w_down, w_up[:, :, :7], offs), ValueError,
                     r"w_up.shape\[2\] must equal x.shape\[1\] \(d\)"),
            BadInput(adp(x, w_down, w_up[:2], offs), ValueError, r"w_up.shape\[0\] must equal w_down.shape\[0\] \(E\)"),
            BadInput(adp(x, w_down[:, :, :0], w_up[:, :0], offs), ValueError, r"adapter rank r\) must be >= 1"),
            BadInput(adp(x, w_down, w_up.bfloat16(), offs), TypeError, "w_up must have the dtype of x"),
            BadInput(adp(x, w_down, w_up, offs[:2]), ValueError, r"expert_offsets.shape\[0\] must equal"),
            BadInput(adp(x, w_down, w_up, torch.tensor([0, 5, 3, 10], device=device)), ValueError,
                     r"expert_offsets must be non-decreasing, got expert_offsets\[1\]=5 > expert_offsets\[2\]=3",
                     reads_data=True),
        ],
        "adapter_backward": [
            BadInput((x[:9], x, w_down, w_up, offs, h, "gelu", 1.0, [True] * 3), ValueError,
                     r"pesc.adapter_backward: grad_y.shape\[0\] must equal the number of rows N of x"),
            BadInput((x, x, w_down, w_up, offs, h[:, :3], "gelu", 1.0, [True] * 3), ValueError,
                     r"h.shape\[1\] must equal w_down.shape\[2\] \(r\)"),
            BadInput((x, x, w_down, w_up, offs, h, "swish", 1.0, [True] * 3), ValueError,
                     "pesc.adapter_backward: unknown activation 'swish'"),
        ],
    }


def _large_gemm(device, dtype):
    return _gemm_inputs(random_counts(3000, 8, seed=1), 160, 64, dtype, device)


def _large_grouped_mm(device, dtype):
    x, w_down, _, offsets = _large_gemm(device, dtype)
    bias = randn((w_down.shape[0], w_down.shape[2]), dtype, device, 9, grad=True)
    return (x, _output_major(w_down), _dropped_offsets(offsets, 100), bias, True)


def _large_gated(device, dtype):
    return (randn((3000, 2 * 300), dtype, device, 5, scale=3.0, grad=True), "clamped_swiglu", True, 7.0, 1.702)


def _large_adapter(device, dtype):
    return (*_large_gemm(device, dtype), "gelu", 0.5)


OP_TABLE = [
    OpInfo("gated_activation", _gated_samples, bad_inputs_of(_gemm_bad_inputs, "gated_activation"),
           public=ops.gated_activation, reference=reference.gated_activation, thread_invariant=True,
           large_sample=_large_gated),
    OpInfo("gated_activation_backward", _gated_backward_samples,
           bad_inputs_of(_gemm_bad_inputs, "gated_activation_backward"), thread_invariant=True),
    OpInfo("grouped_mm", _grouped_mm_samples, bad_inputs_of(_gemm_bad_inputs, "grouped_mm"), public=ops.grouped_mm,
           reference=reference.grouped_mm, thread_invariant=True,
           large_sample=_large_grouped_mm),
    OpInfo("grouped_mm_backward", _grouped_mm_backward_samples, bad_inputs_of(_gemm_bad_inputs, "grouped_mm_backward"),
           thread_invariant=True),
    OpInfo("adapter", _adapter_samples, bad_inputs_of(_gemm_bad_inputs, "adapter"), public=ops.adapter,
           reference=reference.adapter, thread_invariant=True,
           large_sample=_large_adapter),
    OpInfo("adapter_backward", _adapter_backward_samples, bad_inputs_of(_gemm_bad_inputs, "adapter_backward"),
           thread_invariant=True),
]
