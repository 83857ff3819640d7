"""Simulated-GPU cases of the permutation launchers (permute/kernels.h): permute, unpermute and
unpermute's backward.

Oracle: the CPU kernels (torch.ops.pesc.*). Bitwise: permute's three outputs (x_perm is a copy;
row_map and offsets are integers), unpermute without weights, and unpermute_backward's grad_y_perm
(one fp32 product per element, then one rounding, on both sides). Within tolerance: unpermute with
weights (the GPU contracts acc + w * v into an FMA) and grad_weights (a warp-tree dot product).
Invalid input, which the CPU kernels reject, follows the README's CUDA promises: ids outside [0, E)
are clamped into [0, E) (so the outputs are the CPU's for the clamped ids: a valid permutation with
offsets[E] = N), and row_map entries outside [0, N) are skipped, neither read nor written.
"""
from __future__ import annotations

import torch
from compare import assert_bitwise, assert_close, assert_ran
from simcase import DTYPE_CODES, Case, In, canary_at, out_like

from pesc_kernels import reference

F32, I32, I64 = torch.float32, torch.int32, torch.int64
DT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def make_rows(shape, dtype, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def make_ids(T, k, E, gen, empty_experts=True):
    """[T, k] ids in [0, E), distinct per token when k <= E (repeated otherwise: the ops allow it);
    with `empty_experts` only every other expert is used where possible, so some get no rows."""
    pool = torch.arange(0, E, 2) if empty_experts and E >= 2 * k else torch.arange(E)
    if k > pool.numel():
        return pool[torch.randint(0, pool.numel(), (T, k), generator=gen)].to(I32)
    order = torch.argsort(torch.rand(T, pool.numel(), generator=gen), dim=1)[:, :k]
    return pool[order].to(I32).reshape(T, k)


def corrupt(ids, E, gen):
    flat = ids.clone().reshape(-1)
    if flat.numel():
        pos = torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 3)]
        bad = torch.tensor([-1, E, E + 7, -(2**31), 2**31 - 1], dtype=I32)
        flat[pos] = bad[torch.arange(pos.numel()) % bad.numel()]
    return flat.reshape(ids.shape)


def _ints(dtype, T, d, k, E=0):
    return {"dtype": DTYPE_CODES[dtype], "T": T, "d": d, "k": k, "E": E}


# Estimated simulated work in millions of instructions (fitted to the simulator's counts: one warp
# per token, CUB's sort about 2300 instructions per key on more than one tile), used only to balance
# the simulator processes.
def _row_cost(T, k, d, per_slot=60):
    return 0.05 + T * 32 * k * per_slot * -(-d // 32) / 1e6


def _sort_cost(N):
    return N * (2300 if N > 4000 else 500) / 1e6


def permute_case(T, d, k, E, dtype, seed=0, bad_ids=False, shift=0):
    gen = torch.Generator().manual_seed(seed)
    x = make_rows((T, d), dtype, gen)
    indices = make_ids(T, k, E, gen)
    if bad_ids:
        indices = corrupt(indices, E, gen)
    N = T * k
    name = (f"permute_T{T}_d{d}_k{k}_E{E}_{DT[dtype]}" + ("_bad_ids" if bad_ids else "")
            + (f"_shift{shift}" if shift else ""))

    def check(result):
        assert_ran(result, name)
        x_perm = result.buffers["x_perm"].as_tensor(dtype, (N, d))
        row_map = result.buffers["row_map"].as_tensor(I32, (T, k))
        offsets = result.buffers["offsets"].as_tensor(I64, (E + 1,))
        # CUDA clamps invalid ids into [0, E); for valid ids the clamp is the identity
        cpu = torch.ops.pesc.permute(x, indices.clamp(0, E - 1), E)
        assert_bitwise(x_perm, cpu[0], name + " x_perm")
        assert_bitwise(row_map, cpu[1], name + " row_map")
        assert_bitwise(offsets, cpu[2], name + " offsets")
        assert torch.equal(row_map.reshape(-1).sort().values, torch.arange(N, dtype=I32)), name + ": not a permutation"
        assert int(offsets[0]) == 0 and int(offsets[E]) == N, name

    return Case(name, "permute", _ints(dtype, T, d, k, E),
                {"x": In(x, shift), "indices": indices, "x_perm": out_like((N, d), dtype, shift),
                 "row_map": out_like((T, k), I32), "offsets": out_like((E + 1,), I64)},
                check, cost=_row_cost(T, k, d, 40) + _sort_cost(N))


def routing(T, k, E, gen):
    """row_map of a valid routing, and fp32 weights."""
    _, row_map, _ = torch.ops.pesc.permute(torch.zeros(T, 1), make_ids(T, k, E, gen), E)
    weights = torch.rand(T, k, generator=gen)
    return row_map, weights


def break_rows(row_map, N, gen):
    """Some entries of row_map replaced by values outside [0, N); also the repaired map (bad
    entries take the rows nobody references) and the mask of valid entries."""
    broken = corrupt(row_map, N, gen)
    valid = (broken >= 0) & (broken < N)
    repaired = broken.clone()
    unused = sorted(set(range(N)) - set(broken[valid].tolist()))
    repaired[~valid] = torch.tensor(unused, dtype=I32)
    return broken, repaired, valid


def unpermute_case(T, d, k, dtype, with_weights=True, with_residual=True, seed=0, bad_rows=False):
    gen = torch.Generator().manual_seed(seed)
    N = T * k
    E = max(1, 2 * k)
    row_map, weights = routing(T, k, E, gen)
    y_perm = make_rows((N, d), dtype, gen)
    residual = make_rows((T, d), dtype, gen) if with_residual else None
    if not with_weights:
        weights = None
    repaired = valid = None
    if bad_rows:
        row_map, repaired, valid = break_rows(row_map, N, gen)
    name = (f"unpermute_T{T}_d{d}_k{k}_{DT[dtype]}" + ("_w" if with_weights else "") + ("_res" if with_residual else "")
            + ("_bad_rows" if bad_rows else ""))

    def check(result):
        assert_ran(result, name)
        y = result.buffers["y"].as_tensor(dtype, (T, d))
        cpu_map, cpu_weights = row_map, weights
        if bad_rows:  # skipped entries == entries of weight 0 on rows nobody else reads
            cpu_map = repaired
            base = torch.ones(T, k) if weights is None else weights
            cpu_weights = torch.where(valid, base, torch.zeros(()))
        cpu = torch.ops.pesc.unpermute(y_perm, cpu_map, cpu_weights, residual)
        if weights is None:  # acc + 1 * v is exact in either order of rounding: same bits as the CPU
            assert_bitwise(y, cpu, name + " y")
        else:
            ref = reference.unpermute(y_perm.double(), cpu_map, cpu_weights.double(),
                                      None if residual is None else residual.double())
            assert_close(y, cpu, ref, name + " y")

    return Case(name, "unpermute", _ints(dtype, T, d, k),
                {"y_perm": y_perm, "row_map": row_map, "weights": weights, "residual": residual,
                 "y": out_like((T, d), dtype)},
                check, cost=_row_cost(T, k, d, 35))


def unpermute_backward_case(T, d, k, dtype, with_weights=True, with_y_perm=True, seed=0, bad_rows=False, shift=0):
    gen = torch.Generator().manual_seed(seed)
    N = T * k
    row_map, weights = routing(T, k, max(1, 3 * k), gen)
    grad_y = make_rows((T, d), dtype, gen)
    y_perm = make_rows((N, d), dtype, gen) if with_y_perm else None
    if not with_weights:
        weights = None
    valid = torch.ones(T, k, dtype=torch.bool)
    if bad_rows:
        row_map, _, valid = break_rows(row_map, N, gen)
    name = (f"unpermute_backward_T{T}_d{d}_k{k}_{DT[dtype]}" + ("_w" if with_weights else "")
            + ("_yperm" if with_y_perm else "") + ("_bad_rows" if bad_rows else "")
            + (f"_shift{shift}" if shift else ""))

    def check(result):
        assert_ran(result, name)
        grad_y_perm = result.buffers["grad_y_perm"].as_tensor(dtype, (N, d))
        w = torch.ones(T, k) if weights is None else weights
        expected = torch.empty(N, d, dtype=dtype)
        written = torch.zeros(N, dtype=torch.bool)
        for t in range(T):  # grad_y_perm[row_map[t, j]] = w[t, j] * grad_y[t]: one fp32 product, one rounding
            for j in range(k):
                if valid[t, j]:
                    row = int(row_map[t, j])
                    expected[row] = (w[t, j] * grad_y[t].float()).to(dtype)
                    written[row] = True
        if not bad_rows:  # the CPU kernel (it rejects a corrupt row_map)
            cpu_rows, cpu_grad_weights = torch.ops.pesc.unpermute_backward(grad_y, row_map, weights, y_perm)
            assert_bitwise(expected, cpu_rows, name + " oracle vs the CPU kernel")
        assert_bitwise(grad_y_perm[written], expected[written], name + " grad_y_perm")
        untouched = result.buffers["grad_y_perm"].data
        row_bytes = d * grad_y.element_size()
        for row in (~written).nonzero().reshape(-1).tolist():  # rows no valid entry targets: never written
            chunk = untouched[row * row_bytes:(row + 1) * row_bytes]
            assert chunk == canary_at(shift + row * row_bytes, row_bytes), f"{name}: row {row} was written"
        if y_perm is not None:
            grad_weights = result.buffers["grad_weights"].as_tensor(F32, (T, k))
            ref = torch.zeros(T, k, dtype=torch.float64)
            ref[valid] = (grad_y.double()[:, None, :].expand(T, k, d)[valid]
                          * y_perm.double()[row_map[valid].long()]).sum(-1)
            cpu = ref.float() if bad_rows else cpu_grad_weights
            assert_close(grad_weights, cpu, ref, name + " grad_weights")

    return Case(name, "unpermute_backward", _ints(dtype, T, d, k),
                {"grad_y": grad_y, "row_map": row_map, "weights": weights, "y_perm": y_perm,
                 "grad_y_perm": out_like((N, d), dtype, shift),
                 "grad_weights": out_like((T, k), F32) if with_y_perm else None},
                check, cost=_row_cost(T, k, d, 90 if with_y_perm else 60))


def cases():
    out = []
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    for dtype in dtypes:
        # d = 13: element path; d = 64 / 24 (fp16/bf16 rows of 48 bytes): 16-byte packs
        for T, d, k, E in ((7, 13, 2, 8), (7, 64, 1, 1), (7, 24, 8, 8), (1, 13, 60, 60), (7, 40, 2, 1024),
                           (0, 13, 2, 8)):
            out.append(permute_case(T, d, k, E, dtype, seed=T + d + k + E))
        for T, d, k, w, res in ((7, 13, 2, True, True), (7, 64, 1, False, False), (7, 24, 8, True, False),
                                (1, 13, 3, False, True), (0, 13, 2, True, True)):
            out.append(unpermute_case(T, d, k, dtype, w, res, seed=T + d + k))
            out.append(unpermute_backward_case(T, d, k, dtype, w, res, seed=T + d + k))
    # 8194 routed slots: CUB's multi-tile (onesweep) sort, whose cost does not depend on the dtype
    out.append(permute_case(4097, 13, 2, 60, torch.float16, seed=1))
    out.append(permute_case(1, 16, 1024, 1024, torch.float32, seed=2))  # k = E = 1024
    out.append(permute_case(7, 64, 2, 8, torch.float32, seed=3, shift=4))  # misaligned rows: element path
    out.append(permute_case(7, 13, 2, 8, torch.float16, seed=4, bad_ids=True))
    out.append(permute_case(33, 16, 3, 60, torch.float32, seed=5, bad_ids=True))
    out.append(permute_case(5, 8, 2, 1, torch.bfloat16, seed=6, bad_ids=True))
    out.append(unpermute_case(4097, 13, 2, torch.float16, True, True, seed=7))
    out.append(unpermute_backward_case(4097, 13, 2, torch.float32, True, True, seed=8))
    out.append(unpermute_backward_case(7, 64, 2, torch.float32, True, True, seed=9, shift=8))
    for dtype, w in ((torch.float32, True), (torch.float16, False)):
        out.append(unpermute_case(9, 13, 3, dtype, w, True, seed=10, bad_rows=True))
        out.append(unpermute_backward_case(9, 13, 3, dtype, w, True, seed=11, bad_rows=True))
    return out
