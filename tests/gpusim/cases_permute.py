"""Simulated-GPU cases of the permutation launchers (permute/kernels.h): permute, unpermute and
unpermute's backward; int64 ids and dropped slots (slots.cu: slot buckets, dropped-slot marks, the
dropped rows of unpermute's backward), run in the sequence the CUDA glue (permute/cuda.cpp) uses.

Oracle: the CPU kernels (torch.ops.pesc.*). Bitwise: permute's three outputs (x_perm is a copy;
row_map and offsets are integers), unpermute without weights, and unpermute_backward's grad_y_perm
(one fp32 product per element, then one rounding, on both sides). Within tolerance: unpermute with
weights (the GPU contracts acc + w * v into an FMA) and grad_weights (a warp-tree dot product).
Invalid input, which the CPU kernels reject, follows the README's CUDA promises: ids outside [0, E)
are clamped into [0, E) (so the outputs are the CPU's for the clamped ids: a valid permutation with
offsets[E] = N), and row_map entries outside [0, N) are skipped, neither read nor written.
With drop_invalid (and int64 ids, which the CPU kernels take too) the CPU kernels are the oracle
bitwise: x_perm, row_map (~row for a dropped slot), offsets, the buckets, grad_y_perm.
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


def make_ids64(T, k, E, gen, bad):
    """int64 ids in [0, E); with `bad` a third of them outside [0, E), past the int32 range too."""
    ids = make_ids(T, k, E, gen).to(I64)
    if bad and ids.numel():
        flat = ids.reshape(-1)
        pos = torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 3)]
        values = torch.tensor([-1, E, 2**32 + 1, -(2**40), 2**63 - 1, -(2**63), 2**31], dtype=I64)
        flat[pos] = values[torch.arange(pos.numel()) % values.numel()]
    return ids


def permute_buckets_case(T, d, k, E, dtype, ids_int64=True, drop_invalid=True, bad=True, all_dropped=False, seed=0):
    """permute through the bucket array, as the CUDA glue runs it for int64 ids or drop_invalid."""
    gen = torch.Generator().manual_seed(seed)
    x = make_rows((T, d), dtype, gen)
    ids = make_ids64(T, k, E, gen, bad) if ids_int64 else (corrupt(make_ids(T, k, E, gen), E, gen) if bad
                                                            else make_ids(T, k, E, gen))
    if all_dropped:
        ids = torch.full_like(ids, E + 3)
    N = T * k
    name = (f"permute_buckets_T{T}_d{d}_k{k}_E{E}_{DT[dtype]}" + ("_i64" if ids_int64 else "_i32")
            + ("_drop" if drop_invalid else "_clamp") + ("_bad_ids" if bad else "") + ("_all_dropped" if all_dropped
                                                                                      else ""))

    def check(result):
        assert_ran(result, name)
        flat = ids.reshape(-1).long()
        valid = (flat >= 0) & (flat < E)
        buckets = torch.where(valid, flat, E) if drop_invalid else flat.clamp(0, E - 1)
        assert_bitwise(result.buffers["buckets"].as_tensor(I32, (N,)), buckets.to(I32), name + " buckets")
        # without dropping, invalid ids are clamped (the CPU kernel rejects them)
        cpu = torch.ops.pesc.permute(x, ids if drop_invalid else ids.clamp(0, E - 1), E, drop_invalid)
        assert_bitwise(result.buffers["x_perm"].as_tensor(dtype, (N, d)), cpu[0], name + " x_perm")
        assert_bitwise(result.buffers["row_map"].as_tensor(I32, (T, k)), cpu[1], name + " row_map")
        assert_bitwise(result.buffers["offsets"].as_tensor(I64, (E + 1,)), cpu[2], name + " offsets")
        if drop_invalid:
            sort_offsets = torch.cat([cpu[2], torch.tensor([N], dtype=I64)])
            assert_bitwise(result.buffers["sort_offsets"].as_tensor(I64, (E + 2,)), sort_offsets,
                           name + " sort_offsets")

    ints = _ints(dtype, T, d, k, E)
    ints.update(ids_int64=int(ids_int64), drop_invalid=int(drop_invalid))
    return Case(name, "permute_buckets", ints,
                {"x": x, "indices": ids, "x_perm": out_like((N, d), dtype), "row_map": out_like((T, k), I32),
                 "offsets": out_like((E + 1,), I64)},
                check, cost=_row_cost(T, k, d, 40) + _sort_cost(N) + N * d * 10 / 1e6)


def dropping_routing(T, k, E, gen):
    """row_map of a routing with dropped slots (some ids outside [0, E), drop_invalid), fp32 weights."""
    ids = make_ids64(T, k, E, gen, bad=True)
    _, row_map, _ = torch.ops.pesc.permute(torch.zeros(T, 1), ids, E, True)
    return row_map, torch.rand(T, k, generator=gen)


def unpermute_dropped_case(T, d, k, dtype, with_weights=True, seed=0):
    """unpermute of a row_map with dropped slots (entries ~row < 0): they add nothing."""
    gen = torch.Generator().manual_seed(seed)
    N, E = T * k, max(1, 2 * k)
    row_map, weights = dropping_routing(T, k, E, gen)
    weights = weights if with_weights else None
    y_perm = make_rows((N, d), dtype, gen)
    residual = make_rows((T, d), dtype, gen)
    name = f"unpermute_dropped_T{T}_d{d}_k{k}_{DT[dtype]}" + ("_w" if with_weights else "")

    def check(result):
        assert_ran(result, name)
        y = result.buffers["y"].as_tensor(dtype, (T, d))
        cpu = torch.ops.pesc.unpermute(y_perm, row_map, weights, residual)
        if weights is None:
            assert_bitwise(y, cpu, name + " y")
        else:
            ref = reference.unpermute(y_perm.double(), row_map, weights.double(), residual.double())
            assert_close(y, cpu, ref, name + " y")

    return Case(name, "unpermute", _ints(dtype, T, d, k),
                {"y_perm": y_perm, "row_map": row_map, "weights": weights, "residual": residual,
                 "y": out_like((T, d), dtype)},
                check, cost=_row_cost(T, k, d, 35))


def unpermute_backward_dropped_case(T, d, k, dtype, with_weights=True, with_y_perm=True, seed=0):
    """unpermute_backward as the CUDA glue runs it (scatter, then the dropped slots' rows zeroed)."""
    gen = torch.Generator().manual_seed(seed)
    N, E = T * k, max(1, 3 * k)
    row_map, weights = dropping_routing(T, k, E, gen)
    weights = weights if with_weights else None
    grad_y = make_rows((T, d), dtype, gen)
    y_perm = make_rows((N, d), dtype, gen) if with_y_perm else None
    name = (f"unpermute_backward_dropped_T{T}_d{d}_k{k}_{DT[dtype]}" + ("_w" if with_weights else "")
            + ("_yperm" if with_y_perm else ""))

    def check(result):
        assert_ran(result, name)
        cpu_rows, cpu_grad_weights = torch.ops.pesc.unpermute_backward(grad_y, row_map, weights, y_perm)
        assert_bitwise(result.buffers["grad_y_perm"].as_tensor(dtype, (N, d)), cpu_rows, name + " grad_y_perm")
        if y_perm is not None:
            kept = row_map >= 0
            ref = torch.zeros(T, k, dtype=torch.float64)
            rows = y_perm.double()[row_map[kept].long()]
            ref[kept] = (grad_y.double()[:, None, :].expand(T, k, d)[kept] * rows).sum(-1)
            assert_close(result.buffers["grad_weights"].as_tensor(F32, (T, k)), cpu_grad_weights, ref,
                         name + " grad_weights")

    return Case(name, "unpermute_backward_dropped", _ints(dtype, T, d, k),
                {"grad_y": grad_y, "row_map": row_map, "weights": weights, "y_perm": y_perm,
                 "grad_y_perm": out_like((N, d), dtype),
                 "grad_weights": out_like((T, k), F32) if with_y_perm else None},
                check, cost=_row_cost(T, k, d, 90 if with_y_perm else 60) + N * d * 10 / 1e6)


def zero_dropped_slot_rows_case(T, d, k, dtype, seed=0):
    """launch_zero_dropped_slot_rows alone, on a row_map with dropped slots and entries no slot can
    hold (~N and beyond, INT32_MIN): rows ~row_map[s] of dropped slots inside [0, N) become 0, every
    other row keeps the canary."""
    gen = torch.Generator().manual_seed(seed)
    N = T * k
    row_map, _ = dropping_routing(T, k, max(1, 2 * k), gen)
    flat = row_map.reshape(-1)
    if N >= 3:
        flat[-3:] = torch.tensor([~N, ~(N + 5), -(2**31)], dtype=I32)
    name = f"zero_dropped_slot_rows_T{T}_d{d}_k{k}_{DT[dtype]}"

    def check(result):
        assert_ran(result, name)
        entries = flat.long()
        zeroed = sorted({int(~e) for e in entries.tolist() if e < 0 and ~e < N})
        assert zeroed or N < 3, f"{name}: the case has no dropped slot"
        data = result.buffers["rows"].data
        row_bytes = d * torch.empty((), dtype=dtype).element_size()
        rows = result.buffers["rows"].as_tensor(dtype, (N, d))
        for row in range(N):
            if row in zeroed:
                assert_bitwise(rows[row], torch.zeros(d, dtype=dtype), f"{name} row {row}")
            else:
                chunk = data[row * row_bytes:(row + 1) * row_bytes]
                assert chunk == canary_at(row * row_bytes, row_bytes), f"{name}: row {row} was written"

    return Case(name, "zero_dropped_slot_rows", _ints(dtype, T, d, k),
                {"row_map": row_map, "rows": out_like((N, d), dtype)}, check, cost=0.05 + N * d * 10 / 1e6)


def new_launcher_cases():
    """int64 ids and dropped slots (slots.cu), run as the CUDA glue runs them."""
    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out += [
            permute_buckets_case(7, 13, 2, 8, dtype, ids_int64=True, drop_invalid=True, seed=20),
            permute_buckets_case(7, 24, 3, 60, dtype, ids_int64=False, drop_invalid=True, seed=21),
            unpermute_dropped_case(7, 13, 3, dtype, with_weights=True, seed=22),
            unpermute_backward_dropped_case(7, 13, 3, dtype, with_weights=True, with_y_perm=True, seed=23),
        ]
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    out += [
        permute_buckets_case(7, 64, 1, 1, f32, ids_int64=True, drop_invalid=False, seed=24),  # clamped, 16-byte rows
        permute_buckets_case(33, 16, 2, 8, f16, ids_int64=True, drop_invalid=False, bad=False, seed=25),
        permute_buckets_case(5, 8, 2, 1, bf16, ids_int64=True, drop_invalid=True, all_dropped=True, seed=26),
        permute_buckets_case(1, 13, 60, 60, f32, ids_int64=True, drop_invalid=True, seed=27),
        permute_buckets_case(0, 13, 2, 8, f32, ids_int64=True, drop_invalid=True, seed=28),
        permute_buckets_case(130, 16, 2, 1024, f16, ids_int64=True, drop_invalid=True, seed=29),
        unpermute_dropped_case(1, 13, 2, f16, with_weights=False, seed=30),
        unpermute_backward_dropped_case(7, 64, 2, f32, with_weights=False, with_y_perm=False, seed=31),
        unpermute_backward_dropped_case(0, 13, 2, f16, seed=32),
        zero_dropped_slot_rows_case(7, 13, 3, f32, seed=33),
        zero_dropped_slot_rows_case(7, 8, 2, bf16, seed=34),
        zero_dropped_slot_rows_case(0, 8, 2, f16, seed=35),
    ]
    return out


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
    return out + new_launcher_cases()
