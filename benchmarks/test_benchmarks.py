"""pytest-benchmark entry for every case of the benchmark registry (pesc_kernels.bench).

    pytest benchmarks [--bench-family gating] [--bench-device cuda] [--bench-size quick] [--benchmark-json out.json]
    python benchmarks/summarize.py out.json      # baseline/ours ratios; layer overhead and memory

The same cases, timed alternately in one run with machine information and a chart, are what
``pesc-bench`` measures; this file only adapts them to pytest-benchmark. Each case's candidates are
separate benchmarks in one group (the case id), so the table shows the baselines and ours side by
side. Layer cases also record each training step's peak memory.
"""
from conftest import run_case

from pesc_kernels.bench.memory import peak_memory_bytes


def test_case(benchmark, case, candidate, bench_device, bench_dtype):
    run = run_case(benchmark, case, candidate, bench_device, bench_dtype)
    if case.family == "layer":
        benchmark.extra_info["peak_bytes"] = peak_memory_bytes(run.candidates[candidate], bench_device)
