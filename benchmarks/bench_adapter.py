"""Grouped GEMMs against pure-PyTorch formulations: the PESC adapter and grouped_mm, fwd and fwd+bwd.

    pytest benchmarks/bench_adapter.py [--bench-device cuda] [--bench-size quick] [--benchmark-json out.json]

Candidates and the meaning of bytes_moved / flops are described in pesc_kernels/bench/adapter.py.
"""
from conftest import run_case

FAMILY = "adapter"


def test_adapter(benchmark, case, candidate, bench_device, bench_dtype):
    run_case(benchmark, case, candidate, bench_device, bench_dtype)
