"""Permutation ops against the reference: permute + unpermute, forward and fwd+bwd.

    pytest benchmarks/bench_permute.py [--bench-device cuda] [--bench-size quick] [--benchmark-json out.json]
"""
from conftest import run_case

FAMILY = "permute"


def test_permute(benchmark, case, candidate, bench_device, bench_dtype):
    run_case(benchmark, case, candidate, bench_device, bench_dtype)
