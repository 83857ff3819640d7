"""4-bit (bitsandbytes NF4) base models on the CPU: the one shape rule bitsandbytes imposes there.

The PESC paper trains with QLoRA: the frozen base in NF4, LoRA on the projections, the PESC
routers and adapters in bf16. With bitsandbytes >= 0.50 this runs on the CPU too. Its CPU path
(bitsandbytes 0.50.2, read from its source):

- quantising a weight ``[out_features, in_features]`` flattens it into blocks of ``blocksize``
  values (64 by default; a shorter last block is allowed), and the training path (forward and
  backward: dequantise, then a dense matmul) works for every shape;
- inference is different on CPUs with AVX512-BF16, where bitsandbytes sets
  ``Linear4bit.support_avx512bf16_for_cpu``: the first forward in eval mode with an input that needs
  no gradient repacks the weight for a fused kernel (``_convert_weight_packed_for_cpu``, tiles of 32
  output rows, absmax reshaped to ``[out_features, in_features / blocksize]``). That requires
  ``out_features % 32 == 0`` and ``in_features % blocksize == 0``; other shapes fail there with an
  ``AssertionError`` ("N must be divisible by block_n") or a reshape error that names no layer.

:func:`check_cpu_4bit_layout` raises a ValueError naming the offending layers up front (on the
CPUs where the rule applies), and :func:`cpu_4bit_layout_problems` lists them on any machine.
"""
from __future__ import annotations

import sys

from torch import nn

PACKED_ROWS = 32  # bitsandbytes' CPU packing tiles output rows by 32 (block_n)


def _linear_4bit_class():
    bitsandbytes = sys.modules.get("bitsandbytes")  # never imported here: no 4-bit layer can exist without it
    return getattr(getattr(bitsandbytes, "nn", None), "Linear4bit", None)


def linear_4bit_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every bitsandbytes ``Linear4bit`` in ``model``."""
    cls = _linear_4bit_class()
    return [] if cls is None else [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]


def cpu_4bit_layout_problems(model: nn.Module) -> list[str]:
    """One line per CPU ``Linear4bit`` whose shape the AVX512-BF16 inference path cannot pack."""
    problems = []
    for name, layer in linear_4bit_layers(model):
        if layer.weight.device.type != "cpu":
            continue
        state = getattr(layer.weight, "quant_state", None)
        blocksize = getattr(state, "blocksize", None) or getattr(layer.weight, "blocksize", 64)
        reasons = []
        if layer.out_features % PACKED_ROWS:
            reasons.append(f"out_features={layer.out_features} is not a multiple of {PACKED_ROWS}")
        if layer.in_features % blocksize:
            reasons.append(f"in_features={layer.in_features} is not a multiple of the block size {blocksize}")
        if reasons:
            problems.append(f"{name} ({' and '.join(reasons)})")
    return problems


def check_cpu_4bit_layout(model: nn.Module) -> None:
    """Raise ValueError naming the 4-bit CPU layers bitsandbytes would fail to pack for inference.

    Only layers where bitsandbytes' packed path is on (``support_avx512bf16_for_cpu``, set on CPUs
    with AVX512-BF16) are checked, so on other CPUs and on GPUs this never raises.
    """
    packed = {name for name, layer in linear_4bit_layers(model) if getattr(layer, "support_avx512bf16_for_cpu", False)}
    problems = [p for p in cpu_4bit_layout_problems(model) if p.split(" (")[0] in packed]
    if problems:
        raise ValueError(
            "4-bit layers that bitsandbytes cannot run in inference on this CPU (its AVX512-BF16 path packs "
            f"weights in tiles of {PACKED_ROWS} output rows and whole quantisation blocks of the input): "
            f"{'; '.join(problems[:3])}{f'; and {len(problems) - 3} more' if len(problems) > 3 else ''}. "
            f"Use a model whose projection sizes are multiples of {PACKED_ROWS} (outputs) and of the block size "
            "(inputs), or load it without 4-bit quantisation")
