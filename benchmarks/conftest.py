"""pytest-benchmark options and the case parametrization of test_benchmarks.py.

    pytest benchmarks --bench-family gating --bench-device cuda --bench-dtype bfloat16

Each case's candidates are timed as separate benchmarks in one group (the group name is the case
id), so the table shows the baseline and ours side by side from the same run;
`python benchmarks/summarize.py out.json` prints their ratios.
"""
import pytest
import torch

from pesc_kernels.bench import registry


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", choices=["cpu", "cuda"], help="device to benchmark on")
    parser.addoption("--bench-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.addoption("--bench-size", default="full", choices=["tiny", "quick", "full", "gpu"], help="size set")
    parser.addoption("--bench-family", default=None, choices=sorted(registry.FAMILIES),
                     help="one family (default: all)")


@pytest.fixture(scope="session")
def bench_device(request):
    device = torch.device(request.config.getoption("--bench-device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("--bench-device cuda but no GPU is visible")
    return device


@pytest.fixture(scope="session")
def bench_dtype(request):
    return getattr(torch, request.config.getoption("--bench-dtype"))


def run_case(benchmark, case, candidate, device, dtype):
    """Time one candidate of a case; CUDA work is synchronised inside the timed call. Returns the CaseRun."""
    run = case.build(device, dtype)
    if candidate not in run.candidates:  # e.g. a CUDA-only candidate, or a torch op this build lacks
        pytest.skip(f"{candidate} is not available for {device.type}/{dtype}")
    fn = run.candidates[candidate]
    benchmark.group = case.id
    benchmark.extra_info.update(family=case.family, case=case.name, shape=case.shape, candidate=candidate,
                                bytes_moved=run.bytes_moved, flops=run.flops, device=str(device), dtype=str(dtype))
    if device.type == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
    else:
        timed = fn
    timed()  # warm-up (and first-call compilation/caching) outside the measurement
    benchmark(timed)
    return run


def pytest_generate_tests(metafunc):
    """Parametrize `case, candidate` from the --bench-family and --bench-size options."""
    if "case" not in metafunc.fixturenames:
        return
    from pesc_kernels.bench import cases_for

    size = metafunc.config.getoption("--bench-size")
    params = [pytest.param(case, candidate, id=f"{case.id}-{candidate}")
              for case in cases_for(metafunc.config.getoption("--bench-family"), size)
              for candidate in case.candidates]
    metafunc.parametrize("case,candidate", params)
