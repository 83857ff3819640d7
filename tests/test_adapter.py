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

