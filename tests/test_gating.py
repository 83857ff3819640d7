"""Routing ops (topk_gating, load_balancing_loss, router_z_loss) against the reference, on every device.

Covers values and gradients over odd shapes and all dtypes, tie-breaking, NaN rows, masking and
non-contiguous logits. The generic contract (opcheck, torch.compile, determinism, bad input, mixed
devices, fallback) is tests/test_op_contract.py.
"""
import pytest
import torch
from _helpers import assert_close_to_reference
from conftest import FLOAT_DTYPES

from pesc_kernels import ops, reference

TOKENS = [0, 1, 7, 4097]
EXPERTS = [1, 2, 8, 60, 64, 256, 1024]


def make_logits(T, E, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed + 7919 * T + E)
    return (2.0 * torch.randn(T, E, generator=gen)).to(dtype).to(device)


def gating_outputs_and_grad(fn, logits, k, normalize, upstream):
    x = logits.detach().clone().requires_grad_(True)
    weights, indices = fn(x, k, normalize)
    (grad,) = torch.autograd.grad((weights.double() * upstream).sum(), x) if x.shape[0] else (torch.zeros_like(x),)
    return weights.detach(), indices, grad


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("E", EXPERTS)
@pytest.mark.parametrize("T", TOKENS)
def test_topk_gating_matches_reference(T, E, dtype, device):
    logits = make_logits(T, E, dtype, device)
    for k in range(1, min(E, 8) + 1):
        for normalize in (True, False):
            upstream = torch.randn(T, k, dtype=torch.float64, device=device)
            w, i, g = gating_outputs_and_grad(ops.topk_gating, logits, k, normalize, upstream)
            w_ref, i_ref, g_ref = gating_outputs_and_grad(reference.topk_gating, logits, k, normalize, upstream)
            w64, i64, g64 = gating_outputs_and_grad(reference.topk_gating, logits.double(), k, normalize, upstream)
            case = f"T={T} E={E} k={k} normalize={normalize} {dtype}"
            assert w.dtype == torch.float32 and i.dtype == torch.int32 and g.dtype == dtype, case
            assert w.shape == (T, k) and i.shape == (T, k), case
            # Selection ranks the exact logit values, so it must agree with the fp64 run exactly.
            assert torch.equal(i.cpu(), i64.cpu()), case
            assert_close_to_reference(w, w_ref, w64, name="weights " + case)
            assert_close_to_reference(g, g_ref, g64, name="grad " + case)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("E", EXPERTS)
@pytest.mark.parametrize("T", TOKENS)
def test_router_losses_match_reference(T, E, dtype, device):
    logits = make_logits(T, E, dtype, device, seed=1)
    gen = torch.Generator().manual_seed(T + E)
    mask = (torch.rand(T, generator=gen) > 0.3).to(device)
    for k in sorted({1, min(E, 2), min(E, 8)}):
        _, indices = reference.topk_gating(logits, k)
        for m in (None, mask):
            case = f"T={T} E={E} k={k} mask={m is not None} {dtype}"
            for name, ours, ref in (
                ("load_balancing_loss", lambda x: ops.load_balancing_loss(x, indices, m),
                 lambda x: reference.load_balancing_loss(x, indices, m)),
                ("router_z_loss", lambda x: ops.router_z_loss(x, m), lambda x: reference.router_z_loss(x, m)),
            ):
                results = []
                for fn, inp in ((ours, logits), (ref, logits), (ref, logits.double())):
                    x = inp.detach().clone().requires_grad_(True)
                    loss = fn(x)
                    (grad,) = torch.autograd.grad(loss, x) if T else (torch.zeros_like(x),)
                    results.append((loss.detach(), grad))
                (loss, grad), (loss_ref, grad_ref), (loss64, grad64) = results
                assert loss.dtype == torch.float32 and loss.dim() == 0, case
                assert grad.dtype == dtype, case
                assert_close_to_reference(loss, loss_ref, loss64, name=f"{name} value {case}")
                assert_close_to_reference(grad, grad_ref, grad64, name=f"{name} grad {case}")


def test_ties_go_to_lower_index(device):
    logits = torch.zeros(3, 8, device=device)
    w, i = ops.topk_gating(logits, 3)
    assert i.tolist() == [[0, 1, 2]] * 3
    torch.testing.assert_close(w, torch.full((3, 3), 1 / 3, device=device))
    w, i = ops.topk_gating(logits, 3, normalize=False)
    torch.testing.assert_close(w, torch.full((3, 3), 1 / 8, device=device))
    partial_tie = torch.tensor([[1.0, 5.0, 5.0, 5.0, 0.0], [2.0, 2.0, -1.0, 2.0, 3.0]], device=device)
    assert ops.topk_gating(partial_tie, 2)[1].tolist() == [[1, 2], [4, 0]]
    for dtype in (torch.float16, torch.bfloat16):
        assert ops.topk_gating(partial_tie.to(dtype), 4)[1].tolist() == [[1, 2, 3, 0], [4, 0, 1, 3]]


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_rows_give_valid_distinct_indices(device, bad_value):
    E, k = 60, 8
    logits = torch.randn(4, E, device=device)
    logits[1, 5] = bad_value
    logits[2, :] = float("nan")
    logits[3, :] = float("-inf")
    w, i = ops.topk_gating(logits, k)
    assert ((i >= 0) & (i < E)).all()
    for row in i.tolist():
        assert len(set(row)) == k
    assert torch.isnan(w[1:]).all() and torch.isfinite(w[0]).all()
    # Downstream ops stay in bounds and finite on the good rows.
    x = logits.clone().requires_grad_(True)
    w, i = ops.topk_gating(x, k)
    w[0].sum().backward()
    assert torch.isfinite(x.grad[0]).all()
    ops.load_balancing_loss(logits, i)  # must not fault on NaN rows


def test_mask_excludes_tokens_from_both_losses(device):
    T, E, k = 50, 16, 4
    logits = torch.randn(T, E, device=device)
    _, indices = ops.topk_gating(logits, k)
    mask = torch.arange(T, device=device) % 3 != 0
    for loss_fn in (
        lambda x, i, m: ops.load_balancing_loss(x, i, m),
        lambda x, i, m: ops.router_z_loss(x, m),
    ):
        x = logits.clone().requires_grad_(True)
        loss = loss_fn(x, indices, mask)
        loss.backward()
        subset = logits[mask].clone().requires_grad_(True)
        expected = loss_fn(subset, indices[mask], None)
        expected.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(x.grad[mask], subset.grad)
        assert (x.grad[~mask] == 0).all()
        # A mask with no counted token gives a zero loss and a zero gradient.
        x = logits.clone().requires_grad_(True)
        empty = loss_fn(x, indices, torch.zeros(T, dtype=torch.bool, device=device))
        empty.backward()
        assert empty.item() == 0.0 and (x.grad == 0).all()


def test_load_balancing_loss_values():
    """Uniform routing gives 1; all tokens on one expert with certainty gives E."""
    E, T = 4, 8
    uniform = torch.zeros(T, E)
    indices = torch.arange(T, dtype=torch.int32).remainder(E)[:, None]
    torch.testing.assert_close(ops.load_balancing_loss(uniform, indices), torch.tensor(1.0))
    peaked = torch.full((T, E), -1e4)
    peaked[:, 2] = 0
    torch.testing.assert_close(ops.load_balancing_loss(peaked, torch.full((T, 1), 2, dtype=torch.int32)),
                               torch.tensor(float(E)))


def test_non_contiguous_logits_are_accepted(device):
    base = torch.randn(16, 33, device=device)
    logits = base.t()  # [33, 16], non-contiguous
    assert not logits.is_contiguous()
    w, i = ops.topk_gating(logits, 3)
    w_c, i_c = ops.topk_gating(logits.contiguous(), 3)
    assert torch.equal(w, w_c) and torch.equal(i, i_c)
    assert torch.equal(ops.router_z_loss(logits), ops.router_z_loss(logits.contiguous()))
    assert torch.equal(ops.load_balancing_loss(logits, i), ops.load_balancing_loss(logits.contiguous(), i))

