"""Simulated-GPU cases of the routing launchers (gating/kernels.h): top-k gating, the balancing
loss and the z-loss, forward and backward, and the launcher sequence of the fused
topk_gating_with_balancing_loss and of its backward.

Oracle: the CPU kernels (torch.ops.pesc.*); indices and the integer workspaces (routed-slot counts,
token counts) must match bitwise, float outputs within the tolerance rule of tests/_helpers.py
against float64 math. With expert ids outside [0, E) (CUDA does not validate them; the CPU kernels
raise) the documented CUDA behaviour is the oracle: such slots are skipped by the loss counts and by
the gating backward.
"""
from __future__ import annotations

import torch
from compare import assert_bitwise, assert_close, assert_ran
from simcase import DTYPE_CODES, Case, out_like

from pesc_kernels import reference

F32, I32 = torch.float32, torch.int32
DT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def make_logits(T, E, dtype, seed, special=False):
    """Router logits; with `special`, rows with exact ties, a NaN, +inf and all -inf as well."""
    gen = torch.Generator().manual_seed(seed)
    logits = (2.0 * torch.randn(T, E, generator=gen, dtype=torch.float64)).to(dtype)
    if special and T >= 5 and E >= 2:
        logits[0] = 0.5  # every expert tied: ids 0..k-1 in order
        logits[1, E // 2] = float("nan")
        logits[2, E - 1] = float("inf")
        logits[3] = float("-inf")
        logits[4, : E // 2] = logits[4, E // 2]  # ties with the lower ids
    return logits


def make_mask(T, seed, masked):
    """None (every token counts), a random mask (masked=True), or one excluding every token ("empty")."""
    if not masked:
        return None
    if masked == "empty":
        return torch.zeros(T, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed + 7)
    return torch.rand(T, generator=gen) < 0.7


def mask_suffix(masked):
    return "" if not masked else ("_mask_empty" if masked == "empty" else "_mask")


def bad_ids(indices, E, seed):
    """Some ids replaced by values outside [0, E): -1, E, E + 5, INT32 extremes."""
    gen = torch.Generator().manual_seed(seed + 11)
    ids = indices.clone().reshape(-1)
    if ids.numel():
        pos = torch.randperm(ids.numel(), generator=gen)[: max(1, ids.numel() // 3)]
        choices = torch.tensor([-1, E, E + 5, -(2**31), 2**31 - 1], dtype=I32)
        ids[pos] = choices[torch.arange(pos.numel()) % choices.numel()]
    return ids.reshape(indices.shape)


def valid_ids(indices, E):
    return (indices >= 0) & (indices < E)


def softmax64(logits):
    return torch.softmax(logits.double(), dim=-1)


def _ints(dtype, T, E, k, **extra):
    return {"dtype": DTYPE_CODES[dtype], "T": T, "E": E, "k": k, **extra}


def group_shape(E):
    """Lanes per token and logits per lane of the per-token kernels (gating/kernels.cu)."""
    width = 1
    while width < E and width < 32:
        width *= 2
    vpt = 1
    while width * vpt < E:
        vpt *= 2
    return width, vpt


# Estimated simulated work in millions of instructions (fitted to the simulator's counts), used
# only to balance the simulator processes.
def _topk_cost(T, E, k):
    width, vpt = group_shape(E)
    return 0.05 + T * width * (k * vpt * 100 + vpt * 80) / 1e6


def _per_token_cost(T, E, k=1):
    width, vpt = group_shape(E)
    return 0.05 + T * width * (vpt * 250 + k * 20) / 1e6


def _chunk_cost(T, E, k=1):
    return 0.05 + -(-T // 64) * 64 * max(E, 32) * 40 / 1e6 + T * k * 100 / 1e6


def topk_case(T, E, k, dtype, normalize=True, seed=0, special=False):
    logits = make_logits(T, E, dtype, seed, special)
    name = f"topk_gating_T{T}_E{E}_k{k}_{DT[dtype]}" + ("" if normalize else "_raw") + ("_special" if special else "")

    def check(result):
        assert_ran(result, name)
        weights = result.buffers["weights"].as_tensor(F32, (T, k))
        indices = result.buffers["indices"].as_tensor(I32, (T, k))
        cpu_weights, cpu_indices = torch.ops.pesc.topk_gating(logits, k, normalize)
        assert_bitwise(indices, cpu_indices, name + " indices")
        p = softmax64(logits).gather(-1, cpu_indices.long())
        ref = p / p.sum(-1, keepdim=True) if normalize else p
        assert_close(weights, cpu_weights, ref, name + " weights")

    return Case(name, "topk_gating", _ints(dtype, T, E, k, normalize=int(normalize)),
                {"logits": logits, "weights": out_like((T, k), F32), "indices": out_like((T, k), I32)},
                check, cost=_topk_cost(T, E, k))


def gating_backward64(grad_weights, logits, weights, indices, normalize):
    """The op's math in float64 (gating/math.h): dot = sum_j w_j g_j; the selected experts get
    w_j (g_j - dot); the others 0 when renormalized, else -p_e dot. Ids outside [0, E) are skipped."""
    T, E = logits.shape
    w, g = weights.double(), grad_weights.double()
    dot = (w * g).sum(-1, keepdim=True)
    out = torch.zeros(T, E, dtype=torch.float64) if normalize else -softmax64(logits) * dot
    for t in range(T):
        for j in range(indices.shape[1]):
            e = int(indices[t, j])
            if 0 <= e < E:
                out[t, e] = w[t, j] * (g[t, j] - dot[t, 0])
    return out


def topk_backward_case(T, E, k, dtype, normalize=True, seed=0, corrupt_ids=False):
    logits = make_logits(T, E, dtype, seed)
    weights, indices = torch.ops.pesc.topk_gating(logits, k, normalize)
    if corrupt_ids:
        indices = bad_ids(indices, E, seed)
    grad_weights = torch.randn(T, k, generator=torch.Generator().manual_seed(seed + 3))
    name = (f"topk_gating_backward_T{T}_E{E}_k{k}_{DT[dtype]}" + ("" if normalize else "_raw")
            + ("_bad_ids" if corrupt_ids else ""))

    def check(result):
        assert_ran(result, name)
        grad = result.buffers["grad_logits"].as_tensor(dtype, (T, E))
        ref = gating_backward64(grad_weights, logits, weights, indices, normalize)
        if corrupt_ids:  # the CPU kernel rejects such ids; the correctly rounded float64 math stands in
            cpu = ref.to(dtype)
        else:
            cpu = torch.ops.pesc.topk_gating_backward(grad_weights, logits, weights, indices, normalize)
        assert_close(grad, cpu, ref, name + " grad_logits")

    return Case(name, "topk_gating_backward", _ints(dtype, T, E, k, normalize=int(normalize)),
                {"grad_weights": grad_weights, "logits": logits, "weights": weights, "indices": indices,
                 "grad_logits": out_like((T, E), dtype)},
                check, cost=_per_token_cost(T, E, k))


def routed_counts(indices, mask, E):
    """counts[e]: routed slots of counted tokens with id e (valid ids only); counts[E]: counted tokens."""
    counted = torch.ones(indices.shape[0], dtype=torch.bool) if mask is None else mask
    ids = indices[counted].reshape(-1).long()
    ids = ids[(ids >= 0) & (ids < E)]
    return torch.cat([torch.bincount(ids, minlength=E), counted.sum().reshape(1)]).to(I32)


def balance_loss64(logits, indices, mask):
    """E * sum_e f_e P_e in float64 with the CUDA kernels' treatment of invalid ids (skipped)."""
    T, E = logits.shape
    k = indices.shape[1]
    counts = routed_counts(indices, mask, E).double()
    tokens = counts[E]
    if tokens == 0:
        return logits.double().sum() * 0.0
    counted = torch.ones(T, dtype=torch.bool) if mask is None else mask
    probs = softmax64(logits)
    mean_prob = (probs * counted[:, None].double()).sum(0) / tokens
    return E * (counts[:E] / (tokens * k) * mean_prob).sum()


def balance_inputs(T, E, k, dtype, seed, masked, corrupt_ids):
    logits = make_logits(T, E, dtype, seed)
    _, indices = torch.ops.pesc.topk_gating(logits, k, True)
    if corrupt_ids:
        indices = bad_ids(indices, E, seed)
    return logits, indices, make_mask(T, seed, masked)


def balance_name(op, T, E, k, dtype, masked, corrupt_ids):
    return f"{op}_T{T}_E{E}_k{k}_{DT[dtype]}" + mask_suffix(masked) + ("_bad_ids" if corrupt_ids else "")


def balance_case(T, E, k, dtype, seed=0, masked=False, corrupt_ids=False):
    logits, indices, mask = balance_inputs(T, E, k, dtype, seed, masked, corrupt_ids)
    name = balance_name("load_balancing_loss", T, E, k, dtype, masked, corrupt_ids)

    def check(result):
        assert_ran(result, name)
        assert_bitwise(result.buffers["counts"].as_tensor(I32, (E + 1,)), routed_counts(indices, mask, E),
                       name + " counts")
        loss = result.buffers["loss"].as_tensor(F32, ())
        ref = balance_loss64(logits, indices, mask)
        cpu = ref.float() if corrupt_ids else torch.ops.pesc.load_balancing_loss(logits, indices, mask)
        assert_close(loss, cpu, ref, name + " loss")

    return Case(name, "load_balancing_loss", _ints(dtype, T, E, k),
                {"logits": logits, "indices": indices, "mask": mask, "loss": out_like((), F32)},
                check, cost=_chunk_cost(T, E, k))


def balance_backward_case(T, E, k, dtype, seed=0, masked=False, corrupt_ids=False):
    logits, indices, mask = balance_inputs(T, E, k, dtype, seed, masked, corrupt_ids)
    grad = torch.tensor(0.75)
    name = balance_name("load_balancing_loss_backward", T, E, k, dtype, masked, corrupt_ids)

    def check(result):
        assert_ran(result, name)
        if T > 0:  # with no token the launcher returns before touching its workspace
            assert_bitwise(result.buffers["counts"].as_tensor(I32, (E + 1,)), routed_counts(indices, mask, E),
                           name + " counts")
        out = result.buffers["grad_logits"].as_tensor(dtype, (T, E))
        leaf = logits.double().requires_grad_(True)
        (ref,) = torch.autograd.grad(balance_loss64(leaf, indices, mask) * grad.double(), leaf, allow_unused=True)
        ref = torch.zeros(T, E, dtype=torch.float64) if ref is None else ref
        if corrupt_ids:
            cpu = ref.to(dtype)
        else:
            cpu = torch.ops.pesc.load_balancing_loss_backward(grad, logits, indices, mask)
        assert_close(out, cpu, ref, name + " grad_logits")

    return Case(name, "load_balancing_loss_backward", _ints(dtype, T, E, k),
                {"grad": grad, "logits": logits, "indices": indices, "mask": mask,
                 "grad_logits": out_like((T, E), dtype)},
                check, cost=_per_token_cost(T, E, k))


def z_loss_case(T, E, dtype, seed=0, masked=False):
    logits = make_logits(T, E, dtype, seed)
    mask = make_mask(T, seed, masked)
    name = f"router_z_loss_T{T}_E{E}_{DT[dtype]}" + mask_suffix(masked)

    def check(result):
        assert_ran(result, name)
        tokens = T if mask is None else int(mask.sum())
        assert_bitwise(result.buffers["token_count"].as_tensor(I32, (1,)), torch.tensor([tokens], dtype=I32),
                       name + " token_count")
        loss = result.buffers["loss"].as_tensor(F32, ())
        ref = reference.router_z_loss(logits.double(), mask)
        assert_close(loss, torch.ops.pesc.router_z_loss(logits, mask), ref, name + " loss")

    return Case(name, "router_z_loss", _ints(dtype, T, E, 1),
                {"logits": logits, "mask": mask, "loss": out_like((), F32)}, check, cost=_chunk_cost(T, E))


def z_loss_backward_case(T, E, dtype, seed=0, masked=False):
    logits = make_logits(T, E, dtype, seed)
    mask = make_mask(T, seed, masked)
    grad = torch.tensor(-1.25)
    name = f"router_z_loss_backward_T{T}_E{E}_{DT[dtype]}" + mask_suffix(masked)

    def check(result):
        assert_ran(result, name)
        out = result.buffers["grad_logits"].as_tensor(dtype, (T, E))
        leaf = logits.double().requires_grad_(True)
        (ref,) = torch.autograd.grad(reference.router_z_loss(leaf, mask) * grad.double(), leaf)
        assert_close(out, torch.ops.pesc.router_z_loss_backward(grad, logits, mask), ref, name + " grad_logits")

    return Case(name, "router_z_loss_backward", _ints(dtype, T, E, 1),
                {"grad": grad, "logits": logits, "mask": mask, "grad_logits": out_like((T, E), dtype)},
                check, cost=_per_token_cost(T, E))


def fused_case(T, E, k, dtype, normalize=True, seed=0, masked=False):
    """topk_gating_with_balancing_loss as the CUDA glue composes it: the loss reads the ids the
    gating launcher wrote on the device, and its routed-slot counts are the op's routed_counts."""
    logits = make_logits(T, E, dtype, seed)
    mask = make_mask(T, seed, masked)
    name = f"topk_gating_with_balancing_loss_T{T}_E{E}_k{k}_{DT[dtype]}" + ("" if normalize else "_raw") + mask_suffix(
        masked)

    def check(result):
        assert_ran(result, name)
        cpu_weights, cpu_indices, cpu_loss, cpu_counts = torch.ops.pesc.topk_gating_with_balancing_loss(
            logits, k, normalize, mask)
        assert_bitwise(result.buffers["indices"].as_tensor(I32, (T, k)), cpu_indices, name + " indices")
        assert_bitwise(result.buffers["routed_counts"].as_tensor(I32, (E + 1,)), cpu_counts, name + " routed_counts")
        p = softmax64(logits).gather(-1, cpu_indices.long())
        ref = p / p.sum(-1, keepdim=True) if normalize else p
        assert_close(result.buffers["weights"].as_tensor(F32, (T, k)), cpu_weights, ref, name + " weights")
        assert_close(result.buffers["loss"].as_tensor(F32, ()), cpu_loss, balance_loss64(logits, cpu_indices, mask),
                     name + " loss")

    return Case(name, "topk_gating_with_balancing_loss", _ints(dtype, T, E, k, normalize=int(normalize)),
                {"logits": logits, "mask": mask, "weights": out_like((T, k), F32), "indices": out_like((T, k), I32),
                 "routed_counts": out_like((E + 1,), I32), "loss": out_like((), F32)},
                check, cost=_topk_cost(T, E, k) + _chunk_cost(T, E, k))


def fused_backward_case(T, E, k, dtype, normalize=True, seed=0, masked=False):
    """Its backward: the two gradients from their launchers, summed as the glue's at::add_ does (in
    fp32, one rounding to the logits' dtype)."""
    logits = make_logits(T, E, dtype, seed)
    mask = make_mask(T, seed, masked)
    weights, indices, _, routed = torch.ops.pesc.topk_gating_with_balancing_loss(logits, k, normalize, mask)
    grad_weights = torch.randn(T, k, generator=torch.Generator().manual_seed(seed + 3))
    grad_loss = torch.tensor(0.75)
    name = (f"topk_gating_with_balancing_loss_backward_T{T}_E{E}_k{k}_{DT[dtype]}" + ("" if normalize else "_raw")
            + mask_suffix(masked))

    def check(result):
        assert_ran(result, name)
        gating = result.buffers["grad_logits"].as_tensor(dtype, (T, E))
        balance = result.buffers["balance_grad"].as_tensor(dtype, (T, E))
        total = (gating.float() + balance.float()).to(dtype)
        cpu = torch.ops.pesc.topk_gating_with_balancing_loss_backward(grad_weights, grad_loss, logits, weights, indices,
                                                                       routed, mask, normalize)
        leaf = logits.double().requires_grad_(True)
        (balance64,) = torch.autograd.grad(balance_loss64(leaf, indices, mask) * grad_loss.double(), leaf,
                                           allow_unused=True)
        ref = gating_backward64(grad_weights, logits, weights, indices, normalize)
        ref = ref if balance64 is None else ref + balance64
        assert_close(total, cpu, ref, name + " grad_logits")

    return Case(name, "topk_gating_with_balancing_loss_backward", _ints(dtype, T, E, k, normalize=int(normalize)),
                {"grad_weights": grad_weights, "grad": grad_loss, "logits": logits, "weights": weights,
                 "indices": indices, "mask": mask, "grad_logits": out_like((T, E), dtype),
                 "balance_grad": out_like((T, E), dtype)},
                check, cost=2 * _per_token_cost(T, E, k))


def cases():
    out = []
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    # top-k: every E with k = 1, 2 and E (k = E runs E selection rounds: small T there).
    for dtype in dtypes:
        for T, E, k in ((7, 1, 1), (7, 8, 1), (7, 8, 2), (7, 8, 8), (7, 60, 2), (1, 60, 60), (7, 1024, 2),
                        (0, 8, 2)):
            out.append(topk_case(T, E, k, dtype, seed=T + E + k))
        out.append(topk_case(7, 60, 3, dtype, special=True, seed=5))
    out.append(topk_case(1, 1024, 1024, torch.float32, seed=1))
    out.append(topk_case(4097, 8, 2, torch.float32, seed=2))
    out.append(topk_case(7, 60, 2, torch.float32, normalize=False, seed=3))
    out.append(topk_case(7, 1024, 4, torch.float16, normalize=False, special=True, seed=4))
    # top-k backward
    for dtype in dtypes:
        for T, E, k, normalize in ((7, 8, 2, True), (7, 60, 3, False), (1, 1024, 2, True), (7, 1, 1, False)):
            out.append(topk_backward_case(T, E, k, dtype, normalize, seed=T * E + k))
    out.append(topk_backward_case(1, 60, 60, torch.float32, True, seed=9))
    out.append(topk_backward_case(0, 8, 2, torch.float32, True))
    out.append(topk_backward_case(4097, 8, 2, torch.float16, False, seed=6))
    out.append(topk_backward_case(7, 8, 3, torch.float32, True, seed=8, corrupt_ids=True))
    out.append(topk_backward_case(7, 60, 4, torch.bfloat16, False, seed=8, corrupt_ids=True))
    # losses: chunk boundaries (64 tokens per partial), masks, every E
    for dtype in dtypes:
        for T, E, k, masked in ((7, 8, 2, False), (130, 60, 2, True), (1, 1024, 8, False), (7, 1, 1, True)):
            out.append(balance_case(T, E, k, dtype, seed=T + E, masked=masked))
            out.append(balance_backward_case(T, E, k, dtype, seed=T + E, masked=masked))
            out.append(z_loss_case(T, E, dtype, seed=T + E, masked=masked))
            out.append(z_loss_backward_case(T, E, dtype, seed=T + E, masked=masked))
    for T in (0, 4097):
        out.append(balance_case(T, 8, 2, torch.float32, seed=T, masked=True))
        out.append(balance_backward_case(T, 8, 2, torch.float32, seed=T, masked=True))
        out.append(z_loss_case(T, 8, torch.float32, seed=T, masked=True))
        out.append(z_loss_backward_case(T, 8, torch.float32, seed=T, masked=True))
    out.append(balance_case(7, 8, 2, torch.float32, seed=4, masked=False, corrupt_ids=True))
    out.append(balance_backward_case(130, 60, 4, torch.float16, seed=4, masked=True, corrupt_ids=True))
    # the values-per-lane widths the E above miss (4, 8, 16 logits per lane), one dtype each
    f32, f16, bf16 = dtypes
    out += [
        topk_case(7, 100, 2, f16, seed=21), topk_case(7, 200, 3, bf16, seed=22), topk_case(7, 300, 2, f32, seed=23),
        topk_backward_case(7, 100, 2, bf16, False, seed=24), topk_backward_case(7, 200, 2, f32, True, seed=25),
        topk_backward_case(7, 300, 4, f16, False, seed=26),
        balance_case(7, 200, 2, f32, seed=27, masked=True), balance_backward_case(7, 300, 2, f16, seed=28),
        z_loss_case(7, 300, bf16, seed=29), z_loss_backward_case(7, 100, f32, seed=30, masked=True),
    ]
    # every token masked out: the losses and their gradients are exactly 0
    out.append(balance_case(7, 8, 2, torch.float32, seed=100, masked="empty"))
    out.append(balance_backward_case(7, 8, 2, torch.float32, seed=100, masked="empty"))
    out.append(z_loss_case(7, 8, torch.float16, seed=100, masked="empty"))
    out.append(z_loss_backward_case(7, 8, torch.float16, seed=100, masked="empty"))
    # the fused op's launcher sequence (gating/cuda.cpp)
    out += [fused_case(130, 60, 2, f32, True, seed=110, masked=True), fused_case(7, 8, 2, bf16, False, seed=111),
            fused_case(0, 8, 2, f16, True, seed=112),
            fused_backward_case(130, 60, 2, f16, True, seed=113, masked=True),
            fused_backward_case(7, 8, 2, f32, False, seed=114)]
    return out
