"""Device, dtype and base-model loading for the examples (optionally with 4-bit base weights).

On CUDA the examples run in bf16 (weights and activations); on CPU in fp32. ``--load-in-4bit``
quantises the frozen base weights to NF4 with bitsandbytes (QLoRA, as in the PESC paper), on a CUDA
GPU or on the CPU (bitsandbytes >= 0.50; the compute dtype is the run's dtype). It needs the
bitsandbytes package and fails with a clear message without it, and on CPUs where bitsandbytes'
inference path cannot pack a layer's shape (see :mod:`pesc_kernels.quantized`) it names the layer.
"""
from __future__ import annotations

import importlib.util
import os

import torch


def quiet_libraries() -> None:
    """Silence per-file progress bars and deprecation chatter of transformers/peft in the scripts' output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


def resolve_device(name: str = "auto") -> torch.device:
    """The device of this process. "auto": the GPU when CUDA is available, else the CPU. A GPU without
    an index ("auto", "cuda") is this process's own: LOCAL_RANK under torchrun, else GPU 0. An explicit
    index ("cuda:1") is only allowed in a single-process run, where it cannot put every rank on one GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    if device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"--device {name}: under torchrun give --device cuda (each process takes the GPU of "
                         "its LOCAL_RANK), not a fixed index")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def four_bit_unavailable_reason(device: torch.device) -> str | None:
    """Why 4-bit base weights cannot be used here, or None when they can."""
    if device.type not in ("cuda", "cpu"):
        return (f"--load-in-4bit runs on a CUDA GPU or the CPU (bitsandbytes 4-bit kernels); this run is on "
                f"{device.type}. Run without --load-in-4bit.")
    if importlib.util.find_spec("bitsandbytes") is None:
        return ("--load-in-4bit needs the bitsandbytes package, which is not installed: "
                "pip install pesc_kernels[qlora] (or pip install bitsandbytes)")
    return None


def load_base(path, device: torch.device, dtype: torch.dtype, load_in_4bit: bool = False):
    """A Hugging Face causal LM from a local directory, on ``device`` in ``dtype`` (NF4 when 4-bit)."""
    from transformers import AutoModelForCausalLM

    if load_in_4bit:
        reason = four_bit_unavailable_reason(device)
        if reason:
            raise RuntimeError(reason)
        from transformers import BitsAndBytesConfig

        from pesc_kernels.quantized import check_cpu_4bit_layout

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=dtype,
                                                     device_map={"": device})
        check_cpu_4bit_layout(model)  # evaluation would otherwise fail inside bitsandbytes on some CPUs
        return model
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
