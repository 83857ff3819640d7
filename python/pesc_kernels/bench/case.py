"""The benchmark case model (a leaf: the family modules import it; :mod:`.registry` collects them).

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
    family: str  # the op family (gating, permute, adapter) or "layer"
    name: str  # e.g. "gating+balance fwd+bwd"
    shape: str  # e.g. "T=16384 E=8 k=2"
    build: Callable[[torch.device, torch.dtype], CaseRun] = field(repr=False)
    sizes: tuple[str, ...] = ("full",)  # size sets it belongs to: "tiny", "quick", "full"
    candidates: tuple[str, ...] = ("reference", "pesc")  # labels build() returns; baseline first

    @property
    def id(self) -> str:
        return f"{self.name} [{self.shape}]"


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf that requires grad, so every forward+backward iteration starts the same way."""
    return t.detach().requires_grad_(True)
