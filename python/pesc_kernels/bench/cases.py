"""The benchmark case model and registry.

A :class:`Case` names an op (or layer) and a shape; ``build(device, dtype)`` returns a
:class:`CaseRun` whose ``candidates`` map a label to a zero-argument callable doing one timed
iteration (forward, or forward+backward). The first candidate is the baseline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class CaseRun:
    candidates: dict[str, Callable[[], object]]
    # Minimal bytes ours must move per iteration (for achieved-bandwidth figures on GPU), or 0.
    bytes_moved: int = 0
    # Floating-point operations per iteration (for GFLOP/s), or 0.
    flops: int = 0


@dataclass
class Case:
    family: str  # matches benchmarks/bench_<family>.py
    name: str  # e.g. "gating+balance fwd+bwd"
    shape: str  # e.g. "T=16384 E=8 k=2"
    build: Callable[[torch.device, torch.dtype], CaseRun] = field(repr=False)
    sizes: tuple[str, ...] = ("full",)  # size sets it belongs to: "tiny", "quick", "full"
    candidates: tuple[str, ...] = ("reference", "pesc")  # labels build() returns; baseline first

    @property
    def id(self) -> str:
        return f"{self.name} [{self.shape}]"


_REGISTRY: list[Callable[[], list[Case]]] = []


def register(factory: Callable[[], list[Case]]) -> Callable[[], list[Case]]:
    _REGISTRY.append(factory)
    return factory


def cases_for(family: str | None = None, size: str = "full") -> list[Case]:
    from . import adapter, gating, layer, permute  # noqa: F401  (modules register their case factories on import)

    found = [case for factory in _REGISTRY for case in factory()]
    return [c for c in found if (family is None or c.family == family) and size in c.sizes]


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf that requires grad, so every forward+backward iteration starts the same way."""
    return t.detach().requires_grad_(True)
