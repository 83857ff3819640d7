"""The reusable CPU output buffers of the kernels (docs/design.md, "Performance"): freed outputs of
64 KiB and more are kept for the next call of the same size class, within a limit that Python can
read, lower, and empty, and that PESC_CPU_BUFFER_CACHE_BYTES sets at load time."""
import os
import subprocess
import sys

import pytest
import torch

import pesc_kernels
from pesc_kernels import ops, reference

MIB = 1 << 20


@pytest.fixture
def cache_limit():
    """Restores the process's limit after the test."""
    limit = pesc_kernels.cpu_buffer_cache_info()["limit_bytes"]
    yield
    pesc_kernels.set_cpu_buffer_cache_limit(limit)


def _large_output():
    """grouped_mm output of 1024 x 512 fp32 = 2 MiB (on the reusable allocator)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 64, generator=gen)
    w = torch.randn(2, 64, 512, generator=gen)
    return ops.grouped_mm(x, w, torch.tensor([0, 600, 1024]))


def test_freed_outputs_are_kept_reused_and_returned(cache_limit):
    pesc_kernels.set_cpu_buffer_cache_limit(64 * MIB)
    pesc_kernels.empty_cpu_buffer_cache()
    assert pesc_kernels.cpu_buffer_cache_info() == {"kept_bytes": 0, "limit_bytes": 64 * MIB}
    y = _large_output()
    pointer, expected = y.data_ptr(), y.clone()
    del y
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 2 * MIB
    y = _large_output()
    assert y.data_ptr() == pointer  # the kept block, not fresh memory
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 0
    del y
    pesc_kernels.empty_cpu_buffer_cache()
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 0


def test_smaller_outputs_are_kept_in_power_of_two_classes(cache_limit):
    pesc_kernels.set_cpu_buffer_cache_limit(64 * MIB)
    pesc_kernels.empty_cpu_buffer_cache()
    logits = torch.randn(12800, 8, generator=torch.Generator().manual_seed(0))
    weights, indices = ops.topk_gating(logits, 2)  # 100 KiB each: the 128 KiB class
    pointers = {weights.data_ptr(), indices.data_ptr()}
    del weights, indices
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 2 * 128 * 1024
    weights, indices = ops.topk_gating(logits, 2)
    assert {weights.data_ptr(), indices.data_ptr()} == pointers
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 0
    torch.testing.assert_close(weights, reference.topk_gating(logits, 2)[0])
    del weights, indices
    pesc_kernels.empty_cpu_buffer_cache()
    small = ops.topk_gating(logits[:1000], 2)  # 8000 bytes each: torch's allocator
    del small
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 0


def test_a_lower_limit_returns_what_passes_it(cache_limit):
    pesc_kernels.set_cpu_buffer_cache_limit(64 * MIB)
    outputs = [_large_output() for _ in range(3)]
    del outputs
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 6 * MIB
    pesc_kernels.set_cpu_buffer_cache_limit(3 * MIB)
    assert pesc_kernels.cpu_buffer_cache_info() == {"kept_bytes": 2 * MIB, "limit_bytes": 3 * MIB}
    pesc_kernels.set_cpu_buffer_cache_limit(0)
    y = _large_output()
    del y
    assert pesc_kernels.cpu_buffer_cache_info()["kept_bytes"] == 0  # limit 0: nothing is kept


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="limit_bytes must be an int >= 0"):
        pesc_kernels.set_cpu_buffer_cache_limit(bad)


def _run_with_env(value: str) -> subprocess.CompletedProcess:
    code = ("import torch, pesc_kernels\n"
            "pesc_kernels.ops.grouped_mm(torch.randn(1024, 64), torch.randn(1, 64, 512), torch.tensor([0, 1024]))\n"
            "print(pesc_kernels.cpu_buffer_cache_info()['limit_bytes'])\n")
    env = {**os.environ, "PESC_CPU_BUFFER_CACHE_BYTES": value, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_environment_variable_sets_the_limit():
    result = _run_with_env("3145728")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3145728"
    result = _run_with_env("lots")
    assert result.returncode != 0
    assert "PESC_CPU_BUFFER_CACHE_BYTES must be a number of bytes, got 'lots'" in result.stderr
