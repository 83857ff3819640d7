"""Permutation ops (permute, unpermute) against the reference, on every device.

Covers values and gradients over odd shapes (T = 0 and 1, d = 1 and not a multiple of 8, E = 1 and
1024, k up to E and beyond, experts with no rows) and all dtypes, the stable (t, j) order, the
round trip, unaligned rows, and invalid expert ids and row maps (CPU raises, CUDA clamps); int64
ids, routing weights in every float dtype, and dropped slots (drop_invalid: ids outside [0, E) go
to no expert, identically on every device). The generic contract (opcheck, torch.compile,
determinism, bad input, mixed devices, fallback) is tests/test_op_contract.py.
"""
import pytest
import torch
from _helpers import assert_close_to_reference
from conftest import FLOAT_DTYPES
from op_info import BadInput, OpInfo, bad_inputs_of, gen, randn, top_ids

from pesc_kernels import ops, reference

# (T, d, E, k): T = 0 and 1, d = 1 and odd widths next to the 16-byte vector widths, E = 1 and 1024,
# k = E, k > E (repeated ids in a row), and many experts left empty (E = 1024 with few tokens).
SHAPES = [
    (0, 8, 4, 2),
    (1, 1, 1, 1),
    (1, 16, 1024, 8),
    (7, 13, 3, 3),
    (9, 8, 2, 4),
    (33, 1, 8, 2),
    (64, 24, 1, 1),
    (100, 40, 1024, 4),
    (257, 100, 60, 8),
    (513, 64, 8, 2),
    (300, 257, 16, 5),
]
SHAPE_IDS = [f"T{T}-d{d}-E{E}-k{k}" for T, d, E, k in SHAPES]


def make_indices(T, E, k, device, seed=0):
    """Distinct ids per row (as top-k gives) when k <= E, else ids drawn with repetition."""
    gen = torch.Generator().manual_seed(seed + 31 * T + E)
    if k <= E:
        ids = torch.rand(T, E, generator=gen).argsort(dim=1)[:, :k]
    else:
        ids = torch.randint(0, E, (T, k), generator=gen)
    return ids.to(torch.int32).to(device)


def make_rows(rows, d, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed + 7919 * rows + d)
    return torch.randn(rows, d, generator=gen).to(dtype).to(device)


def permute_and_grad(fn, x, indices, E, upstream):
    leaf = x.detach().clone().requires_grad_(True)
    x_perm, row_map, offsets = fn(leaf, indices, E)
    (grad,) = torch.autograd.grad((x_perm.double() * upstream).sum(), leaf)
    return x_perm.detach(), row_map, offsets, grad


def unpermute_and_grads(fn, y_perm, row_map, weights, residual, upstream):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (y_perm, weights, residual)]
    y = fn(leaves[0], row_map, leaves[1], leaves[2])
    grads = torch.autograd.grad((y.double() * upstream).sum(), [t for t in leaves if t is not None])
    return y.detach(), grads


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("T,d,E,k", SHAPES, ids=SHAPE_IDS)
def test_permute_matches_reference(T, d, E, k, dtype, device):
    x = make_rows(T, d, dtype, device)
    indices = make_indices(T, E, k, device)
    upstream = torch.randn(T * k, d, dtype=torch.float64, device=device)
    x_perm, row_map, offsets, grad = permute_and_grad(ops.permute, x, indices, E, upstream)
    x_ref, row_map_ref, offsets_ref, grad_ref = permute_and_grad(reference.permute, x, indices, E, upstream)
    _, _, _, grad64 = permute_and_grad(reference.permute, x.double(), indices, E, upstream)
    case = f"T={T} d={d} E={E} k={k} {dtype}"
    assert x_perm.dtype == dtype and row_map.dtype == torch.int32 and offsets.dtype == torch.int64, case
    assert x_perm.shape == (T * k, d) and row_map.shape == (T, k) and offsets.shape == (E + 1,), case
    # A permutation moves rows bit for bit, and the stable order is unique.
    assert torch.equal(x_perm, x_ref), case
    assert torch.equal(row_map, row_map_ref), case
    assert torch.equal(offsets, offsets_ref), case
    assert grad.dtype == dtype, case
    assert_close_to_reference(grad, grad_ref, grad64, name="grad_x " + case)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("T,d,E,k", SHAPES, ids=SHAPE_IDS)
def test_unpermute_matches_reference(T, d, E, k, dtype, device):
    _, row_map, _ = reference.permute(torch.empty(T, 0, device=device), make_indices(T, E, k, device), E)
    y_perm = make_rows(T * k, d, dtype, device, seed=1)
    weights = torch.rand(T, k, device=device)
    residual = make_rows(T, d, dtype, device, seed=2)
    upstream = torch.randn(T, d, dtype=torch.float64, device=device)
    for w in (None, weights):
        for r in (None, residual):
            case = f"T={T} d={d} E={E} k={k} {dtype} weights={w is not None} residual={r is not None}"
            y, grads = unpermute_and_grads(ops.unpermute, y_perm, row_map, w, r, upstream)
            y_ref, grads_ref = unpermute_and_grads(reference.unpermute, y_perm, row_map, w, r, upstream)
            y64, grads64 = unpermute_and_grads(
                reference.unpermute, y_perm.double(), row_map, None if w is None else w.double(),
                None if r is None else r.double(), upstream)
            assert y.dtype == dtype and y.shape == (T, d), case
            assert_close_to_reference(y, y_ref, y64, name="y " + case)
            names = ["grad_y_perm", "grad_weights", "grad_residual"]
            names = [n for n, t in zip(names, (y_perm, w, r)) if t is not None]
            for name, g, g_ref, g64 in zip(names, grads, grads_ref, grads64):
                assert g.dtype == (torch.float32 if name == "grad_weights" else dtype), f"{name} {case}"
                assert_close_to_reference(g, g_ref, g64, name=f"{name} {case}")


def test_stable_order_and_offsets(device):
    indices = torch.tensor([[2, 0], [0, 2], [2, 1], [0, 2]], dtype=torch.int32, device=device)
    x = torch.arange(4, dtype=torch.float32, device=device)[:, None].expand(4, 3)
    x_perm, row_map, offsets = ops.permute(x, indices, 5)
    # Expert 0: (0,1) (1,0) (3,0); expert 1: (2,1); expert 2: (0,0) (1,1) (2,0) (3,1); experts 3, 4: none.
    assert x_perm[:, 0].tolist() == [0, 1, 3, 2, 0, 1, 2, 3]
    assert row_map.tolist() == [[4, 0], [1, 5], [6, 3], [2, 7]]
    assert offsets.tolist() == [0, 3, 4, 8, 8, 8]


def test_experts_without_rows(device):
    T, d, E = 50, 12, 8
    indices = torch.tensor([[2, 5], [5, 2]], dtype=torch.int32, device=device).repeat(T // 2, 1)
    x = make_rows(T, d, torch.float32, device)
    x_perm, row_map, offsets = ops.permute(x, indices, E)
    assert offsets.tolist() == [0, 0, 0, T, T, T, 2 * T, 2 * T, 2 * T]
    torch.testing.assert_close(ops.unpermute(x_perm, row_map), 2 * x)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_round_trip(dtype, k, device):
    T, d, E = 129, 19, 6
    x = make_rows(T, d, dtype, device)
    x_perm, row_map, _ = ops.permute(x, make_indices(T, E, k, device), E)
    back = ops.unpermute(x_perm, row_map, torch.full((T, k), 1.0 / k, device=device))
    if k in (1, 2, 4):  # 1/k is a power of two: every step is exact
        assert torch.equal(back, x)
    else:
        torch.testing.assert_close(back, x)
    # No weights: the k copies plus the residual.
    torch.testing.assert_close(ops.unpermute(x_perm, row_map, residual=x), (1 + k) * x)


def test_unaligned_and_non_contiguous_rows(device):
    """Rows that are not 16-byte aligned take the element-wise path; results must not change."""
    T, d, E, k = 40, 16, 8, 2
    indices = make_indices(T, E, k, device)
    for dtype in FLOAT_DTYPES:
        x = make_rows(T, d, dtype, device)
        shifted = torch.empty(T * d + 1, dtype=dtype, device=device)[1:].view(T, d)  # storage offset of 1
        shifted.copy_(x)
        expected = ops.permute(x, indices, E)
        column_major = (x.t().contiguous().t(), indices.t().contiguous().t())
        for got in (ops.permute(shifted, indices, E), ops.permute(*column_major, E)):
            for a, b in zip(got, expected):
                assert torch.equal(a, b)
        x_perm, row_map, _ = expected
        weights = torch.rand(T, k, device=device)
        y = ops.unpermute(x_perm, row_map, weights, x)
        y_perm_shifted = torch.empty(T * k * d + 1, dtype=dtype, device=device)[1:].view(T * k, d)
        y_perm_shifted.copy_(x_perm)
        assert torch.equal(ops.unpermute(y_perm_shifted, row_map, weights, shifted), y)
        grad_y = make_rows(T, d, dtype, device, seed=5)
        expected_bwd = torch.ops.pesc.unpermute_backward(grad_y, row_map, weights, x_perm)
        got_bwd = torch.ops.pesc.unpermute_backward(grad_y.t().contiguous().t(), row_map, weights, y_perm_shifted)
        assert torch.equal(got_bwd[0], expected_bwd[0])
        # The GPU's fp32 dot products split the row differently on the two paths: equal up to rounding.
        torch.testing.assert_close(got_bwd[1], expected_bwd[1], rtol=1e-5, atol=1e-5)


def test_unpermute_backward_outputs(device):
    """grad_weights is computed only when y_perm is given; without it the op returns an empty placeholder."""
    T, d, k = 10, 7, 3
    _, row_map, _ = reference.permute(torch.empty(T, 0, device=device), make_indices(T, 4, k, device), 4)
    grad_y = make_rows(T, d, torch.float32, device)
    y_perm = make_rows(T * k, d, torch.float32, device, seed=3)
    grad_y_perm, grad_w = torch.ops.pesc.unpermute_backward(grad_y, row_map, None, None)
    assert grad_w.shape == (0,) and grad_w.dtype == torch.float32
    assert torch.equal(grad_y_perm, ops.permute(grad_y, make_indices(T, 4, k, device), 4)[0])
    _, grad_w = torch.ops.pesc.unpermute_backward(grad_y, row_map, None, y_perm)
    expected = (grad_y[:, None, :].double() * y_perm[row_map.long()].double()).sum(-1)
    torch.testing.assert_close(grad_w.double(), expected, rtol=1e-5, atol=1e-5)
    # Weights that need no gradient: y_perm is not saved, and grad_y_perm[row_map[t, j]] = w[t, j] * grad_y[t].
    weights = torch.rand(T, k, device=device)
    leaf = y_perm.clone().requires_grad_(True)
    ops.unpermute(leaf, row_map, weights).sum().backward()
    owner = torch.argsort(row_map.reshape(-1))  # the slot (t, j) that lands on each row
    torch.testing.assert_close(leaf.grad, weights.reshape(-1)[owner][:, None].expand(-1, d))


def test_invalid_expert_ids(device):
    """CPU raises naming the value; CUDA (which cannot raise without a host sync) clamps into [0, E)."""
    T, d, E, k = 6, 5, 4, 2
    x = make_rows(T, d, torch.float32, device)
    for bad, where in ((-3, (1, 0)), (4, (2, 1)), (1000, (5, 1))):
        indices = make_indices(T, E, k, device)
        indices[where] = bad
        if device.type == "cpu":
            with pytest.raises(IndexError, match=rf"pesc.permute: indices holds expert id {bad} at \[{where[0]}, "
                                                 rf"{where[1]}\], outside \[0, num_experts={E}\)"):
                ops.permute(x, indices, E)
        else:
            got = ops.permute(x, indices, E)
            expected = ops.permute(x, indices.clamp(0, E - 1), E)
            for a, b in zip(got, expected):
                assert torch.equal(a, b)
            assert got[2][-1].item() == T * k
            torch.testing.assert_close(ops.unpermute(got[0], got[1]), k * x)


def test_invalid_row_map_cpu():
    T, d, k = 4, 3, 2
    y_perm = torch.randn(T * k, d)
    grad_y = torch.randn(T, d)
    out_of_range = torch.arange(T * k, dtype=torch.int32).view(T, k).clone()
    out_of_range[2, 1] = T * k
    repeated = torch.arange(T * k, dtype=torch.int32).view(T, k).clone()
    repeated[3, 0] = 1
    for fn in (lambda rm: ops.unpermute(y_perm, rm),
               lambda rm: torch.ops.pesc.unpermute_backward(grad_y, rm, None, None)):
        with pytest.raises(IndexError, match=r"row_map holds row 8 at \[2, 1\], outside \[0, N=8\)"):
            fn(out_of_range)
        with pytest.raises(ValueError, match=r"row_map holds row 1 twice \(again at \[3, 0\]\)"):
            fn(repeated)



@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("T,d,E,k", SHAPES, ids=SHAPE_IDS)
def test_drop_invalid_matches_reference(T, d, E, k, dtype, device):
    """int64 ids with sentinels >= E and negative ids: dropped slots sort after the last expert,
    their x_perm rows are zero, row_map holds ~row for them and they receive no gradient."""
    x = make_rows(T, d, dtype, device)
    indices = make_indices(T, E, k, device).long()
    gen = torch.Generator().manual_seed(T + E)
    invalid = torch.rand(T, k, generator=gen).to(device) < 0.3
    indices = torch.where(invalid, torch.where(torch.rand(T, k, generator=gen).to(device) < 0.5, -1, E + 7), indices)
    upstream = torch.randn(T * k, d, dtype=torch.float64, device=device)
    fn = lambda a, b, c: ops.permute(a, b, c, drop_invalid=True)  # noqa: E731
    ref = lambda a, b, c: reference.permute(a, b, c, drop_invalid=True)  # noqa: E731
    x_perm, row_map, offsets, grad = permute_and_grad(fn, x, indices, E, upstream)
    x_ref, row_map_ref, offsets_ref, grad_ref = permute_and_grad(ref, x, indices, E, upstream)
    _, _, _, grad64 = permute_and_grad(ref, x.double(), indices, E, upstream)
    case = f"T={T} d={d} E={E} k={k} {dtype}"
    assert torch.equal(x_perm, x_ref) and torch.equal(row_map, row_map_ref) and torch.equal(offsets, offsets_ref), case
    kept = int(offsets[-1])
    assert kept == int((~invalid).sum()) and torch.equal(x_perm[kept:], torch.zeros_like(x_perm[kept:])), case
    assert torch.equal(row_map < 0, invalid.cpu().to(row_map.device)), case
    assert_close_to_reference(grad, grad_ref, grad64, name="grad_x " + case)
    # The combine skips dropped slots and gives their weights a zero gradient.
    weights = torch.rand(T, k, device=device).requires_grad_()
    y = ops.unpermute(x_perm, row_map, weights)
    torch.testing.assert_close(y, reference.unpermute(x_perm, row_map, weights))
    y.float().sum().backward()
    assert torch.equal(weights.grad[invalid], torch.zeros_like(weights.grad[invalid])), case


def test_dropped_slots_layout(device):
    indices = torch.tensor([[2, 9], [-1, 0], [2, 1]], device=device)  # 9 and -1 are dropped (E = 3)
    x = torch.arange(1, 4, dtype=torch.float32, device=device)[:, None].expand(3, 2)
    x_perm, row_map, offsets = ops.permute(x, indices, 3, drop_invalid=True)
    # Expert 0: (1,1); expert 1: (2,1); expert 2: (0,0) (2,0); dropped, after the experts: (0,1) (1,0).
    assert offsets.tolist() == [0, 1, 2, 4]
    assert x_perm[:, 0].tolist() == [2, 3, 1, 3, 0, 0]
    assert row_map.tolist() == [[2, ~4], [~5, 0], [3, 1]]
    grad_y = torch.ones(3, 2, device=device)
    grad_y_perm, grad_w = torch.ops.pesc.unpermute_backward(grad_y, row_map, torch.ones(3, 2, device=device), x_perm)
    assert torch.equal(grad_y_perm[4:], torch.zeros(2, 2, device=device))
    assert grad_w.tolist() == [[2.0, 0.0], [0.0, 4.0], [6.0, 6.0]]


def test_default_behaviour_is_unchanged_for_invalid_int64_ids(device):
    """Without drop_invalid an invalid id still raises on CPU and clamps on CUDA, int64 or int32."""
    x = make_rows(4, 3, torch.float32, device)
    indices = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0]], device=device)
    indices[2, 1] = 2 ** 40  # beyond int32: must not wrap around to a valid expert
    if device.type == "cpu":
        with pytest.raises(IndexError, match=r"indices holds expert id 1099511627776 at \[2, 1\], outside"):
            ops.permute(x, indices, 4)
    else:
        got = ops.permute(x, indices, 4)
        for a, b in zip(got, ops.permute(x, indices.clamp(0, 3).int(), 4)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("weights_dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_weights_of_any_float_dtype(dtype, weights_dtype, device):
    """Routing weights of any float dtype are read as fp32; their gradient comes back in their dtype."""
    T, d, E, k = 31, 20, 5, 3
    indices = make_indices(T, E, k, device).long()
    x_perm, row_map, _ = ops.permute(make_rows(T, d, dtype, device), indices, E)
    weights = torch.rand(T, k, device=device).to(weights_dtype)
    upstream = torch.randn(T, d, dtype=torch.float64, device=device)
    y, (g_y, g_w) = unpermute_and_grads(ops.unpermute, x_perm, row_map, weights, None, upstream)
    y32, (g_y32, g_w32) = unpermute_and_grads(ops.unpermute, x_perm, row_map, weights.float(), None, upstream)
    assert g_w.dtype == weights_dtype and y.dtype == dtype and g_y.dtype == dtype
    assert torch.equal(y, y32) and torch.equal(g_y, g_y32) and torch.equal(g_w, g_w32.to(weights_dtype))


def test_row_map_with_dropped_entries_cpu():
    """A dropped entry ~n stands for row n in the permutation check."""
    y_perm = torch.randn(4, 3)
    ok = torch.tensor([[0, ~3], [~1, 2]], dtype=torch.int32)
    torch.testing.assert_close(ops.unpermute(y_perm, ok), torch.stack([y_perm[0], y_perm[2]]))
    repeated = torch.tensor([[0, ~0], [1, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"row_map holds row 0 twice \(again at \[0, 1\]\)"):
        ops.unpermute(y_perm, repeated)


def test_lean_torch_baseline_matches_the_ops():
    """The benchmark's plain-PyTorch dispatch/combine computes what permute + unpermute compute."""
    from pesc_kernels.bench.permute import LeanTorch

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(37, 24, generator=gen, requires_grad=True)
    weights = torch.rand(37, 3, generator=gen, requires_grad=True)
    indices = torch.rand(37, 6, generator=gen).argsort(dim=1)[:, :3].to(torch.int32)
    upstream = torch.randn(37, 24, generator=gen)
    results = []
    for impl in (LeanTorch, ops):
        x_perm, row_map, _ = impl.permute(x, indices, 6)
        y = impl.unpermute(x_perm, row_map, weights, x)
        results.append((x_perm, row_map, y, *torch.autograd.grad(y, (x, weights), upstream)))
    for lean, ours in zip(*results):
        torch.testing.assert_close(lean.to(ours.dtype), ours, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ the op table rows of this family
# Run by tests/test_op_contract.py (see tests/op_info.py).
def _with_invalid_ids(indices, E):
    """int64 ids with some outside [0, E) (expert-parallel sentinels and negative ids)."""
    ids = indices.long().clone()
    ids.view(-1)[::5] = E
    ids.view(-1)[3::7] = -1
    return ids


def _permute_samples(device, dtype):
    x = randn((23, 12), dtype, device, 0, grad=True)
    idx = top_ids(23, 6, 3, device)
    return [(x, idx, 6), (x[:1], top_ids(1, 1, 1, device), 1),
            (x[:0], top_ids(0, 4, 2, device), 4), (x[:9, :1], top_ids(9, 1024, 8, device), 1024),
            (x, idx.long(), 6, False), (x, _with_invalid_ids(idx, 6), 6, True), (x, idx, 6, True)]


def _unpermute_samples(device, dtype):
    T, d, E, k = 23, 12, 6, 3
    x = randn((T, d), dtype, device, 0)
    x_perm, row_map, _ = torch.ops.pesc.permute(x, top_ids(T, E, k, device), E)
    y_perm = x_perm.clone().requires_grad_(True)
    weights = torch.rand(T, k, generator=gen(2)).to(device).requires_grad_(True)
    residual = randn((T, d), dtype, device, 4, grad=True)
    # Weights in the rows' dtype (as transformers' Qwen routers return them), and dropped slots.
    weights_same = weights.detach().to(dtype).requires_grad_(True)
    dropped_perm, dropped_map, _ = torch.ops.pesc.permute(x, _with_invalid_ids(top_ids(T, E, k, device), E), E, True)
    return [(y_perm, row_map, w, r) for w in (None, weights) for r in (None, residual)] + [
        (y_perm, row_map, weights_same, None), (dropped_perm.clone().requires_grad_(True), dropped_map, weights, None)]


def _unpermute_backward_samples(device, dtype):
    T, d, E, k = 23, 12, 6, 3
    x = randn((T, d), dtype, device, 0)
    x_perm, row_map, _ = torch.ops.pesc.permute(x, top_ids(T, E, k, device), E)
    weights = torch.rand(T, k, generator=gen(2)).to(device)
    grad_y = randn((T, d), dtype, device, 6)
    dropped_perm, dropped_map, _ = torch.ops.pesc.permute(x, _with_invalid_ids(top_ids(T, E, k, device), E), E, True)
    return [(grad_y, row_map, w, y) for w in (None, weights) for y in (None, x_perm)] + [
        (grad_y, row_map, weights.to(dtype), x_perm), (grad_y, dropped_map, weights, dropped_perm)]


def _permute_bad_inputs(device):
    T, d, E, k = 5, 4, 8, 2
    x = torch.randn(T, d, device=device)
    idx = top_ids(T, E, k, device)
    y_perm = torch.randn(T * k, d, device=device)
    row_map = torch.ops.pesc.permute(x, idx, E)[1]
    w = torch.rand(T, k, device=device)
    bad_ids = idx.clone()
    bad_ids[2, 1] = 8
    repeated = row_map.clone()
    repeated[3, 0] = repeated[0, 0]
    return {
        "permute": [
            BadInput((x[0], idx, E), ValueError, r"pesc.permute: x must be a 2-D tensor \[T, d\]"),
            BadInput((x.long(), idx, E), TypeError, "x must be float32, float16 or bfloat16"),
            BadInput((x, idx.float(), E), TypeError, "indices must be Int or Long, got Float"),
            BadInput((x, idx[:3], E), ValueError, r"indices.shape\[0\] must equal the number of tokens T of x"),
            BadInput((x, idx[:, :0], E), ValueError, r"indices.shape\[1\] \(k\) must be >= 1"),
            BadInput((x, idx, 0), ValueError, r"num_experts must be in \[1, 1024\], got 0"),
            BadInput((x, idx, 1025), ValueError, r"num_experts must be in \[1, 1024\], got 1025"),
            BadInput((x, bad_ids, E), IndexError,
                     r"pesc.permute: indices holds expert id 8 at \[2, 1\], outside \[0, num_experts=8\)",
                     reads_data=True),
        ],
        "unpermute": [
            BadInput((y_perm[1:], row_map, None, None), ValueError,
                     r"pesc.unpermute: y_perm.shape\[0\] must equal the number of routed rows N = T\*k of row_map "
                     r"\(10\)"),
            BadInput((y_perm, row_map.long(), None, None), TypeError, "row_map must be Int"),
            BadInput((y_perm, row_map, w[:, :1], None), ValueError, r"weights must have the shape of row_map"),
            BadInput((y_perm, row_map, w.double(), None), TypeError,
                     "weights must be float32, float16 or bfloat16, got Double"),
            BadInput((y_perm, row_map, None, x[:4]), ValueError,
                     r"residual.shape\[0\] must equal the number of tokens T of row_map \(5\)"),
            BadInput((y_perm, row_map, None, x[:, :3]), ValueError,
                     r"residual.shape\[1\] must equal the row width d \(4\)"),
            BadInput((y_perm, row_map, None, x.half()), TypeError,
                     r"residual must have the dtype of y_perm \(Float\), got Half"),
            BadInput((y_perm, repeated, None, None), ValueError, r"row_map holds row \d+ twice", reads_data=True),
        ],
        "unpermute_backward": [
            BadInput((x, row_map, w.int(), None), TypeError, "weights must be float32, float16 or bfloat16"),
            BadInput((x, row_map[:4], None, None), ValueError,
                     r"pesc.unpermute_backward: row_map.shape\[0\] must equal the number of tokens T of grad_y"),
            BadInput((x, row_map, None, y_perm[:, :2]), ValueError, r"y_perm.shape\[1\] must equal the row width d"),
            BadInput((x, row_map, None, y_perm.bfloat16()), TypeError, r"y_perm must have the dtype of grad_y"),
        ],
    }


def _large_permute(device, dtype):
    T, d, E, k = 4099, 136, 64, 8
    return (randn((T, d), dtype, device, 0, grad=True), _with_invalid_ids(top_ids(T, E, k, device, seed=3), E), E,
            True)


def _large_unpermute(device, dtype):
    x, indices, E, drop = _large_permute(device, dtype)
    x_perm, row_map, _ = torch.ops.pesc.permute(x.detach(), indices, E, drop)
    weights = torch.rand(*row_map.shape, generator=gen(7)).to(device).requires_grad_(True)
    return (x_perm.requires_grad_(True), row_map, weights, randn(x.shape, dtype, device, 8, grad=True))


OP_TABLE = [
    OpInfo("permute", _permute_samples, bad_inputs_of(_permute_bad_inputs, "permute"), public=ops.permute,
           reference=reference.permute, thread_invariant=True, large_sample=_large_permute),
    OpInfo("unpermute", _unpermute_samples, bad_inputs_of(_permute_bad_inputs, "unpermute"), public=ops.unpermute,
           reference=reference.unpermute, thread_invariant=True, large_sample=_large_unpermute),
    OpInfo("unpermute_backward", _unpermute_backward_samples, bad_inputs_of(_permute_bad_inputs, "unpermute_backward"),
           thread_invariant=True),
]
