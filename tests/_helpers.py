"""Comparison helpers following the tolerance rule of docs/design.md, "Testing".

fp32 results must match the reference to about 1e-5 relative. For fp16/bf16 the error of our
result against a float64 run of the reference must be within a small multiple of the error the
reference itself makes in that dtype.
"""
import torch


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_close_to_reference(actual, reference_same_dtype, reference_fp64, *, factor=4.0, rel_floor=1e-5, name=""):
    """|actual - ref64| <= factor * |ref - ref64| + rel_floor * max|ref64| (elementwise max norms)."""
    assert actual.shape == reference_fp64.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference_fp64.shape)}"
    scale = reference_fp64.abs().max().item() if reference_fp64.numel() else 0.0
    err = max_abs_err(actual, reference_fp64)
    ref_err = max_abs_err(reference_same_dtype, reference_fp64)
    bound = factor * ref_err + rel_floor * max(scale, 1e-30)
    assert err <= bound, f"{name}: error {err:.3e} vs fp64 exceeds {bound:.3e} (reference's own error {ref_err:.3e})"


def grads_of(fn, inputs, upstream):
    """Gradients of sum(out * upstream) w.r.t. the float tensors in `inputs` that require grad."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * u).sum() for o, u in zip(outs, upstream) if u is not None)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    return torch.autograd.grad(loss, leaves)


def call_cpu_kernel(op, *args):
    """Runs op's CPU kernel even with meta-device arguments, which the dispatcher would otherwise send
    to the fake implementation: with no GPU, the meta device stands in for "another device"."""
    return op.default.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args)


def assert_bitwise_deterministic(run, device):
    """run() -> list of tensors gives the same bits twice, and on CPU also with a single thread."""
    first = run()
    runs = [run()]
    if device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            runs.append(run())
        finally:
            torch.set_num_threads(threads)
    for other in runs:
        for a, b in zip(first, other, strict=True):
            assert torch.equal(a, b)


def router_bad_input_tensors(device):
    """The small routing inputs the bad-input tables start from: logits [5, 8], valid int32 ids
    [5, 2], and the same ids with one out of range (8 at [3, 1])."""
    logits = torch.randn(5, 8, device=device)
    ids = torch.zeros(5, 2, dtype=torch.int32, device=device)
    bad_ids = ids.clone()
    bad_ids[3, 1] = 8
    return logits, ids, bad_ids
