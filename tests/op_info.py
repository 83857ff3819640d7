"""The op table's row type and the helpers its rows share.

Every op registered under torch.ops.pesc has one row (an ``OpInfo``: sample inputs, bad inputs,
its public wrapper and reference). A family's rows live at the end of its test file, as
``OP_TABLE``, next to the family-specific tests; ``tests/test_op_contract.py`` collects the
``OP_TABLE`` of every test file and runs the generic contract on each row: opcheck,
torch.compile, bitwise determinism at 1 and 2 threads, every bad input through the kernel, the Meta
(fake) kernel and the reference fallback with one error and message, and mixed devices.

A row names an op of ``torch.ops.pesc``; ``public`` is its wrapper in ``pesc_kernels.ops`` (forward
ops only; it takes the op's arguments, and the compiled ``adapter`` also returns the saved ``h``).
Sample arguments are the op's own; floating inputs that should receive gradients require grad.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from pesc_kernels import reference

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


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, device, seed, scale=1.0, grad=False):
    t = (scale * torch.randn(*shape, generator=gen(seed), dtype=torch.float64)).to(dtype).to(device)
    return t.requires_grad_(grad)


def top_ids(T, E, k, device, seed=0):
    """Distinct ids per row (as top-k gives)."""
    return torch.rand(T, E, generator=gen(seed)).argsort(dim=1)[:, :k].to(torch.int32).to(device)


def offsets_from_counts(counts, device):
    return torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int64, device=device)


def random_counts(N, E, seed):
    return torch.bincount(torch.randint(0, E, (N,), generator=gen(seed)), minlength=E).tolist()




def bad_inputs_of(table_fn, name):
    """The bad inputs of op `name` from a family's table function (name -> list of BadInput)."""
    return lambda device: table_fn(device)[name]


def router_inputs(T, E, k, dtype, device, seed=0):
    """Logits (requiring grad), their reference top-k ids and a mask with about a quarter False."""
    logits = randn((T, E), dtype, device, seed, scale=2.0, grad=True)
    indices = reference.topk_gating(logits.detach(), k)[1]
    mask = (torch.rand(T, generator=gen(seed + 1)) > 0.25).to(device)
    return logits, indices, mask
