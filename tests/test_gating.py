"""Routing ops (topk_gating, load_balancing_loss, router_z_loss, topk_gating_with_balancing_loss)
against the reference, on every device.

Covers values and gradients over odd shapes and all dtypes, tie-breaking, NaN rows, masking,
non-contiguous logits, the fused op against the two ops it fuses, both CPU instruction-set builds,
and the lean plain-PyTorch benchmark baseline against the ops. The generic contract (opcheck,
torch.compile, determinism, bad input, mixed devices, fallback) is tests/test_op_contract.py.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _helpers import assert_close_to_reference, router_bad_input_tensors
from conftest import FLOAT_DTYPES
from op_info import BadInput, OpInfo, bad_inputs_of, router_inputs

from pesc_kernels import ops, reference
from pesc_kernels.bench.gating import lean_torch_routing

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



def test_ties_and_special_values_follow_the_strict_order(device):
    """-0 ties with +0 (lower index first); -inf ranks before NaN; NaNs last, lower index first."""
    inf, nan = float("inf"), float("nan")
    rows = torch.tensor([[-0.0, 0.0, -1.0, 0.0], [-inf, nan, -inf, 1.0], [nan, nan, -inf, nan],
                         [inf, 2.0, inf, -inf]], device=device)
    expected = [[0, 1, 3, 2], [3, 0, 2, 1], [2, 0, 1, 3], [0, 2, 1, 3]]
    for dtype in FLOAT_DTYPES:
        assert ops.topk_gating(rows.to(dtype), 4)[1].tolist() == expected, dtype
        assert ops.topk_gating_with_balancing_loss(rows.to(dtype), 4)[1].tolist() == expected, dtype
    assert reference.topk_gating(rows, 4)[1].tolist() == expected


@pytest.mark.parametrize("E,k", [(40, 33), (64, 64), (256, 40), (1024, 1024)])
def test_topk_gating_with_large_k_matches_reference(E, k, device):
    """k > 32 takes the CPU kernels' sorting path; it must pick exactly the slot path's experts."""
    for dtype in FLOAT_DTYPES:
        logits = make_logits(37, E, dtype, device, seed=5)
        logits[3, : E // 2] = logits[3, 0]  # a long tie
        w, i = ops.topk_gating(logits, k)
        w_ref, i_ref = reference.topk_gating(logits, k)
        w64, i64 = reference.topk_gating(logits.double(), k)
        assert torch.equal(i.cpu(), i64.cpu()), (E, k, dtype)
        assert_close_to_reference(w, w_ref, w64, name=f"weights E={E} k={k} {dtype}")
        # The first 32 of the sorted selection are what k=32 selects through the slots.
        assert torch.equal(ops.topk_gating(logits, 32)[1], i[:, :32])


def _fused_and_separate(logits, k, normalize, mask, upstream, grad_scale):
    results = []
    for fused in (True, False):
        x = logits.detach().clone().requires_grad_(True)
        if fused:
            w, i, loss = ops.topk_gating_with_balancing_loss(x, k, normalize, mask)
        else:
            w, i = ops.topk_gating(x, k, normalize)
            loss = ops.load_balancing_loss(x, i, mask)
        total = (w * upstream).sum() + grad_scale * loss
        (grad,) = torch.autograd.grad(total, x) if x.shape[0] else (torch.zeros_like(x),)
        results.append((w.detach(), i, loss.detach(), grad))
    return results


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("E", [1, 8, 60, 1024])
@pytest.mark.parametrize("T", TOKENS)
def test_fused_gating_with_balancing_loss_equals_the_two_ops(T, E, dtype, device):
    """Same weights, ids and loss bits as topk_gating + load_balancing_loss; the same gradient (the
    same bits in fp32, where adding the two gradients rounds nothing; within rounding otherwise)."""
    logits = make_logits(T, E, dtype, device, seed=3)
    gen = torch.Generator().manual_seed(T + E)
    mask = (torch.rand(T, generator=gen) > 0.3).to(device)
    for k in sorted({1, min(E, 2), min(E, 8), E if E <= 64 else 40}):
        for normalize in (True, False):
            for m in (None, mask, torch.zeros_like(mask)):
                upstream = torch.randn(T, k, generator=gen).to(device)
                case = f"T={T} E={E} k={k} normalize={normalize} mask={m is not None} {dtype}"
                (w, i, loss, grad), (w2, i2, loss2, grad2) = _fused_and_separate(logits, k, normalize, m, upstream, 0.7)
                assert torch.equal(i, i2) and torch.equal(w, w2) and torch.equal(loss, loss2), case
                assert grad.dtype == dtype, case
                if dtype == torch.float32:
                    assert torch.equal(grad, grad2), case
                elif T:  # the two ops round their gradients separately: up to an ulp of the largest part apart
                    atol = 2 * torch.finfo(dtype).eps * grad2.float().abs().max().item()
                    torch.testing.assert_close(grad.float(), grad2.float(), rtol=0, atol=atol, msg=case)


@pytest.mark.parametrize("used", ["weights", "loss"])
def test_fused_gating_with_one_output_used_has_that_ops_gradient(used, device):
    """An unused output's gradient is skipped (not computed as zero), so the backward is the one op's."""
    for dtype in FLOAT_DTYPES:
        logits = make_logits(300, 16, dtype, device, seed=4)
        mask = (torch.arange(300, device=device) % 4) != 1
        grads = []
        for fused in (True, False):
            x = logits.clone().requires_grad_(True)
            if fused:
                w, _, loss = ops.topk_gating_with_balancing_loss(x, 4, True, mask)
            else:
                w, i = ops.topk_gating(x, 4)
                loss = ops.load_balancing_loss(x, i, mask)
            (w.sum() if used == "weights" else loss).backward()
            grads.append(x.grad)
        assert torch.equal(grads[0], grads[1]), (used, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_fused_gating_with_balancing_loss_matches_reference(dtype, device):
    for T, E, k in ((4097, 8, 2), (513, 64, 4), (37, 12, 3), (1, 5, 5)):
        logits = make_logits(T, E, dtype, device, seed=11)
        mask = (torch.rand(T, generator=torch.Generator().manual_seed(E)) > 0.25).to(device)
        upstream = torch.randn(T, k, dtype=torch.float64, device=device)
        results = []
        for fn, inp in ((ops.topk_gating_with_balancing_loss, logits),
                        (reference.topk_gating_with_balancing_loss, logits),
                        (reference.topk_gating_with_balancing_loss, logits.double())):
            x = inp.detach().clone().requires_grad_(True)
            w, i, loss = fn(x, k, True, mask)
            (grad,) = torch.autograd.grad((w.double() * upstream).sum() + 0.5 * loss, x)
            results.append((w.detach(), i, loss.detach(), grad))
        (w, i, loss, grad), (w_ref, _, loss_ref, grad_ref), (w64, i64, loss64, grad64) = results
        case = f"T={T} E={E} k={k} {dtype}"
        assert torch.equal(i.cpu(), i64.cpu()), case
        assert loss.dtype == torch.float32 and loss.dim() == 0 and grad.dtype == dtype, case
        assert_close_to_reference(w, w_ref, w64, name="weights " + case)
        assert_close_to_reference(loss, loss_ref, loss64, name="loss " + case)
        assert_close_to_reference(grad, grad_ref, grad64, name="grad " + case)


def test_lean_torch_baseline_matches_the_ops():
    """The benchmark's plain-PyTorch baseline computes what the ops compute (random logits: no ties)."""
    for T, E, k in ((4096, 8, 2), (1000, 16, 4), (777, 64, 4)):
        logits = make_logits(T, E, torch.float32, torch.device("cpu"), seed=2)
        upstream = torch.randn(T, k, generator=torch.Generator().manual_seed(T))
        results = []
        for fn in (lean_torch_routing, ops.topk_gating_with_balancing_loss):
            x = logits.clone().requires_grad_(True)
            w, i, loss = fn(x, k)
            (grad,) = torch.autograd.grad((w * upstream).sum() + loss, x)
            results.append((w.detach(), i, loss.detach(), grad))
        (w, i, loss, grad), (w_ops, i_ops, loss_ops, grad_ops) = results
        assert torch.equal(i.to(torch.int32), i_ops)
        # fp32 agreement as docs/design.md, "Testing" states it: about 1e-5 of the largest value.
        for a, b in ((w, w_ops), (loss, loss_ops), (grad, grad_ops)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())


_PORTABLE_BUILD_CHECK = """
    import torch
    from pesc_kernels import ops, reference

    gen = torch.Generator().manual_seed(0)
    for T, E, k in ((301, 8, 2), (77, 60, 8), (40, 100, 40)):
        for dtype in (torch.float32, torch.bfloat16):
            logits = (2 * torch.randn(T, E, generator=gen)).to(dtype)
            mask = torch.rand(T, generator=gen) > 0.3
            for fns in ((ops.topk_gating_with_balancing_loss, reference.topk_gating_with_balancing_loss),):
                outs = []
                for fn in fns:
                    x = logits.clone().requires_grad_(True)
                    w, i, loss = fn(x, k, True, mask)
                    z = (ops.router_z_loss if fn is fns[0] else reference.router_z_loss)(x, mask)
                    (grad,) = torch.autograd.grad(w.sum() * 0.3 + loss + 0.1 * z, x)
                    outs.append((w, i, loss, z, grad.float()))
                (w, i, loss, z, grad), (w_ref, i_ref, loss_ref, z_ref, grad_ref) = outs
                tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
                assert torch.equal(i, i_ref), (T, E, k, dtype)
                torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(grad, grad_ref, **tol)
    print("ok", torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("capability", ["default", None])
def test_both_cpu_instruction_set_builds_match_the_reference(capability):
    """The CPU kernels run the AVX2 build where the CPU has it and ATen's capability allows it, else
    the portable one; ATEN_CPU_CAPABILITY=default forces the portable build, in a fresh process."""
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "python"),
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_PORTABLE_BUILD_CHECK)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
    if capability == "default":
        assert "DEFAULT" in result.stdout


# ------------------------------------------------------------------ the op table rows of this family
# Run by tests/test_op_contract.py (see tests/op_info.py).
def _gating_samples(device, dtype):
    logits, _, _ = router_inputs(37, 12, 3, dtype, device)
    return [(logits, 3, True), (logits, 3, False), (logits[:1], 12, True), (logits[:0], 1, True)]


def _gating_backward_samples(device, dtype):
    samples = []
    for T, E, k, normalize in ((37, 12, 3, True), (37, 12, 3, False), (5, 1, 1, True)):
        logits, _, _ = router_inputs(T, E, k, dtype, device, seed=E)
        weights, indices = torch.ops.pesc.topk_gating(logits.detach(), k, normalize)
        samples.append((torch.randn_like(weights), logits.detach(), weights, indices, normalize))
    return samples


def _balance_samples(device, dtype):
    logits, indices, mask = router_inputs(37, 12, 3, dtype, device)
    return [(logits, indices, None), (logits, indices, mask), (logits, indices, torch.zeros_like(mask))]


def _balance_backward_samples(device, dtype):
    logits, indices, mask = router_inputs(37, 12, 3, dtype, device)
    grad = torch.tensor(1.5, device=device)
    return [(grad, logits.detach(), indices, None), (grad, logits.detach(), indices, mask)]


def _z_samples(device, dtype):
    logits, _, mask = router_inputs(37, 12, 3, dtype, device)
    return [(logits, None), (logits, mask)]


def _z_backward_samples(device, dtype):
    logits, _, mask = router_inputs(37, 12, 3, dtype, device)
    return [(torch.tensor(0.5, device=device), logits.detach(), m) for m in (None, mask)]


def _fused_gating_samples(device, dtype):
    logits, _, mask = router_inputs(37, 12, 3, dtype, device)
    return [(logits, 3, True, mask), (logits, 3, False, None), (logits[:1], 12, True, mask[:1]),
            (logits[:0], 1, True, None), (logits, 3, True, torch.zeros_like(mask))]


def _fused_gating_backward_samples(device, dtype):
    samples = []
    for T, E, k, normalize, masked in ((37, 12, 3, True, True), (37, 12, 3, False, False), (5, 1, 1, True, True)):
        logits, _, mask = router_inputs(T, E, k, dtype, device, seed=E)
        m = mask if masked else None
        weights, indices, _, counts = torch.ops.pesc.topk_gating_with_balancing_loss(logits.detach(), k, normalize, m)
        grad_loss = torch.tensor(1.5, device=device)
        samples.append((torch.randn_like(weights), grad_loss, logits.detach(), weights, indices, counts, m, normalize))
    return samples


def _router_bad_inputs(device):
    logits, idx, bad_ids = router_bad_input_tensors(device)
    counts = torch.zeros(9, dtype=torch.int32, device=device)
    return {
        "topk_gating": [
            BadInput((logits[0], 2, True), ValueError, r"pesc.topk_gating: logits must be a 2-D tensor"),
            BadInput((logits.long(), 2, True), TypeError, "logits must be float32, float16 or bfloat16"),
            BadInput((logits.double(), 2, True), TypeError, "logits must be float32"),
            BadInput((logits, 0, True), ValueError, r"k must be in \[1, E=8\], got k=0"),
            BadInput((logits, 9, True), ValueError, r"k must be in \[1, E=8\], got k=9"),
            BadInput((logits[:, :4], 8, True), ValueError, r"k must be in \[1, E=4\], got k=8"),
            BadInput((torch.randn(2, 1025, device=device), 1, True), ValueError, r"must be in \[1, 1024\]"),
            BadInput((torch.randn(2, 0, device=device), 1, True), ValueError, "number of experts E"),
        ],
        "topk_gating_backward": [
            BadInput((torch.zeros(5, 3, device=device), logits, torch.zeros(5, 2, device=device), idx, True),
                     ValueError, r"pesc.topk_gating_backward: grad_weights must have the shape of indices"),
            BadInput((torch.zeros(5, 2, device=device), logits, torch.zeros(5, 2, device=device, dtype=torch.half),
                      idx, True), TypeError, "weights must be Float"),
            BadInput((torch.zeros(5, 2, device=device), logits, torch.zeros(5, 2, device=device), bad_ids, True),
                     IndexError, r"indices holds expert id 8 at \[3, 1\]", reads_data=True),
        ],
        "load_balancing_loss": [
            BadInput((logits, idx, torch.ones(5, 1, dtype=torch.bool, device=device)), ValueError,
                     "mask must be a 1-D tensor"),
            BadInput((logits, idx.long(), None), TypeError, "indices must be Int"),
            BadInput((logits, idx[:3], None), ValueError, r"indices.shape\[0\] must equal"),
            BadInput((logits, torch.zeros(5, 9, dtype=torch.int32, device=device), None), ValueError,
                     r"indices.shape\[1\] \(k\) must be in"),
            BadInput((logits, bad_ids, None), IndexError,
                     r"expert id 8 at \[3, 1\], outside \[0, num_experts=8\)", reads_data=True),
        ],
        "load_balancing_loss_backward": [
            BadInput((torch.ones(2, device=device), logits, idx, None), ValueError, "grad must be a scalar"),
            BadInput((torch.tensor(1.0, device=device).double(), logits, idx, None), TypeError, "grad must be Float"),
        ],
        "router_z_loss": [
            BadInput((logits, torch.ones(4, dtype=torch.bool, device=device)), ValueError,
                     r"mask.shape\[0\] must equal the number of tokens T"),
            BadInput((logits, torch.ones(5, device=device)), TypeError, "mask must be Bool"),
        ],
        "router_z_loss_backward": [
            BadInput((torch.tensor(1.0, device=device), logits[0], None), ValueError,
                     r"pesc.router_z_loss_backward: logits must be a 2-D tensor"),
        ],
        "topk_gating_with_balancing_loss": [
            BadInput((logits[0], 2, True, None), ValueError,
                     r"pesc.topk_gating_with_balancing_loss: logits must be a 2-D tensor"),
            BadInput((logits.long(), 2, True, None), TypeError, "logits must be float32, float16 or bfloat16"),
            BadInput((logits, 0, True, None), ValueError, r"k must be in \[1, E=8\], got k=0"),
            BadInput((logits, 9, True, None), ValueError, r"k must be in \[1, E=8\], got k=9"),
            BadInput((logits, 2, True, torch.ones(4, dtype=torch.bool, device=device)), ValueError,
                     r"mask.shape\[0\] must equal the number of tokens T"),
            BadInput((logits, 2, True, torch.ones(5, device=device)), TypeError, "mask must be Bool"),
        ],
        "topk_gating_with_balancing_loss_backward": [
            BadInput((torch.zeros(5, 2, device=device), torch.ones(2, device=device), logits,
                      torch.zeros(5, 2, device=device), idx, counts, None, True), ValueError,
                     r"pesc.topk_gating_with_balancing_loss_backward: grad_loss must be a scalar"),
            BadInput((torch.zeros(5, 3, device=device), torch.tensor(1.0, device=device), logits,
                      torch.zeros(5, 2, device=device), idx, counts, None, True), ValueError,
                     r"grad_weights must have the shape of indices"),
            BadInput((torch.zeros(5, 2, device=device), torch.tensor(1.0, device=device), logits,
                      torch.zeros(5, 2, device=device), idx, counts[:8], None, True), ValueError,
                     r"routed_counts.shape\[0\] must equal the number of experts E of logits plus 1"),
            BadInput((torch.zeros(5, 2, device=device), torch.tensor(1.0, device=device), logits,
                      torch.zeros(5, 2, device=device), idx, counts.long(), None, True), TypeError,
                     "routed_counts must be Int"),
            BadInput((torch.zeros(5, 2, device=device), torch.tensor(1.0, device=device), logits,
                      torch.zeros(5, 2, device=device), bad_ids, counts, None, True), IndexError,
                     r"indices holds expert id 8 at \[3, 1\]", reads_data=True),
        ],
    }


def _large_router(device, dtype):
    return router_inputs(9000, 64, 4, dtype, device, seed=3)



def _large_topk_gating(device, dtype):
    return (_large_router(device, dtype)[0], 4, True)


def _large_fused_gating(device, dtype):
    logits, _, mask = _large_router(device, dtype)
    return (logits, 4, True, mask)


def _large_z_loss(device, dtype):
    logits, _, mask = _large_router(device, dtype)
    return (logits, mask)


OP_TABLE = [
    OpInfo("topk_gating", _gating_samples, bad_inputs_of(_router_bad_inputs, "topk_gating"), public=ops.topk_gating,
           reference=reference.topk_gating, thread_invariant=True,
           large_sample=_large_topk_gating),
    OpInfo("topk_gating_backward", _gating_backward_samples, bad_inputs_of(_router_bad_inputs, "topk_gating_backward"),
           thread_invariant=True),
    OpInfo("load_balancing_loss", _balance_samples, bad_inputs_of(_router_bad_inputs, "load_balancing_loss"),
           public=ops.load_balancing_loss, reference=reference.load_balancing_loss, thread_invariant=True,
           large_sample=_large_router),
    OpInfo("load_balancing_loss_backward", _balance_backward_samples,
           bad_inputs_of(_router_bad_inputs, "load_balancing_loss_backward"), thread_invariant=True),
    OpInfo("router_z_loss", _z_samples, bad_inputs_of(_router_bad_inputs, "router_z_loss"), public=ops.router_z_loss,
           reference=reference.router_z_loss, thread_invariant=True,
           large_sample=_large_z_loss),
    OpInfo("router_z_loss_backward", _z_backward_samples, bad_inputs_of(_router_bad_inputs, "router_z_loss_backward"),
           thread_invariant=True),
    OpInfo("topk_gating_with_balancing_loss", _fused_gating_samples,
           bad_inputs_of(_router_bad_inputs, "topk_gating_with_balancing_loss"),
           public=ops.topk_gating_with_balancing_loss,
           reference=reference.topk_gating_with_balancing_loss, thread_invariant=True,
           large_sample=_large_fused_gating),
    OpInfo("topk_gating_with_balancing_loss_backward", _fused_gating_backward_samples,
           bad_inputs_of(_router_bad_inputs, "topk_gating_with_balancing_loss_backward"), thread_invariant=True),
]
