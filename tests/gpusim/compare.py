"""Assertions shared by the simulated-GPU checks: launch status, guard zones, unchanged inputs,
and the comparison of simulated outputs with the CPU kernels' (bitwise, or within the dtype
tolerances of tests/_helpers.py against a float64 reference)."""
from __future__ import annotations

import torch
from _helpers import assert_close_to_reference
from simcase import CUDA_SUCCESS, canary_at


def assert_ran(result, name, expect_launch=CUDA_SUCCESS):
    """The launcher returned `expect_launch`, the device synchronised cleanly, no byte of any guard
    zone changed and every input is bitwise unchanged."""
    assert result.launch == expect_launch, f"{name}: launcher returned cudaError {result.launch}, want {expect_launch}"
    assert result.sync == CUDA_SUCCESS, f"{name}: cudaDeviceSynchronize returned cudaError {result.sync}"
    for buf_name, buf in result.buffers.items():
        assert buf.guards_ok, f"{name}: a guard zone of buffer {buf_name!r} was overwritten"
        assert buf.intact, f"{name}: input {buf_name!r} was modified"


def assert_untouched(result, name, buffers):
    """Output buffers (not shifted) that still hold nothing but the canary: no kernel wrote them."""
    for b in buffers:
        data = result.buffers[b].data
        assert data == canary_at(0, len(data)), f"{name}: {b!r} was written"


def assert_bitwise(actual, expected, name):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    if actual.dtype.is_floating_point:
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
        actual, expected = actual.view(bits), expected.view(bits)
    diff = (actual != expected).nonzero()
    assert diff.numel() == 0, (f"{name}: {diff.shape[0]} of {actual.numel()} elements differ, first at "
                               f"{tuple(diff[0].tolist())}: {actual[tuple(diff[0])]} vs {expected[tuple(diff[0])]}")


def assert_close(actual, cpu, ref64, name, factor=4.0):
    """Simulated `actual` vs the CPU kernel's `cpu` (same dtype) and a float64 reference: NaN and
    infinities in the same places as the CPU result, the finite rest within the tolerance rule of
    tests/_helpers.py (|actual - ref64| <= factor * |cpu - ref64| + 1e-5 * max|ref64|)."""
    assert actual.shape == cpu.shape == ref64.shape, f"{name}: shapes {actual.shape} {cpu.shape} {ref64.shape}"
    assert actual.dtype == cpu.dtype, f"{name}: dtype {actual.dtype} != {cpu.dtype}"
    a, c = actual.double(), cpu.double()
    assert torch.equal(a.isnan(), c.isnan()), f"{name}: NaN positions differ from the CPU kernel's"
    inf = c.isinf()
    assert torch.equal(a.isinf(), inf) and torch.equal(a[inf], c[inf]), \
        f"{name}: infinities differ from the CPU kernel's"
    finite = c.isfinite() & ref64.isfinite()
    assert_close_to_reference(a[finite], c[finite], ref64.double()[finite], factor=factor, name=name)
