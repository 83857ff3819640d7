"""The PESC layer's overhead over its dense FFN (fwd+bwd), next to the reference, Camelidae-style and
Sparsetral-style layers, with each training step's peak memory (DESIGN.md 4).

    pytest benchmarks/bench_layer.py [--bench-size quick|full|tiny] [--benchmark-json out.json]
    python benchmarks/summarize.py out.json      # overhead = time / dense time, memory = peak / dense peak

The benchmark runner measures the same cases: ``python -m pesc_kernels.bench --families layer``.
"""
from conftest import run_case

from pesc_kernels.bench.memory import peak_memory_bytes

FAMILY = "layer"


def test_layer(benchmark, case, candidate, bench_device, bench_dtype):
    run = run_case(benchmark, case, candidate, bench_device, bench_dtype)
    benchmark.extra_info["peak_bytes"] = peak_memory_bytes(run.candidates[candidate], bench_device)
