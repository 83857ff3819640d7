"""Calls every CUDA op, forward and backward, on small odd shapes: the workload compute-sanitizer
(memcheck, racecheck) inspects in scripts/gpu_check.sh. Exits non-zero on any Python-level error."""
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
    empty = torch.empty(0, 8, device=device, requires_grad=True)
    w, i = ops.topk_gating(empty, 2)
    (w.sum() + ops.load_balancing_loss(empty, i) + ops.router_z_loss(empty)).backward()


def main():
    assert torch.cuda.is_available(), "sanitize_ops.py needs a GPU"
    device = torch.device("cuda")
    for check in (routing,):
        check(device)
        torch.cuda.synchronize()
        print(f"ok: {check.__name__}")


if __name__ == "__main__":
    main()
