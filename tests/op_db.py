"""The op table: for every op registered under torch.ops.pesc, its sample and bad inputs.

``tests/test_op_contract.py`` runs the generic contract on every row: opcheck, torch.compile,
bitwise determinism at 1 and 2 threads, every bad input through the kernel, the Meta (fake) kernel
and the reference fallback with one error and message, and mixed devices. Family test files keep
only what is specific to their family (values against the reference, ties, clamping, ...).

A row names an op of ``torch.ops.pesc``; ``public`` is its wrapper in ``pesc_kernels.ops`` (forward
ops only; it takes the op's arguments, and the compiled ``adapter`` also returns the saved ``h``).
Sample arguments are the op's own; floating inputs that should receive gradients require grad.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from pesc_kernels import ops, reference

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class BadInput:
    args: tuple
    error: type
    match: str
    # Needs the data (ids, offsets): only CPU kernels check it, so the Meta kernel and the
    # fallback's validation cannot see it.
    reads_data: bool = False


@dataclass
class OpInfo:
    name: str
    samples: Callable[[torch.device, torch.dtype], list[tuple]]
    bad_inputs: Callable[[torch.device], list[BadInput]] = lambda device: []
    public: Callable | None = None
    reference: Callable | None = None
    # A larger sample whose work is split across threads, for the determinism test.
    large_sample: Callable[[torch.device, torch.dtype], tuple] | None = None
    # Same bits for any thread count on CPU (documented in the README for these ops).
    thread_invariant: bool = False
    tags: set = field(default_factory=set)

    @property
    def op(self):
        return getattr(torch.ops.pesc, self.name)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype, device, seed, scale=1.0, grad=False):
    t = (scale * torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)).to(dtype).to(device)
    return t.requires_grad_(grad)


def _indices(T, E, k, device, seed=0):
    """Distinct ids per row (as top-k gives)."""
    return torch.rand(T, E, generator=_gen(seed)).argsort(dim=1)[:, :k].to(torch.int32).to(device)


def _offsets(counts, device):
    return torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int64, device=device)


def _counts(N, E, seed):
    return torch.bincount(torch.randint(0, E, (N,), generator=_gen(seed)), minlength=E).tolist()


# ------------------------------------------------------------------------------------------ routing
def _router_inputs(T, E, k, dtype, device, seed=0):
    logits = _randn((T, E), dtype, device, seed, scale=2.0, grad=True)
    indices = reference.topk_gating(logits.detach(), k)[1]
    mask = (torch.rand(T, generator=_gen(seed + 1)) > 0.25).to(device)
    return logits, indices, mask


def _gating_samples(device, dtype):
    logits, _, _ = _router_inputs(37, 12, 3, dtype, device)
    return [(logits, 3, True), (logits, 3, False), (logits[:1], 12, True), (logits[:0], 1, True)]


def _gating_backward_samples(device, dtype):
    samples = []
    for T, E, k, normalize in ((37, 12, 3, True), (37, 12, 3, False), (5, 1, 1, True)):
        logits, _, _ = _router_inputs(T, E, k, dtype, device, seed=E)
        weights, indices = torch.ops.pesc.topk_gating(logits.detach(), k, normalize)
        samples.append((torch.randn_like(weights), logits.detach(), weights, indices, normalize))
    return samples


def _balance_samples(device, dtype):
    logits, indices, mask = _router_inputs(37, 12, 3, dtype, device)
    return [(logits, indices, None), (logits, indices, mask), (logits, indices, torch.zeros_like(mask))]


def _balance_backward_samples(device, dtype):
    logits, indices, mask = _router_inputs(37, 12, 3, dtype, device)
    grad = torch.tensor(1.5, device=device)
    return [(grad, logits.detach(), indices, None), (grad, logits.detach(), indices, mask)]


def _z_samples(device, dtype):
    logits, _, mask = _router_inputs(37, 12, 3, dtype, device)
    return [(logits, None), (logits, mask)]


def _z_backward_samples(device, dtype):
    logits, _, mask = _router_inputs(37, 12, 3, dtype, device)
    return [(torch.tensor(0.5, device=device), logits.detach(), m) for m in (None, mask)]


def _fused_gating_samples(device, dtype):
    logits, _, mask = _router_inputs(37, 12, 3, dtype, device)
    return [(logits, 3, True, mask), (logits, 3, False, None), (logits[:1], 12, True, mask[:1]),
            (logits[:0], 1, True, None), (logits, 3, True, torch.zeros_like(mask))]


def _fused_gating_backward_samples(device, dtype):
    samples = []
    for T, E, k, normalize, masked in ((37, 12, 3, True, True), (37, 12, 3, False, False), (5, 1, 1, True, True)):
        logits, _, mask = _router_inputs(T, E, k, dtype, device, seed=E)
        m = mask if masked else None
        weights, indices, _, counts = torch.ops.pesc.topk_gating_with_balancing_loss(logits.detach(), k, normalize, m)
        grad_loss = torch.tensor(1.5, device=device)
        samples.append((torch.randn_like(weights), grad_loss, logits.detach(), weights, indices, counts, m, normalize))
    return samples


def _router_bad_inputs(device):
    logits = torch.randn(5, 8, device=device)
    idx = torch.zeros(5, 2, dtype=torch.int32, device=device)
    bad_ids = idx.clone()
    bad_ids[3, 1] = 8
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
    return _router_inputs(9000, 64, 4, dtype, device, seed=3)


# ------------------------------------------------------------------------------ grouped top-k routing
def _grouped_topk_samples(device, dtype):
    logits, _, _ = _router_inputs(37, 16, 3, dtype, device)
    bias = torch.randn(16, generator=_gen(5)).mul(0.1).to(device)
    return [(logits, 3, "softmax", None, 1, 1, True, 1.0), (logits, 3, "sigmoid", bias, 4, 2, True, 2.5),
            (logits, 4, "sigmoid", bias, 8, 3, False, 1.0), (logits, 8, "softmax", bias, 2, 1, False, 0.5),
            (logits[:1], 16, "sigmoid", None, 1, 1, True, 1.0), (logits[:0], 2, "softmax", None, 4, 4, True, 1.0),
            (logits, 3)]


def _grouped_topk_backward_samples(device, dtype):
    samples = []
    for scoring, normalize, scaling in (("softmax", True, 1.0), ("sigmoid", True, 2.5), ("sigmoid", False, 1.5),
                                        ("softmax", False, 1.0)):
        logits, _, _ = _router_inputs(37, 16, 3, dtype, device, seed=2)
        weights, indices = torch.ops.pesc.grouped_topk_gating(logits.detach(), 3, scoring, None, 4, 2, normalize,
                                                              scaling)
        samples.append((torch.randn_like(weights), logits.detach(), indices, scoring, normalize, scaling))
    return samples


def _grouped_topk_bad_inputs(device):
    logits = torch.randn(5, 8, device=device)
    idx = torch.zeros(5, 2, dtype=torch.int32, device=device)
    bad_ids = idx.clone()
    bad_ids[3, 1] = 8
    return {
        "grouped_topk_gating": [
            BadInput((logits[0], 2), ValueError, r"pesc.grouped_topk_gating: logits must be a 2-D tensor"),
            BadInput((logits, 2, "tanh"), ValueError, "unknown scoring 'tanh'; valid: softmax, sigmoid"),
            BadInput((logits, 2, "sigmoid", None, 3), ValueError, "num_groups must be >= 1 and divide E=8, got 3"),
            BadInput((logits, 2, "sigmoid", None, 4, 5), ValueError, r"topk_groups must be in \[1, num_groups=4\]"),
            BadInput((logits, 5, "sigmoid", None, 4, 2), ValueError,
                     r"k must be in \[1, topk_groups \* E / num_groups = 4\], got k=5"),
            BadInput((logits, 2, "sigmoid", torch.zeros(7, device=device)), ValueError,
                     r"bias.shape\[0\] must equal the number of experts E of logits \(8\)"),
            BadInput((logits, 2, "sigmoid", torch.zeros(8, device=device).half()), TypeError, "bias must be Float"),
            BadInput((logits, 2, "sigmoid", None, 1, 1, True, float("inf")), ValueError, "scaling must be finite"),
        ],
        "grouped_topk_gating_backward": [
            BadInput((torch.zeros(5, 3, device=device), logits, idx, "sigmoid", True, 1.0), ValueError,
                     "grad_weights must have the shape of indices"),
            BadInput((torch.zeros(5, 2, device=device), logits, idx.long(), "sigmoid", True, 1.0), TypeError,
                     "indices must be Int"),
            BadInput((torch.zeros(5, 2, device=device), logits, bad_ids, "sigmoid", True, 1.0), IndexError,
                     r"indices holds expert id 8 at \[3, 1\]", reads_data=True),
        ],
    }


def _large_grouped_topk(device, dtype):
    logits = _router_inputs(9000, 64, 4, dtype, device, seed=3)[0]
    bias = torch.randn(64, generator=_gen(6)).mul(0.1).to(device)
    return (logits, 6, "sigmoid", bias, 8, 4, True, 2.5)


# -------------------------------------------------------------------------------------- permutation
def _with_invalid_ids(indices, E):
    """int64 ids with some outside [0, E) (expert-parallel sentinels and negative ids)."""
    ids = indices.long().clone()
    ids.view(-1)[::5] = E
    ids.view(-1)[3::7] = -1
    return ids


def _permute_samples(device, dtype):
    x = _randn((23, 12), dtype, device, 0, grad=True)
    idx = _indices(23, 6, 3, device)
    return [(x, idx, 6), (x[:1], _indices(1, 1, 1, device), 1),
            (x[:0], _indices(0, 4, 2, device), 4), (x[:9, :1], _indices(9, 1024, 8, device), 1024),
            (x, idx.long(), 6, False), (x, _with_invalid_ids(idx, 6), 6, True), (x, idx, 6, True)]


def _unpermute_samples(device, dtype):
    T, d, E, k = 23, 12, 6, 3
    x = _randn((T, d), dtype, device, 0)
    x_perm, row_map, _ = torch.ops.pesc.permute(x, _indices(T, E, k, device), E)
    y_perm = x_perm.clone().requires_grad_(True)
    weights = torch.rand(T, k, generator=_gen(2)).to(device).requires_grad_(True)
    residual = _randn((T, d), dtype, device, 4, grad=True)
    # Weights in the rows' dtype (as transformers' Qwen routers return them), and dropped slots.
    weights_same = weights.detach().to(dtype).requires_grad_(True)
    dropped_perm, dropped_map, _ = torch.ops.pesc.permute(x, _with_invalid_ids(_indices(T, E, k, device), E), E, True)
    return [(y_perm, row_map, w, r) for w in (None, weights) for r in (None, residual)] + [
        (y_perm, row_map, weights_same, None), (dropped_perm.clone().requires_grad_(True), dropped_map, weights, None)]


def _unpermute_backward_samples(device, dtype):
    T, d, E, k = 23, 12, 6, 3
    x = _randn((T, d), dtype, device, 0)
    x_perm, row_map, _ = torch.ops.pesc.permute(x, _indices(T, E, k, device), E)
    weights = torch.rand(T, k, generator=_gen(2)).to(device)
    grad_y = _randn((T, d), dtype, device, 6)
    dropped_perm, dropped_map, _ = torch.ops.pesc.permute(x, _with_invalid_ids(_indices(T, E, k, device), E), E, True)
    return [(grad_y, row_map, w, y) for w in (None, weights) for y in (None, x_perm)] + [
        (grad_y, row_map, weights.to(dtype), x_perm), (grad_y, dropped_map, weights, dropped_perm)]


def _permute_bad_inputs(device):
    T, d, E, k = 5, 4, 8, 2
    x = torch.randn(T, d, device=device)
    idx = _indices(T, E, k, device)
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
    return (_randn((T, d), dtype, device, 0, grad=True), _with_invalid_ids(_indices(T, E, k, device, seed=3), E), E,
            True)


def _large_unpermute(device, dtype):
    x, indices, E, drop = _large_permute(device, dtype)
    x_perm, row_map, _ = torch.ops.pesc.permute(x.detach(), indices, E, drop)
    weights = torch.rand(*row_map.shape, generator=_gen(7)).to(device).requires_grad_(True)
    return (x_perm.requires_grad_(True), row_map, weights, _randn(x.shape, dtype, device, 8, grad=True))


# ------------------------------------------------------------------------------------ grouped GEMMs
def _gemm_inputs(counts, d, r, dtype, device, seed=0):
    N, E = sum(counts), len(counts)
    x = _randn((N, d), dtype, device, seed, grad=True)
    w_down = _randn((E, d, r), dtype, device, seed + 1, d ** -0.5, grad=True)
    w_up = _randn((E, r, d), dtype, device, seed + 2, r ** -0.5, grad=True)
    return x, w_down, w_up, _offsets(counts, device)


def _output_major(w):
    """The same weights stored output-major ([E, M, K], nn.Linear's and transformers' layout)."""
    return w.detach().transpose(1, 2).contiguous().requires_grad_(w.requires_grad)


def _dropped_offsets(offsets, dropped):
    """Offsets whose last segment ends `dropped` rows before N (rows permute dropped)."""
    out = offsets.clone()
    out[1:] = torch.minimum(out[1:], out[-1] - dropped)
    return out


def _grouped_mm_samples(device, dtype):
    x, w_down, _, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    x0, w0, _, offsets0 = _gemm_inputs([0, 0, 0], 16, 4, dtype, device)
    bias = _randn((4, 12), dtype, device, 7, grad=True)
    return [(x, w_down, offsets), (x.detach(), w_down, offsets), (x0, w0, offsets0),
            (x, w_down, offsets, bias), (x, _output_major(w_down), offsets, None, True),
            (x, _output_major(w_down), _dropped_offsets(offsets, 3), bias, True)]


def _grouped_mm_backward_samples(device, dtype):
    x, w_down, _, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    grad_y = _randn((30, 12), dtype, device, 5)
    x, w = x.detach(), w_down.detach()
    samples = [(grad_y, x, w, offsets, False, mask)
               for mask in ([True, True, True], [True, False, False], [False, True, False], [False, False, True])]
    return samples + [(grad_y, x, _output_major(w), offsets, True, [True, True, True]),
                      (grad_y, x, _output_major(w), _dropped_offsets(offsets, 3), True, [True, True, True])]


def _gated_samples(device, dtype):
    h = _randn((29, 2 * 11), dtype, device, 3, scale=3.0, grad=True)  # beyond the clamp limit
    return [(h, act, interleaved, 2.5, 1.702) for act in reference.GATED_ACTIVATIONS
            for interleaved in (False, True)] + [(h[:0], "silu", False, 7.0, 1.702), (h[:1, :2],)]


def _gated_backward_samples(device, dtype):
    h = _randn((29, 2 * 11), dtype, device, 3, scale=3.0)
    grad_a = _randn((29, 11), dtype, device, 4)
    return [(grad_a, h, act, interleaved, 2.5, 1.702) for act in ("silu", "gelu", "clamped_swiglu")
            for interleaved in (False, True)]


def _adapter_samples(device, dtype):
    x, w_down, w_up, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    return [(x, w_down, w_up, offsets, act, scaling) for act, scaling in (("gelu", 1.0), ("relu", 0.5),
                                                                          ("identity", 1.0))]


def _adapter_backward_samples(device, dtype):
    x, w_down, w_up, offsets = _gemm_inputs([9, 0, 20, 1], 24, 12, dtype, device)
    x, w_down, w_up = x.detach(), w_down.detach(), w_up.detach()
    grad_y = _randn(x.shape, dtype, device, 5)
    samples = []
    for act, scaling in (("gelu", 1.0), ("silu", 0.5)):
        h = torch.ops.pesc.adapter(x, w_down, w_up, offsets, act, scaling)[1]
        for mask in ([True, True, True], [False, True, True], [True, False, False]):
            samples.append((grad_y, x, w_down, w_up, offsets, h, act, scaling, mask))
    return samples


def _gemm_bad_inputs(device):
    x = torch.randn(10, 8, device=device)
    w = torch.randn(3, 8, 5, device=device)
    w_down = torch.randn(3, 8, 4, device=device)
    w_up = torch.randn(3, 4, 8, device=device)
    offs = torch.tensor([0, 4, 4, 10], device=device)
    h = torch.randn(10, 4, device=device)

    def adp(*args):
        return args + (("gelu", 1.0) if len(args) == 4 else ())

    return {
        "grouped_mm": [
            BadInput((x[0], w, offs), ValueError, "pesc.grouped_mm: x must be a 2-D tensor"),
            BadInput((x.int(), w, offs), TypeError, "x must be float32, float16 or bfloat16"),
            BadInput((x.double(), w.double(), offs), TypeError, "x must be float32, float16 or bfloat16"),
            BadInput((x, w[0], offs), ValueError, r"w must be a 3-D tensor \[E, K, M\]"),
            BadInput((x, w.half(), offs), TypeError, r"w must have the dtype of x \(Float\), got Half"),
            BadInput((x, w[:, :7], offs), ValueError, r"w.shape\[1\] must equal x.shape\[1\] \(K\) \(8\)"),
            BadInput((x, w[:0], offs[:1]), ValueError, r"w.shape\[0\] \(number of experts E\) must be >= 1"),
            BadInput((x, w, offs.int()), TypeError, "expert_offsets must be Long, got Int"),
            BadInput((x, w, offs[None]), ValueError, r"expert_offsets must be a 1-D tensor \[E\+1\]"),
            BadInput((x, w, offs[:3]), ValueError,
                     r"expert_offsets.shape\[0\] must equal the number of experts E plus 1 \(4\)"),
            BadInput((x, w, torch.tensor([1, 4, 4, 10], device=device)), ValueError,
                     r"expert_offsets\[0\] must be 0, got 1", reads_data=True),
            BadInput((x, w, torch.tensor([0, 4, 4, 11], device=device)), ValueError,
                     r"expert_offsets\[E=3\] must be <= the number of rows N=10 of x, got 11", reads_data=True),
            BadInput((x, w, offs, None, True), ValueError,
                     r"w.shape\[2\] must equal x.shape\[1\] \(K, w_transposed\) \(8\)"),
            BadInput((x, w, offs, torch.zeros(3, 4, device=device)), ValueError,
                     r"bias.shape\[1\] must equal the output width M of w \(5\)"),
            BadInput((x, w, offs, torch.zeros(2, 5, device=device)), ValueError,
                     r"bias.shape\[0\] must equal w.shape\[0\] \(E\)"),
            BadInput((x, w, offs, torch.zeros(3, 5, device=device).half()), TypeError,
                     r"bias must have the dtype of x"),
        ],
        "grouped_mm_backward": [
            BadInput((x[:, :4], x, w, offs, False, [True, True, True]), ValueError,
                     r"pesc.grouped_mm_backward: grad_y.shape\[1\] must equal the output width M of w"),
            BadInput((x[:, :5], x, w.transpose(1, 2), offs, False, [True, True, True]), ValueError,
                     r"w.shape\[1\] must equal x.shape\[1\] \(K\)"),
        ],
        "gated_activation": [
            BadInput((h[:, :3], "silu", False, 7.0, 1.702), ValueError,
                     r"pesc.gated_activation: h.shape\[1\] must be even"),
            BadInput((h, "swiglu", False, 7.0, 1.702), ValueError,
                     "unknown activation 'swiglu'; valid: gelu, gelu_tanh, silu, relu, identity, clamped_swiglu"),
            BadInput((h, "clamped_swiglu", True, -1.0, 1.702), ValueError, "limit must be >= 0, got -1"),
            BadInput((h.int(), "silu", False, 7.0, 1.702), TypeError, "h must be float32, float16 or bfloat16"),
        ],
        "gated_activation_backward": [
            BadInput((h[:, :3], h, "silu", False, 7.0, 1.702), ValueError,
                     r"grad_a.shape\[1\] must equal h.shape\[1\] / 2 \(F\) \(2\)"),
            BadInput((h[:, :2].half(), h, "silu", False, 7.0, 1.702), TypeError, "grad_a must have the dtype of h"),
        ],
        "adapter": [
            BadInput((x, w_down, w_up, offs, "tanh", 1.0), ValueError,
                     "pesc.adapter: unknown activation 'tanh'; valid:"),
            BadInput(adp(x, w_down[:, :6], w_up, offs), ValueError,
                     r"w_down.shape\[1\] must equal x.shape\[1\] \(d\)"),
            BadInput(adp(x, w_down, w_up[:, :3], offs), ValueError,
                     r"w_up.shape\[1\] must equal w_down.shape\[2\] \(r\)"),
            BadInput(adp(x, w_down, w_up[:, :, :7], offs), ValueError,
                     r"w_up.shape\[2\] must equal x.shape\[1\] \(d\)"),
            BadInput(adp(x, w_down, w_up[:2], offs), ValueError, r"w_up.shape\[0\] must equal w_down.shape\[0\] \(E\)"),
            BadInput(adp(x, w_down[:, :, :0], w_up[:, :0], offs), ValueError, r"adapter rank r\) must be >= 1"),
            BadInput(adp(x, w_down, w_up.bfloat16(), offs), TypeError, "w_up must have the dtype of x"),
            BadInput(adp(x, w_down, w_up, offs[:2]), ValueError, r"expert_offsets.shape\[0\] must equal"),
            BadInput(adp(x, w_down, w_up, torch.tensor([0, 5, 3, 10], device=device)), ValueError,
                     r"expert_offsets must be non-decreasing, got expert_offsets\[1\]=5 > expert_offsets\[2\]=3",
                     reads_data=True),
        ],
        "adapter_backward": [
            BadInput((x[:9], x, w_down, w_up, offs, h, "gelu", 1.0, [True] * 3), ValueError,
                     r"pesc.adapter_backward: grad_y.shape\[0\] must equal the number of rows N of x"),
            BadInput((x, x, w_down, w_up, offs, h[:, :3], "gelu", 1.0, [True] * 3), ValueError,
                     r"h.shape\[1\] must equal w_down.shape\[2\] \(r\)"),
            BadInput((x, x, w_down, w_up, offs, h, "swish", 1.0, [True] * 3), ValueError,
                     "pesc.adapter_backward: unknown activation 'swish'"),
        ],
    }


def _large_gemm(device, dtype):
    return _gemm_inputs(_counts(3000, 8, seed=1), 160, 64, dtype, device)


def _large_grouped_mm(device, dtype):
    x, w_down, _, offsets = _large_gemm(device, dtype)
    bias = _randn((w_down.shape[0], w_down.shape[2]), dtype, device, 9, grad=True)
    return (x, _output_major(w_down), _dropped_offsets(offsets, 100), bias, True)


def _large_gated(device, dtype):
    return (_randn((3000, 2 * 300), dtype, device, 5, scale=3.0, grad=True), "clamped_swiglu", True, 7.0, 1.702)


def _large_adapter(device, dtype):
    return (*_large_gemm(device, dtype), "gelu", 0.5)


def _large_topk_gating(device, dtype):
    return (_large_router(device, dtype)[0], 4, True)


def _large_fused_gating(device, dtype):
    logits, _, mask = _large_router(device, dtype)
    return (logits, 4, True, mask)


def _large_z_loss(device, dtype):
    logits, _, mask = _large_router(device, dtype)
    return (logits, mask)


# ------------------------------------------------------------------------------------------- table
def _bad(table_fn, name):
    return lambda device: table_fn(device)[name]


OP_DB = [
    OpInfo("topk_gating", _gating_samples, _bad(_router_bad_inputs, "topk_gating"), public=ops.topk_gating,
           reference=reference.topk_gating, thread_invariant=True,
           large_sample=_large_topk_gating),
    OpInfo("topk_gating_backward", _gating_backward_samples, _bad(_router_bad_inputs, "topk_gating_backward"),
           thread_invariant=True),
    OpInfo("load_balancing_loss", _balance_samples, _bad(_router_bad_inputs, "load_balancing_loss"),
           public=ops.load_balancing_loss, reference=reference.load_balancing_loss, thread_invariant=True,
           large_sample=_large_router),
    OpInfo("load_balancing_loss_backward", _balance_backward_samples,
           _bad(_router_bad_inputs, "load_balancing_loss_backward"), thread_invariant=True),
    OpInfo("router_z_loss", _z_samples, _bad(_router_bad_inputs, "router_z_loss"), public=ops.router_z_loss,
           reference=reference.router_z_loss, thread_invariant=True,
           large_sample=_large_z_loss),
    OpInfo("router_z_loss_backward", _z_backward_samples, _bad(_router_bad_inputs, "router_z_loss_backward"),
           thread_invariant=True),
    OpInfo("topk_gating_with_balancing_loss", _fused_gating_samples,
           _bad(_router_bad_inputs, "topk_gating_with_balancing_loss"), public=ops.topk_gating_with_balancing_loss,
           reference=reference.topk_gating_with_balancing_loss, thread_invariant=True,
           large_sample=_large_fused_gating),
    OpInfo("topk_gating_with_balancing_loss_backward", _fused_gating_backward_samples,
           _bad(_router_bad_inputs, "topk_gating_with_balancing_loss_backward"), thread_invariant=True),
    OpInfo("permute", _permute_samples, _bad(_permute_bad_inputs, "permute"), public=ops.permute,
           reference=reference.permute, thread_invariant=True, large_sample=_large_permute),
    OpInfo("unpermute", _unpermute_samples, _bad(_permute_bad_inputs, "unpermute"), public=ops.unpermute,
           reference=reference.unpermute, thread_invariant=True, large_sample=_large_unpermute),
    OpInfo("unpermute_backward", _unpermute_backward_samples, _bad(_permute_bad_inputs, "unpermute_backward"),
           thread_invariant=True),
    OpInfo("grouped_topk_gating", _grouped_topk_samples, _bad(_grouped_topk_bad_inputs, "grouped_topk_gating"),
           public=ops.grouped_topk_gating, reference=reference.grouped_topk_gating, thread_invariant=True,
           large_sample=_large_grouped_topk),
    OpInfo("grouped_topk_gating_backward", _grouped_topk_backward_samples,
           _bad(_grouped_topk_bad_inputs, "grouped_topk_gating_backward"), thread_invariant=True),
    OpInfo("gated_activation", _gated_samples, _bad(_gemm_bad_inputs, "gated_activation"),
           public=ops.gated_activation, reference=reference.gated_activation, thread_invariant=True,
           large_sample=_large_gated),
    OpInfo("gated_activation_backward", _gated_backward_samples, _bad(_gemm_bad_inputs, "gated_activation_backward"),
           thread_invariant=True),
    OpInfo("grouped_mm", _grouped_mm_samples, _bad(_gemm_bad_inputs, "grouped_mm"), public=ops.grouped_mm,
           reference=reference.grouped_mm, thread_invariant=True,
           large_sample=_large_grouped_mm),
    OpInfo("grouped_mm_backward", _grouped_mm_backward_samples, _bad(_gemm_bad_inputs, "grouped_mm_backward"),
           thread_invariant=True),
    OpInfo("adapter", _adapter_samples, _bad(_gemm_bad_inputs, "adapter"), public=ops.adapter,
           reference=reference.adapter, thread_invariant=True,
           large_sample=_large_adapter),
    OpInfo("adapter_backward", _adapter_backward_samples, _bad(_gemm_bad_inputs, "adapter_backward"),
           thread_invariant=True),
]
OPS_BY_NAME = {info.name: info for info in OP_DB}
