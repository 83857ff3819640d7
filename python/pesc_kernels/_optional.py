"""Optional dependencies (transformers, peft, bitsandbytes), imported only by the functions that use them.

The core package (ops, layer, craft) needs torch alone; checkpoint conversion and loading need
transformers, the QLoRA helpers bitsandbytes. A missing one raises an ImportError that names the
extra to install.
"""
from __future__ import annotations

import importlib

EXTRAS = {"transformers": "hf", "peft": "hf", "accelerate": "hf", "bitsandbytes": "qlora"}


def require(module: str, purpose: str):
    """Import ``module`` or raise ImportError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRAS.get(module.split(".")[0], "hf")
        raise ImportError(f"{purpose} needs the {module.split('.')[0]} package, which is not installed: "
                          f"pip install pesc_kernels[{extra}]") from error
