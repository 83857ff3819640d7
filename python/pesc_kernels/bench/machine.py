"""Machine description and, on CUDA, the calibration figures that achieved numbers are compared with.

Calibration (measured once per run, CUDA only):
- copy bandwidth: a device-to-device copy of a 1 GiB buffer, counted as bytes read + written;
- matrix throughput: a 8192^3 matmul in the benchmark dtype, in TFLOP/s.
"""
from __future__ import annotations

import datetime
import os
import platform

import torch

from .. import _library
from .._version import __version__


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def op_backends(device: torch.device) -> dict[str, str]:
    """Which implementation each public op runs on ``device``: "kernel" (compiled) or "reference"."""
    from .. import ops

    return {op: "kernel" if _library.has_kernel(op, device.type) else "reference"
            for op in ops.__all__ if callable(getattr(ops, op))}


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS does not report them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(device: torch.device) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pesc_kernels": __version__,
        "build": _library.build_info(),
        "op_backends": op_backends(device),
        "load_average": load_average(),  # other work on the machine skews timings; recorded with them
    }


def _cuda_time_ms(fn, repeats: int) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _copy_time_ms(n: int, device: torch.device) -> float:
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return _cuda_time_ms(lambda: dst.copy_(src), repeats=10)  # both buffers are freed on return


def cuda_calibration(device: torch.device, dtype: torch.dtype) -> dict:
    n = 1 << 28  # 1 GiB of fp32: far beyond any L2
    copy_ms = _copy_time_ms(n, device)
    size = 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    mm_ms = _cuda_time_ms(lambda: a @ b, repeats=10)
    return {
        "copy_bandwidth_GBps": 2 * n * 4 / (copy_ms * 1e-3) / 1e9,
        "matmul_TFLOPs": 2 * size**3 / (mm_ms * 1e-3) / 1e12,
        "matmul_dtype": str(dtype).replace("torch.", ""),
    }
