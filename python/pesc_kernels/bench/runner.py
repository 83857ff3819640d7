"""Measurement loop of the benchmark runner.

For each case every candidate is warmed up, then timed in rounds; each round times every candidate
once, in an order rotated from round to round, so slow drifts of a noisy machine hit all candidates
alike and ratios stay meaningful. CPU times use perf_counter; CUDA times use CUDA events around each
call. On CUDA the case is built several times and successive calls rotate through the copies, so
inputs are not served from L2 when the working set would fit there. Peak memory of one call is
measured per candidate (see memory.py).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .case import Case
from .memory import peak_memory_bytes

L2_BYTES_GUESS = 64 << 20  # larger than the L2 of any current GPU (H100/H200: 50 MiB)


@dataclass
class Budget:
    warmup: int = 2
    min_rounds: int = 5
    max_rounds: int = 30
    seconds: float = 8.0  # time budget per case, after warm-up


SIZE_BUDGETS = {
    "tiny": Budget(warmup=1, min_rounds=2, max_rounds=3, seconds=0.5),
    "quick": Budget(warmup=1, min_rounds=3, max_rounds=9, seconds=2.5),
    "full": Budget(warmup=2, min_rounds=5, max_rounds=30, seconds=8.0),
    # scripts/gpu_check.sh: the GPU target shapes only, a few minutes in all.
    "gpu": Budget(warmup=3, min_rounds=10, max_rounds=50, seconds=2.0),
}


def _percentile(sorted_values, q):
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats_ms(samples):
    s = sorted(samples)
    return {"median_ms": statistics.median(s), "p25_ms": _percentile(s, 0.25), "p75_ms": _percentile(s, 0.75),
            "min_ms": s[0], "samples": len(s)}


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn) -> float:
        if self.cuda:
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def measure_case(case: Case, device: torch.device, dtype: torch.dtype, budget: Budget,
                 measure_memory: bool = True) -> dict:
    run = case.build(device, dtype)
    copies = [run]
    if device.type == "cuda" and run.bytes_moved and run.bytes_moved < L2_BYTES_GUESS:
        extra = min(7, -(-2 * L2_BYTES_GUESS // run.bytes_moved) - 1)
        copies += [case.build(device, dtype) for _ in range(extra)]
    # A candidate a case cannot build for this device/dtype (e.g. a torch op this build lacks) is left out.
    labels = [label for label in case.candidates if label in run.candidates]
    timer = _Timer(device)
    for copy in copies:
        for label in labels:
            for _ in range(budget.warmup):
                timer(copy.candidates[label])
    samples = {label: [] for label in labels}
    started = time.perf_counter()
    rounds = 0
    def more_rounds() -> bool:
        elapsed = time.perf_counter() - started
        if rounds >= budget.max_rounds:
            return False
        if rounds < budget.min_rounds:
            # Very slow cases (a round far beyond the budget) stop at 3 rounds rather than min_rounds.
            return rounds < 3 or elapsed < 4 * budget.seconds
        return elapsed < budget.seconds

    while more_rounds():
        order = labels[rounds % len(labels):] + labels[:rounds % len(labels)]
        copy = copies[rounds % len(copies)]
        for label in order:
            samples[label].append(timer(copy.candidates[label]))
        rounds += 1
    result = {
        "family": case.family, "name": case.name, "shape": case.shape, "id": case.id,
        "baseline": labels[0], "bytes_moved": run.bytes_moved, "flops": run.flops,
        "candidates": {label: _stats_ms(samples[label]) for label in labels},
    }
    if measure_memory:
        for label in labels:
            result["candidates"][label]["peak_memory_bytes"] = peak_memory_bytes(run.candidates[label], device)
    _derive(result)
    return result


def _derive(result: dict) -> None:
    """Ratios from medians: speedup of ours over every other candidate, and ratios to the baseline."""
    cands = result["candidates"]
    base = result["baseline"]
    ours = cands.get("pesc")
    for label, stats in cands.items():
        stats["ratio_to_baseline"] = stats["median_ms"] / cands[base]["median_ms"]
        mem, base_mem = stats.get("peak_memory_bytes"), cands[base].get("peak_memory_bytes")
        if mem is not None and base_mem:
            stats["memory_ratio_to_baseline"] = mem / base_mem
        if ours is not None and label != "pesc":
            stats["pesc_speedup"] = stats["median_ms"] / ours["median_ms"]
    if ours is not None:
        seconds = ours["median_ms"] * 1e-3
        if result["bytes_moved"]:
            result["achieved_GBps"] = result["bytes_moved"] / seconds / 1e9
        if result["flops"]:
            result["achieved_GFLOPs"] = result["flops"] / seconds / 1e9
