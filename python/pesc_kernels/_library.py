"""Loading of the compiled extension and the choice, per op and device, between it and the reference.

`pesc_kernels._C` registers every op under ``torch.ops.pesc`` when imported: schemas, Meta kernels
(the validators, which also serve as fake implementations) and CPU/CUDA kernels. If it has no kernel
for a device (MPS, XPU, or CUDA tensors with a CPU-only build), the public wrappers in
:mod:`pesc_kernels.ops` call :func:`fallback`: the op first runs on meta copies of its arguments,
which applies exactly the kernels' validation (same errors, same messages), then
:mod:`pesc_kernels.reference` computes the result, with one warning per device type. If the
extension did not load at all (not built), the reference runs unvalidated.
"""
from __future__ import annotations

import warnings

import torch

try:
    from . import _C  # noqa: F401  (import registers the ops)

    LOAD_ERROR: Exception | None = None
except ImportError as error:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = error

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_warned_devices: set[str] = set()


def extension_loaded() -> bool:
    return _C is not None


def build_info() -> dict:
    """What the compiled extension was built with (empty fields when it is not loaded)."""
    if _C is None:
        return {"version": None, "cuda_compiled": False, "cuda_architectures": "", "cuda_toolkit_version": ""}
    return dict(_C.build_info())


def cpu_buffer_cache_info() -> dict:
    """The reusable CPU output buffers of the kernels (docs/design.md, "Performance"): freed blocks
    of 1 MiB and more that the CPU kernels keep for reuse, so a training step's outputs land in memory
    that is already mapped. Returns ``{"kept_bytes", "limit_bytes"}`` (both 0 without the extension)."""
    if _C is None:
        return {"kept_bytes": 0, "limit_bytes": 0}
    return dict(_C.cpu_buffer_cache_stats())


def empty_cpu_buffer_cache() -> None:
    """Returns every kept CPU buffer to the system (buffers in use are unaffected), as
    ``torch.cuda.empty_cache()`` does for CUDA."""
    if _C is not None:
        _C.empty_cpu_buffer_cache()


def set_cpu_buffer_cache_limit(limit_bytes: int) -> None:
    """Sets how many bytes of freed CPU buffers are kept for reuse (0 turns the reuse off) and returns
    what is kept beyond it. The default is an eighth of physical memory, or the environment variable
    ``PESC_CPU_BUFFER_CACHE_BYTES`` when it is set before the extension loads."""
    if not isinstance(limit_bytes, int) or isinstance(limit_bytes, bool) or limit_bytes < 0:
        raise ValueError(f"set_cpu_buffer_cache_limit: limit_bytes must be an int >= 0, got {limit_bytes!r}")
    if _C is not None:
        _C.set_cpu_buffer_cache_limit(limit_bytes)


def _kernel_table() -> dict[tuple[str, str], bool]:
    """(op, device type) -> has a compiled kernel, computed once at import.

    A plain dict lookup keeps the public wrappers traceable by torch.compile (the dispatcher query
    itself is not). The meta device counts as covered: the ops' fake implementations serve it.
    """
    table = {}
    for op in registered_ops():
        table[(op, "meta")] = True
        for device_type, key in _DISPATCH_KEYS.items():
            table[(op, device_type)] = torch._C._dispatch_has_kernel_for_dispatch_key(f"pesc::{op}", key)
    return table


def has_kernel(op: str, device_type: str) -> bool:
    """True when ``torch.ops.pesc.<op>`` has a compiled kernel for ``device_type``."""
    return _KERNELS.get((op, device_type), False)


@torch.compiler.disable
def _warn_fallback(device_type: str) -> None:
    if device_type in _warned_devices:
        return
    _warned_devices.add(device_type)
    reason = f"the extension did not load ({LOAD_ERROR})" if _C is None else f"it has no {device_type} kernels"
    warnings.warn(
        f"pesc_kernels: {reason}; falling back to the pure-PyTorch reference on {device_type}",
        RuntimeWarning,
        stacklevel=4,
    )


def use_kernel(op: str, device: torch.device) -> bool:
    """Whether the public wrapper should call the compiled op (else :func:`fallback`)."""
    return has_kernel(op, device.type)


def fallback(op: str, args: tuple, reference_fn):
    """The result of ``reference_fn(*args)`` for ``torch.ops.pesc.<op>``, on a device without kernels.

    Warns once per device type, then validates: every tensor argument must be on one device, and
    the op's Meta kernel runs on meta copies of the arguments (shapes, dtypes and values such as
    ``k <= E`` are checked; nothing is computed or copied).
    """
    tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    device = tensors[0][1].device
    _warn_fallback(device.type)
    if _C is not None:
        names = [arg.name for arg in getattr(torch.ops.pesc, op).default._schema.arguments]
        for i, t in tensors[1:]:
            if t.device != device:
                raise ValueError(f"pesc.{op}: {names[i]} is on {t.device} but {names[tensors[0][0]]} is on {device}; "
                                 "all tensors must be on the same device")
        getattr(torch.ops.pesc, op)(*(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args))
    return reference_fn(*args)


def registered_ops() -> list[str]:
    """Names of the forward ops registered under torch.ops.pesc (backward ops excluded)."""
    if _C is None:
        return []
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pesc::")]
    return sorted(n for n in names if not n.endswith("_backward"))


_KERNELS = _kernel_table()
