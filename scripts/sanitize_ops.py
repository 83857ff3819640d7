"""Calls every CUDA op, forward and backward, on small odd shapes: the workload compute-sanitizer
(memcheck, racecheck) inspects in scripts/gpu_check.sh. Exits non-zero on any Python-level error.

`--device cpu` runs the same calls on the CPU kernels (tests/test_scripts.py does, so the workload
stays in step with the op signatures on machines without a GPU)."""
import argparse

import torch

from pesc_kernels import ops


def routing(device):
    for T, E, k in [(1, 1, 1), (7, 2, 2), (33, 60, 8), (130, 1024, 3), (65, 8, 2)]:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            logits = torch.randn(T, E, device=device, dtype=dtype, requires_grad=True)
            mask = torch.rand(T, device=device) > 0.3
            for normalize in (True, False):
                weights, indices = ops.topk_gating(logits, k, normalize)
                loss = weights.sum() + ops.load_balancing_loss(logits, indices, mask) + ops.router_z_loss(logits, mask)
                loss = loss + ops.load_balancing_loss(logits, indices) + ops.router_z_loss(logits)
                loss.backward()
            for use_mask in (False, True):
                masked = mask if use_mask else None
                weights, _indices, aux = ops.topk_gating_with_balancing_loss(logits, k, True, masked)
                (weights.sum() + aux).backward()
    empty = torch.empty(0, 8, device=device, requires_grad=True)
    w, i = ops.topk_gating(empty, 2)
    (w.sum() + ops.load_balancing_loss(empty, i) + ops.router_z_loss(empty)).backward()
    w, i, aux = ops.topk_gating_with_balancing_loss(empty, 2)
    (w.sum() + aux).backward()


def grouped_routing(device):
    """DeepSeek-V3-style routing: both scorings, a selection bias, group-limited top-k, scaling."""
    for T, E, k, groups, topk_groups in [(1, 1, 1, 1, 1), (7, 8, 2, 4, 2), (33, 64, 6, 8, 3), (65, 256, 8, 8, 4),
                                         (130, 1024, 3, 1, 1)]:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            logits = torch.randn(T, E, device=device, dtype=dtype, requires_grad=True)
            bias = torch.randn(E, device=device)
            for scoring in ("softmax", "sigmoid"):
                for b in (None, bias):
                    weights, _ = ops.grouped_topk_gating(logits, k, scoring, b, groups, topk_groups, True, 2.5)
                    weights.sum().backward()
    empty = torch.empty(0, 16, device=device, requires_grad=True)
    ops.grouped_topk_gating(empty, 2, "sigmoid", None, 4, 2)[0].sum().backward()


def permutation(device):
    for T, d, E, k in [(1, 1, 1, 1), (7, 13, 3, 3), (33, 64, 8, 2), (65, 100, 1024, 8), (130, 257, 60, 5)]:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(T, d, device=device, dtype=dtype, requires_grad=True)
            indices = torch.rand(T, E, device=device).argsort(dim=1)[:, :k].to(torch.int32)
            weights = torch.rand(T, k, device=device, requires_grad=True)
            for w, r in ((None, None), (weights, None), (None, x), (weights, x)):
                x_perm, row_map, _ = ops.permute(x, indices, E)
                ops.unpermute(x_perm * 2, row_map, w, r).sum().backward()
            # Rows that are not 16-byte aligned take the element-wise path.
            shifted = torch.empty(T * k * d + 1, device=device, dtype=dtype)[1:].view(T * k, d).copy_(x_perm)
            torch.ops.pesc.unpermute_backward(x.detach(), row_map, weights.detach(), shifted)
            ops.unpermute(shifted, row_map, weights.detach(), x.detach())
    # int64 ids (Hugging Face routers) and low-precision routing weights (accumulated in fp32).
    x = torch.randn(33, 40, device=device, requires_grad=True)
    ids = torch.rand(33, 8, device=device).argsort(dim=1)[:, :3]
    for weight_dtype in (torch.float32, torch.float16, torch.bfloat16):
        weights = torch.rand(33, 3, device=device, dtype=weight_dtype, requires_grad=True)
        x_perm, row_map, _ = ops.permute(x, ids, 8)
        ops.unpermute(x_perm, row_map, weights, x).sum().backward()
    # Ids outside [0, E) dropped on request (expert-parallel sentinels): they reach no expert.
    sentinels = torch.tensor([[-1, 0], [1, 4], [8, 2], [3, -1], [0, 1], [2, 3]], device=device)
    for id_dtype in (torch.int32, torch.int64):
        x = torch.randn(6, 8, device=device, requires_grad=True)
        x_perm, row_map, _ = ops.permute(x, sentinels.to(id_dtype), 4, drop_invalid=True)
        ops.unpermute(x_perm * 3, row_map, torch.rand(6, 2, device=device)).sum().backward()
    # Out-of-range ids are clamped on CUDA and must stay in bounds (the CPU kernels reject them).
    if device.type == "cuda":
        x = torch.randn(6, 8, device=device)
        bad = torch.tensor([[-5, 0], [1, 4], [1000, 2], [3, -1], [0, 1], [2, 3]], dtype=torch.int32, device=device)
        x_perm, row_map, _ = ops.permute(x, bad, 4)
        ops.unpermute(x_perm, row_map)
    empty = torch.empty(0, 8, device=device, requires_grad=True)
    x_perm, row_map, _ = ops.permute(empty, torch.empty(0, 2, dtype=torch.int32, device=device), 4)
    ops.unpermute(x_perm, row_map, torch.empty(0, 2, device=device), empty).sum().backward()


def adapter(device):
    """grouped_mm and adapter, forward and backward: every fused rank tile (r <= 16, 32, 64, 128), the
    two-pass path (r > 128), TF32 on and off, empty experts, N = 0, and offsets the kernels must clamp."""
    counts_64 = torch.bincount(torch.randint(0, 64, (50,)), minlength=64).tolist()
    cases = [([0, 65, 0, 130, 1], 72), ([37], 27), ([0, 0, 0], 16), (counts_64, 100)]
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for counts, d in cases:
            offsets = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), device=device)
            N, E = sum(counts), len(counts)
            for dtype, tf32 in ((torch.float32, False), (torch.float32, True), (torch.float16, False),
                                (torch.bfloat16, False)):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                for r in (1, 17, 33, 128, 200):
                    x = torch.randn(N, d, device=device, dtype=dtype, requires_grad=True)
                    w_down = torch.randn(E, d, r, device=device, dtype=dtype, requires_grad=True)
                    w_up = torch.randn(E, r, d, device=device, dtype=dtype, requires_grad=True)
                    w = torch.randn(E, d, 24, device=device, dtype=dtype, requires_grad=True)
                    y = ops.adapter(x, w_down, w_up, offsets, "gelu", 0.5)
                    (y.float().sum() + ops.grouped_mm(x, w, offsets).float().sum()).backward()
        x = torch.randn(40, 16, device=device, requires_grad=True)
        w_down = torch.randn(4, 16, 8, device=device, requires_grad=True)
        w_up = torch.randn(4, 8, 16, device=device, requires_grad=True)
        # Offsets out of order or range: the CUDA kernels clamp them (the CPU kernels reject them).
        for bad in ([3, 10, 5, 500, 38], [-4, -2, 20, 20, 7]) if device.type == "cuda" else ():
            offsets = torch.tensor(bad, device=device)
            (ops.adapter(x, w_down, w_up, offsets).sum() + ops.grouped_mm(x, w_down, offsets).sum()).backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def hf_experts(device):
    """The Hugging Face experts path: grouped_mm with output-major weights (read in place) and a
    per-expert bias, rows past offsets[E] (dropped slots), and every gated activation in both layouts."""
    for counts, dropped, K, M in [([0, 65, 0, 130, 1], 3, 72, 40), ([37], 0, 27, 19), ([0, 0, 0], 5, 16, 8)]:
        offsets = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), device=device)
        N, E = sum(counts) + dropped, len(counts)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(N, K, device=device, dtype=dtype, requires_grad=True)
            bias = torch.randn(E, M, device=device, dtype=dtype, requires_grad=True)
            for transposed in (False, True):
                shape = (E, M, K) if transposed else (E, K, M)
                w = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
                for b in (None, bias):
                    ops.grouped_mm(x, w, offsets, b, transposed).float().sum().backward()
    for N, F in [(1, 1), (7, 13), (130, 96), (0, 8)]:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            h = (3 * torch.randn(N, 2 * F, device=device, dtype=dtype)).requires_grad_(True)
            for activation in ops.GATED_ACTIVATIONS:
                for interleaved in (False, True):
                    ops.gated_activation(h, activation, interleaved).float().sum().backward()


CHECKS = (routing, grouped_routing, permutation, adapter, hf_experts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    device = torch.device(parser.parse_args().device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("sanitize_ops.py: no CUDA device (use --device cpu for a CPU run)")
    for check in CHECKS:
        check(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"ok: {check.__name__}")


if __name__ == "__main__":
    main()
