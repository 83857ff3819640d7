"""Routing ops against the reference: top-k gating + load-balancing loss, forward and fwd+bwd.

    pytest benchmarks/bench_gating.py [--bench-device cuda] [--bench-size quick] [--benchmark-json out.json]
"""
from conftest import run_case

FAMILY = "gating"


def test_gating(benchmark, case, candidate, bench_device, bench_dtype):
    run_case(benchmark, case, candidate, bench_device, bench_dtype)
