"""Simulated-GPU cases of the segmented-GEMM launchers (adapter/kernels.h, adapter/segment_gemm.h):
the segment map, grouped_mm and its backward (dx, dw), grouped_linear (the grouped_mm op's
launchers: either weight layout, bias, dropped rows) and its backward (dx, dw, dbias),
zero_dropped_rows, the adapter forward (fused for r <= 128, two segment GEMMs above) and backward,
launch_segment_gemm itself, and the gated activations (every kind, both layouts) and their backward.

Oracle: the CPU kernels (torch.ops.pesc.*) within the tolerance rule of tests/_helpers.py against
float64 math (the reference ops in float64); the segment map (clamped offsets, row-tile starts)
bitwise against the formula of segment_gemm.h, and the rows past the clamped offsets[E] (dropped
slots) bitwise zero where the CUDA glue zeroes them (adapter/cuda.cpp; the runner ops call
launch_zero_dropped_rows as it does). The simulator runs sm_75 PTX, where the fp32 FMA
and fp16 WMMA paths exist; bf16 and TF32 (fp32 with allow_tf32) need sm_80, so there the launchers
must return cudaErrorNoKernelImageForDevice and leave every output unwritten.
"""
from __future__ import annotations

import torch
from compare import assert_bitwise, assert_close, assert_ran, assert_untouched
from simcase import CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NO_KERNEL_IMAGE, DTYPE_CODES, Case, canary_at, out_like

from pesc_kernels import ops, reference

F32, I64 = torch.float32, torch.int64
DT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
ROW_TILE = 64  # kRowTile in segment_gemm.h
FUSED_MAX_RANK = 128  # kMaxFusedRank in adapter/kernels.h
EPILOGUE = {"store": 0, "pre_activation": 1, "activation_grad": 2}  # pesc::GemmEpilogue

# name -> rows per expert: empty experts, a single row, segments shorter and longer than one tile
SEGMENTS = {
    "mixed": [0, 65, 0, 130, 1, 0, 3],
    "E1": [37],
    "E8": [5, 0, 64, 1, 0, 0, 20, 9],
    "E60": torch.bincount(torch.randint(0, 60, (50,), generator=torch.Generator().manual_seed(5)),
                          minlength=60).tolist(),
    "E1024": torch.bincount(torch.randint(0, 1024, (40,), generator=torch.Generator().manual_seed(6)),
                            minlength=1024).tolist(),
    "N0": [0, 0, 0],
    "short": [70, 0, 10],
    "one": [0, 1, 0],
}


def offsets_of(counts):
    return torch.tensor([0] + torch.tensor(counts, dtype=I64).cumsum(0).tolist(), dtype=I64)


def clamped_offsets(offsets, N):
    """segment_gemm.h: c[0] = 0, c[e] = min(N, max(0, offsets[0..e])) for 0 < e <= E; rows c[E]..N
    (dropped slots) belong to no expert."""
    c = torch.cummax(offsets, 0).values.clamp(0, N)
    c[0] = 0
    return c


def segment_map_words(offsets, N):
    """The workspace launch_segment_map writes: clamped offsets [E+1], then row-tile starts [E+1]."""
    c = clamped_offsets(offsets, N)
    tiles = (c[1:] - c[:-1] + ROW_TILE - 1) // ROW_TILE
    return torch.cat([c, torch.cat([torch.zeros(1, dtype=I64), tiles.cumsum(0)])])


def make(shape, dtype, gen, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def _ints(dtype, offsets, N, allow_tf32=False, **extra):
    return {"dtype": DTYPE_CODES[dtype], "E": offsets.numel() - 1, "N": N, "allow_tf32": int(allow_tf32), **extra}


def _gemm_cost(counts, K, M, dtype):
    """Estimated simulated work of one segment GEMM and its weight-gradient counterpart, in millions of
    instructions (fitted to the simulator's counts; only used to balance the simulator processes): an
    fp32 FMA tile costs about 12000 instructions per unit of K, a WMMA tile about a third, an idle CTA
    of the grid (row_tile_bound) about 14000."""
    per_k = 12000 if dtype == torch.float32 else 4000
    col_tiles = -(-M // 64)
    busy = sum(-(-c // ROW_TILE) for c in counts)
    idle = -(-sum(counts) // ROW_TILE) + len(counts) - busy
    return 0.05 + (busy * col_tiles * per_k * -(-K // 32) * 32 + idle * col_tiles * 14000) / 1e6


def _fused_cost(counts, d, r, dtype):
    """The same estimate for the fused adapter forward (r <= 128): per tile, phase 1 over d with a
    64 x R_PAD product, phase 3 with a 64 x 64 product over R_PAD, per 64 output columns."""
    r_pad = next(p for p in (16, 32, 64, 128) if r <= p)
    per_thread = -(-d // 32) * 32 * (8 + r_pad // 16 + r_pad // 2) + -(-d // 64) * r_pad * 44
    busy = sum(-(-c // ROW_TILE) for c in counts)
    idle = -(-sum(counts) // ROW_TILE) + len(counts) - busy
    scale = 1.0 if dtype == torch.float32 else 0.33
    return 0.05 + (busy * 128 * per_thread * scale + idle * 14000) / 1e6


def expect_status(dtype, allow_tf32):
    needs_sm80 = dtype == torch.bfloat16 or (dtype == torch.float32 and allow_tf32)
    return CUDA_ERROR_NO_KERNEL_IMAGE if needs_sm80 else 0


def check_segment_map(result, offsets, N, name):
    assert_bitwise(result.buffers["segment_map"].as_tensor(I64, (2 * offsets.numel(),)), segment_map_words(offsets, N),
                   name + " segment map")


def suffix(dtype, allow_tf32, offsets_kind):
    offsets = "" if offsets_kind == "valid" else f"_{offsets_kind}_offsets"
    return f"_{DT[dtype]}" + ("_tf32" if allow_tf32 else "") + offsets


def corrupt_offsets(offsets, kind, N):
    """`valid`; `unsorted` (decreasing steps inside); `out_of_range` (negative, past N, wrong ends)."""
    o = offsets.clone()
    E = o.numel() - 1
    if kind == "unsorted" and E >= 3:
        o[1], o[2] = o[2] + 5, max(0, int(o[1]) - 3)
    elif kind == "out_of_range":
        o[0] = -7
        o[E // 2] = N + 40
        o[E] = N - 1 if N > 0 else 3
        if E >= 2:
            o[1] = -3
    return o


def segment_map_case(segments, kind):
    counts = SEGMENTS[segments]
    N = sum(counts)
    offsets = corrupt_offsets(offsets_of(counts), kind, N)
    name = f"segment_map_{segments}_{kind}"

    def check(result):
        assert_ran(result, name)
        check_segment_map(result, offsets, N, name)

    return Case(name, "segment_map", _ints(torch.float32, offsets, N), {"offsets": offsets}, check,
                cost=1 + offsets.numel() / 500)


def grouped_mm_case(segments, K, M, dtype, allow_tf32=False, offsets_kind="valid", seed=0):
    counts = SEGMENTS[segments]
    N, E = sum(counts), len(counts)
    gen = torch.Generator().manual_seed(seed + K * M)
    x = make((N, K), dtype, gen)
    w = make((E, K, M), dtype, gen, K ** -0.5)
    offsets = corrupt_offsets(offsets_of(counts), offsets_kind, N)
    status = expect_status(dtype, allow_tf32)
    name = f"grouped_mm_{segments}_K{K}_M{M}" + suffix(dtype, allow_tf32, offsets_kind)

    def check(result):
        assert_ran(result, name, expect_launch=status)
        check_segment_map(result, offsets, N, name)
        if status:
            return assert_untouched(result, name, ["y"])
        clamped = clamped_offsets(offsets, N)
        kept = int(clamped[E])  # launch_grouped_mm leaves rows past the clamped offsets[E] alone
        y = result.buffers["y"].as_tensor(dtype, (N, M))
        ref = reference.grouped_mm(x.double(), w.double(), clamped)
        assert_close(y[:kept], torch.ops.pesc.grouped_mm(x, w, clamped)[:kept], ref[:kept], name + " y")
        row_bytes = M * x.element_size()
        tail = result.buffers["y"].data[kept * row_bytes:]
        assert tail == canary_at(kept * row_bytes, len(tail)), f"{name}: a row past offsets[E] was written"

    return Case(name, "grouped_mm", _ints(dtype, offsets, N, allow_tf32, K=K, M=M),
                {"offsets": offsets, "x": x, "w": w, "y": out_like((N, M), dtype)}, check,
                cost=_gemm_cost(counts, K, M, dtype))


def grads64(fn, inputs, upstream, needed):
    """Gradients of sum(fn(*inputs) * upstream) in float64 for the inputs marked in `needed`."""
    leaves = [t.double().requires_grad_(n) for t, n in zip(inputs, needed)]
    loss = (fn(*leaves) * upstream.double()).sum()
    wanted = [t for t in leaves if t.requires_grad]
    # with no rows (N = 0) the reference's output does not depend on the weights: their gradients are 0
    grads = torch.autograd.grad(loss, wanted, allow_unused=True) if loss.requires_grad else [None] * len(wanted)
    it = iter(grads)
    out = []
    for t, n in zip(leaves, needed):
        g = next(it) if n else None
        out.append(torch.zeros_like(t) if n and g is None else g)
    return out


def grouped_mm_backward_case(segments, K, M, dtype, mask=(True, True), allow_tf32=False, seed=0):
    counts = SEGMENTS[segments]
    N, E = sum(counts), len(counts)
    gen = torch.Generator().manual_seed(seed + K + M)
    x, w = make((N, K), dtype, gen), make((E, K, M), dtype, gen, K ** -0.5)
    grad_y = make((N, M), dtype, gen)
    offsets = offsets_of(counts)
    status = expect_status(dtype, allow_tf32)
    name = f"grouped_mm_backward_{segments}_K{K}_M{M}" + suffix(dtype, allow_tf32, "valid") + (
        "" if all(mask) else "_mask" + "".join(str(int(m)) for m in mask))
    outputs = {"grad_x": ((N, K), mask[0]), "grad_w": ((E, K, M), mask[1])}

    def check(result):
        assert_ran(result, name, expect_launch=status)
        if status:
            return assert_untouched(result, name, [k for k, (_, m) in outputs.items() if m])
        cpu = torch.ops.pesc.grouped_mm_backward(grad_y, x, w, offsets, False, [*mask, False])[:2]
        ref = grads64(lambda a, b: reference.grouped_mm(a, b, offsets), [x, w], grad_y, mask)
        for (out_name, (shape, needed)), c, r in zip(outputs.items(), cpu, ref):
            if needed:
                assert_close(result.buffers[out_name].as_tensor(dtype, shape), c, r, f"{name} {out_name}")

    bufs = {"offsets": offsets, "grad_y": grad_y, "x": x, "w": w}
    bufs.update({k: out_like(shape, dtype) if m else None for k, (shape, m) in outputs.items()})
    return Case(name, "grouped_mm_backward", _ints(dtype, offsets, N, allow_tf32, K=K, M=M), bufs, check,
                cost=2 * _gemm_cost(counts, K, M, dtype))


def adapter_inputs(counts, d, r, dtype, seed, dropped=0):
    gen = torch.Generator().manual_seed(seed + 31 * r + d)
    N, E = sum(counts) + dropped, len(counts)
    x = make((N, d), dtype, gen)
    w_down = make((E, d, r), dtype, gen, d ** -0.5)
    w_up = make((E, r, d), dtype, gen, r ** -0.5)
    return x, w_down, w_up, gen


def adapter_case(segments, d, r, dtype, act="gelu", scaling=0.5, allow_tf32=False, offsets_kind="valid", seed=0,
                 dropped=0):
    counts = SEGMENTS[segments]
    N = sum(counts) + dropped
    x, w_down, w_up, _ = adapter_inputs(counts, d, r, dtype, seed, dropped)
    offsets = corrupt_offsets(offsets_of(counts), offsets_kind, N)
    status = expect_status(dtype, allow_tf32)
    fused = r <= FUSED_MAX_RANK
    name = f"adapter_{segments}_d{d}_r{r}_{act}" + (f"_drop{dropped}" if dropped else "") + suffix(
        dtype, allow_tf32, offsets_kind)

    def check(result):
        assert_ran(result, name, expect_launch=status)
        check_segment_map(result, offsets, N, name)
        if status:
            return assert_untouched(result, name, ["y", "h"] + ([] if fused else ["activation_buffer"]))
        clamped = clamped_offsets(offsets, N)
        cpu_y, cpu_h = torch.ops.pesc.adapter(x, w_down, w_up, clamped, act, scaling)
        ref_y = reference.adapter(x.double(), w_down.double(), w_up.double(), clamped, act, scaling)
        ref_h = reference.grouped_mm(x.double(), w_down.double(), clamped)
        assert_close(result.buffers["h"].as_tensor(dtype, (N, r)), cpu_h, ref_h, name + " h")
        assert_close(result.buffers["y"].as_tensor(dtype, (N, d)), cpu_y, ref_y, name + " y")

    bufs = {"offsets": offsets, "x": x, "w_down": w_down, "w_up": w_up, "y": out_like((N, d), dtype),
            "h": out_like((N, r), dtype), "activation_buffer": None if fused else out_like((N, r), dtype)}
    return Case(name, "adapter", _ints(dtype, offsets, N, allow_tf32, d=d, r=r, act=ops.ACTIVATIONS.index(act)),
                bufs, check, floats={"scaling": scaling},
                cost=_fused_cost(counts, d, r, dtype) if fused
                else _gemm_cost(counts, d, r, dtype) + _gemm_cost(counts, r, d, dtype))


def adapter_backward_case(segments, d, r, dtype, act="gelu", scaling=0.5, mask=(True, True, True), seed=0,
                          dropped=0):
    counts = SEGMENTS[segments]
    N, E = sum(counts) + dropped, len(counts)
    x, w_down, w_up, gen = adapter_inputs(counts, d, r, dtype, seed, dropped)
    offsets = offsets_of(counts)
    _, h = torch.ops.pesc.adapter(x, w_down, w_up, offsets, act, scaling)
    grad_y = make((N, d), dtype, gen)
    status = expect_status(dtype, False)
    name = f"adapter_backward_{segments}_d{d}_r{r}_{act}" + (f"_drop{dropped}" if dropped else "") + f"_{DT[dtype]}" + (
        "" if all(mask) else "_mask" + "".join(str(int(m)) for m in mask))
    outputs = {"grad_x": ((N, d), mask[0]), "grad_w_down": ((E, d, r), mask[1]), "grad_w_up": ((E, r, d), mask[2])}
    needs_dh = mask[0] or mask[1]

    def check(result):
        assert_ran(result, name, expect_launch=status)
        if status:
            return assert_untouched(result, name, [k for k, (_, m) in outputs.items() if m])
        cpu = torch.ops.pesc.adapter_backward(grad_y, x, w_down, w_up, offsets, h, act, scaling, list(mask))
        ref = grads64(lambda a, b, c: reference.adapter(a, b, c, offsets, act, scaling), [x, w_down, w_up], grad_y,
                      mask)
        for (out_name, (shape, needed)), c, r64 in zip(outputs.items(), cpu, ref):
            if needed:
                assert_close(result.buffers[out_name].as_tensor(dtype, shape), c, r64, f"{name} {out_name}")

    bufs = {"offsets": offsets, "grad_y": grad_y, "x": x, "w_down": w_down, "w_up": w_up, "h": h,
            "dh_buffer": out_like((N, r), dtype) if needs_dh else None}
    bufs.update({k: out_like(shape, dtype) if m else None for k, (shape, m) in outputs.items()})
    return Case(name, "adapter_backward", _ints(dtype, offsets, N, d=d, r=r, act=ops.ACTIVATIONS.index(act)),
                bufs, check, floats={"scaling": scaling},
                cost=2 * _gemm_cost(counts, d, r, dtype) + 2 * _gemm_cost(counts, r, d, dtype))


def dropped_offsets(counts, dropped):
    """Offsets of `counts` rows per expert followed by `dropped` rows past offsets[E] (N = the sum)."""
    return offsets_of(counts), sum(counts) + dropped


def assert_zero_rows(t, start, name):
    """Rows start.. of t are +0 (the rows of dropped slots, past the clamped offsets[E])."""
    assert_bitwise(t[start:], torch.zeros_like(t[start:]), name + " rows past offsets[E]")


def grouped_linear_case(segments, K, M, dtype, w_transposed=False, with_bias=False, dropped=0,
                        offsets_kind="valid", seed=0):
    counts = SEGMENTS[segments]
    E = len(counts)
    offsets, N = dropped_offsets(counts, dropped)
    offsets = corrupt_offsets(offsets, offsets_kind, N)
    gen = torch.Generator().manual_seed(seed + K * M)
    x = make((N, K), dtype, gen)
    w = make((E, M, K) if w_transposed else (E, K, M), dtype, gen, K ** -0.5)
    bias = make((E, M), dtype, gen) if with_bias else None
    status = expect_status(dtype, False)
    name = (f"grouped_linear_{segments}_K{K}_M{M}" + ("_wt" if w_transposed else "") + ("_bias" if with_bias else "")
            + (f"_drop{dropped}" if dropped else "") + suffix(dtype, False, offsets_kind))

    def check(result):
        assert_ran(result, name, expect_launch=status)
        check_segment_map(result, offsets, N, name)
        if status:
            return assert_untouched(result, name, ["y"])
        clamped = clamped_offsets(offsets, N)
        y = result.buffers["y"].as_tensor(dtype, (N, M))
        ref = reference.grouped_mm(x.double(), w.double(), clamped, None if bias is None else bias.double(),
                                   w_transposed)
        assert_close(y, torch.ops.pesc.grouped_mm(x, w, clamped, bias, w_transposed), ref, name + " y")
        assert_zero_rows(y, int(clamped[E]), name + " y")

    return Case(name, "grouped_linear", _ints(dtype, offsets, N, K=K, M=M, w_transposed=int(w_transposed)),
                {"offsets": offsets, "x": x, "w": w, "bias": bias, "y": out_like((N, M), dtype)}, check,
                cost=_gemm_cost(counts, K, M, dtype) + N * M * 30 / 1e6)


def grouped_linear_backward_case(segments, K, M, dtype, w_transposed=False, mask=(True, True, True), dropped=0,
                                 seed=0):
    counts = SEGMENTS[segments]
    E = len(counts)
    offsets, N = dropped_offsets(counts, dropped)
    gen = torch.Generator().manual_seed(seed + K + M)
    x = make((N, K), dtype, gen)
    w = make((E, M, K) if w_transposed else (E, K, M), dtype, gen, K ** -0.5)
    grad_y = make((N, M), dtype, gen)
    # bf16 fails at its first GEMM; grad_bias alone is a column sum, which runs below sm_80 too
    status = expect_status(dtype, False) if (mask[0] or mask[1]) else 0
    name = (f"grouped_linear_backward_{segments}_K{K}_M{M}" + ("_wt" if w_transposed else "")
            + (f"_drop{dropped}" if dropped else "") + f"_{DT[dtype]}"
            + ("" if all(mask) else "_mask" + "".join(str(int(m)) for m in mask)))
    outputs = {"grad_x": ((N, K), mask[0]), "grad_w": (tuple(w.shape), mask[1]), "grad_bias": ((E, M), mask[2])}

    def check(result):
        assert_ran(result, name, expect_launch=status)
        if status:
            return assert_untouched(result, name, [k for k, (_, m) in outputs.items() if m])
        cpu = torch.ops.pesc.grouped_mm_backward(grad_y, x, w, offsets, w_transposed, list(mask))
        bias = torch.zeros(E, M, dtype=dtype)
        ref = grads64(lambda a, b, c: reference.grouped_mm(a, b, offsets, c, w_transposed), [x, w, bias], grad_y,
                      mask)
        for (out_name, (shape, needed)), c, r in zip(outputs.items(), cpu, ref):
            if needed:
                got = result.buffers[out_name].as_tensor(dtype, shape)
                assert_close(got, c, r, f"{name} {out_name}")
                if out_name == "grad_x":
                    assert_zero_rows(got, int(offsets[E]), f"{name} {out_name}")

    bufs = {"offsets": offsets, "grad_y": grad_y, "x": x, "w": w}
    bufs.update({k: out_like(shape, dtype) if m else None for k, (shape, m) in outputs.items()})
    return Case(name, "grouped_linear_backward", _ints(dtype, offsets, N, K=K, M=M, w_transposed=int(w_transposed)),
                bufs, check, cost=2 * _gemm_cost(counts, K, M, dtype) + E * -(-M // 256) * 256 * 40 / 1e6)


def zero_dropped_rows_case(segments, cols, dtype, dropped, offsets_kind="valid"):
    """launch_zero_dropped_rows alone: rows past the clamped offsets[E] become 0, the others keep the canary."""
    counts = SEGMENTS[segments]
    E = len(counts)
    offsets, N = dropped_offsets(counts, dropped)
    offsets = corrupt_offsets(offsets, offsets_kind, N)
    name = f"zero_dropped_rows_{segments}_cols{cols}_drop{dropped}" + suffix(dtype, False, offsets_kind)

    def check(result):
        assert_ran(result, name)
        check_segment_map(result, offsets, N, name)
        kept = int(clamped_offsets(offsets, N)[E])
        out = result.buffers["out"]
        row_bytes = cols * torch.empty((), dtype=dtype).element_size()
        assert out.data[:kept * row_bytes] == canary_at(0, kept * row_bytes), f"{name}: a kept row was written"
        assert_zero_rows(out.as_tensor(dtype, (N, cols)), kept, name)

    return Case(name, "zero_dropped_rows", _ints(dtype, offsets, N, cols=cols),
                {"offsets": offsets, "out": out_like((N, cols), dtype)}, check, cost=0.05 + N * cols * 20 / 1e6)


LIMIT, ALPHA = 7.0, 1.702  # GPT-OSS's clamped SwiGLU (the op's defaults)


def gated_inputs(N, F, dtype, seed, special):
    """h [N, 2F] spread wide enough that the clamps of the clamped SwiGLU act (|h| > 7 in places);
    with `special` a NaN, +inf and -inf gate and up value as well."""
    gen = torch.Generator().manual_seed(seed)
    h = make((N, 2 * F), dtype, gen, 4.0)
    if special and N >= 2 and F >= 3:
        h[0, 0], h[0, 1], h[0, 2] = float("nan"), float("inf"), float("-inf")
        h[1, -1], h[1, -2], h[1, -3] = float("nan"), float("inf"), float("-inf")
    return h, gen


def gated_ints(dtype, N, F, act, interleaved):
    clamped = act == "clamped_swiglu"
    return {"dtype": DTYPE_CODES[dtype], "N": N, "F": F, "act": 0 if clamped else ops.ACTIVATIONS.index(act),
            "clamped": int(clamped), "interleaved": int(interleaved)}


def gated_name(op, N, F, act, interleaved, dtype, special):
    return f"{op}_N{N}_F{F}_{act}" + ("_interleaved" if interleaved else "") + f"_{DT[dtype]}" + (
        "_special" if special else "")


def gated_case(N, F, dtype, act, interleaved, seed=0, special=False):
    h, _ = gated_inputs(N, F, dtype, seed, special)
    name = gated_name("gated_activation", N, F, act, interleaved, dtype, special)

    def check(result):
        assert_ran(result, name)
        a = result.buffers["a"].as_tensor(dtype, (N, F))
        cpu = torch.ops.pesc.gated_activation(h, act, interleaved, LIMIT, ALPHA)
        ref = reference.gated_activation(h.double(), act, interleaved, LIMIT, ALPHA)
        assert_close(a, cpu, ref, name + " a")

    return Case(name, "gated_activation", gated_ints(dtype, N, F, act, interleaved),
                {"h": h, "a": out_like((N, F), dtype)}, check, floats={"limit": LIMIT, "alpha": ALPHA},
                cost=0.05 + N * F * 150 / 1e6)


def gated_backward_case(N, F, dtype, act, interleaved, seed=0, special=False):
    h, gen = gated_inputs(N, F, dtype, seed, special)
    grad_a = make((N, F), dtype, gen)
    name = gated_name("gated_activation_backward", N, F, act, interleaved, dtype, special)

    def check(result):
        assert_ran(result, name)
        grad_h = result.buffers["grad_h"].as_tensor(dtype, (N, 2 * F))
        cpu = torch.ops.pesc.gated_activation_backward(grad_a, h, act, interleaved, LIMIT, ALPHA)
        (ref,) = grads64(lambda t: reference.gated_activation(t, act, interleaved, LIMIT, ALPHA), [h], grad_a, [True])
        assert_close(grad_h, cpu, ref, name + " grad_h")

    return Case(name, "gated_activation_backward", gated_ints(dtype, N, F, act, interleaved),
                {"grad_a": grad_a, "h": h, "grad_h": out_like((N, 2 * F), dtype)}, check,
                floats={"limit": LIMIT, "alpha": ALPHA}, cost=0.05 + N * F * 250 / 1e6)


def new_launcher_cases():
    """grouped_linear (both weight layouts, bias, dropped rows), zero_dropped_rows, gated_activation;
    the adapter with rows past offsets[E] too."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    out = [adapter_case("E8", 24, 8, f32, "silu", 1.0, seed=38, dropped=6),
           adapter_backward_case("E8", 24, 8, f16, "gelu", 0.5, seed=39, dropped=6)]
    for dtype in (f32, f16):
        d = 37 if dtype == f32 else 40
        out += [
            # several row and column tiles, empty experts, both layouts, bias, dropped rows
            grouped_linear_case("mixed", d, 77, dtype, w_transposed=True, with_bias=True, dropped=5, seed=40),
            grouped_linear_case("mixed", d, 24, dtype, w_transposed=False, with_bias=True, seed=41),
            grouped_linear_case("E8", 12, 16, dtype, w_transposed=True, with_bias=False, dropped=3, seed=42),
            grouped_linear_case("E1", 16, 20, dtype, w_transposed=True, with_bias=True, seed=43),
            grouped_linear_case("N0", 16, 8, dtype, w_transposed=True, with_bias=True, dropped=7, seed=44),
            grouped_linear_case("E8", 12, 16, dtype, w_transposed=True, with_bias=True, offsets_kind="out_of_range",
                                seed=45),
            grouped_linear_backward_case("mixed", d, 24, dtype, w_transposed=True, dropped=4, seed=46),
            grouped_linear_backward_case("E8", 16, 20, dtype, w_transposed=False, dropped=2, seed=47),
            grouped_linear_backward_case("E8", 16, 20, dtype, w_transposed=True, mask=(False, True, False), seed=48),
            grouped_linear_backward_case("E1", 12, 8, dtype, w_transposed=True, mask=(True, False, True), seed=49),
            grouped_linear_backward_case("N0", 16, 8, dtype, w_transposed=True, dropped=6, seed=50),
        ]
    out += [
        # sm_80-only bf16 GEMMs are refused; the bias gradient alone is plain bf16 math and runs
        grouped_linear_case("mixed", 40, 24, bf16, w_transposed=True, with_bias=True, dropped=5, seed=51),
        grouped_linear_backward_case("mixed", 40, 24, bf16, w_transposed=True, seed=52),
        grouped_linear_backward_case("E8", 16, 300, bf16, w_transposed=True, mask=(False, False, True), dropped=3,
                                     seed=53),
        grouped_linear_backward_case("E8", 16, 300, f32, w_transposed=False, mask=(False, False, True), seed=54),
        # no row at all, a single row
        grouped_linear_case("N0", 16, 8, f32, w_transposed=False, with_bias=True, seed=55),
        grouped_linear_backward_case("N0", 16, 8, f16, w_transposed=False, seed=56),
        grouped_linear_case("one", 24, 13, f16, w_transposed=True, with_bias=True, seed=57),
        grouped_linear_backward_case("one", 24, 13, f32, w_transposed=True, dropped=1, seed=58),
        zero_dropped_rows_case("E8", 13, f32, 9),
        zero_dropped_rows_case("mixed", 24, f16, 1),
        zero_dropped_rows_case("E8", 13, bf16, 0, offsets_kind="out_of_range"),
        zero_dropped_rows_case("N0", 5, bf16, 4),
    ]
    acts = list(ops.ACTIVATIONS) + ["clamped_swiglu"]
    for i, act in enumerate(acts):
        for interleaved in (False, True):
            dtype = (f32, f16, bf16)[(2 * i + interleaved) % 3]
            out.append(gated_case(7, 37, dtype, act, interleaved, seed=60 + 2 * i + interleaved))
            out.append(gated_backward_case(7, 37, (f32, f16, bf16)[(2 * i + interleaved + 1) % 3], act, interleaved,
                                           seed=80 + 2 * i + interleaved))
    for dtype in (f32, f16, bf16):
        out += [
            gated_case(130, 24, dtype, "silu", False, seed=100, special=True),  # several blocks
            gated_case(7, 13, dtype, "clamped_swiglu", True, seed=101, special=True),
            gated_backward_case(7, 13, dtype, "clamped_swiglu", True, seed=102, special=True),
            gated_backward_case(130, 24, dtype, "silu", False, seed=103),
        ]
    out += [gated_case(0, 8, f32, "silu", False), gated_case(1, 1, f16, "gelu", True),
            gated_backward_case(0, 8, f32, "clamped_swiglu", True), gated_backward_case(1, 1, bf16, "silu", False)]
    return out


def unused_epilogue_case():
    """launch_segment_gemm with a (b_transposed, epilogue) pair no op uses: cudaErrorInvalidValue, and
    nothing written."""
    counts = SEGMENTS["E8"]
    N, E, K, M = sum(counts), len(counts), 8, 16
    gen = torch.Generator().manual_seed(1)
    offsets = offsets_of(counts)
    name = "segment_gemm_unused_epilogue"

    def check(result):
        assert_ran(result, name, expect_launch=CUDA_ERROR_INVALID_VALUE)
        assert_untouched(result, name, ["c"])

    bufs = {"offsets": offsets, "a": make((N, K), F32, gen), "b": make((E, K, M), F32, gen),
            "aux_in": make((N, M), F32, gen), "c": out_like((N, M), F32), "aux_out": None}
    ints = _ints(F32, offsets, N, K=K, M=M, b_transposed=0, epilogue=EPILOGUE["activation_grad"], act=0)
    return Case(name, "segment_gemm", ints, bufs, check, floats={"scaling": 1.0})


def cases():
    out = [segment_map_case(s, kind) for s, kind in (("mixed", "valid"), ("E1024", "valid"), ("N0", "valid"),
                                                     ("mixed", "unsorted"), ("E8", "out_of_range"),
                                                     ("E1", "out_of_range"), ("E1024", "out_of_range"))]
    out.append(unused_epilogue_case())
    for dtype in (torch.float32, torch.float16):
        d = 37 if dtype == torch.float32 else 40  # rows not a multiple of 16 bytes: element loads
        out += [
            grouped_mm_case("mixed", d, 24, dtype, seed=1),
            grouped_mm_case("E1", 64, 77, dtype, seed=2),  # aligned rows: 16-byte loads
            grouped_mm_case("N0", 16, 8, dtype),
            grouped_mm_case("E8", 12, 16, dtype, offsets_kind="unsorted", seed=3),
            grouped_mm_case("E8", 12, 16, dtype, offsets_kind="out_of_range", seed=4),
            grouped_mm_backward_case("mixed", d, 24, dtype, seed=5),
            grouped_mm_backward_case("E8", 16, 20, dtype, mask=(False, True), seed=6),
            grouped_mm_backward_case("N0", 16, 8, dtype),  # weight gradients of empty experts are zeros
            adapter_case("mixed", d, 16, dtype, "gelu", 0.5, seed=7),
            adapter_case("E8", 24, 1, dtype, "silu", 2.0, seed=8),
            adapter_case("short", 24, 128, dtype, "relu", 1.0, seed=9),  # widest fused rank
            adapter_case("short", 24, 129, dtype, "gelu_tanh", 0.25, seed=10),  # two segment GEMMs
            adapter_case("E60", 24, 8, dtype, "identity", 1.0, seed=11),
            adapter_case("N0", 16, 4, dtype),
            adapter_case("E8", 16, 8, dtype, offsets_kind="out_of_range", seed=12),
            adapter_backward_case("mixed", d, 16, dtype, "gelu", 0.5, seed=13),
            adapter_backward_case("short", 24, 129, dtype, "silu", 0.25, seed=14),
            adapter_backward_case("E8", 24, 1, dtype, "relu", 1.0, mask=(True, False, False), seed=15),
            adapter_backward_case("E8", 24, 3, dtype, "gelu_tanh", 1.0, mask=(False, False, True), seed=16),
            adapter_backward_case("N0", 16, 4, dtype),
        ]
    # d past one tile: several k steps and output column tiles in the fused kernel, several k tiles
    # in the weight gradients
    out += [
        adapter_case("E8", 72, 16, torch.float32, "gelu", 0.5, seed=27),
        adapter_case("E8", 130, 32, torch.float16, "silu", 1.0, seed=28),
        adapter_backward_case("E8", 130, 32, torch.float16, "gelu", 1.0, seed=29),
        grouped_mm_backward_case("E8", 70, 20, torch.float32, seed=30),
    ]
    out += [
        adapter_case("E1", 64, 64, torch.float16, "gelu", 1.0, seed=17),  # aligned rows
        adapter_case("E1024", 12, 4, torch.float32, "silu", 1.0, seed=18),  # 1024 experts, nearly all empty
        adapter_case("mixed", 40, 32, torch.float16, "gelu", 1.0, offsets_kind="unsorted", seed=19),
    ]
    # sm_80-only math: the launchers must refuse on sm_75
    out += [
        grouped_mm_case("mixed", 40, 24, torch.bfloat16, seed=20),
        grouped_mm_case("mixed", 37, 24, torch.float32, allow_tf32=True, seed=21),
        grouped_mm_backward_case("mixed", 40, 24, torch.bfloat16, seed=22),
        adapter_case("mixed", 40, 16, torch.bfloat16, seed=23),
        adapter_case("short", 24, 129, torch.bfloat16, seed=24),
        adapter_case("mixed", 37, 16, torch.float32, allow_tf32=True, seed=25),
        adapter_backward_case("mixed", 40, 16, torch.bfloat16, seed=26),
    ]
    return out + new_launcher_cases()
