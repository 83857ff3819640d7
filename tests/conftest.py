"""Shared fixtures: the devices present (CPU always, CUDA when a GPU is visible)."""
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pytest_report_header(config):
    import pesc_kernels

    info = pesc_kernels.build_info()
    return [f"pesc_kernels build: {info}", f"devices under test: {DEVICES}"]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _require_extension():
    """The suite tests the compiled kernels; a missing extension is a failure, not a skip."""
    from pesc_kernels import _library

    assert _library.extension_loaded(), f"pesc_kernels._C failed to load: {_library.LOAD_ERROR}"
