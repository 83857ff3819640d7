"""scripts/sanitize_ops.py is the workload compute-sanitizer runs on a real GPU (scripts/gpu_check.sh).
No GPU is here, so run the same calls on the CPU kernels: every call must be valid for the ops'
current signatures, and together they must reach every op registered under torch.ops.pesc
(forward and backward), or the sanitizer would never look at some kernel."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]


def _load_sanitize_ops():
    spec = importlib.util.spec_from_file_location("sanitize_ops", ROOT / "scripts" / "sanitize_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RecordPescOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "pesc":
            self.seen.add(func._opname)
        return func(*args, **(kwargs or {}))


def test_sanitizer_workload_runs_and_calls_every_op():
    script = _load_sanitize_ops()
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pesc::")}
    recorder = _RecordPescOps()
    with recorder:
        for check in script.CHECKS:
            check(torch.device("cpu"))
    assert registered - recorder.seen == set()
