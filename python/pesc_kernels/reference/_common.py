"""Helpers shared by the reference implementations."""
import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for fp16/bf16/fp32 inputs, float64 for float64 (used by the tests as ground truth)."""
    return torch.promote_types(t.dtype, torch.float32)
