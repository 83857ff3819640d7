"""Peak memory of one call of a benchmark candidate.

CUDA: ``torch.cuda.max_memory_allocated`` during the call, minus what was allocated before.
CPU: torch has no CPU peak counter, so we sample the bytes in use on the C heap (glibc
``mallinfo2``: in-use arena bytes plus mmapped chunks, where torch's CPU tensors live) after every
ATen op of the call, seen through a TorchDispatchMode, and report the peak minus the bytes in use
before the call. Transient buffers that an op allocates and frees internally are not seen; all
candidates are measured the same way, so ratios between them are meaningful. The kernels' reusable
CPU output buffers are turned off during the call (their kept blocks would count as in use), so
the figure is the memory the call's live tensors need.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .._library import cpu_buffer_cache_info, set_cpu_buffer_cache_limit


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _load_mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_mallinfo2 = _load_mallinfo2()


def heap_in_use() -> int:
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


class _PeakHeapMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.peak = heap_in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_in_use())
        return out


def peak_memory_bytes(fn, device: torch.device) -> int | None:
    """Peak bytes allocated during ``fn()`` beyond those live before it (None if unmeasurable)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if device.type != "cpu" or _mallinfo2 is None:
        return None
    limit = cpu_buffer_cache_info()["limit_bytes"]
    set_cpu_buffer_cache_limit(0)
    try:
        gc.collect()
        before = heap_in_use()
        with _PeakHeapMode() as mode:
            fn()
    finally:
        set_cpu_buffer_cache_limit(limit)
    return max(0, mode.peak - before)
